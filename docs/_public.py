"""The public names of eqx_attr, read statically (griffe), for the docs and their tests.

A name is public when its module lists it in `__all__`, or, for a module without
`__all__`, when it is defined there (a top-level `def`, `class` or assignment whose
name has no leading underscore) or re-exported with a redundant alias
(`from ._x import Y as Y`, the Equinox convention). `eqx_attr` also exports the
submodules of its `_LAZY` table.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The modules whose public names are documented (besides `eqx_attr` itself).
SUBMODULES = (
    "metrics",
    "baselines",
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
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names += [a.asname for a in node.names if a.asname == a.name]
        elif isinstance(node, ast.Import):
            names += [a.asname for a in node.names if a.asname == a.name]
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def _module_file(module: str) -> pathlib.Path:
    rel = pathlib.Path(*module.split("."))
    package = ROOT / rel / "__init__.py"
    return package if package.exists() else ROOT / rel.with_suffix(".py")


def _lazy_names() -> list[str]:
    tree = ast.parse(_module_file("eqx_attr").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and getattr(node.target, "id", "") == "_LAZY"
        ):
            return [ast.literal_eval(k) for k in node.value.keys]  # type: ignore[union-attr]
    raise AssertionError("eqx_attr/__init__.py has no `_LAZY` table")


def public_names() -> dict[str, list[str]]:
    """Every public name, by module: `{"eqx_attr": [...], "eqx_attr.models": [...]}`.

    **Returns:** a dict from module path to the list of its public names.
    """
    out = {"eqx_attr": _names_from_source(_module_file("eqx_attr"))}
    out["eqx_attr"] += [n for n in _lazy_names() if n not in out["eqx_attr"]]
    for sub in SUBMODULES:
        out[f"eqx_attr.{sub}"] = _names_from_source(_module_file(f"eqx_attr.{sub}"))
    return out


def public_paths() -> list[str]:
    """Every public name as its import path, e.g. `eqx_attr.metrics.Deletion`.

    **Returns:** a sorted list of dotted paths.
    """
    return sorted(f"{mod}.{n}" for mod, names in public_names().items() for n in names)


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
