"""The one run driver: every training stage (teacher, distillation, I-JEPA) runs through it.

A `Stage` declares what is its own (config class, data, program, fresh state, validation,
export, the card's training-set size for plans); `run` does the rest: checks, run
directory, schedule, resume, sinks, the loop with its cadences, stop signals, final save
and exports (docs/training.md, "What a run does, in order").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax

from sonichu_jax.errors import TrainingDiverged
from sonichu_jax.evaluation import MREReport
from sonichu_jax.train import distributed
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.checkpointing import Checkpointer
from sonichu_jax.train.configlib import profile_window, to_dict
from sonichu_jax.train.guard import all_finite
from sonichu_jax.train.metrics_log import ConsoleSink, JsonlSink, MetricsBuffer, MetricsSink, summarize
from sonichu_jax.train.preemption import StopRequest
from sonichu_jax.train.profiler import ProfileWindow
from sonichu_jax.train.run_dir import CHECKPOINTS, METRICS_FILE, PROFILE_DIR, TENSORBOARD_DIR, RunDir, check_resume
from sonichu_jax.train.schedule import resolve_schedule
from sonichu_jax.train.tensorboard import open_tensorboard


class Program(NamedTuple):
    """What a stage builds for the driver."""

    state: Any  # the abstract train state with shardings: the restore target
    step: Callable  # jitted ``step(state, batch, *aux) -> (state, metrics)``, state donated
    aux: tuple = ()  # further (placed) step inputs


class Stage:
    """One training stage as `run` sees it. Subclasses set the class attributes and
    override the hooks; ``self.config`` is the validated config, with its schedule in
    steps from `examples` on."""

    name = "train"  # the command: progress bar and messages
    config_class: type | None = None  # the config it runs (`sonichu_jax.train.plans.stages` picks by it)
    card_examples: int | None = None  # the card's training set, over which a plan counts epochs
    batch_keys: tuple[str, ...] = ()  # the keys of a data batch that the step reads
    window_last: tuple[str, ...] = ("lr",)  # metrics a window reports at its end, not averaged
    postfix: tuple[str, ...] = ("loss", "lr", "img_per_s")  # on the progress bar

    def __init__(self, config):
        self.config = config

    def examples(self) -> int:
        """Load the data; the number of training examples an epoch covers."""
        raise NotImplementedError

    def build(self, mesh: jax.sharding.Mesh) -> Program:
        """The program on ``mesh``, allocating nothing (a plan builds it for any mesh)."""
        raise NotImplementedError

    def model_flops(self, program) -> float:
        """Model FLOPs of one step over the global batch (`sonichu_jax.train.flops`)."""
        raise NotImplementedError

    def initial_state(self) -> Any:
        """A fresh state (after `build`), allocated in the program's shardings."""
        raise NotImplementedError

    def batches(self) -> Iterator[dict]:
        """This process's batches: a grain iterator (checkpointed)."""
        raise NotImplementedError

    def validation_every(self) -> int | None:
        """Validate every this many steps (0: only at the end); None: the stage has no validation."""
        return None

    def validate_at_start(self) -> bool:
        return False

    def validate(self, state) -> MREReport:
        raise NotImplementedError

    def export(self, state, out_dir: str, best: bool = False) -> None:
        """Write the finished run's outputs (``best``: the best checkpoint's weights)."""


@dataclass
class RunResult:
    out_dir: str
    step: int
    finished: bool
    signal: int | None = None  # the signal that stopped the run (after its checkpoint was saved)
    last_metrics: dict | None = None  # the last metrics window
    validation: MREReport | None = None  # the last validation ...
    validation_step: int | None = None  # ... and the step it measured
    best_step: int | None = None  # the checkpoint with the lowest validation MRE

    @property
    def interrupted(self) -> bool:
        return not self.finished

    @property
    def val_mre(self) -> float | None:
        return None if self.validation is None else self.validation.weighted_px

    @property
    def exit_code(self) -> int:
        """0 done (or stopped on request); 128 + the signal after a signal-triggered save."""
        return 128 + self.signal if self.signal else 0


