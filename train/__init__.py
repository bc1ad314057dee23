"""Training: one run driver (`loop`) and the stages it drives (`supervised`, `distill`,
`pretrain`), their configs, steps and the files a run writes (docs/training.md). Import
the submodules directly; this package imports nothing, so `sonichu_jax.cli` stays light.
"""
