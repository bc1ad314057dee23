"""Experiment configs bundled with sonichu-jax (``sonichu_jax.configs``), each defining
``get_config()``: ``--config teacher_vitb`` finds one by name after a wheel install.
"""
