"""One module per `sonichu-jax` subcommand (see `sonichu_jax.cli`)."""

# Images per forward pass: a larger batch only allocates, it never speeds anything up.
MAX_BATCH = 4096


def check_batch_size(size: int) -> int:
    from sonichu_jax.errors import InputError

    if not 1 <= size <= MAX_BATCH:
        raise InputError(f"batch size must be between 1 and {MAX_BATCH} images, got {size}")
    return size
