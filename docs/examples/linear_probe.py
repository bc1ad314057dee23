"""A linear probe on the backbone's spatial features, scored against the mean shape.

    python docs/examples/linear_probe.py --data data/syn [--model runs/tiny/model] [--task HC]

Ridge regression from ``embed(pool="none")`` features (B, gh, gw, D), flattened, to the
normalised keypoints of one task; its MRE on held-out images beside the MRE of always
predicting the training images' mean shape. Without ``--model`` the backbone is a freshly
initialised tiny model (a probe of random features).
"""

from __future__ import annotations

import argparse

import numpy as np
from flax import nnx

from sonichu_jax import SonichuModel, SonichuPreprocessor, tiny_config
from sonichu_jax.data.sources import load_source
from sonichu_jax.data.synthetic import synthetic_tasks
from sonichu_jax.evaluation import compute_mre


def probe(data: str, model_dir: str | None = None, task: str = "HC", ridge: float = 1.0) -> dict[str, float]:
    """{"probe": MRE px, "mean_shape": MRE px} on the last quarter of ``task``'s records."""
    if model_dir:
        model = SonichuModel.from_pretrained(model_dir)
    else:
        model = SonichuModel(tiny_config(tasks=synthetic_tasks((task,))), rngs=nnx.Rngs(0))
    model.eval()  # BatchNorm running statistics (inference methods use them in any case)
    records = [r for r in load_source(data, tasks=model.cfg.tasks, log=None).records if r.task == task]
    prep = SonichuPreprocessor(size=model.cfg.image_size)
    images, sizes = zip(*[(x, (w, h)) for x, h, w in map(prep.preprocess_one, [r.image for r in records])])
    feats = np.asarray(model.embed(np.stack(images), pool="none"))  # (N, gh, gw, D)
    x = np.concatenate([feats.reshape(len(records), -1), np.ones((len(records), 1))], axis=1)
    sizes = np.asarray(sizes, np.float32)  # (N, 2) original width, height
    y = np.stack([r.keypoints / s for r, s in zip(records, sizes)])  # (N, K, 2) normalised
    cut = len(records) * 3 // 4
    w = np.linalg.solve(x[:cut].T @ x[:cut] + ridge * np.eye(x.shape[1]), x[:cut].T @ y[:cut].reshape(cut, -1))
    guesses = {"probe": (x[cut:] @ w).reshape(y[cut:].shape),
               "mean_shape": np.broadcast_to(y[:cut].mean(0), y[cut:].shape)}
    test = records[cut:]
    out = {}
    for name, pred in guesses.items():
        report = compute_mre([r.task for r in test], [r.keypoints for r in test], [r.valid for r in test],
                             list(pred * sizes[cut:, None, :]))
        out[name] = report.weighted_px
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model")
    parser.add_argument("--task", default="HC")
    args = parser.parse_args()
    for name, mre in probe(args.data, args.model, args.task).items():
        print(f"{name}: MRE {mre:.2f} px")
