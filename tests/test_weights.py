"""Weights: PyTorch state dicts (torchvision / timm layouts), save/load, bad files.

The PyTorch side is `eqx_attr.torch_twins`: hand-written twins whose
`state_dict()` keys are torchvision's and timm's. A twin's random weights are
exported to safetensors and loaded through the same path a real checkpoint
takes; the logits of both frameworks must then agree to 1e-4.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import eqx_attr.models as M
from eqx_attr import torch_twins as T

from .helpers import assert_close, tree_allclose

KEY = jax.random.key(0)


def same_arrays(a, b) -> bool:
    """Identical array leaves (and structure); functions in the tree are skipped.

    Exact: saved and loaded weights are copies, never recomputed."""
    return tree_allclose(
        eqx.filter(a, eqx.is_array), eqx.filter(b, eqx.is_array), rtol=0, atol=0
    )


def randomise_batch_norms(twin: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Fresh batch norms are the identity; non-trivial statistics make the test
    # sensitive to how running_mean / running_var / weight / bias are mapped.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in twin.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(c, generator=g) - 0.5)
                mod.num_batches_tracked.fill_(7)
    return twin.eval()


# name, arch for load_pretrained (None: from_torch_state_dict on `like`), twin
# builder, Equinox `like` builder (or None), input shape.
CASES = [
    (
        "mlp",
        None,
        lambda: T.MLP((1, 8, 8), 10, 16, 2),
        lambda: M.MLP((1, 8, 8), 10, 16, 2, key=KEY),
        (1, 8, 8),
    ),
    ("small_cnn", "small_cnn", lambda: T.SmallCNN(1, 10, 4), None, (1, 28, 28)),
    ("vgg11", "vgg11", lambda: T.VGG(11, False, 10, 3, 8, 16, 7), None, (3, 32, 32)),
    # 64x64 gives a 2x2 map pooled to 3x3: PyTorch's overlapping adaptive bins.
    (
        "vgg11_bn",
        "vgg11_bn",
        lambda: T.VGG(11, True, 10, 3, 8, 16, 3),
        None,
        (3, 64, 64),
    ),
    ("resnet18", "resnet18", lambda: T.ResNet(18, 10, 3, 8), None, (3, 32, 32)),
    ("resnet50", "resnet50", lambda: T.ResNet(50, 10, 3, 4), None, (3, 32, 32)),
    (
        "vit",
        None,
        lambda: T.ViT(32, 8, 3, 10, 32, 2, 4),
        lambda: M.ViT(
            image_size=32, patch_size=8, dim=32, depth=2, heads=4, n_classes=10, key=KEY
        ),
        (3, 32, 32),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_torch_twin_logits_match(case, tmp_path):
    name, arch, make_twin, make_like, shape = case
    torch.manual_seed(0)
    twin = randomise_batch_norms(make_twin(), seed=1)
    state = T.numpy_state_dict(twin)
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    if arch is not None:
        model = M.load_pretrained(path, arch)  # sizes read from the file
    else:
        like = eqx.filter_eval_shape(make_like)
        model = M.from_torch_state_dict(like, M.read_state_dict(path))

    xs = np.random.default_rng(2).normal(size=(3, *shape)).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(xs)).numpy()
    got = eqx.filter_jit(eqx.filter_vmap(model))(jnp.asarray(xs))
    assert got.shape == expected.shape
    assert np.abs(expected).max() > 1e-2  # not a degenerate all-zero comparison
    # Two frameworks' float32 convolutions (torch's oneDNN algorithms against
    # XLA's), through up to 50 layers and batch norms: rtol 1e-4.
    assert_close(got, expected, rtol=1e-4)

    # The way back: to_torch rebuilds the twin from the Equinox model alone.
    back = T.to_torch(model)
    with torch.no_grad():
        assert_close(back(torch.from_numpy(xs)).numpy(), expected)
    ours = M.to_torch_state_dict(model)
    counters = {k for k in state if k.endswith("num_batches_tracked")}
    assert set(ours) == set(state) - counters
    for k, v in ours.items():
        np.testing.assert_array_equal(v, state[k])  # exact: copied weights


def test_twin_keys_are_torchvision_and_timm_names():
    # Key names as published by torchvision (VGG, ResNet) and timm (ViT).
    vgg = T.numpy_state_dict(T.VGG(11, True, 10, 3, 4, 8, 1))
    assert {
        "features.0.weight",
        "features.1.running_var",
        "features.1.num_batches_tracked",
        "features.4.weight",
        "classifier.0.weight",
        "classifier.3.bias",
        "classifier.6.weight",
    } <= set(vgg)
    r = T.numpy_state_dict(T.ResNet(50, 10, 3, 2))
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer4.2.bn3.bias",
        "fc.weight",
    } <= set(r)
    assert r["layer2.0.conv2.weight"].shape == (4, 4, 3, 3)
    v = T.numpy_state_dict(T.ViT(32, 8, 3, 10, 16, 2, 4))
    assert set(v) == {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    } | {
        f"blocks.{i}.{m}.{p}"
        for i in range(2)
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    }
    assert v["cls_token"].shape == (1, 1, 16)
    assert v["pos_embed"].shape == (1, 17, 16)
    assert v["blocks.0.attn.qkv.weight"].shape == (48, 16)


@pytest.fixture(scope="module")
def resnet():
    twin = randomise_batch_norms(T.ResNet(18, 10, 3, 4), seed=3)
    like = eqx.filter_eval_shape(M.resnet18, n_classes=10, width=4, key=KEY)
    return M.from_torch_state_dict(like, T.numpy_state_dict(twin))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_load_round_trip(resnet, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    M.save(path, resnet)
    like = eqx.filter_eval_shape(M.resnet18, n_classes=10, width=4, key=KEY)
    loaded = M.load(path, like)
    assert same_arrays(loaded, resnet)
    # Keys are readable PyTree paths, and no pickle is needed to read them.
    keys = set(M.read_state_dict(path))
    assert "layer4.layers.1.bn2.running_var" in keys
    assert "conv1.weight" in keys and "fc.bias" in keys
    # load_pretrained recognises its own format as well as PyTorch's.
    again = M.load_pretrained(path, "resnet18")
    assert same_arrays(again, resnet)


def test_save_load_vit_round_trip(tmp_path):
    twin = T.ViT(16, 8, 1, 3, 8, 1, 2)
    like = eqx.filter_eval_shape(
        lambda: M.ViT(
            image_size=16,
            patch_size=8,
            in_channels=1,
            dim=8,
            depth=1,
            heads=2,
            n_classes=3,
            key=KEY,
        )
    )
    vit = M.from_torch_state_dict(like, T.numpy_state_dict(twin))
    assert vit.cls_token.shape == (1, 8) and vit.pos_embed.shape == (5, 8)
    M.save(tmp_path / "vit.safetensors", vit)
    assert same_arrays(M.load(tmp_path / "vit.safetensors", like), vit)


def test_float16_checkpoint_is_cast(resnet):
    half = {k: v.astype(np.float16) for k, v in M.to_torch_state_dict(resnet).items()}
    like = eqx.filter_eval_shape(M.resnet18, n_classes=10, width=4, key=KEY)
    model = M.from_torch_state_dict(like, half)
    assert model.fc.weight.dtype == jnp.float32
    # Exact: float16 to float32 is exact, and the weights are copied.
    np.testing.assert_array_equal(model.fc.weight, half["fc.weight"].astype(np.float32))


def _like18(width=4):
    return eqx.filter_eval_shape(M.resnet18, n_classes=10, width=width, key=KEY)


def test_state_dict_mismatches_are_listed(resnet):
    state = M.to_torch_state_dict(resnet)
    bad = dict(state)
    del bad["layer3.0.downsample.1.running_mean"]
    del bad["fc.bias"]
    bad["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
    bad["layer1.0.conv1.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    bad["bn1.num_batches_tracked"] = np.array(3)  # a known counter: ignored
    with pytest.raises(M.WeightsError) as info:
        M.from_torch_state_dict(_like18(), bad)
    e = info.value
    assert sorted(e.missing) == ["fc.bias", "layer3.0.downsample.1.running_mean"]
    assert e.unexpected == ["layer5.0.conv1.weight"]
    assert len(e.misshaped) == 1 and e.misshaped[0].startswith("layer1.0.conv1.weight")
    for k in (
        "fc.bias",
        "layer5.0.conv1.weight",
        "layer1.0.conv1.weight",
        "[4, 4, 3, 3]",
    ):
        assert k in str(e)
    # A checkpoint of another width: every convolution is named as misshaped.
    with pytest.raises(M.WeightsError, match="conv1.weight") as info:
        M.from_torch_state_dict(_like18(width=8), state)
    assert not info.value.missing and not info.value.unexpected
    assert len(info.value.misshaped) > 20


def test_file_mismatches_are_listed(resnet, tmp_path):
    path = tmp_path / "r.safetensors"
    M.save(path, resnet)
    with pytest.raises(M.WeightsError, match="misshaped") as info:
        M.load(path, _like18(width=8))
    assert "conv1.weight (file float32[4, 3, 7, 7], model float32[8, 3, 7, 7])" in str(
        info.value
    )
    vgg = eqx.filter_eval_shape(M.vgg11, n_classes=10, width=4, hidden=8, key=KEY)
    with pytest.raises(M.WeightsError, match="holds a ResNet") as info:
        M.load(path, vgg)
    assert "features.layers.0.weight" in info.value.missing
    assert "layer1.layers.0.conv1.weight" in info.value.unexpected
    # A PyTorch state dict given to `load` gets pointed to the right function.
    torch_file = tmp_path / "t.safetensors"
    save_file(M.to_torch_state_dict(resnet), str(torch_file))
    with pytest.raises(M.WeightsError, match="from_torch_state_dict"):
        M.load(torch_file, _like18())
    # load_pretrained of the wrong architecture names the file and the keys.
    with pytest.raises(
        M.WeightsError, match="t.safetensors.*missing.*layer1.2.conv1.weight"
    ):
        M.load_pretrained(torch_file, "resnet34")


def test_corrupt_and_missing_files(resnet, tmp_path):
    good = tmp_path / "good.safetensors"
    M.save(good, resnet)
    data = good.read_bytes()
    for name, content in [
        ("garbage.safetensors", b"this is not a safetensors file"),
        ("truncated.safetensors", data[: len(data) // 2]),
        ("garbage.npz", b"PK\x03\x04 broken zip"),
    ]:
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(
            M.WeightsError, match=f"could not read weights file.*{name}"
        ):
            M.load(p, _like18())
        with pytest.raises(M.WeightsError, match="could not read"):
            M.load_pretrained(p, "resnet18")
    # An .npz that needs pickle (an object array) is refused, never unpickled.
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"fc.weight": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(M.WeightsError, match="pickle"):
        M.read_state_dict(pickled)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        M.load(tmp_path / "nope.safetensors", _like18())
    with pytest.raises(ValueError, match="'.safetensors' or '.npz'"):
        M.save(tmp_path / "model.pt", resnet)
    with pytest.raises(ValueError, match="'.safetensors' or '.npz'"):
        M.load(tmp_path / "model.pkl", _like18())
    with pytest.raises(ValueError, match="Unknown architecture 'resnet9'"):
        M.load_pretrained(good, "resnet9")


def test_to_torch_of_a_randomly_initialised_model():
    # Equinox-initialised weights (not from a twin) through to_torch: SmallCNN.
    model = M.SmallCNN(width=2, key=KEY)
    x = np.random.default_rng(4).normal(size=(2, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        theirs = T.to_torch(model)(torch.from_numpy(x)).numpy()
    ours = eqx.filter_jit(eqx.filter_vmap(model))(jnp.asarray(x))
    # Two frameworks' float32 convolutions (torch's oneDNN algorithms, XLA's).
    assert_close(ours, theirs, rtol=1e-4)
    with pytest.raises(TypeError, match="no PyTorch twin"):
        T.to_torch(eqx.nn.Linear(2, 2, key=KEY))
