"""Typed results of the ReLU matcher: what the swap does with one equation
([`Action`][]) and what a scan of a jaxpr found ([`Site`][])."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Site:
    """One activation found in a traced forward pass.

    `kind`: a ReLU to swap, an already swapped one, one that cannot be swapped
    (`detail` says why), or another activation (`name` says which).
    """

    kind: Literal["relu", "swapped", "blocked", "other"]
    where: str
    detail: str = ""
    name: str = ""


@dataclass(frozen=True)
class Plain:
    """Bind unchanged."""


@dataclass(frozen=True)
class ReluOp:
    """An inline ReLU operation (`max`, `select_n`, `mul`) of input `index`."""

    index: int


@dataclass(frozen=True)
class ReluCall:
    """A call of `jax.nn.relu` (`cap=None`) or `jax.nn.relu6` (`cap=6.0`)."""

    cap: float | None


@dataclass(frozen=True)
class Swapped:
    """A ReLU already swapped in the PyTree (a `SwappedReLU`'s marked jit)."""


@dataclass(frozen=True)
class Other:
    """Another activation: bound unchanged, reported to the policy check."""

    name: str


@dataclass(frozen=True)
class Descend:
    """A higher-order primitive with ReLUs inside: rebuild it with its bodies
    rewritten."""

    sites: tuple[Site, ...]


@dataclass(frozen=True)
class Opaque:
    """A higher-order primitive with nothing to swap: bound unchanged."""

    sites: tuple[Site, ...]


@dataclass(frozen=True)
class Blocked:
    """ReLUs inside something that cannot be rebuilt."""

    what: str
    why: str


Action = Plain | ReluOp | ReluCall | Swapped | Other | Descend | Opaque | Blocked
