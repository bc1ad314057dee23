"""One module per `sonichu-jax` subcommand (see `sonichu_jax.cli`)."""
