"""The two sides of a `bench_large.py` row, each run in its own process: ours
(the library, jitted and vmapped over the batch) and the peer's (Captum, or Zennit
for LRP). A worker reads the row's job file, times the method and writes its
output and timings next to it."""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

COMPLETE = {"ig", "deeplift"}  # sum(map) = f(x) - f(0): the residual is reported
STEPS, SAMPLES, PATCH = 32, 16, 32  # IG steps; SmoothGrad/GradShap samples; window


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory now (`VmRSS`) or at its peak (`VmHWM`)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------
# Our side


def ours_method(name: str, model, arch: str, side: int):
    """`(method, random)`: the library's method for a row."""
    import numpy as np

    import eqx_attr as xa
    from eqx_attr.models import model_spec

    spec = model_spec(arch)
    layer, cam = spec.layer(), dict(spec.layer_options)
    grid = np.asarray(xa.masks.grid((side, side), (PATCH, PATCH)))
    channels = spec.input_shape(model, side)[0]
    table = {
        "gradients": lambda: xa.Gradients(model),
        "ig": lambda: xa.IntegratedGradients(model, n_steps=STEPS),
        "smoothgrad": lambda: xa.SmoothGrad(
            xa.Gradients(model), n_samples=SAMPLES, stdev=0.15, noise="absolute"
        ),
        "deeplift": lambda: xa.DeepLift(model),
        "gradient_shap": lambda: xa.GradientShap(
            model, baseline=xa.baselines.Zeros(), n_samples=SAMPLES
        ),
        "gradcam": lambda: xa.GradCAM(model, layer, resize=None, **cam),
        "guided_gradcam": lambda: xa.GuidedGradCAM(model, layer, resize="nearest"),
        "occlusion": lambda: xa.Occlusion(
            model, window=(channels, PATCH, PATCH), strides=(channels, PATCH, PATCH)
        ),
        "feature_ablation": lambda: xa.FeatureAblation(model, mask=grid),
        "lrp": lambda: xa.LRP(model),
        # The maps at the layer's resolution, as the reference formula gives them.
        "scorecam": lambda: xa.ScoreCAM(model, layer, relu=False, resize=None, **cam),
        "rollout": lambda: xa.AttentionRollout(model, ATTENTION, resize=None),
    }
    return table[name](), name in ("smoothgrad", "gradient_shap")


ATTENTION = lambda m: [b.attn.attn_drop for b in m.blocks]  # noqa: E731


def torch_score_cam(twin, layer, xt, tt, chunk: int = 32):
    """Score-CAM by its formula: each channel of `layer`, upsampled (bilinear,
    half-pixel) and min-max normalised, masks the input; the softmax over channels
    of the masked inputs' target scores weights the channels."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        acts = []
        handle = layer.register_forward_hook(lambda m, i, o: acts.append(o))
        try:
            twin(xt)
        finally:
            handle.remove()
        a = acts[0]
        maps = []
        for x, t, ab in zip(xt, tt, a, strict=True):
            up = F.interpolate(ab[None], size=x.shape[-2:], mode="bilinear")[0]
            lo = up.amin(dim=(1, 2), keepdim=True)
            hi = up.amax(dim=(1, 2), keepdim=True)
            masks = torch.where(hi > lo, (up - lo) / (hi - lo), torch.zeros_like(up))
            scores = torch.cat([
                twin(x[None] * masks[k : k + chunk, None])[:, t]
                for k in range(0, len(masks), chunk)
            ])  # fmt: skip
            maps.append(torch.einsum("k,khw->hw", scores.softmax(0), ab))
        return torch.stack(maps)


def run_ours(job: dict, repeats: int) -> dict:
    import jax
    import numpy as np

    import eqx_attr as xa
    from eqx_attr._batch import batch_runner

    if job.get("cache"):
        xa.enable_compile_cache(job["cache"])
    model = xa.models.load_pretrained(job["weights"], job["arch"], **job["load_kw"])
    with np.load(job["data"], allow_pickle=False) as d:
        xs, ts = jax.numpy.asarray(d["xs"]), jax.numpy.asarray(d["ts"])
    method, random = ours_method(job["method"], model, job["arch"], xs.shape[-1])
    keys = jax.random.split(jax.random.key(3), len(xs)) if random else None
    run = batch_runner()
    call = lambda: jax.block_until_ready(run(method, xs, ts, keys))
    res = timed(call, repeats, lambda out: np.asarray(out))
    if job["method"] in COMPLETE:  # f(x) - f(0) per example, for completeness
        f = jax.vmap(lambda x, t: model(x)[t] - model(jax.numpy.zeros_like(x))[t])
        res["deltas"] = np.asarray(f(xs, ts)).tolist()
    return res


# ---------------------------------------------------------------------------------
# The peer's side (Captum, or Zennit for LRP)


def peer_twin(job: dict):
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    from eqx_attr import torch_twins

    twin = getattr(torch_twins, job["twin_class"])(**job["config"])
    state = {
        k: torch.from_numpy(np.array(v)) for k, v in load_file(job["weights"]).items()
    }
    twin.load_state_dict(state)
    return twin.eval()


def peer_method(job: dict, twin):
    """A zero-argument call of the peer on the row's batch."""
    import captum.attr as ca
    import numpy as np
    import torch

    from eqx_attr.models import model_spec, where_from_path

    with np.load(job["data"], allow_pickle=False) as d:
        xt = torch.from_numpy(np.array(d["xs"]))
        tt = torch.from_numpy(np.array(d["ts"])).long()
    spec, name = model_spec(job["arch"]), job["method"]
    if name in ("gradcam", "guided_gradcam"):
        if spec.layer_options.get("layout") == "tokens":
            from _scenarios import _TokensAsGrid

            parent, _, attr = spec.cam_layer.rpartition(".")
            owner = where_from_path(parent)(twin)
            wrapped = _TokensAsGrid.wrap(getattr(owner, attr), spec.n_prefix_tokens)
            setattr(owner, attr, wrapped)
            layer = wrapped.grid
        else:
            layer = where_from_path(spec.cam_layer)(twin)
        if name == "gradcam":
            lgc = ca.LayerGradCam(twin, layer)
            return lambda: lgc.attribute(xt, target=tt, relu_attributions=True)[:, 0]
        ggc = ca.GuidedGradCam(twin, layer)
        return lambda: ggc.attribute(xt, target=tt, interpolate_mode="nearest")
    if name == "lrp":
        return zennit_lrp(twin, xt, tt, job["arch"])
    if name == "scorecam":
        layer = where_from_path(spec.cam_layer)(twin)
        return lambda: torch_score_cam(twin, layer, xt, tt)
    if name == "rollout":
        from bench_transformer import torch_rollout

        return lambda: torch_rollout(twin, xt)
    zero = torch.zeros_like(xt[:1])
    calls = {
        "gradients": lambda m: m.attribute(xt, target=tt, abs=False),
        "ig": lambda m: m.attribute(xt, target=tt, n_steps=STEPS),
        "smoothgrad": lambda m: m.attribute(
            xt,
            nt_type="smoothgrad",
            nt_samples=SAMPLES,
            stdevs=0.15,
            target=tt,
            abs=False,
        ),  # fmt: skip
        "deeplift": lambda m: m.attribute(xt, target=tt),
        "gradient_shap": lambda m: m.attribute(
            xt, baselines=zero, n_samples=SAMPLES, stdevs=0.0, target=tt
        ),
        "occlusion": lambda m: m.attribute(
            xt,
            sliding_window_shapes=(xt.shape[1], PATCH, PATCH),
            strides=(xt.shape[1], PATCH, PATCH),
            target=tt,
        ),  # fmt: skip
        "feature_ablation": lambda m: m.attribute(
            xt, target=tt, feature_mask=torch.from_numpy(job_grid(xt.shape[-1]))
        ),
    }
    cls = {
        "gradients": lambda: ca.Saliency(twin),
        "ig": lambda: ca.IntegratedGradients(twin),
        "smoothgrad": lambda: ca.NoiseTunnel(ca.Saliency(twin)),
        "deeplift": lambda: ca.DeepLift(twin),
        "gradient_shap": lambda: ca.GradientShap(twin),
        "occlusion": lambda: ca.Occlusion(twin),
        "feature_ablation": lambda: ca.FeatureAblation(twin),
    }[name]()
    return lambda: calls[name](cls)


