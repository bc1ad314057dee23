"""`sonichu-jax plan`: topologies, the fake-CPU path everywhere, and TPU slices compiled
from this CPU machine when libtpu is installed (compile-only, no TPU needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from sonichu_jax.errors import ConfigError, InputError
from sonichu_jax.train.configlib import apply_overrides, load_config_file
from sonichu_jax.train import flops
from sonichu_jax.train.plans.topology import CHIPS, parse, tpu_available
from train_util import IJEPA_8_DEVICES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- topology names ------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("v5p:4x4x4", ("v5p", (4, 4, 4))),
    ("v5p-64", ("v5p", (2, 4, 4))),  # Cloud TPU counts v5p TensorCores: 32 chips
    ("v5p-8", ("v5p", (2, 2, 1))),
    ("v4-32", ("v4", (2, 2, 4))),
    ("v4-128", ("v4", (4, 4, 4))),
    ("v5e-16", ("v5e", (4, 4))),
    ("v5litepod-256", ("v5e", (16, 16))),
    ("v6e-8", ("v6e", (2, 4))),
    ("cpu:8", ("cpu", (8,))),
])
def test_topology_names(name, expected):
    assert parse(name) == expected


@pytest.mark.parametrize("name, message", [
    ("v7x:2x2x1", "unknown TPU generation 'v7x'.*known: v4, v5e, v5p, v6e.*examples: v5p:4x4x4"),
    ("tpu", "not GEN:AxBxC or GEN-N; examples"),
    ("v5p:4x4", "v5p slices have 3 axes"),
    ("v5p-12", "only power-of-two slices"),
    ("cpu:0", "cpu:N with 1 <= N <= 512"),
    ("cpu:8192", "cpu:N with 1 <= N <= 512"),
])
def test_bad_topology_names_say_what_is_known(name, message):
    with pytest.raises(InputError, match=message):
        parse(name)


def test_tpu_topology_without_libtpu_names_the_extra(monkeypatch):
    from sonichu_jax.train.plans import topology

    monkeypatch.setattr(topology, "tpu_available", lambda: False)
    with pytest.raises(InputError, match=r"needs libtpu .*pip install 'sonichu-jax\[tpu\]'"):
        topology.make_topology("v5p-64")


def test_fit_check_and_estimates():
    from sonichu_jax.train.plans.plan import Plan, estimate
    from sonichu_jax.train.plans.topology import Topology

    chip = CHIPS["v5e"]
    plan = Plan(stage="pretrain", topology="v5e:4x4", device_kind="TPU v5 lite", devices=16, hosts=4,
                mesh={"data": 16, "fsdp": 1}, global_batch=2048, batch_per_chip=128, steps=1000,
                memory={"total": chip.hbm_bytes + 1}, model_flops=0.5 * chip.peak_flops)
    topology = Topology("v5e:4x4", chip, (), 4)
    plan = estimate(plan, topology, step_seconds=2.0)
    assert not plan.fits and plan.time_source == "cost model"
    assert plan.mfu == pytest.approx(0.25) and plan.img_per_s == pytest.approx(1024)
    assert plan.run_hours == pytest.approx(2000 / 3600) and plan.chip_hours == pytest.approx(16 * 2000 / 3600)
    # no usable cost-model time (v5e and v4 give none, or a negative one, for large programs): roofline sum
    plan.compiler_flops, plan.bytes_accessed = chip.peak_flops, 2 * chip.hbm_bandwidth
    plan = estimate(plan, topology, step_seconds=-95.0)
    assert plan.time_source == "roofline" and plan.step_seconds == pytest.approx(3.0)


def test_pallas_kernels_are_priced_by_their_roofline():
    """The cost model gives Pallas kernels no time: their FLOPs at peak plus their bytes
    at HBM bandwidth are added to its step time, and to the roofline's totals."""
    from sonichu_jax.train.plans.plan import Plan, estimate
    from sonichu_jax.train.plans.topology import Topology

    chip = CHIPS["v5p"]
    plan = Plan(stage="pretrain", topology="v5p:2x2x1", device_kind="TPU v5", devices=4, hosts=1,
                mesh={"data": 4, "fsdp": 1}, global_batch=64, batch_per_chip=16, steps=10, memory={"total": 1},
                compiler_flops=3 * chip.peak_flops, bytes_accessed=chip.hbm_bandwidth, model_flops=chip.peak_flops,
                kernel_flops=chip.peak_flops, kernel_bytes=0.5 * chip.hbm_bandwidth)
    topology = Topology("v5p:2x2x1", chip, (), 1)
    plan = estimate(plan, topology, step_seconds=2.0)
    assert plan.kernel_seconds == pytest.approx(1.5) and plan.step_seconds == pytest.approx(3.5)
    assert plan.time_source == "cost model" and plan.mfu == pytest.approx(1 / 3.5)
    plan = estimate(plan, topology, step_seconds=None)  # the totals already hold the kernels'
    assert plan.time_source == "roofline" and plan.step_seconds == pytest.approx(4.0)


