"""Data: sources (FM_UIA CSV, JSONL manifests, frame folders), the synthetic B-mode
generator, keypoint-aware augmentation, grain pipelines and the card's fair split."""

from sonichu_jax.data.augment import AugmentConfig, augment_sample, resize_sample
from sonichu_jax.data.pipeline import (
    ExampleLoader,
    PipelineConfig,
    make_eval_pipeline,
    make_train_pipeline,
    task_weights,
)
from sonichu_jax.data.records import Issue, LoadReport, Record
from sonichu_jax.data.sources import (
    Source,
    load_csv,
    load_csv_dir,
    load_frames,
    load_manifest,
    load_source,
    manifest_line,
)
from sonichu_jax.data.splits import fair_split
from sonichu_jax.data.synthetic import (
    SYNTHETIC_FLIP_PERMS,
    generate_sample,
    synthetic_records,
    synthetic_tasks,
    write_synthetic_dataset,
)
