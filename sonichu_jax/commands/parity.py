"""`sonichu-jax parity`: compare this implementation with a PyTorch one on a checkpoint."""

from __future__ import annotations

import argparse
import os

HELP = "check that a checkpoint gives the same heatmaps and keypoints in JAX as in PyTorch"

REFERENCE_MODULE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "reference", "modeling_sonichu.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sonichu_jax.commands.convert import add_checkpoint_arguments

    parser.add_argument("model", metavar="CKPT", help="checkpoint directory, file or Hub name; a Sonichu PyTorch "
                        "directory is loaded by the PyTorch module itself, anything else through an export of "
                        "the loaded weights")
    add_checkpoint_arguments(parser)
    parser.add_argument("--torch-module", metavar="PY",
                        help="the publisher's modeling_sonichu.py (default: this project's PyTorch reference)")
    parser.add_argument("--tasks", nargs="+", help="tasks to check (default: all)")
    parser.add_argument("--batch-size", type=int, default=2, help="random images per task (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coord-tol", type=float, default=2e-5, help="max |difference| of normalised xy")
    parser.add_argument("--heatmap-tol", type=float, default=1e-5, help="max relative L2 error of heatmaps")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def load_torch_model_class(path: str):
    """Import a ``modeling_sonichu.py`` by file path and return its SonichuModel class."""
    import importlib.util

    from sonichu_jax.errors import InputError

    if not os.path.isfile(path):
        raise InputError(f"torch module not found: {path}")
    try:
        import torch  # noqa: F401  (the module needs it; say so plainly if missing)
    except ImportError:
        raise InputError("parity needs PyTorch: pip install 'sonichu-jax[test]'") from None
    spec = importlib.util.spec_from_file_location("_sonichu_torch_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "SonichuModel"):
        raise InputError(f"{path} defines no SonichuModel class")
    return module.SonichuModel


def compare(jax_model, torch_model, task: str, images, with_heatmaps: bool) -> dict:
    """Heatmap relative L2 error and coordinate differences (with and without TTA)."""
    import numpy as np
    import torch

    x_torch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    result = {"task": task}
    with torch.no_grad():
        if with_heatmaps:
            ht = torch_model.heatmaps(x_torch, task).permute(0, 2, 3, 1).float().numpy()
            hj = np.asarray(jax_model.heatmaps(images, task))
            result["heatmap_rel_l2"] = float(np.linalg.norm(hj - ht) / max(np.linalg.norm(ht), 1e-30))
            probs = np.exp(ht.reshape(len(ht), -1, ht.shape[-1]) - ht.reshape(len(ht), -1, ht.shape[-1]).max(1, keepdims=True))
            result["max_softmax"] = float((probs / probs.sum(1, keepdims=True)).max())
        for tta in (False, True):
            ct = torch_model.predict(x_torch, task=task, tta=tta).float().numpy()
            cj = np.asarray(jax_model.predict(images, task, tta=tta))
            result["coord_max_abs" + ("_tta" if tta else "")] = float(np.abs(cj - ct).max())
    return result


def _torch_directory(args, report, workdir: str) -> tuple[str, str | None]:
    """The directory the PyTorch module loads: the checkpoint itself when it is a Sonichu
    PyTorch directory that fits exactly, else an export of the weights JAX loaded."""
    from sonichu_jax.convert import TORCH_WEIGHTS_NAME, open_checkpoint
    from sonichu_jax.convert.config_json import read_config_json

    ckpt = open_checkpoint(args.model, entry=args.entry)
    exact = (report.layout == "sonichu" and report.ok and not args.rename
             and os.path.basename(ckpt.weights) == TORCH_WEIGHTS_NAME and read_config_json(ckpt.config).ours)
    if exact:
        return ckpt.directory, None
    return workdir, (f"PyTorch side: the module on these weights exported to the sonichu layout (layout "
                     f"{report.layout}); this checks the JAX computation, not the conversion")


def run(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np

    from sonichu_jax import checkpoint
    from sonichu_jax.commands import check_batch_size
    from sonichu_jax.commands.convert import checkpoint_inputs
    from sonichu_jax.fileio import check_output, write_json
    from sonichu_jax.nn.sonichu import SonichuModel

    check_batch_size(args.batch_size)
    if args.json:
        check_output(args.json, (".json",), "JSON file", inputs=checkpoint_inputs(args.model))
    torch_cls = load_torch_model_class(args.torch_module or REFERENCE_MODULE)
    loaded: list = []
    jax_model = SonichuModel.from_pretrained(args.model, layout=args.layout, rename=args.rename, entry=args.entry,
                                             report=loaded)
    with tempfile.TemporaryDirectory(prefix="sonichu-parity-") as workdir:
        directory, note = _torch_directory(args, loaded[0], workdir)
        if note:
            checkpoint.export_pytorch(jax_model, workdir, layout="sonichu")
            print(note)
        torch_model = torch_cls.from_pretrained(directory).eval()
    tasks = args.tasks or list(jax_model.cfg.task_names)
    for task in tasks:
        jax_model.cfg.task(task)
    h, w = jax_model.cfg.image_size
    rng = np.random.default_rng(args.seed)
    images = rng.normal(size=(args.batch_size, h, w, 3)).astype(np.float32)
    with_heatmaps = hasattr(torch_model, "heatmaps")

    rows, all_ok = [], True
    for task in tasks:
        r = compare(jax_model, torch_model, task, images, with_heatmaps)
        r["ok"] = bool(
            r["coord_max_abs"] <= args.coord_tol and r["coord_max_abs_tta"] <= args.coord_tol
            and r.get("heatmap_rel_l2", 0.0) <= args.heatmap_tol
        )
        all_ok &= r["ok"]
        rows.append(r)

    print(f"{'task':<14} {'heatmap relL2':>14} {'coord max|d|':>13} {'TTA max|d|':>11}  result")
    for r in rows:
        hm = f"{r['heatmap_rel_l2']:.2e}" if "heatmap_rel_l2" in r else "n/a"
        print(f"{r['task']:<14} {hm:>14} {r['coord_max_abs']:>13.2e} {r['coord_max_abs_tta']:>11.2e}  "
              f"{'pass' if r['ok'] else 'FAIL'}")
    print(f"tolerances: coordinates {args.coord_tol:g}, heatmaps {args.heatmap_tol:g} (relative L2)")
    if args.json:
        write_json(args.json, {"model": os.path.abspath(args.model), "ok": all_ok, "tasks": rows,
                               "coord_tol": args.coord_tol, "heatmap_tol": args.heatmap_tol})
    return 0 if all_ok else 1