def job_grid(side: int):
    import numpy as np

    cells = np.arange(side) // PATCH
    n = -(-side // PATCH)
    return (cells[:, None] * n + cells[None, :]).astype(np.int64)[None, None]


def zennit_lrp(twin, xt, tt, arch: str):
    """Zennit's EpsilonPlusFlat (ResNet: its canonizer; VGG: none needed)."""
    import torch
    import zennit.composites as zc
    from zennit.torchvision import ResNetCanonizer

    from eqx_attr.torch_twins import BasicBlock, Bottleneck

    canonizers = []
    if arch.startswith("resnet"):
        for m in twin.modules():  # Zennit's canonizer calls a block's `relu`
            if isinstance(m, (BasicBlock, Bottleneck)):
                m.relu = m.relu1
        canonizers = [ResNetCanonizer()]
    comp = zc.EpsilonPlusFlat(canonizers=canonizers)

    def call():
        x = xt.clone().requires_grad_(True)
        with comp.context(twin) as m:
            out = m(x)
            mask = torch.nn.functional.one_hot(tt, out.shape[1]).to(out)
            (g,) = torch.autograd.grad(out, x, grad_outputs=out * mask)
        return g

    return call


def run_peer(job: dict, repeats: int, threads: int) -> dict:
    import captum.attr  # noqa: F401
    import torch

    before = rss_mib()
    from _torchvision_stub import install

    install()  # before Zennit is imported; imports the twins (and so JAX)
    # The twins' module imports JAX, which a Captum user would not have loaded:
    # its resident pages are taken off the peer's peak.
    jax_import = rss_mib() - before
    torch.set_num_threads(threads)
    call = peer_method(job, peer_twin(job))
    res = timed(call, repeats, lambda out: out.detach().numpy())
    return res | {
        "peak_mib": res["peak_mib"] - jax_import,
        "jax_import_mib": jax_import,
    }


# ---------------------------------------------------------------------------------
# Both sides


def timed(call, repeats: int, to_numpy) -> dict:
    import numpy as np

    floor = rss_mib()
    t0 = time.perf_counter()
    out = call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "steady_s": statistics.median(times) if times else first,
            "floor_mib": floor, "peak_mib": rss_mib("VmHWM"),
            "out": np.asarray(to_numpy(out))}  # fmt: skip


def worker(a: argparse.Namespace) -> None:
    import numpy as np

    job = json.loads(pathlib.Path(a.job).read_text())
    if a.worker == "ours":
        res = run_ours(job, a.repeats)
    else:
        res = run_peer(job, a.repeats, a.threads)
    np.save(job[f"{a.worker}_out"], res.pop("out"), allow_pickle=False)
    pathlib.Path(job[f"{a.worker}_json"]).write_text(json.dumps(res))
