"""The one table of attribution methods, joined from the families' rows.

Each family package declares its rows beside its classes: a method module lists
its public classes in `__all__` and its [`MethodEntry`][] rows in a module-level
`ROWS` tuple, and the family's `__init__.py` star-imports the module, which
exports the classes (to `eqx_attr` too) and registers the rows. [`methods`][]
joins the rows of every module that the packages of `FAMILIES` export, in their
order. The CLI, the demos, the benchmarks' coverage list, the notebooks' helper
and the tests' method list read this table, so adding a method is: its class and
its row in its family's module, tests of its mathematics (the contract tests then
cover it automatically), and one `::: eqx_attr.MyMethod` line in
`docs/api/methods.md`.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType

from . import _cam, _gradient, _neuron, _perturbation, _region, _rules, _transformer
from ._method_entry import (
    BuildContext as BuildContext,
    Family as Family,
    MethodEntry as MethodEntry,
)

# The family packages, in the order of the table.
FAMILIES: tuple[ModuleType, ...] = (
    _gradient,
    _rules,
    _cam,
    _perturbation,
    _region,
    _transformer,
    _neuron,
)


def family_rows(family: ModuleType) -> tuple[MethodEntry, ...]:
    """The rows of a family package: the `ROWS` of each of its modules whose
    names it exports, in the order it exports them."""
    prefix = family.__name__ + "."
    modules: dict[str, ModuleType] = {}
    for value in vars(family).values():
        name = getattr(value, "__module__", None)
        if isinstance(name, str) and name.startswith(prefix) and name in sys.modules:
            modules.setdefault(name, sys.modules[name])
    return tuple(row for m in modules.values() for row in getattr(m, "ROWS", ()))


@functools.cache
def _joined(families: tuple[ModuleType, ...]) -> tuple[MethodEntry, ...]:
    table = tuple(row for family in families for row in family_rows(family))
    seen: dict[str, str] = {}
    for entry in table:
        for name in (entry.name, *entry.aliases):
            if name in seen:
                raise RuntimeError(
                    f"registry: {name!r} names both {seen[name]} and {entry.name}"
                )
            seen[name] = entry.name
    return table


def methods(family: str | None = None) -> tuple[MethodEntry, ...]:
    """Every registered method, in table order (optionally one family's)."""
    table = _joined(FAMILIES)
    if family is None:
        return table
    return tuple(e for e in table if e.family == family)


def get(name: str) -> MethodEntry:
    """The entry called `name` (or one of its aliases; `-` and `_` alike)."""
    key = name.strip().lower().replace("-", "_")
    for entry in methods():
        if key == entry.name or key in entry.aliases:
            return entry
    known = ", ".join(e.name for e in methods())
    raise ValueError(f"Unknown method {name!r}; choose one of: {known}.")
