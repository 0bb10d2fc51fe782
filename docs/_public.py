"""The public names of eqx_attr, read statically (griffe), for the docs and their tests.

A name is public when its module lists it in `__all__`, or, for a module without
`__all__`, when it is defined there (a top-level `def`, `class` or assignment whose
name has no leading underscore), re-exported with a redundant alias
(`from ._x import Y as Y`, the Equinox convention) or star-imported from a module
that is public by these rules (`from ._gradient import *`: each method family
exports its modules' `__all__`). `eqx_attr` also exports the
submodules of its `_LAZY` table.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The modules whose public names are documented (besides `eqx_attr` itself).
SUBMODULES = (
    "metrics",
    "losses",
    "attacks",
    "baselines",
    "targets",
    "masks",
    "models",
    "lrp",
    "viz",
    "training",
    "datasets",
    "images",
    "torch_twins",
)


def _names_from_source(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    exported = _dunder_all(tree)
    if exported is not None:
        return exported
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
        elif isinstance(node, ast.ImportFrom) and [a.name for a in node.names] == ["*"]:
            names += _names_from_source(_relative_file(path, node))
        elif isinstance(node, ast.ImportFrom):
            names += [a.asname for a in node.names if a.asname == a.name]
        elif isinstance(node, ast.Import):
            names += [a.asname for a in node.names if a.asname == a.name]
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def _dunder_all(tree: ast.Module) -> list[str] | None:
    # `__all__ = [...]`, and `__all__ += [...]` after it; None without `__all__`.
    names: list[str] | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names = list(ast.literal_eval(node.value))
        elif (
            isinstance(node, ast.AugAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "__all__"
            and names is not None
        ):
            names += list(ast.literal_eval(node.value))
    return names


def _relative_file(path: pathlib.Path, node: ast.ImportFrom) -> pathlib.Path:
    # `from ._family import *` (the families export their methods this way).
    if node.level == 0 or node.module is None:
        raise AssertionError(f"{path}: only relative star imports are read")
    package = path.parent
    for _ in range(node.level - 1):
        package = package.parent
    rel = package.joinpath(*node.module.split("."))
    init = rel / "__init__.py"
    return init if init.exists() else rel.with_suffix(".py")


def _module_file(module: str, root: pathlib.Path = ROOT) -> pathlib.Path:
    rel = pathlib.Path(*module.split("."))
    package = root / rel / "__init__.py"
    return package if package.exists() else root / rel.with_suffix(".py")


def _lazy_names(root: pathlib.Path = ROOT) -> list[str]:
    tree = ast.parse(_module_file("eqx_attr", root).read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and getattr(node.target, "id", "") == "_LAZY"
        ):
            return [ast.literal_eval(k) for k in node.value.keys]  # type: ignore[union-attr]
    raise AssertionError("eqx_attr/__init__.py has no `_LAZY` table")


def public_names(root: pathlib.Path = ROOT) -> dict[str, list[str]]:
    """Every public name, by module: `{"eqx_attr": [...], "eqx_attr.models": [...]}`.

    **Arguments:**

    - `root`: the folder holding the `eqx_attr` sources (default: this checkout).

    **Returns:** a dict from module path to the list of its public names.
    """
    out = {"eqx_attr": _names_from_source(_module_file("eqx_attr", root))}
    out["eqx_attr"] += [n for n in _lazy_names(root) if n not in out["eqx_attr"]]
    for sub in SUBMODULES:
        path = _module_file(f"eqx_attr.{sub}", root)
        out[f"eqx_attr.{sub}"] = _names_from_source(path)
    return out


def public_paths(root: pathlib.Path = ROOT) -> list[str]:
    """Every public name as its import path, e.g. `eqx_attr.metrics.Deletion`.

    **Arguments:**

    - `root`: the folder holding the `eqx_attr` sources (default: this checkout).

    **Returns:** a sorted list of dotted paths.
    """
    by_module = public_names(root)
    return sorted(f"{mod}.{n}" for mod, names in by_module.items() for n in names)


def docstring_problems() -> list[str]:
    """Public names whose docstring is missing or lacks its sections.

    Functions and classes need `**Arguments:**` and `**Returns:**` (for a class,
    in its own docstring or in that of its `__init__` or `__call__`); modules and
    constants need a docstring.

    **Returns:** one line per problem (empty when every docstring is complete).
    """
    import griffe

    extensions = griffe.load_extensions(
        f"{ROOT / 'docs' / '_griffe_runtime.py'}:RuntimeDocs"
    )
    package = griffe.load(
        "eqx_attr",
        search_paths=[str(ROOT)],
        extensions=extensions,
        resolve_aliases=False,
    )
    problems = []
    for path in public_paths():
        try:
            obj = package[path.removeprefix("eqx_attr.")]
            obj = obj.final_target if obj.is_alias else obj
        except (KeyError, griffe.AliasResolutionError) as e:
            problems.append(f"{path}: not found statically ({e!r})")
            continue
        texts = [obj.docstring.value if obj.docstring else ""]
        if obj.is_class:
            for dunder in ("__init__", "__call__"):
                member = obj.members.get(dunder)
                if member is not None and member.docstring:
                    texts.append(member.docstring.value)
        text = "\n".join(texts)
        if not text.strip():
            problems.append(f"{path}: no docstring")
        elif obj.is_function or obj.is_class:
            for section in ("**Arguments:**", "**Returns:**"):
                if section not in text:
                    problems.append(f"{path}: no {section} section")
    return problems


if __name__ == "__main__":
    names = public_paths()
    problems = docstring_problems()
    print("\n".join(problems))
    print(f"{len(names)} public names, {len(problems)} problems")
