"""The architecture: a lean core, the two registries, the shared tools, the floors."""

import ast
import os
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._batch import batched
from eqx_attr._registry import BuildContext, get, methods
from eqx_attr.models import MODEL_SPECS, model_spec, spec_of, where_from_path

from .helpers import assert_close, digit_like, small_cnn

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_loads_only_the_core():
    # A fresh interpreter: `import eqx_attr` pulls jax, equinox, jaxtyping and numpy,
    # and none of the optional dependencies until their module is used.
    code = (
        "import sys, eqx_attr as xa\n"
        "heavy = ('matplotlib', 'PIL', 'torch', 'optax', 'tqdm', 'zarr', "
        "'safetensors', 'mlxtend')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "xa.viz\n"
        "print('matplotlib' in sys.modules, xa.__version__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
        text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    assert out[0] == "[]"
    assert out[1].startswith("True ") and out[1].split()[1] == xa.__version__


def _shapes_only(build):
    # The model's structure with NumPy zeros for arrays: no JAX computation.
    model = eqx.filter_eval_shape(build)
    is_struct = lambda a: isinstance(a, jax.ShapeDtypeStruct)
    return jax.tree.map(
        lambda a: np.zeros(a.shape, a.dtype) if is_struct(a) else a,
        model,
        is_leaf=is_struct,
    )


def test_where_from_path():
    m = _shapes_only(lambda: xa.models.SmallCNN(width=2, key=jax.random.key(0)))
    assert where_from_path("conv2")(m) is m.conv2
    assert where_from_path("conv1[-1]")(m) is m.conv1[-1]
    assert where_from_path("conv1.layers[3]")(m) is m.conv1.layers[3]
    vit = _shapes_only(
        lambda: xa.models.ViT(16, 8, 1, 3, 8, 2, 2, key=jax.random.key(0))
    )
    attn = where_from_path("blocks[*].attn.attn_drop")(vit)
    assert all(a is b.attn.attn_drop for a, b in zip(attn, vit.blocks, strict=True))
    assert len(attn) == 2
    with pytest.raises(ValueError, match="cannot parse 'conv2\\(\\)'"):
        where_from_path("conv2()")


@pytest.mark.parametrize(
    "name", ["mlp", "small_cnn", "vgg11_bn", "resnet50", "vit_tiny"]
)
def test_model_specs_describe_their_models(name):
    spec = model_spec(name)
    small = {
        "mlp": dict(in_shape=(1, 8, 8), width=4),
        "small_cnn": dict(width=2),
        "vgg11_bn": dict(width=4, hidden=8, pool_size=1),
        "resnet50": dict(width=2),
        "vit_tiny": dict(image_size=16, patch_size=8),
    }[name]
    model = _shapes_only(
        lambda: spec.factory(key=jax.random.key(0), n_classes=3, **small)
    )
    assert spec_of(model) is spec and isinstance(model, spec.cls)
    # The configuration read back rebuilds the same architecture.
    again = eqx.filter_eval_shape(
        lambda: spec.cls(key=jax.random.key(0), **spec.config(model))
    )
    assert jax.tree.structure(again) == jax.tree.structure(model)
    assert spec.config(model)["n_classes"] == 3
    # The state dict's shapes give back what a checkpoint fixes.
    sd = xa.models.to_torch_state_dict(model)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    read = spec.read_config(shapes)
    assert all(spec.config(model)[k] == v for k, v in read.items())
    if spec.cam_layer is not None:
        spec.layer()(model)  # the default layer exists
    fixed = name in ("mlp", "vit_tiny")  # their weights fix the input size
    shape = spec.input_shape(model, None if fixed else 32)
    assert eqx.filter_eval_shape(model, jnp.zeros(shape)).shape == (3,)


def test_every_zoo_model_has_a_spec_and_a_factory():
    assert list(xa.models.ARCHITECTURES) == list(MODEL_SPECS)
    with pytest.raises(ValueError, match="Unknown architecture 'lenet'"):
        model_spec("lenet")
    with pytest.raises(TypeError, match="not a zoo model"):
        spec_of(eqx.nn.Linear(2, 2, key=jax.random.key(0)))


def test_registry_names_and_builds():
    names = [n for e in methods() for n in (e.name, *e.aliases)]
    assert len(names) == len(set(names))
    assert get("IG") is get("integrated-gradients") is get("integrated_gradients")
    with pytest.raises(ValueError, match="Unknown method 'shap'"):
        get("shap")
    m = small_cnn()
    ctx = BuildContext(model=m, layer=lambda m: m.conv2, options={"n_steps": 3})
    ig = get("ig").build(ctx)
    assert isinstance(ig, xa.IntegratedGradients) and ig.n_steps == 3
    assert isinstance(get("gradcam").build(ctx), xa.GradCAM)


def test_batched_runner_equals_the_loop():
    m = small_cnn()
    xs = jnp.stack([digit_like(1), digit_like(2)])
    ts = jnp.array([3, 8])
    method = xa.GradCAM(m, lambda m: m.conv2)
    out = batched(method)(xs, ts)
    for i in range(2):
        assert_close(out[i], method(xs[i], int(ts[i])))


def test_completeness_metric_hand_values():
    # f(x) = W x + b: Gradients x Input sums to W x = f(x) - f(0) exactly; a
    # wrong attribution is off by exactly its error.
    w = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    b = jnp.array([0.25, -1.0])
    f = lambda x: w @ x + b
    x = jnp.array([2.0, 1.0, -4.0])
    a = xa.GradientsXInput(f)(x, 1)
    metric = xa.metrics.Completeness(f, baseline=0.0)

    def terms(base):  # the residual sum(a) - (f(x) - f(base)) cancels these
        fb = f(jnp.full_like(x, base))
        return float(jnp.sum(jnp.abs(a)) + jnp.abs(f(x)[1]) + jnp.abs(fb[1]))

    assert_close(metric(x, 1, a), 0.0, scale=terms(0.0))
    assert_close(metric(x, 1, a + 0.5), 1.5)
    # Against a baseline of ones: f(x) - f(1) = W (x - 1).
    gap = float((w @ (x - 1.0))[1])
    rel = xa.metrics.Completeness(f, baseline=1.0, relative=True)(x, 1, a)
    want = abs(float(jnp.sum(a)) - gap) / abs(gap)  # 0: a relative residual
    assert_close(rel, want, scale=terms(1.0) / abs(gap))
    # The annotation `Float[Array, "*dims"]` (checked in the test run) or the
    # metric's own check rejects an attribution not shaped like `x`.
    with pytest.raises((ValueError, TypeError), match="shaped like `x`|dims"):
        metric(x, 1, a[:2])


def test_image_normalization():
    from eqx_attr.images import ImageError, normalization

    mean, std = normalization("imagenet", 3)
    # Exact: float64 values copied from the constants or parsed from the spec.
    np.testing.assert_array_equal(mean, [0.485, 0.456, 0.406])
    np.testing.assert_array_equal(normalization("0.5,0.25", 1)[1], [0.25])
    with pytest.raises(ImageError, match="3-channel"):
        normalization("imagenet", 1)
    with pytest.raises(ImageError, match="> 0"):
        normalization("0,0", 2)


# ------------------------------------------------------------------------------
# Layering: the floors of docs/contributing.md, as a test.

# Every top-level module or package of eqx_attr, lowest floor first. An import
# may stay on its floor or go down, never up; `__init__` and `__main__` (the
# public face) sit on top.
FLOORS: tuple[frozenset[str], ...] = tuple(
    frozenset(names.split())
    for names in (
        "_engine",  # tracer, the one interpreter, JAX internals, CPU passes
        # the contract and the rows of the method table
        "_version _attribution _checks _layout _memory _method_entry _model_errors "
        "_tokens",
        "_layers baselines masks images models targets",  # shared mechanisms
        # the families
        "_gradient _cam _rules _perturbation _transformer _region _neuron lrp",
        "_registry _batch metrics losses attacks",  # join, batch, score, train, attack
        "_runner viz training _train_loop datasets torch_twins _compile_cache",  # tools
        "_cli",  # the command line on top
        "__init__ __main__",
    )
)


def _floor_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    for i, names in enumerate(FLOORS):
        if top in names:
            return i
    raise AssertionError(
        f"{module}: its top-level name {top!r} is on no floor of "
        "tests/test_architecture.py::FLOORS; add it to the floor it belongs to "
        "(and to docs/contributing.md)"
    )


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = ROOT / pathlib.Path(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: pathlib.Path):
    """(imported module, imported name or None) for every import in the file,
    function-level ones included, `if TYPE_CHECKING:` blocks excluded."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "eqx_attr":
                    yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "eqx_attr":
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                yield (full, None) if _is_module(full) else (source, alias.name)


def _import_graph():
    files = sorted((ROOT / "eqx_attr").rglob("*.py"))
    return {_module_name(p): list(_imports(p)) for p in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    # Strongly connected components with more than one member (Tarjan).
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_runs_up_a_floor():
    up = [
        f"{m} (floor {_floor_of(m)}) imports {t} (floor {_floor_of(t)})"
        for m, imports in _import_graph().items()
        for t, _ in imports
        if t != "eqx_attr" and _floor_of(t) > _floor_of(m)
    ]
    assert not up, "imports that run up a floor:\n" + "\n".join(up)


def test_no_library_module_imports_the_top_level_package():
    bad = [
        m
        for m, imports in _import_graph().items()
        if m not in ("eqx_attr", "eqx_attr.__main__")
        and any(t == "eqx_attr" for t, _ in imports)
    ]
    assert not bad, f"import the top-level package `eqx_attr`: {bad}"


def test_no_import_loops():
    graph = _import_graph()
    modules = {m: {t for t, _ in imps if t in graph} for m, imps in graph.items()}
    tops = {}
    for m, targets in modules.items():
        top = m.split(".")[1] if "." in m else m
        tops.setdefault(top, set()).update(
            t.split(".")[1] if "." in t else t for t in targets
        )
    tops = {k: v - {k} for k, v in tops.items()}
    assert _cycles(modules) == [], "module import loops"
    assert _cycles(tops) == [], "package import loops"


def _unit(module: str) -> str:
    # The top-level module or package a module belongs to: its own unit for the
    # purpose of private names (`_runner._explain` may use `_runner._store._x`).
    return module.split(".")[1] if "." in module else "__init__"


def test_no_private_name_imported_across_packages():
    bad = [
        f"{m} imports {source}.{name}"
        for m, imports in _import_graph().items()
        for source, name in imports
        if name is not None
        and name.startswith("_")
        and not name.startswith("__")
        and _unit(source) != _unit(m)
    ]
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)
