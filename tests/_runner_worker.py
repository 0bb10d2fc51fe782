"""Subprocess side of tests/test_runner_multi.py (not a test module).

`python tests/_runner_worker.py MODE DIR`: reads `DIR/w.safetensors`,
`DIR/xs.npy` and `DIR/ts.npy`, and writes a store under DIR.
- `devices`: on 4 forced CPU devices (XLA_FLAGS set by the caller);
- `slow`: reads one row per second (a slow disk), to be killed mid-run;
    batches of 1 row, chunks of 2.
"""

import json
import sys
import time

mode, folder = sys.argv[1], sys.argv[2]

import eqx_attr as xa  # noqa: E402

lazy = {name: name in sys.modules for name in ("zarr", "tqdm")}

import jax  # noqa: E402
import numpy as np  # noqa: E402


class SlowRows:
    def __init__(self, data):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype

    def __getitem__(self, index):
        if isinstance(index, slice):
            time.sleep(1.0)
        return self.data[index]


model = xa.models.load_pretrained(f"{folder}/w.safetensors", "small_cnn")
xs, ts = np.load(f"{folder}/xs.npy"), np.load(f"{folder}/ts.npy")
method = xa.Gradients(model)
if mode == "devices":
    group = xa.explain_dataset(
        method, xs, ts, out=f"{folder}/devices.zarr", batch_size=3, progress=False
    )
    info = {"lazy_imports": lazy, "n_devices": len(jax.local_devices())}
    info["meta"] = dict(group.attrs["eqx_attr"])
    with open(f"{folder}/devices.json", "w") as f:
        json.dump(info, f, default=str)
elif mode == "slow":
    xa.explain_dataset(
        method,
        SlowRows(xs),
        ts,
        out=f"{folder}/killed.zarr",
        batch_size=1,
        chunk_rows=2,  # chunks of two batches: killed between or inside them
        progress=False,
    )
else:
    raise SystemExit(f"unknown mode {mode}")