def run(stage: Stage, out_dir: str | os.PathLike, *, resume: bool = False, stop_after: int | None = None,
        sinks: Sequence[MetricsSink] = ()) -> RunResult:
    """Train (or continue) ``stage`` in ``out_dir``. ``stop_after`` ends the call after that
    many steps as if preempted (checkpoint saved); ``sinks`` receive what the run reports."""
    driver = _Run(stage, RunDir(out_dir), resume, sinks)
    try:
        driver.prepare()
        driver.start()
        driver.train(stop_after)
        return driver.finish()
    finally:
        driver.close()


class _Run:
    """The state of one call of `run`; each phase is a method."""

    def __init__(self, stage: Stage, run_dir: RunDir, resume: bool, sinks: Sequence[MetricsSink]):
        self.stage, self.run_dir, self.resume, self.extra_sinks = stage, run_dir, resume, list(sinks)
        self.ckpt: Checkpointer | None = None
        self.sinks: list[MetricsSink] = []
        self.console: ConsoleSink | None = None
        self.profile = ProfileWindow(None, "")
        self.buffer = MetricsBuffer()
        self.validation: tuple[int, MREReport] | None = None
        self.last_window: dict | None = None
        self.signal: int | None = None

    # -- 1-3: checks; nothing written, nothing compiled ------------------------------------
    def prepare(self) -> None:
        stage = self.stage
        config = stage.config.validate()
        distributed.start(config.distributed)
        self.primary = jax.process_index() == 0
        if self.primary:  # one lock per run, however many hosts
            self.run_dir.lock(self.say)
        saved = self.run_dir.check(self.resume)
        self.mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
        mesh_lib.check_batch(config.data.batch_size, self.mesh)
        mesh_lib.local_batch_size(config.data.batch_size)
        config, per_epoch = resolve_schedule(config, stage.examples())
        note = None if saved is None else check_resume(saved, to_dict(config), str(self.run_dir),
                                                       defaults=to_dict(type(config)()))
        stage.config = self.config = config
        self.say(distributed.banner(stage.name, self.mesh, config.data.batch_size, config.steps, per_epoch))
        for line in (distributed.shared_storage_note(str(self.run_dir)), note):
            if line:
                self.say(line)

    def say(self, text: str) -> None:
        if self.primary:
            (self.console.say if self.console is not None else print)(text)

    # -- 4: state and outputs ----------------------------------------------------------------
    def start(self) -> None:
        self.program = self.stage.build(self.mesh)
        self.batches = self.stage.batches()
        restored = None
        if self.resume:
            self.ckpt = Checkpointer(self.run_dir.join(CHECKPOINTS), self.config.checkpoint)
            is_finite = jax.jit(all_finite)
            restored = self.ckpt.restore_latest(self.program.state, self.batches,
                                                lambda s: bool(jax.device_get(is_finite(s))), self.say)
            if not restored:
                self.run_dir.check_restart()
            self.say(f"resumed from step {restored[1]}" if restored else "no intact checkpoint: starting at step 0")
        # A fresh state first: a failing initialisation (say, a wrong init.path) leaves no
        # checkpoints/ behind that would make the directory look like a run.
        self.state, self.step = restored if restored else (self.stage.initial_state(), 0)
        if self.ckpt is None:
            self.ckpt = Checkpointer(self.run_dir.join(CHECKPOINTS), self.config.checkpoint)
        if self.primary:
            self.run_dir.write_config(to_dict(self.config))
            self.console = ConsoleSink(self.stage.name, self.config.steps, self.step, self.stage.postfix,
                                       self.config.log.progress)
            keep_up_to = self.step if restored else None
            self.sinks = [JsonlSink(self.run_dir.join(METRICS_FILE), keep_up_to), self.console]
            if self.config.log.tensorboard:
                self.sinks += open_tensorboard(self.run_dir.join(TENSORBOARD_DIR), keep_up_to, self.say)
            window = profile_window(self.config.log.profile_steps)
            self.profile = ProfileWindow(window, self.run_dir.join(PROFILE_DIR), self.say)
        self.sinks += self.extra_sinks
        self.every = self.stage.validation_every()
        if not restored and self.every is not None and self.stage.validate_at_start():
            self.validate()

    # -- 5: the loop ---------------------------------------------------------------------------
    def train(self, stop_after: int | None) -> None:
        total = self.config.steps
        limit = total if stop_after is None else min(total, self.step + stop_after)
        self.window_start = time.perf_counter()
        with StopRequest(self.ckpt.manager) as stop:
            while self.step < limit:
                self.profile.before_step(self.step + 1)
                local = next(self.batches)
                batch = mesh_lib.global_batch(self.mesh, {k: local[k] for k in self.stage.batch_keys})
                self.state, metrics = self.program.step(self.state, batch, *self.program.aux)
                self.step += 1
                self.profile.after_step(self.step, self.state)
                self.buffer.add(self.step, metrics)
                for sink in self.sinks:
                    sink.step(self.step)
                self.cadence(limit)
                self.signal = stop.requested(self.step, self.config.log.every_steps)
                if self.signal:
                    break

    def cadence(self, limit: int) -> None:
        """After a step: the metrics window, validation and checkpoint, as configured."""
        step = self.step
        validate_now = self.validates_at(step)
        save_now = step % self.config.checkpoint.every_steps == 0 or validate_now
        if step % self.config.log.every_steps == 0 or save_now or step == limit:
            self.flush()
        if validate_now:
            self.validate()
        if save_now:
            self.save()

    def validates_at(self, step: int) -> bool:
        """Every ``validation_every`` steps, and at the last step before its save."""
        if self.every is None:
            return False
        return step == self.config.steps or (self.every > 0 and step % self.every == 0)

    def flush(self) -> None:
        """One fetch of the buffered window; stops the run if any step was non-finite."""
        if not len(self.buffer):
            return
        rows = self.buffer.flush()
        bad = [s for s, m in rows if m["finite"] < 1.0]
        if bad:
            self.ckpt.wait()
            last = self.ckpt.latest_step()
            where = f"step {last} in {self.run_dir.join(CHECKPOINTS)}" if last is not None else "none was saved"
            raise TrainingDiverged(f"non-finite loss, gradient or train state at step {bad[0]}; stopped without "
                                   f"saving it. Last good checkpoint: {where}")
        window = summarize(rows, self.stage.window_last)
        now = time.perf_counter()
        window["img_per_s"] = len(rows) * self.config.data.batch_size / max(now - self.window_start, 1e-9)
        self.window_start = now
        self.last_window = window
        for sink in self.sinks:
            sink.train_window(rows[-1][0], window)

    def validate(self) -> None:
        report = self.stage.validate(self.state)
        self.validation = (self.step, report)
        for sink in self.sinks:
            sink.validation(self.step, report)

    def save(self) -> None:
        validated = self.validation is not None and self.validation[0] == self.step
        self.ckpt.save(self.step, self.state, self.batches,
                       val_mre=self.validation[1].weighted_px if validated else None)

    # -- 6: the end --------------------------------------------------------------------------
    def finish(self) -> RunResult:
        self.flush()
        finished = self.step == self.config.steps
        if finished and self.every is not None and (self.validation is None or self.validation[0] != self.step):
            # A finished run resumed: its result reports an MRE measured now; the sinks
            # already hold this step's validation from the run that finished it.
            self.validation = (self.step, self.stage.validate(self.state))
        self.save()
        self.ckpt.wait()
        best = self.ckpt.best_step()
        if finished:
            self.stage.export(self.state, str(self.run_dir))
            if best is not None:
                self.stage.export(self.ckpt.restore(best, self.program.state), str(self.run_dir), best=True)
        elif self.primary:
            self.say(f"stopped at step {self.step}; checkpoint saved. Continue by resuming {self.run_dir}.")
        step, report = self.validation or (None, None)
        return RunResult(str(self.run_dir), self.step, finished, self.signal, self.last_window, report, step, best)

    def close(self) -> None:
        self.profile.close()
        if self.ckpt is not None:
            self.ckpt.close()
        for sink in self.sinks:
            sink.close()
        self.run_dir.unlock()
