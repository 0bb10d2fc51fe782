"""The method table is joined from rows that each family declares beside its classes.

Adding a method is: its class and its row in its family's module, its tests, and
one `::: eqx_attr.MyMethod` line in `docs/api/methods.md`. The last test proves it:
it appends a throw-away method (class, `__all__` and row) to ONE family module of a
copy of the package and finds it in the CLI's method list, the contract tests'
method list, the benchmarks' coverage and the docs' API list.
"""

import importlib
import os
import pathlib
import pkgutil
import re
import shutil
import subprocess
import sys

import eqx_attr as xa
from eqx_attr._registry import FAMILIES, family_rows, methods

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import _public  # noqa: E402


def _modules_with_rows(family):
    for info in pkgutil.iter_modules(family.__path__, family.__name__ + "."):
        module = importlib.import_module(info.name)
        if hasattr(module, "ROWS"):
            yield module


def test_every_row_is_exported_and_registered_by_its_family():
    table = methods()
    for family in FAMILIES:
        rows = family_rows(family)
        assert rows, family.__name__
        for module in _modules_with_rows(family):
            for entry in module.ROWS:
                # The family's star import of the module both exports the class
                # (to `eqx_attr` too) and registers the row: neither goes alone.
                assert entry in rows and entry in table, entry.name
                assert entry.cls.__name__ in module.__all__, entry.name
                assert getattr(xa, entry.cls.__name__) is entry.cls, entry.name
                assert family.__name__ == f"eqx_attr._{entry.family}", entry.name
                script, peer = entry.benchmark
                assert peer and (script is None or script.endswith(".py")), entry


def test_families_own_their_rows():
    # The path methods sit with the gradient family, XRAI in the region family.
    assert [e.name for e in methods("region")] == ["xrai"]
    gradient = [e.name for e in methods("gradient")]
    assert {"blur_ig", "guided_ig", "gradient_shap"} <= set(gradient)
    assert {e.family for e in methods()} == {
        "gradient", "rules", "cam", "perturbation", "region", "transformer", "neuron",
    }  # fmt: skip


_THROWAWAY = '''

class ThrowAway(AbstractAttribution):
    """A throw-away method of `tests/test_registry.py`: twice the gradient.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.

    **Returns:** an array shaped like `x`.
    """

    model: Callable[..., Any]

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Attribution:
        return 2.0 * input_gradient(self.model, x, target)


__all__ += ["ThrowAway"]
ROWS += (
    MethodEntry(
        "throw_away",
        ThrowAway,
        "gradient",
        "a throw-away method (a test's)",
        lambda c: ThrowAway(c.model),
        benchmark=(None, "a test's throw-away method"),
        differentiable=SMOOTH,
    ),
)
'''

# Run with the copy first on the path (and this checkout's `tests` after it).
_CHECK = """
import contextlib, io, runpy, sys
sys.path[:0] = [{copy!r}, {root!r}]
import jax.numpy as jnp
import eqx_attr as xa
assert xa.__file__.startswith({copy!r}), xa.__file__
from eqx_attr._cli._explain import resolve_method
from eqx_attr._cli._main import main
from eqx_attr._cli._parser import build_parser
from tests.helpers import METHODS, assert_close, digit_like, small_cnn

# The CLI: `eqx-attr methods`, `--method`'s help and its resolution.
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["methods"]) == 0
assert "throw_away" in out.getvalue() and "a throw-away method" in out.getvalue()
(sub,) = [a for a in build_parser()._actions if a.dest == "command"]
assert "throw_away" in sub.choices["explain"].format_help()
assert resolve_method("throw-away").cls is xa.ThrowAway
# The contract tests' list, and the method built from its row and called.
spec = next(s for s in METHODS if s.name == "ThrowAway")
m, x = small_cnn(), digit_like()
assert_close(spec.build(m)(x, 3), 2.0 * xa.Gradients(m)(x, 3))
# The benchmarks' coverage.
cov = runpy.run_path({coverage!r})["COVERAGE"]
assert cov["throw_away"] == (None, "a test's throw-away method")
print("seen")
"""


def test_a_method_added_to_one_family_file_is_seen_everywhere(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT / "eqx_attr",
        copy / "eqx_attr",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    module = copy / "eqx_attr" / "_gradient" / "_gradients.py"
    module.write_text(module.read_text() + _THROWAWAY)

    # The docs' API list (read statically): the new class is a public name, and the
    # API reference lacks its line, so `tests/test_docs.py` asks for that one line.
    assert "eqx_attr.ThrowAway" in _public.public_paths(copy)
    assert "eqx_attr.ThrowAway" not in _public.public_paths()
    added = set(_public.public_paths(copy)) - set(_public.public_paths())
    assert added == {"eqx_attr.ThrowAway"}
    rendered = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        rendered |= set(re.findall(r"^::: (\S+)", page.read_text(), re.M))
    assert "eqx_attr.ThrowAway" not in rendered

    # The registry, the CLI, the contract tests' list and the benchmarks' coverage,
    # in a fresh interpreter that imports the copy.
    code = _CHECK.format(
        copy=str(copy),
        root=str(ROOT),
        coverage=str(ROOT / "benchmarks" / "coverage.py"),
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert out.stdout.strip().endswith("seen")
