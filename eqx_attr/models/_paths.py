"""Layer paths: `"layer4[-1].conv2"` as a `where` function, without `eval`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[(?:-?\d+|\*)\])*)$")


def where_from_path(path: str) -> Callable[[Any], Any]:
    """A `where` function (as for `eqx.tree_at`) from a dotted layer path.

    **Arguments:**

    - `path`: attribute names and integer indices, e.g. `"conv2"`,
        `"features[-2]"`, `"layer4[-1].conv2"`; `[*]` maps the rest of the path
        over every element, e.g. `"blocks[*].attn.attn_drop"` names a list of
        modules (one per block).

    **Returns:** `where(model) -> sub-module` (or a list of them with `[*]`).

    **Raises:** `ValueError` naming the part that cannot be parsed.

    ```python
    where = where_from_path("blocks[-1].norm1")
    where(vit)                                   # vit.blocks[-1].norm1
    ```
    """
    steps: list[tuple[str, Any]] = []
    for part in path.split("."):
        match = _PART.match(part.strip())
        if not match:
            raise ValueError(
                f"layer path {path!r}: cannot parse {part!r}; use attribute names and "
                "integer indices, e.g. 'layer4', 'features[29]', 'blocks[-1].norm1'."
            )
        steps.append(("attr", match.group(1)))
        for index in re.findall(r"\[(-?\d+|\*)\]", match.group(2)):
            steps.append(("all", None) if index == "*" else ("item", int(index)))

    def walk(node: Any, rest: list[tuple[str, Any]]) -> Any:
        for i, (kind, value) in enumerate(rest):
            if kind == "all":
                return [walk(child, rest[i + 1 :]) for child in node]
            node = getattr(node, value) if kind == "attr" else node[value]
        return node

    def where(model: Any) -> Any:
        return walk(model, steps)

    where.__qualname__ = where.__name__ = f"where[{path}]"
    return where
