"""Steps that `IntegratedGradients(n_steps="auto", rtol=...)` uses.

For each model and `rtol`, the path points per example that the nested trapezoid
ladder (9, 17, 33, ... points) needed to bring the completeness residual
`|sum(a) - (f(x) - f(0))|` below `rtol * |f(x) - f(0)|` (cap: `max_steps=257`),
over a few inputs and targets. No timings: the counts do not depend on the
machine (beyond float rounding near a level's threshold).

    .venv/bin/python benchmarks/ig_auto_steps.py            # random weights
    .venv/bin/python benchmarks/ig_auto_steps.py --trained  # + trained SmallCNN
"""

import argparse

import equinox as eqx
import jax
import numpy as np

import eqx_attr as xa


def steps_used(model, xs, targets, rtol):
    ig = xa.IntegratedGradients(model, n_steps="auto", rtol=rtol, max_steps=257)
    info = eqx.filter_jit(eqx.filter_vmap(lambda x, t: ig.attribute_with_info(x, t)))
    _, steps, residual = info(xs, targets)
    return np.asarray(steps), np.asarray(residual)


def main() -> None:
    parser = argparse.ArgumentParser(description='Steps that n_steps="auto" uses.')
    parser.add_argument("--trained", action="store_true")
    parser.add_argument("--n", type=int, default=8, help="inputs per model")
    args = parser.parse_args()
    key = jax.random.key(0)
    n = args.n
    models = [
        ("SmallCNN, random", xa.models.SmallCNN(key=key), (1, 28, 28)),
        (
            "ResNet-18 3x64x64, random",
            xa.models.resnet18(n_classes=10, key=key),
            (3, 64, 64),
        ),
    ]
    if args.trained:
        trained = xa.training.pretrained_small_cnn(progress=False, verbose=False)
        models.insert(1, ("SmallCNN, trained (MNIST)", trained, (1, 28, 28)))
    print("| model | rtol | steps used: median (min-max) | reached rtol |")
    print("|---|---|---|---|")
    for name, model, shape in models:
        xs = jax.random.uniform(jax.random.key(1), (n, *shape))
        targets = np.arange(n) % 10
        for rtol in (1e-2, 1e-3):
            steps, _ = steps_used(model, xs, targets, rtol)
            reached = int(np.sum(steps < 257))
            print(
                f"| {name} | {rtol:g} | {int(np.median(steps))} "
                f"({steps.min()}-{steps.max()}) | {reached}/{n} below the cap |"
            )


if __name__ == "__main__":
    main()
