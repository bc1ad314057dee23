"""Data: sources (FM_UIA CSV, JSONL manifests, frame folders), the synthetic B-mode
generator, keypoint-aware augmentation, grain pipelines and the card's fair split."""
