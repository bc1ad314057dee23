"""Experiment configs bundled with sonichu-jax: each module defines ``get_config()``.

Installed as ``sonichu_jax.configs`` so that ``--config teacher_vitb`` finds them by name
after a wheel install; ``--config path/to/file.py`` loads any file.
"""
