"""Training: one run driver (`loop`) and the stages it drives: the supervised teacher
(`teacher`, built by `supervised`), distillation (`distill`) and I-JEPA pretraining
(`pretrain`, built by `ijepa`); the recipe end to end (`recipe`). Around them: configs
and overrides (`configlib`, `ijepa_config`, `presets`), schedules in epochs
(`schedule`), the run directory and resume checks (`run_dir`), checkpoints
(`checkpointing`), metrics and sinks (`metrics_log`), validation (`validation`), the NaN
guard (`guard`), stop signals (`preemption`), the multi-process start and banner
(`distributed`), mesh and shardings (`mesh`), train state (`state`), optimiser (`optim`),
the supervised step (`step`) and pseudo-labels (`pseudo_label`). Import the submodules
directly; this package imports nothing so that `sonichu_jax.cli` stays light."""
