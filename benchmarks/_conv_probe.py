"""Where the time goes in conv nets on CPU: layouts, XLA flags, forward vs backward.

```
python benchmarks/_conv_probe.py         # each XLA flag set below, one subprocess each
python benchmarks/_conv_probe.py --one   # only the current XLA_FLAGS
```

For each XLA flag set it times, against PyTorch on the same weights:

- two stacked 3x3 convolutions (8 x 64 x 56 x 56, ResNet-18's layer1 size), forward
  and input gradient, written with `jax.lax.conv_general_dilated` in NCHW/OIHW
  (Equinox's layout) and in NHWC/HWIO;
- ResNet-18 (batch 8, 224 x 224): forward, and the input gradient of one logit per
  example (what Gradients/IG cost per path point).

Times are the minimum and median of 7 calls, in ms. Results:
`benchmarks/results/conv_probe.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

FLAG_SETS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_thunk_runtime=false",
)


def _time(fn, k: int = 7) -> tuple[float, float]:
    import numpy as np

    fn()
    fn()
    ts = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return round(float(np.min(ts)) * 1e3, 1), round(float(np.median(ts)) * 1e3, 1)


def probe() -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    import eqx_attr as xa
    from eqx_attr.torch_twins import to_torch

    torch.set_num_threads(os.cpu_count() or 1)
    out: dict = {"xla_flags": os.environ.get("XLA_FLAGS", "")}

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64, 56, 56), np.float32)
    w = 0.05 * rng.standard_normal((64, 64, 3, 3), np.float32)
    for dn in ("NCHW", "NHWC"):
        if dn == "NCHW":
            xx, ww, spec = jnp.asarray(x), jnp.asarray(w), ("NCHW", "OIHW", "NCHW")
        else:
            xx = jnp.asarray(x.transpose(0, 2, 3, 1))
            ww = jnp.asarray(w.transpose(2, 3, 1, 0))
            spec = ("NHWC", "HWIO", "NHWC")

        def conv(a, ww=ww, spec=spec):
            return jax.lax.conv_general_dilated(
                a, ww, (1, 1), "SAME", dimension_numbers=spec
            )

        fwd = jax.jit(lambda a, conv=conv: conv(jax.nn.relu(conv(a))))
        grad = jax.jit(
            jax.grad(lambda a, conv=conv: jnp.sum(conv(jax.nn.relu(conv(a))) ** 2))
        )
        out[f"2conv_{dn}_fwd"] = _time(lambda: fwd(xx).block_until_ready())
        out[f"2conv_{dn}_grad"] = _time(lambda: grad(xx).block_until_ready())
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w)

    def tconv(a):
        return torch.nn.functional.conv2d(a, tw, padding=1)

    def t_fwd():
        with torch.no_grad():
            tconv(torch.relu(tconv(tx)))

    def t_grad():
        torch.autograd.grad((tconv(torch.relu(tconv(tx))) ** 2).sum(), tx)

    out["2conv_torch_fwd"] = _time(t_fwd)
    out["2conv_torch_grad"] = _time(t_grad)

    model = xa.models.resnet18(key=jax.random.key(0))
    twin = to_torch(model)
    xs = jax.random.normal(jax.random.key(1), (8, 3, 224, 224))
    ts = jnp.arange(8)
    fwd = eqx.filter_jit(lambda m, xs: jax.vmap(m)(xs))
    grad = eqx.filter_jit(
        lambda m, xs, ts: eqx.filter_vmap(xa.Gradients(m))(xs, ts)  # type: ignore
    )
    out["resnet18_fwd"] = _time(lambda: fwd(model, xs).block_until_ready(), k=3)
    out["resnet18_grad"] = _time(lambda: grad(model, xs, ts).block_until_ready(), k=3)
    txs = torch.tensor(np.asarray(xs), requires_grad=True)
    tts = torch.arange(8)

    def r_fwd():
        with torch.no_grad():
            twin(txs)

    def r_grad():
        y = twin(txs).gather(1, tts[:, None]).sum()
        torch.autograd.grad(y, txs)

    out["resnet18_torch_fwd"] = _time(r_fwd, k=3)
    out["resnet18_torch_grad"] = _time(r_grad, k=3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="conv-net CPU timing probe")
    p.add_argument("--one", action="store_true", help="only the current XLA_FLAGS")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.one:
        print(json.dumps(probe()))
        return 0
    rows = []
    for flags in FLAG_SETS:
        env = dict(os.environ, XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="3")
        res = subprocess.run(
            [sys.executable, __file__, "--one"], env=env, capture_output=True, text=True
        )
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        if res.returncode != 0 or not lines:
            rows.append({"xla_flags": flags, "error": res.stderr[-500:]})
        else:
            rows.append(json.loads(lines[-1]))
        print(json.dumps(rows[-1]), flush=True)
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "conv_probe.json"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