def test_a_step_the_compiler_cannot_fit_is_refused_with_its_figures(monkeypatch):
    """XLA's TPU compiler rematerialises to fit HBM and, when it cannot, fails the compile
    with its own figures; the plan turns that into DoesNotFit (exit 2)."""
    import jax

    from sonichu_jax.train.plans import plan as plan_lib
    from sonichu_jax.train.plans.topology import Topology

    class Program:
        stage = "pretrain"

        class run:  # noqa: N801 - stands in for what abstract_run returns
            @staticmethod
            def lower():
                class Lowered:
                    def compile(self):
                        raise jax.errors.JaxRuntimeError(
                            "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                            "temporaries (54.96G) exceeds available HBM (15.75G).")
                return Lowered()

    monkeypatch.setattr(plan_lib, "build_mesh", lambda config, topology: None)
    monkeypatch.setattr(plan_lib, "stage_program", lambda config, mesh, n, examples: Program())
    config = apply_overrides(load_config_file("ijepa_vitb"), ["data.batch_size=8192"])
    topology = Topology("v5e:4x4", CHIPS["v5e"], tuple(range(16)), 4)
    with pytest.raises(plan_lib.DoesNotFit, match=r"pretrain on v5e:4x4 \(512 images per chip\) does not fit: Ran out "
                                                   r"of memory on HBM.*\(54.96G\) exceeds available HBM \(15.75G\)"):
        plan_lib.make_plan(config, topology)


def test_model_flops_match_a_hand_count():
    """ViT-B/16 at 256 px: 12 blocks of 256 tokens, width 768, MLP 3072."""
    cfg = load_config_file("teacher_vitb").model
    t, d = 256, 768
    block = 2 * t * d * (3 * d + d + 2 * 4 * d) + 4 * t * t * d
    assert flops.backbone_forward(cfg) == 12 * block + 2 * t * 16 * 16 * 3 * d


# -- fake CPU devices: the command end to end ---------------------------------------------------
def _plan_cli(*args):
    return subprocess.run([sys.executable, "-m", "sonichu_jax", "plan", "--quiet", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_plan_on_fake_cpu_devices(tmp_path):
    """The I-JEPA run test_ijepa_sharding trains on 8 fake devices, planned from the
    command line (the same program: compiled once per session); its schedule in epochs is
    counted over the training set the command is given."""
    out = tmp_path / "plan.json"
    sets = [a for kv in IJEPA_8_DEVICES + ["epochs=5"] for a in ("--set", kv)]
    r = _plan_cli("--config", "ijepa_tiny", "--topology", "cpu:8", *sets, "--examples", "16", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "pretrain" in r.stdout and "est. MFU" in r.stdout
    assert "steps: 10 from epochs=5 over 16 training examples (--examples) at a global batch of 8" in r.stdout
    plan = json.loads(out.read_text())["plans"][0]
    assert (plan["devices"], plan["hosts"], plan["mesh"]) == (8, 1, {"data": 4, "fsdp": 2})
    assert (plan["batch_per_chip"], plan["steps"], plan["examples"], plan["examples_assumed"]) == (1, 10, 16, False)
    assert all(plan["memory"][k] > 0 for k in ("parameters", "optimiser", "batch", "temporaries", "total"))
    # the compiler's FLOPs are the model's plus elementwise work
    assert plan["model_flops"] <= plan["compiler_flops"] < 2 * plan["model_flops"]
    assert plan["step_seconds"] is None and plan["mfu"] is None  # no cost model for CPUs


def test_plan_refuses_a_batch_that_does_not_divide(capfd):
    """Called in a process whose JAX already runs with one CPU device, the command re-runs
    itself in a fresh process with three, which refuses the batch of 16."""
    import jax

    from sonichu_jax.cli import main

    assert jax.device_count() < 3
    assert main(["plan", "--quiet", "--config", "teacher_tiny", "--topology", "cpu:3"]) == 2
    err = capfd.readouterr().err
    assert ("on cpu:3: data.batch_size=16 (the global batch) must be a multiple of the mesh's 3 devices "
            "(data=3 x fsdp=1)") in err


# Abstract state, shardings, batch and the lowered step of the card's I-JEPA config on 8
# CPU devices, under an address-space limit far below what allocating them would take
# (the state replicated on 8 devices is 11.5 GB, the batch 1.6 GB): nothing is
# materialised. Compiling the card's step for CPUs takes minutes here; the compile path
# is the tiny configs' test above. The card's schedule is in epochs: with no training set
# given, it is counted over the card's 160,486 frames (78 steps per epoch at batch 2048).
LOWER_CARD = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    from sonichu_jax.train.configlib import load_config_file
    from sonichu_jax.train.plans import make_topology
    from sonichu_jax.train.plans.plan import build_mesh
    from sonichu_jax.train.plans.stages import stage_program
    for name in sys.argv[1:]:
        config = load_config_file(name)
        program = stage_program(config, build_mesh(config, make_topology("cpu:8")))
        program.run.lower()
        print(name, program.stage, program.run.config.steps, program.examples, program.examples_assumed, flush=True)
""")


def test_card_plan_allocates_nothing():
    r = subprocess.run([sys.executable, "-c", LOWER_CARD, "ijepa_vitb"], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ijepa_vitb", "pretrain", str(300 * 78), "160486", "True"]


# -- TPU slices, compiled here when libtpu is installed -------------------------------------------
tpu = pytest.mark.skipif(not tpu_available(), reason="libtpu not installed (pip install -e '.[tpu]')")
TINY = {"ijepa": "ijepa_tiny", "teacher": "teacher_tiny", "distill": "distill_tiny"}
# Smaller still than the tiny configs: the TPU compiler's time grows with the program
# (one deconvolution takes the teacher's compile from 4.4 to 3.2 s here).
SMALLER = {
    "ijepa": ["model.depth=1", "model.width=32", "predictor.depth=1", "predictor.width=16"],
    # heads_major: at 4 tokens the splash kernel's padding to 128 would be most of the
    # step (the I-JEPA plans cover auto's splash kernels).
    "teacher": ["model.depth=1", "model.image_size=(32, 32)", "model.width=32", "model.num_deconv=1",
                "model.deconv_filters=16", "model.attention=heads_major"],
}
SMALLER["distill"] = SMALLER["teacher"]


@pytest.fixture(scope="module")
def tpu_plans():
    from sonichu_jax.train.plans import make_plan, make_topology

    cache = {}

    def get(stage: str, topology: str, batch: int | None = None):
        key = (stage, topology, batch)
        if key not in cache:
            sets = SMALLER[stage] + ([f"data.batch_size={batch}"] if batch is not None else [])
            config = apply_overrides(load_config_file(TINY[stage]), sets)
            cache[key] = make_plan(config, make_topology(topology), num_teachers=2)
        return cache[key]

    return get


# Each stage on one of the two slices (a TPU compile is 5 to 10 s even for these): the
# stage adapters are the same code on every topology, and both slices are covered.
@tpu
@pytest.mark.parametrize("stage, topology", [("ijepa", "v5p:2x2x2"), ("teacher", "v5e:2x2"),
                                             ("distill", "v5p:2x2x2")])
def test_tiny_steps_compile_for_tpu_slices(tpu_plans, stage, topology):
    plan = tpu_plans(stage, topology)
    chips, hosts = {"v5e:2x2": (4, 1), "v5p:2x2x2": (8, 2)}[topology]
    assert (plan.devices, plan.hosts) == (chips, hosts)
    assert plan.device_kind.startswith("TPU v5")
    m = plan.memory
    assert all(m[k] > 0 for k in ("parameters", "optimiser", "batch", "temporaries", "program"))
    assert (m["teachers"] > 0) == (stage == "distill")
    assert m["total"] >= m["parameters"] + m["optimiser"] + m["batch"] + m["temporaries"]
    assert plan.fits and plan.hbm_bytes == CHIPS[topology.split(":")[0]].hbm_bytes
    assert 0 < plan.step_seconds < 1 and 0 < plan.mfu < 1
    assert plan.img_per_s == pytest.approx(plan.global_batch / plan.step_seconds)
    # The compiler's count covers all but I-JEPA's attention (splash kernels, counted at
    # 128 padded tokens where its config has 16 or fewer): the model's FLOPs plus
    # elementwise work.
    assert plan.model_flops <= plan.compiler_flops and (plan.kernel_flops > 0) == (stage == "ijepa")
    assert plan.compiler_flops - plan.kernel_flops < 2 * plan.model_flops
    assert sum(plan.breakdown["by_kind"].values()) == pytest.approx(1.0)


@tpu
def test_auto_attention_compiles_splash_kernels_for_tpu_and_the_plan_prices_them(tpu_plans):
    """Planned on this CPU host for a TPU slice, `model.attention=auto` resolves from the
    target devices (splash kernels in the program); their FLOPs are the hand count."""
    plan = tpu_plans("ijepa", "v5p:2x2x2")
    kernels = plan.breakdown["kernels"]
    assert kernels["calls"] > 0 and plan.kernel_flops == kernels["flops"] > 0
    assert 0 < plan.kernel_seconds < plan.step_seconds


@tpu
def test_splash_kernel_flops_and_bytes_match_a_hand_count():
    """One attention's gradient on a 4-chip slice: the forward kernel (2 matmuls) and the
    fused backward (5), over 2 sequences per chip padded from 182 to 256 tokens."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from sonichu_jax.nn.vit import splash_attention
    from sonichu_jax.train.mesh import make_mesh, on_mesh
    from sonichu_jax.train.plans.breakdown import pallas_kernels
    from sonichu_jax.train.plans.topology import make_topology

    mesh = make_mesh(devices=list(make_topology("v5p:2x2x1").devices))
    b, h, t, hd = 8, 12, 182, 32
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    x = jax.ShapeDtypeStruct((b, h, t, hd), jnp.bfloat16, sharding=batch)
    valid = jax.ShapeDtypeStruct((b, t), jnp.bool_, sharding=batch)

    def loss(q, k, v, valid):
        return jnp.sum(splash_attention(q, k, v, valid).astype(jnp.float32))

    step = jax.jit(on_mesh(jax.grad(loss, (0, 1, 2)), mesh), in_shardings=(batch,) * 4)
    kernels = pallas_kernels(step.lower(x, x, x, valid).compile().as_text())
    per_matmul = 2 * (b // 4) * h * 256 * 256 * hd
    assert kernels["calls"] == 2 and kernels["flops"] == (2 + 5) * per_matmul
    # At least: q, k, v read by both kernels (bf16, tokens minor: no lane padding); o, do,
    # dq, dk and dv (head_dim minor: 32 of HBM's 128 lanes used) written or read once.
    qkv, o = 3 * (b // 4) * h * 256 * hd * 2, (b // 4) * h * 256 * 128 * 2
    assert 2 * qkv + 5 * o <= kernels["bytes"] < 2 * (2 * qkv + 5 * o)


@tpu
def test_doubled_batch_at_most_doubles_batch_and_temporaries(tpu_plans):
    one, two = tpu_plans("teacher", "v5e:2x2"), tpu_plans("teacher", "v5e:2x2", batch=32)
    assert two.memory["batch"] == 2 * one.memory["batch"]
    assert one.memory["temporaries"] < two.memory["temporaries"] <= 2 * one.memory["temporaries"]
    for part in ("parameters", "optimiser", "other_state"):
        assert two.memory[part] == one.memory[part]
    assert two.compiler_flops == pytest.approx(2 * one.compiler_flops, rel=0.05)


@tpu
def test_tpu_plan_refuses_a_batch_that_does_not_divide():
    from sonichu_jax.train.plans import make_plan, make_topology

    config = apply_overrides(load_config_file("teacher_tiny"), ["data.batch_size=20"])
    with pytest.raises(ConfigError, match=r"on v5p:2x2x2: data.batch_size=20 \(the global batch\) must be a multiple "
                                          r"of the mesh's 8 devices \(data=8 x fsdp=1\)"):
        make_plan(config, make_topology("v5p:2x2x2"))


@tpu
def test_libtpu_is_quiet_off_a_tpu_vm():
    """Without a metadata server libtpu printed a dozen error lines on every TPU plan."""
    code = "from sonichu_jax.train.plans import make_topology; print(len(make_topology('v5p:2x2x2').devices))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={k: v for k, v in os.environ.items() if not k.startswith("TPU_")})
    assert r.returncode == 0 and r.stdout.strip() == "8", r.stderr[-2000:]
    assert "could not determine" not in r.stderr and "E0000" not in r.stderr, r.stderr[-2000:]


@tpu
@pytest.mark.parametrize("stage", ["ijepa", "teacher"])
def test_fsdp_moves_parameters_not_activations(stage):
    """With the state split over all eight chips, a step's collectives are the parameter
    gathers and gradient reductions, the same at any batch: activations stay with their
    images (before the blocks were pinned to the batch split, the partitioner moved whole
    batches of activations to match the parameters' split: 137 GiB instead of 447 MiB per
    chip per step for the card's I-JEPA step on v5p-64)."""
    from sonichu_jax.train.plans import make_plan, make_topology

    def collective_bytes(batch):
        sets = SMALLER[stage] + ["mesh.fsdp=8", f"data.batch_size={batch}"]
        plan = make_plan(apply_overrides(load_config_file(TINY[stage]), sets), make_topology("v5p:2x2x2"))
        return plan.breakdown["collective_bytes"]

    small, large = collective_bytes(16), collective_bytes(128)
    assert 0 < small and large <= 1.1 * small, (small, large)


@tpu
def test_collective_matmul_off_leaves_no_windowed_einsums():
    """`mesh.collective_matmul=false` reaches the TPU compiler: the split-state step still
    gathers its parameters but no longer interleaves collectives and matmuls in loops."""
    from sonichu_jax.train.plans import make_topology
    from sonichu_jax.train.plans.plan import build_mesh
    from sonichu_jax.train.plans.stages import stage_program

    def windowed_loops(flag):
        # batch 64: a program no other test compiles (a TPU executable cannot be read back
        # from the session's compilation cache without a TPU)
        sets = SMALLER["ijepa"] + ["mesh.fsdp=8", "data.batch_size=64", f"mesh.collective_matmul={flag}"]
        config = apply_overrides(load_config_file(TINY["ijepa"]), sets)
        text = stage_program(config, build_mesh(config, make_topology("v5p:2x2x2"))).run.lower().compile().as_text()
        return text.count("windowed_dot_general_body"), "all-gather" in text

    assert windowed_loops("true")[0] > 0
    assert windowed_loops("false") == (0, True)


def test_collective_matmul_switch_is_for_tpus_only():
    """Other compilers do not know the TPU's switches: a CPU step gets none, either way."""
    from sonichu_jax.train.mesh import compiler_options, make_mesh

    mesh = make_mesh(devices=jax.devices()[:1])
    assert compiler_options(mesh, False) is None and compiler_options(mesh, True) is None
