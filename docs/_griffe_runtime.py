"""A griffe extension: what static analysis of eqx_attr cannot see.

Griffe reads the source without importing it. Two things exist only at import
time: docstrings assembled by code (the `vgg*`/`resnet*` factories, classes whose
`__doc__` is built from shared pieces) and the `__init__` that `equinox.Module`
generates from a class's fields. For the public objects that lack them, this
extension imports the defining module and copies the docstring, and the
generated signature as an `__init__` (so `merge_init_into_class` shows it).
mkdocs.yml loads it, and so does the docstring test (`docs/_public.py`).
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import sys
from typing import Any

import griffe

# Import the package from the source tree being documented (the one griffe
# reads), not from whatever copy is installed.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def _runtime(obj: griffe.Object) -> Any:
    try:
        value: Any = importlib.import_module(obj.module.path)
        for part in obj.path.removeprefix(obj.module.path + ".").split("."):
            value = getattr(value, part)
        return value
    except Exception:  # noqa: BLE001 - an object we cannot import keeps its static view
        return None


def _annotation(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _parameters(signature: inspect.Signature) -> griffe.Parameters:
    return griffe.Parameters(
        *(
            griffe.Parameter(
                p.name,
                annotation=_annotation(p.annotation),
                kind=_KINDS[p.kind],
                default=None if p.default is p.empty else repr(p.default),
            )
            for p in signature.parameters.values()
        )
    )


def _generated_init(cls: type) -> griffe.Function | None:
    import equinox as eqx

    if not (isinstance(cls, type) and issubclass(cls, eqx.Module)):
        return None
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = signature.replace(parameters=[self, *signature.parameters.values()])
    return griffe.Function("__init__", parameters=_parameters(signature))


class RuntimeDocs(griffe.Extension):
    """Fill in import-time docstrings and Equinox's generated `__init__` signatures.

    **Arguments:** none.

    **Returns:** a griffe extension (pass it to `griffe.load(extensions=...)`).
    """

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "eqx_attr":
            return
        self._walk(pkg)

    def _walk(self, module: griffe.Module) -> None:
        for member in list(module.members.values()):
            if member.is_alias:
                continue
            if member.is_module:
                self._walk(member)  # type: ignore[arg-type]
            elif member.is_class or member.is_function:
                self._fill(member)  # type: ignore[arg-type]
            elif member.is_attribute and not member.name.startswith("_"):
                self._function_from_factory(module, member)  # type: ignore[arg-type]

    def _function_from_factory(
        self, module: griffe.Module, attribute: griffe.Attribute
    ) -> None:
        # `vgg11 = _factory(11, False)`: statically an attribute, at run time a
        # function with a signature and a docstring; document it as the function.
        value = _runtime(attribute)
        if not inspect.isfunction(value):
            return
        signature = inspect.signature(value)
        function = griffe.Function(
            attribute.name,
            lineno=attribute.lineno,
            endlineno=attribute.endlineno,
            parameters=_parameters(signature),
            returns=_annotation(signature.return_annotation),
        )
        if value.__doc__:
            function.docstring = griffe.Docstring(
                inspect.cleandoc(value.__doc__), parent=function
            )
        module.set_member(attribute.name, function)

    def _fill(self, obj: griffe.Class | griffe.Function) -> None:
        needs_doc = obj.docstring is None
        needs_init = obj.is_class and "__init__" not in obj.members
        if not (needs_doc or needs_init) or obj.name.startswith("_"):
            return
        value = _runtime(obj)
        if value is None:
            return
        if needs_doc and getattr(value, "__doc__", None):
            doc = inspect.cleandoc(value.__doc__)
            obj.docstring = griffe.Docstring(doc, parent=obj)
            if obj.is_class and "__doc__" in obj.members:
                del obj.members["__doc__"]
        if needs_init:
            init = _generated_init(value)
            if init is not None:
                obj.set_member("__init__", init)
