"""8 fake CPU devices: the sharded I-JEPA step (batch over all 8 devices, parameters and
optimiser state split over a 2-way fsdp axis) computes what the single-device step
computes. Runs in a subprocess because the device count is fixed when JAX initialises."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from sonichu_jax.data.ijepa_masks import MultiBlockMaskSampler
    from sonichu_jax.train import ijepa, mesh as mesh_lib
    from sonichu_jax.train.configlib import apply_overrides, load_config_file
    from sonichu_jax.train.plans.stages import abstract_run
    from train_util import IJEPA_8_DEVICES

    assert jax.device_count() == 8
    # The run test_plan plans on cpu:8 (there with its schedule in epochs: the same 10 steps).
    config = apply_overrides(load_config_file("ijepa_tiny"), IJEPA_8_DEVICES + ["steps=10"])
    sampler = MultiBlockMaskSampler(config.masks, config.model.grid, seed=0)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(8, 64, 64, 3)).astype(np.float32), "skipped": np.zeros(8, np.int32),
                **sampler.sample(i, 8)} for i in range(3)]
    meshes = {
        "single": jax.make_mesh((1, 1), mesh_lib.BATCH_AXES, devices=jax.devices()[:1],
                                axis_types=(jax.sharding.AxisType.Auto,) * 2),
        "data4_fsdp2": mesh_lib.make_mesh(data=4, fsdp=2),
    }
    results = {}
    for name, mesh in meshes.items():
        # Compiled ahead of time from abstract inputs only (what a pod plan does): nothing
        # is allocated until init_state, and the executable is the one the run uses.
        live = len(jax.live_arrays())
        pretrainer = abstract_run(config, mesh)
        step = pretrainer.lower().compile()
        assert len(jax.live_arrays()) == live, "building or compiling the plan allocated arrays"
        state = pretrainer.init_state()
        losses = []
        for b in batches:
            state, metrics = step(state, mesh_lib.global_batch(mesh, b))
            losses.append(float(metrics["loss"]))
        leaf = state.params["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"]
        if name == "data4_fsdp2":
            assert "fsdp" in str(leaf.sharding.spec), leaf.sharding
        results[name] = (np.array(losses), jax.device_get((state.params, state.target)))
    ref_losses, ref_state = results["single"]
    for name in ("data4_fsdp2",):
        losses, st = results[name]
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(ref_state)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    print("OK", ref_losses)
    """
)


def test_sharded_step_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, tests_dir], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "OK" in proc.stdout
