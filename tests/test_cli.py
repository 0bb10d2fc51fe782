"""The command line, end to end and in process: `main([...])` with captured output."""

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import eqx_attr as xa  # noqa: E402
from eqx_attr._cli import main  # noqa: E402
from eqx_attr._registry import methods as registry_methods  # noqa: E402

from .helpers import assert_close, jcall  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cnn = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    xa.models.save(d / "cnn.safetensors", cnn)
    resnet = xa.models.resnet18(n_classes=10, width=8, key=jax.random.key(1))
    xa.models.save(d / "resnet.safetensors", resnet)
    digit = np.asarray(xa.datasets.mnist().x_test[0, 0] * 255, np.uint8)
    Image.fromarray(digit, mode="L").save(d / "digit.png")
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    Image.fromarray(photo, mode="RGB").save(d / "photo.png")
    Image.fromarray(digit[:20, :20], mode="L").save(d / "small.png")
    (d / "not_an_image.png").write_text("hello")
    (d / "garbage.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    return {"dir": d, "cnn": cnn, "resnet": resnet, "digit": digit}


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_complete(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for word in ("demo", "explain", "methods", "examples:", "--model resnet50"):
        assert word in out
    code, out, _ = _run(capsys, "explain", "--help")
    assert code == 0
    for option in ("--model", "--weights", "--image", "--method", "--target",
                   "--out", "--layer", "--normalize", "--size", "--no-resize",
                   "--n-steps", "--baseline", "imagenet", "safetensors"):  # fmt: skip
        assert option in out
    for entry in registry_methods():
        assert entry.name in out.replace("\n", " ").replace("  ", " ") or (
            entry.name in out
        )
    code, out, _ = _run(capsys, "methods")
    assert code == 0 and "gradcam_plus_plus" in out and "resnet50" in out


def test_explain_small_cnn_gradcam_matches_the_library(capsys, files):
    d = files["dir"]
    out_png, arr = d / "map.png", d / "map.npy"
    code, out, err = _run(
        capsys, "explain", "--model", "small_cnn", "--weights", d / "cnn.safetensors",
        "--image", d / "digit.png", "--method", "gradcam", "--out", out_png,
        "--save-array", arr,
    )  # fmt: skip
    assert code == 0, err
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    # The same computation done directly: pixels / 255, no normalisation (1-channel
    # default), predicted class as target, the default layer conv2.
    x = jnp.asarray(files["digit"], jnp.float32)[None] / 255.0
    scores = np.asarray(files["cnn"](x))
    top5 = np.argsort(-scores)[:5]
    assert out.splitlines()[0].startswith("top-5: ")
    printed = [int(s.split(" (")[0]) for s in out.splitlines()[0][7:].split(", ")]
    assert printed == list(top5)
    expected = jcall(xa.GradCAM(files["cnn"], lambda m: m.conv2), x, int(top5[0]))
    assert_close(np.load(arr), expected)


def test_explain_ig_with_target_and_normalisation(capsys, files):
    d = files["dir"]
    code, out, err = _run(
        capsys, "explain", "--model", "small_cnn", "--weights", d / "cnn.safetensors",
        "--image", d / "digit.png", "--method", "ig", "--target", 7,
        "--n-steps", 16, "--normalize", "0.5,0.25", "--out", d / "ig.png",
        "--save-array", d / "ig.npy",
    )  # fmt: skip
    assert code == 0, err and "target 7" in out
    x = (jnp.asarray(files["digit"], jnp.float32)[None] / 255.0 - 0.5) / 0.25
    black = jnp.full_like(x, (0.0 - 0.5) / 0.25)  # black pixels, normalised
    ig = xa.IntegratedGradients(files["cnn"], n_steps=16, baseline=black)
    assert_close(np.load(d / "ig.npy"), jcall(ig, x, 7))


def test_explain_layer_and_neuron_methods(capsys, files):
    # A layer's attribution is drawn summed over channels (its numbers are saved
    # as they are); a neuron method explains its neuron, whatever the class.
    d = files["dir"]
    x = jnp.asarray(files["digit"], jnp.float32)[None] / 255.0
    top = int(np.argmax(np.asarray(files["cnn"](x))))
    layer = lambda m: m.conv2  # noqa: E731
    cases = (
        ("layer_gradient_x_activation", [], xa.LayerGradientXActivation, top),
        ("neuron_gradient", ["--neuron", 5], None, None),
    )
    for name, extra, cls, target in cases:
        code, out, err = _run(
            capsys, "explain", "--model", "small_cnn", "--weights",
            d / "cnn.safetensors", "--image", d / "digit.png", "--method", name,
            "--out", d / f"{name}.png", "--save-array", d / f"{name}.npy", *extra,
        )  # fmt: skip
        assert code == 0, err
        assert (d / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        method = cls(files["cnn"], layer) if cls else None
        if method is None:
            method = xa.NeuronGradient(files["cnn"], layer, 5)
        assert_close(np.load(d / f"{name}.npy"), jcall(method, x, target))


def test_explain_resnet_rgb_resize_and_crop(capsys, files):
    d = files["dir"]
    code, out, err = _run(
        capsys, "explain", "--model", "resnet18", "--weights",
        d / "resnet.safetensors", "--image", d / "photo.png", "--method",
        "gradcam_plus_plus", "--size", 32, "--out", d / "r.png",
        "--save-array", d / "r.npy",
    )  # fmt: skip
    assert code == 0, err
    a = np.load(d / "r.npy")
    assert a.shape == (32, 32) and np.all(np.isfinite(a)) and np.all(a >= 0)
    assert len(out.splitlines()[0].split(", ")) == 5
    # --layer override, and an input-space method on the 3-channel model.
    code, _, err = _run(
        capsys, "explain", "--model", "resnet18", "--weights",
        d / "resnet.safetensors", "--image", d / "photo.png", "--method",
        "gradcam", "--layer", "layer3[-1]", "--size", 32, "--out", d / "r3.png",
        "--save-array", d / "r3.npy",
    )  # fmt: skip
    assert code == 0, err and np.load(d / "r3.npy").shape == (32, 32)


@pytest.mark.parametrize(
    "case, args, needle",
    [
        ("missing image", ["--image", "{d}/nope.png"], "image file not found"),
        ("unreadable image", ["--image", "{d}/not_an_image.png"], "cannot read image"),
        ("missing weights", ["--weights", "{d}/nope.safetensors"], "weights file not"),
        ("corrupt weights", ["--weights", "{d}/garbage.safetensors"], "garbage"),
        ("mismatched weights", ["--weights", "{d}/resnet.safetensors"], "conv1"),
        ("wrong channels", ["--image", "{d}/photo.png"], "3 channel(s)"),
        ("wrong size", ["--image", "{d}/small.png", "--no-resize"], "20x20"),
        ("unknown model", ["--model", "lenet"], "unknown model 'lenet'"),
        ("unknown method", ["--method", "shap"], "unknown method 'shap'"),
        ("target range", ["--target", "10"], "out of range"),
        ("bad normalize", ["--normalize", "imagenet"], "3-channel"),
        ("bad layer", ["--layer", "conv9"], "conv9"),
        ("bad layer syntax", ["--layer", "conv2()"], "cannot parse"),
        ("bad n-steps", ["--method", "ig", "--n-steps", "0"], "--n-steps"),
        ("no value", ["--target"], "expected one argument"),
    ],
)
def test_bad_input_is_one_line_without_traceback(capsys, files, case, args, needle):
    d = files["dir"]
    base = {
        "--model": "small_cnn",
        "--weights": f"{d}/cnn.safetensors",
        "--image": f"{d}/digit.png",
        "--method": "gradcam",
        "--out": f"{d}/bad.png",
    }
    extra = [a.format(d=d) for a in args]
    for flag in list(base):
        if flag in extra:
            del base[flag]
    argv = ["explain", *[s for kv in base.items() for s in kv], *extra]
    code, out, err = _run(capsys, *argv)
    assert code == 2, (case, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, (case, err)
    assert "Traceback" not in err and needle in lines[0], (case, err)


# The demo's pipeline at the smallest settings: the wiring is under test here,
# each method's mathematics in its own tests.
FEW = {"n_steps": 4, "n_samples": 4, "n_permutations": 1, "n_masks": 16}


# One method per family, and the two that need a key or several baselines: the
# wiring of every other column is the same code path (each method's own contract
# and mathematics are tested in its own files).
DEMO_SUBSET = [
    "gradients", "integrated_gradients", "smoothgrad", "guided_backprop",
    "deeplift_shap", "lrp", "gradcam", "occlusion",
]  # fmt: skip


def test_demo_builds_every_method_runs_a_subset_and_reports(capsys, tmp_path):
    # The full demo trains the 97% model (measured by `make demo`); here the same
    # pipeline runs on an untrained tiny CNN and two digits.
    from eqx_attr._cli import _demo

    model = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    data = xa.datasets.mnist()
    all_columns, skipped = _demo.demo_columns(model, data, FEW)
    # Every registry entry is a column that builds, or is reported as skipped
    # with its needs.
    shown = {c.entry.name for c in all_columns}
    for entry in registry_methods():
        assert entry.name in shown or any(
            s.startswith((entry.name + " (needs", entry.name + " (inside the network"))
            for s in skipped
        ), entry.name
    assert all(isinstance(c.build(), xa.AbstractAttribution) for c in all_columns)
    columns = _demo.select_columns(all_columns, DEMO_SUBSET)
    assert {c.entry.name for c in columns} == set(DEMO_SUBSET)
    lines = []
    vit = xa.models.ViT(
        image_size=28, patch_size=7, in_channels=1, n_classes=10, dim=16, depth=2,
        heads=2, mlp_ratio=2.0, key=jax.random.key(1),
    )  # fmt: skip
    ranked = ["gradients", "guided_backprop"]
    result = _demo.run_demo(
        tmp_path, n_digits=2, model=model, print_fn=lines.append,
        leaderboard=ranked, vit=vit, options=FEW, methods=DEMO_SUBSET,
    )  # fmt: skip
    assert lines[0] == f"test accuracy: {result['accuracy']:.3f}"
    assert (tmp_path / "attributions.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(result["maps"]) == sorted(c.name for c in columns)
    for c in columns:
        assert (tmp_path / f"{_demo.slug(c.name)}.png").is_file(), c.name
        assert any(line.startswith(c.name + " ") for line in lines), c.name
    # IG's completeness residual is reported for every baseline (relative to
    # f(x) - f(b), which is tiny and ill-conditioned for an untrained net, so only
    # finiteness is checked here; notebook 04 checks its size on the trained one).
    complete = [c.name for c in columns if "completeness" in c.entry.axioms]
    assert len(complete) >= 4  # IG with each of the 4 demo baselines
    assert sorted(result["completeness"]) == sorted(complete)
    assert all(np.isfinite(v) and v >= 0 for v in result["completeness"].values())
    assert sum(line.startswith("completeness, ") for line in lines) == len(complete)
    # The leaderboard ranks the chosen columns on every metric and plots curves.
    board = result["leaderboard"]
    assert list(board.scores) == ranked
    assert all(np.isfinite(v) for r in board.scores.values() for v in r.values())
    table = "\n".join(lines)
    assert all(name in table for name in ranked) and "evaluation took" in table
    assert (tmp_path / "deletion_curves.png").read_bytes()[:8] == PNG_MAGIC
    # The ViT panel: every transformer method of the registry timed, and the
    # input gradients, IG (black baseline) and Grad-CAM beside them; one picture.
    assert (tmp_path / "vit_attributions.png").read_bytes()[:8] == PNG_MAGIC
    vit_columns = [e.name for e in registry_methods("transformer")] + [
        "gradients", "gradients_x_input", "integrated_gradients (black)", "gradcam",
    ]  # fmt: skip
    for name in vit_columns:
        assert f"{name} s" in result["vit"]
        assert any(line.startswith(f"ViT {name}:") for line in lines), name


def test_demo_methods_option_is_checked_before_training(capsys, tmp_path):
    # A typo fails at once (no training), as one line naming the choices.
    assert main(["demo", "--out", str(tmp_path), "--methods", "gradients,nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "integrated_gradients" in err and "Traceback" not in err
    from eqx_attr._cli import _demo

    with pytest.raises(ValueError, match="none"):
        _demo.select_columns([], [])


def test_choose_digits_one_per_class():
    from eqx_attr._cli._demo import choose_digits, slug

    ys = np.array([3, 3, 1, 0, 1, 2, 0])
    idx = choose_digits(ys, 4)
    assert list(ys[idx]) == [0, 1, 2, 3] and len(set(idx)) == 4
    assert list(ys[choose_digits(ys, 6)]) == [0, 1, 2, 3, 0, 1]
    with pytest.raises(ValueError, match="cannot pick"):
        choose_digits(ys, 8)
    assert slug("IG (black)") == "ig_black" and slug("Grad-CAM++") == "grad_campp"


def test_explain_loads_the_demo_cnn(capsys, tmp_path, files):
    # Weights written by `xa.models.save` (as the training cache does) load by
    # name `small_cnn`; the width (6 here, not the default 16) is read from the file.
    cnn = xa.models.SmallCNN(width=6, key=jax.random.key(2))
    xa.models.save(tmp_path / "cnn6.safetensors", cnn)
    code, out, err = _run(
        capsys, "explain", "--model", "small_cnn", "--weights",
        tmp_path / "cnn6.safetensors", "--image", files["dir"] / "digit.png",
        "--method", "cam", "--out", tmp_path / "cam.png", "--save-array",
        tmp_path / "cam.npy",
    )  # fmt: skip
    assert code == 0, err
    x = jnp.asarray(files["digit"], jnp.float32)[None] / 255.0
    t = int(jnp.argmax(cnn(x)))
    expected = jcall(xa.CAM(cnn, lambda m: m.conv2, classifier=lambda m: m.fc), x, t)
    assert_close(np.load(tmp_path / "cam.npy"), expected)


def test_leaderboard_methods_default_all_and_named():
    from eqx_attr._cli import _demo

    model = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    columns, _ = _demo.demo_columns(model, xa.datasets.mnist())
    entry_of = {c.name: c.entry.name for c in columns}
    default = _demo.leaderboard_methods(columns)
    every = _demo.leaderboard_methods(columns, "all")
    # One column per registry entry; the default leaves out only the slow ones.
    assert sorted(entry_of[n] for n in every) == sorted(set(entry_of.values()))
    assert {entry_of[n] for n in default} == (
        {entry_of[n] for n in every} - _demo.SLOW_TO_RANK
    )
    assert _demo.SLOW_TO_RANK <= set(entry_of.values())  # names stay registered
    assert list(_demo.leaderboard_methods(columns, ["gradients"])) == ["gradients"]
    with pytest.raises(ValueError, match="no demo column named"):
        _demo.leaderboard_methods(columns, ["no_such_method"])
    with pytest.raises(ValueError, match="'all'"):
        _demo.leaderboard_methods(columns, "some")
