"""One module per `sonichu-jax` subcommand (see `sonichu_jax.cli`)."""

# Images per forward pass: a larger batch only allocates, it never speeds anything up.
MAX_BATCH = 4096


def check_batch_size(size: int) -> int:
    from sonichu_jax.errors import InputError

    if not 1 <= size <= MAX_BATCH:
        raise InputError(f"batch size must be between 1 and {MAX_BATCH} images, got {size}")
    return size


def warn_unflipped(cfg, tasks, model: str) -> None:
    """Warn once that a weights-only checkpoint (no config.json) has no flip permutations,
    without which flip TTA averages left/right keypoints towards the middle."""
    import os
    import sys

    folder = model if os.path.isdir(model) else os.path.dirname(model)
    if os.path.isfile(os.path.join(folder, "config.json")):
        return  # the task table the model was trained with
    missing = [t for t in tasks if cfg.task(t).flip_perm is None]
    if missing:
        print(f"warning: {model} gives no flip permutation for {', '.join(missing)}; flip TTA needs it wherever "
              "mirroring swaps keypoints (pass --no-tta then)", file=sys.stderr)
