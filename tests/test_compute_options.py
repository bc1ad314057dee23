"""Compute options (ModelConfig.remat, .attention, .head_conv) change how a model computes,
never what: each variant gives the default path's outputs and gradients (float32, tight
tolerance), with the same parameter names and shapes. Pallas's splash attention runs in
interpret mode here (no TPU), which executes the kernel's own code on CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sonichu_jax.config import COMPUTE_FIELDS, ModelConfig
from sonichu_jax.errors import ConfigError
from sonichu_jax.nn.predictor import Predictor
from sonichu_jax.nn.vit import VisionTransformer
from sonichu_jax.nn.vitpose import ClassicHead
from tests.train_util import tiny


def _value_and_grads(module: nnx.Module, inputs, apply):
    """Output of ``apply(module, inputs)`` and the gradients of a loss of it with respect
    to the module's parameters and ``inputs``; the module is merged inside the traced
    function, as the training steps do."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(p, x):
        out = apply(nnx.merge(graphdef, p, rest), x)
        return jnp.sum(jnp.sin(3.0 * out)), out  # a gradient that differs per element

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, inputs)
    return out, grads


def _assert_same(variant: nnx.Module, reference: nnx.Module, inputs, apply):
    assert jax.tree.map(jnp.shape, nnx.state(variant)) == jax.tree.map(jnp.shape, nnx.state(reference))
    nnx.update(variant, nnx.state(reference))
    out_ref, grads_ref = _value_and_grads(reference, inputs, apply)
    out, grads = _value_and_grads(variant, inputs, apply)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_ref))
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5 * scale)


