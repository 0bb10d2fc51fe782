"""Which side of a float32 gradient difference is right: both against float64.

The large benchmark found our VGG-16 input gradient 6.8e-2 (relative to the
largest value) away from Captum's on identical random weights. This script
computes the same gradient four ways, ours and the PyTorch twin's, each in float32
and in float64, and prints every float32 map's distance to each float64 one
(max |difference| / max |float64 map|). If both float32 maps are as far from
float64 as from each other, the difference is float32 rounding of a deep ReLU
network (a pre-activation near zero flips a unit), not an error of either side.

    python benchmarks/gradient_float64.py --model vgg16 --side 224
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import eqx_attr as xa  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vgg16")
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--target", type=int, default=3)
    args = p.parse_args()

    import torch

    from eqx_attr.torch_twins import to_torch

    spec = xa.models.model_spec(args.model)
    model = spec.factory(key=jax.random.key(0))
    twin = to_torch(model)
    shape = spec.input_shape(model, args.side)
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)

    def cast(tree, dtype):
        return jax.tree.map(
            lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree
        )

    maps = {}
    for dtype, name in ((jnp.float32, "32"), (jnp.float64, "64")):
        m, xd = cast(model, dtype), jnp.asarray(x, dtype)
        maps[f"ours f{name}"] = np.asarray(xa.Gradients(m)(xd, args.target))
        tw = twin.double() if name == "64" else twin.float()
        xt = torch.from_numpy(np.asarray(xd)).unsqueeze(0).requires_grad_(True)
        tw(xt)[0, args.target].backward()
        maps[f"torch f{name}"] = xt.grad[0].numpy()

    def dist(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    print(f"{args.model} at {args.side}px, target {args.target}: max |a - b| / max |b|")
    pairs = [
        (a, b) for a in ("ours f32", "torch f32") for b in ("ours f64", "torch f64")
    ]
    pairs += [("ours f32", "torch f32"), ("ours f64", "torch f64")]
    for a, b in pairs:
        print(f"  {a:10s} vs {b:10s} {dist(maps[a], maps[b]):.1e}")


if __name__ == "__main__":
    main()
