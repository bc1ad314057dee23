"""The sonichu-jax ViT inside your own NNX module, sharded over devices with the standard
Flax calls (docs/research.md, "Sharding your own module").

Our parameters carry their fsdp layout as partition metadata (the mesh axis ``fsdp`` on
each array's largest dimension), so `nnx.get_partition_spec` gives a sharding for the
whole module, your own layers included if you annotate them the same way. Here: a
regressor (our encoder, mean-pooled, then a linear layer of ours) created directly
sharded over a 2-device ``fsdp`` mesh, trained a few AdamW steps, and compared with the
same steps on a one-device mesh.

    python docs/examples/own_module.py        # 2 fake CPU devices unless XLA_FLAGS says otherwise
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")  # before JAX starts
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from sonichu_jax import tiny_config  # noqa: E402
from sonichu_jax.nn.vit import VisionTransformer  # noqa: E402


class Regressor(nnx.Module):
    """Our encoder's (B, N, D) tokens, averaged, then a linear layer to ``outputs`` numbers."""

    def __init__(self, cfg, outputs: int, *, rngs: nnx.Rngs):
        self.encoder = VisionTransformer(cfg, rngs=rngs)
        # Your layer, annotated the Flax way: its kernel split over fsdp by rows, like ours.
        self.head = nnx.Linear(cfg.width, outputs, rngs=rngs,
                               kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("fsdp", None)))

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head(self.encoder(images).mean(axis=1))


def create(cfg) -> tuple[Regressor, nnx.Optimizer]:
    """Model and optimiser, every array placed as its metadata says (the Flax recipe:
    constrain the state to `nnx.get_partition_spec` inside the jitted constructor)."""
    model = Regressor(cfg, 6, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    for node in (model, optimizer):
        state = nnx.state(node)
        nnx.update(node, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
    return model, optimizer


def loss_fn(model: Regressor, images, targets):
    return jnp.mean((model(images) - targets) ** 2)


@nnx.jit
def train_step(model, optimizer, images, targets):
    loss, grads = nnx.value_and_grad(loss_fn)(model, images, targets)
    optimizer.update(model, grads)
    return loss


def main() -> dict:
    cfg = tiny_config()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, *cfg.image_size, 3)).astype(np.float32)
    targets = rng.normal(size=(8, 6)).astype(np.float32)

    runs = {}
    for name, devices in (("sharded", jax.devices()), ("one_device", jax.devices()[:1])):
        mesh = jax.make_mesh((len(devices),), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
        with jax.set_mesh(mesh):
            model, optimizer = nnx.jit(create, static_argnums=0)(cfg)
            batch = NamedSharding(mesh, P("fsdp"))  # the batch is split over the same axis
            x, y = jax.device_put(images, batch), jax.device_put(targets, batch)
            losses = [float(train_step(model, optimizer, x, y)) for _ in range(3)]
            runs[name] = (model, losses, np.asarray(model(x)))
    model, losses, out = runs["sharded"]
    fc1 = model.encoder.blocks[0].mlp.fc1.kernel
    return {
        "devices": jax.device_count(),
        "fc1_spec": str(fc1.sharding.spec),
        "fc1_shard_shape": list(fc1.addressable_shards[0].data.shape),
        "fc1_shape": list(fc1.shape),
        "head_spec": str(model.head.kernel.sharding.spec),
        "losses": losses,
        "one_device_losses": runs["one_device"][1],
        "max_output_difference": float(np.abs(out - runs["one_device"][2]).max()),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