# The splash encoder is slow (its kernels interpreted); the predictor test below covers the same path.
@pytest.mark.parametrize("changes", [{"attention": "heads_major"},
                                     pytest.param({"attention": "splash"}, marks=pytest.mark.slow),
                                     {"remat": "block_save_dots"}],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_encoder_variant_matches_default_path(changes):
    """The context-encoder path: a kept subset of tokens, some of them padding."""
    cfg = tiny(depth=1)
    images = jax.random.normal(jax.random.key(1), (3, *cfg.image_size, 3))
    keep = jnp.asarray(np.random.default_rng(0).integers(0, cfg.num_patches, (3, 10)))
    valid = jnp.arange(10)[None] < jnp.asarray([[10], [7], [3]])

    def apply(m, x):
        return jnp.where(valid[..., None], m(x, keep=keep, valid=valid), 0.0)

    _assert_same(VisionTransformer(cfg.replace(**changes), rngs=nnx.Rngs(1)), VisionTransformer(cfg, rngs=nnx.Rngs(0)),
                 images, apply)


def test_head_conv_variant_matches_default_path():
    cfg = tiny(num_deconv=1)
    feats = jax.random.normal(jax.random.key(2), (2, *cfg.grid, cfg.width))

    def apply(m, x):
        m.eval()  # BatchNorm on its running statistics: a function of the parameters only
        return m(x)

    _assert_same(ClassicHead(cfg.replace(head_conv="conv"), 3, rngs=nnx.Rngs(1)), ClassicHead(cfg, 3, rngs=nnx.Rngs(0)),
                 feats, apply)


@pytest.mark.parametrize("attention", ["heads_major", "splash"])
def test_predictor_attention_variant_with_padding_matches(attention):
    """I-JEPA's predictor on padded (static-shape) contexts and targets."""
    cfg = tiny(width=32, num_heads=2)
    rng = np.random.default_rng(0)
    ctx = jnp.asarray(rng.normal(size=(3, 6, 32)), jnp.float32)
    ctx_idx, tgt_idx = jnp.asarray(rng.integers(0, 16, (3, 6))), jnp.asarray(rng.integers(0, 16, (3, 4)))
    ctx_valid = jnp.arange(6)[None] < jnp.asarray([[6], [4], [2]])
    tgt_valid = jnp.arange(4)[None] < jnp.asarray([[4], [3], [1]])

    def apply(m, c):
        return jnp.where(tgt_valid[..., None], m(c, ctx_idx, tgt_idx, ctx_valid, tgt_valid), 0.0)

    _assert_same(Predictor(cfg.replace(attention=attention), 16, 1, rngs=nnx.Rngs(1)),
                 Predictor(cfg, 16, 1, rngs=nnx.Rngs(0)), ctx, apply)


def _numpy_attention(q, k, v, valid):
    """Softmax attention in float64 numpy: the independent reference."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bnth,bnsh->bnts", q, k)
    if valid is not None:
        logits = np.where(np.asarray(valid)[:, None, None, :], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bnts,bnsh->bnth", probs / probs.sum(-1, keepdims=True), v)


# (batch, heads, tokens, head dim): the predictor's 32-wide heads and the encoder's 64-wide
# ones, token counts that the kernel pads to 128 and 256 (with and without padding tokens).
@pytest.mark.parametrize("shape, padded", [((2, 3, 40, 32), True), ((1, 2, 130, 64), False), ((2, 1, 128, 64), False)],
                         ids=str)
def test_splash_kernel_matches_softmax_attention(shape, padded):
    """Values against float64 numpy; gradients (q, k, v) against the plain float32 path,
    over the real queries (the outputs at padding positions are meaningless)."""
    from sonichu_jax.nn.vit import softmax_attention, splash_attention

    b, _, t, hd = shape
    rng = np.random.default_rng(t)
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
    q = q * hd**-0.5
    valid = jnp.asarray(np.arange(t)[None] < rng.integers(t // 4, t, (b, 1))) if padded else None
    real = jnp.ones((b, 1, t, 1), bool) if valid is None else valid[:, None, :, None]

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.where(real, jnp.sin(3.0 * fn(q, k, v, valid)), 0.0))

    out = jax.jit(splash_attention)(q, k, v, valid)
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, _numpy_attention(q, k, v, valid), 0),
                               rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(loss(splash_attention), argnums=(0, 1, 2)))(q, k, v)
    expected = jax.jit(jax.grad(loss(softmax_attention), argnums=(0, 1, 2)))(q, k, v)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * float(jnp.abs(e).max()))


SHARDED_SPLASH = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from sonichu_jax.nn.vit import softmax_attention, splash_attention
from sonichu_jax.train.mesh import make_mesh, on_mesh
mesh = make_mesh(data=2, fsdp=2)
batch = NamedSharding(mesh, P(("data", "fsdp")))
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.normal(size=(4, 2, 24, 32)), jnp.float32) for _ in range(3))
valid = jnp.asarray(np.arange(24)[None] < np.array([[24], [5], [17], [9]]))
loss = lambda fn: lambda q, k, v: jnp.sum(jnp.where(valid[:, None, :, None], jnp.sin(fn(q, k, v, valid)), 0.0))
sharded = jax.jit(on_mesh(jax.grad(loss(splash_attention), (0, 1, 2)), mesh), in_shardings=(batch,) * 3)(q, k, v)
plain = jax.grad(loss(softmax_attention), (0, 1, 2))(q, k, v)
print(max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in zip(sharded, plain)))
"""


def test_splash_runs_per_device_on_a_mesh():
    """On a mesh of 4 (fake CPU) devices the kernel runs on each device's share of the
    batch (shard_map), each sequence with its own padding: gradients as the plain path's."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-c", SHARDED_SPLASH], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 1e-5


def test_auto_attention_resolves_for_the_platform_compiled_for():
    """`auto` follows the mesh a step is traced under, not the default backend: the plan
    traces on a CPU host for TPU devices."""
    from sonichu_jax.nn import vit
    from sonichu_jax.train.mesh import make_mesh, on_mesh

    assert vit.resolve_attention("auto", "tpu") == "splash"
    assert vit.resolve_attention("auto", "cpu") == "heads_major"
    assert vit.resolve_attention("auto", "gpu") == "auto"  # jax.nn.dot_product_attention picks (cuDNN)
    assert vit.resolve_attention("xla", "tpu") == "xla"
    assert vit.target_platform() == jax.default_backend() == "cpu"  # no mesh: the default backend
    seen = []
    mesh = make_mesh(devices=jax.devices()[:1])
    jax.eval_shape(on_mesh(lambda: seen.append(vit.target_platform()), mesh))
    tpu = jax.sharding.AbstractDevice(device_kind="TPU v5", num_cores=None, platform="tpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("data",), abstract_device=tpu)):
        seen.append(vit.target_platform())
    assert seen == ["cpu", "tpu"]


def test_compute_options_are_validated():
    with pytest.raises(ConfigError, match="attention must be one of"):
        ModelConfig(attention="flash")
    with pytest.raises(ConfigError, match="remat must be one of"):
        ModelConfig(remat="everything")
    with pytest.raises(ConfigError, match="head_conv must be one of"):
        ModelConfig(head_conv="fft")
    assert set(COMPUTE_FIELDS) == {"dtype", "remat", "attention", "head_conv"}


# -- compute options are not architecture -------------------------------------------------------
COMPUTE = {"dtype": "bfloat16", "attention": "heads_major", "remat": "block", "head_conv": "conv"}


def test_teachers_compute_as_the_student(tmp_path):
    """Teachers saved with other compute options (one default, one with heads_major) load
    with all four of the student's and keep their weights: the run's stacked teachers have
    the graph (and shapes) the distillation plan compiles for that student."""
    from conftest import numpy_model
    from sonichu_jax.checkpoint import flat_state
    from sonichu_jax.train.distill import abstract_teachers, load_teachers, stack_teachers
    from sonichu_jax.train.mesh import make_mesh

    cfg = tiny(depth=1)
    saved = [numpy_model(cfg, seed=1), numpy_model(cfg.replace(attention="heads_major"), seed=2)]
    paths = [str(tmp_path / f"t{i}") for i in range(2)]
    for model, path in zip(saved, paths):
        model.save_pretrained(path)
    student = cfg.replace(**COMPUTE)
    teachers = load_teachers(paths, student)
    for model, original in zip(teachers, saved):
        assert model.cfg == student
        a, b = flat_state(model), flat_state(original)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    graphdef, params, rest = stack_teachers(teachers)
    planned_graphdef, planned = abstract_teachers(student, 2, make_mesh(devices=jax.devices()[:1]))
    assert graphdef == planned_graphdef
    assert jax.tree.map(np.shape, {"params": params, "rest": rest}) == jax.tree.map(lambda x: x.shape, planned)


def test_pretrained_init_ignores_compute_options(tmp_path):
    """``init.kind=pretrained`` compares the architecture only: a checkpoint saved with
    the default compute options starts a run configured with others; a different depth
    is still refused."""
    from conftest import numpy_model
    from sonichu_jax.train.configlib import InitConfig, TeacherConfig
    from sonichu_jax.train.supervised import model_initializer

    cfg = tiny()
    numpy_model(cfg).save_pretrained(tmp_path / "ckpt")
    init = InitConfig(kind="pretrained", path=str(tmp_path / "ckpt"))
    make_model, args = model_initializer(TeacherConfig(model=cfg.replace(**COMPUTE), init=init))
    assert jax.tree.map(jnp.shape, nnx.state(make_model(*args))) == jax.tree.map(jnp.shape, nnx.state(numpy_model(cfg)))
    with pytest.raises(ConfigError, match=r"does not match the configured model: depth: 3 vs 2"):
        model_initializer(TeacherConfig(model=cfg.replace(depth=3, **COMPUTE), init=init))
