"""``python -m sonichu_jax``: the same as the ``sonichu-jax`` console script."""

import sys

from sonichu_jax.cli import main

sys.exit(main())
