"""Training loops and what they share: mesh and sharding (`mesh`), train state (`state`),
optimiser (`optim`), the teacher step (`step`), checkpoints (`checkpointing`), metrics
logging (`metrics_log`), configs (`configlib`), the teacher loop (`teacher`) and
pseudo-labels (`pseudo_label`). Import the submodules directly; this package imports
nothing so that `sonichu_jax.cli` stays light."""
