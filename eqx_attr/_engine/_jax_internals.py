"""Everything the rule engine knows about JAX's internals, in one place.

Primitive names that moved between versions, the layout of `eqn.params`, how to
re-bind an equation, and the source paths and stack frames that tell model code
from library plumbing. [`self_check`][] exercises every assumption below on a
tiny program; `tests/test_rules_engine.py` calls it, so a JAX upgrade that
breaks one of them fails there, loudly, instead of silently changing a rule.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.extend.core as jex
import jax.numpy as jnp

Literal = jex.Literal
ClosedJaxpr = jex.ClosedJaxpr
Jaxpr = jex.Jaxpr
JaxprEqn = jex.JaxprEqn

# Primitive names of the higher-order primitives, old and new spellings.
JIT = ("jit", "pjit", "closed_call", "core_call")
REMAT = ("remat2", "checkpoint", "remat")
CUSTOM_JVP = ("custom_jvp_call",)
CUSTOM_VJP = ("custom_vjp_call", "custom_vjp_call_jaxpr")
CUSTOM = (*CUSTOM_JVP, *CUSTOM_VJP)
SCAN, WHILE, COND = "scan", "while", "cond"

JAX_DIR = os.path.dirname(jax.__file__) + os.sep
EQX_DIR = os.path.dirname(eqx.__file__) + os.sep
NN_FILE = os.path.join("jax", "_src", "nn", "functions.py")
ENGINE_DIR = os.path.dirname(__file__) + os.sep

# Equinox modules that only forward a call (`eqx.nn.Lambda`, `eqx.nn.Sequential`,
# `filter_jit`, ...): a frame there says nothing about who wrote the operation.
EQX_FORWARDING = tuple(
    os.path.join(EQX_DIR, *p.split("/"))
    for p in ("nn/_sequential.py", "_jit.py", "_vmap_pmap.py", "_ad.py", "_module/")
)
# The jax modules a user's `jnp.maximum(x, 0)` / `lax.max` / `jnp.clip` /
# `jnp.where` / `*` passes through on its way to the primitive. One reached through
# any other jax module (e.g. `jax.image.resize`'s triangle kernel) is library code.
PLUMBING = tuple(
    os.path.join(JAX_DIR, "_src", *p.split("/"))
    for p in (
        "interpreters/",
        "core.py",
        "pjit.py",
        "api.py",
        "api_util.py",
        "linear_util.py",
        "dispatch.py",
        "profiler.py",
        "traceback_util.py",
        "source_info_util.py",
        "numpy/ufunc_api.py",
        "numpy/ufuncs.py",
        "numpy/lax_numpy.py",
        "numpy/array_methods.py",
        "numpy/util.py",
        "lax/lax.py",
        "nn/functions.py",  # jax.nn.relu and relu6 themselves
        "custom_derivatives.py",
        "ad_checkpoint.py",
        "lax/control_flow/",
    )
)


class Frame(NamedTuple):
    """One Python frame recorded when an equation was traced."""

    file: str
    function: str
    line: int


def frames(eqn: Any) -> list[Frame]:
    """The trace-time stack of `eqn`, innermost first (empty when not recorded)."""
    tb = getattr(getattr(eqn, "source_info", None), "traceback", None)
    if tb is None:
        return []
    return [Frame(f.file_name, f.function_name, f.line_num) for f in tb.frames]


# The higher-order equations whose bodies are being evaluated, innermost last.
_CALLERS: list = []


@contextlib.contextmanager
def calling(eqn: Any):
    """While evaluating the body of `eqn` (a `jit`, a custom derivative, a loop):
    [`where`][] falls back to `eqn`'s location for the body's equations."""
    _CALLERS.append(eqn)
    try:
        yield
    finally:
        _CALLERS.pop()


def _model_frame(eqn: Any) -> str | None:
    for frame in frames(eqn):
        if not frame.file.startswith((JAX_DIR, EQX_DIR)):
            return f"{frame.file}:{frame.line} ({frame.function})"
    return None


def where(eqn: Any) -> str:
    """Where the model's code made `eqn`: its first frame outside jax and Equinox
    (so an `eqx.nn.Lambda`'s activation points at the model, not at `Lambda`), or
    else where the model called the library function whose body holds `eqn`
    (`jnp.cumsum` is a `jit` of its own)."""
    for candidate in (eqn, *reversed(_CALLERS)):
        found = _model_frame(candidate)
        if found is not None:
            return found
    return "an unknown location"


def scope(eqn: Any) -> str:
    """The `jax.named_scope`s `eqn` was traced in, e.g. `"eqx.nn.BatchNorm/vmap()"`
    (Equinox names the calls of its layers this way); empty when not recorded."""
    stack = getattr(getattr(eqn, "source_info", None), "name_stack", None)
    return "" if stack is None else str(stack)


def nn_function(eqn: Any, names: Sequence[str]) -> str | None:
    """The `jax.nn` function in `names` that `eqn` was traced inside, if any.

    Needed for the activations `jax.nn` does not jit (e.g. `gelu`): their
    equations carry no name in the jaxpr, but the recorded stack still does.
    """
    for frame in frames(eqn):
        if frame.function in names and frame.file.endswith(NN_FILE):
            return frame.function
    return None


def name_of(eqn: Any) -> str | None:
    """The function name of a `jit` or custom-derivative call, else None."""
    prim = eqn.primitive.name
    if prim in JIT:
        return eqn.params.get("name")
    if prim in CUSTOM:
        return fn_name(eqn.params.get("call_jaxpr"))
    return None


def fn_name(closed: Any) -> str:
    """The Python name of the function a (closed) jaxpr was traced from."""
    dbg = getattr(getattr(closed, "jaxpr", closed), "debug_info", None)
    name = getattr(dbg, "func_name", None)
    if name is None:
        src = getattr(dbg, "func_src_info", None) or ""
        name = src.split(" ")[0] if src else "<unknown>"
    return name


def sub_jaxprs(eqn: Any) -> list[tuple[Any, Sequence]]:
    """`(jaxpr, consts)` for every jaxpr in `eqn.params`, in parameter order."""
    found = []
    for value in eqn.params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, jex.ClosedJaxpr):
                found.append((item.jaxpr, item.consts))
            elif isinstance(item, jex.Jaxpr):
                found.append((item, ()))
    return found


def bind(eqn: Any, invals: Sequence) -> list:
    """Evaluate `eqn` unchanged on `invals`; always returns a list of outputs."""
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = []
    if isinstance(params, tuple):  # jax < 0.7 returned (subfuns, params)
        subfuns, params = params
    manager = getattr(getattr(eqn, "ctx", None), "manager", None)
    with manager if manager is not None else contextlib.nullcontext():
        out = eqn.primitive.bind(*subfuns, *invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def without_dead_code(closed: Any) -> Any:
    """`closed` (a ClosedJaxpr) without the equations no output depends on (its
    inputs all kept, effectful equations kept). A layer method that replaces a
    layer's output leaves the layer's inputs computed for nothing; a rule engine
    must not see that dead prefix as part of the network."""
    from jax._src.interpreters import partial_eval as pe

    n_out = len(closed.jaxpr.outvars)
    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * n_out, instantiate=True)
    return jex.ClosedJaxpr(jaxpr, closed.consts)


def is_tracer(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)  # pyright: ignore[reportAttributeAccessIssue]


def vmapped_size() -> int:
    """How many copies of the code being traced run at once: the product of the
    sizes of every `jax.vmap` around this point of tracing (1 outside any; a
    `jax.jit` called under a vmap counts it too, since its program is batched).

    Only a performance hint (the chunking of IG's path points on CPU): it reads
    JAX's current trace, which has no public API, and answers 1 where that fails.
    """
    try:
        from jax._src import core
        from jax._src.interpreters import batching

        size, level = 1, core.trace_ctx.trace
        while level is not None:
            if isinstance(level, batching.BatchTrace):
                size *= int(level.axis_data.size)
            level = getattr(level, "parent_trace", None)
        return size
    except (ImportError, AttributeError, TypeError):
        return 1


def self_check() -> None:
    """Raise `RuntimeError` if this JAX no longer matches what the engine assumes."""

    def problem(what: str) -> RuntimeError:
        return RuntimeError(
            f"eqx_attr's rule engine does not understand jax {jax.__version__}: "
            f"{what}. Update eqx_attr/_engine/_jax_internals.py."
        )

    for path in PLUMBING + EQX_FORWARDING:
        if not os.path.exists(path.rstrip(os.sep)):
            raise problem(f"the source path {path} no longer exists")

    def model(x, w):
        y = jax.nn.relu(jnp.dot(w, x))
        y = jax.jit(lambda z: z * 2.0)(y)
        y = jax.checkpoint(lambda z: z + 1.0)(y)
        return jax.nn.gelu(y)

    closed = jax.make_jaxpr(model)(jnp.ones(3), jnp.ones((3, 3)))
    prims = [e.primitive.name for e in closed.jaxpr.eqns]
    relu = [e for e in closed.jaxpr.eqns if e.primitive.name in CUSTOM_JVP]
    if len(relu) != 1 or name_of(relu[0]) != "relu":
        raise problem(f"jax.nn.relu is no longer a named custom_jvp_call ({prims})")
    if not any(p in JIT for p in prims) or not any(p in REMAT for p in prims):
        raise problem(f"jit/checkpoint primitives are named differently ({prims})")
    for eqn in closed.jaxpr.eqns:
        if sub_jaxprs(eqn) and eqn.primitive.name not in (*JIT, *REMAT, *CUSTOM):
            raise problem(f"unexpected higher-order primitive {eqn.primitive.name}")
    if nn_function(closed.jaxpr.eqns[-1], ("gelu",)) != "gelu":
        raise problem("the stack recorded with an equation no longer shows jax.nn")
    if "test" not in where(closed.jaxpr.eqns[0]) and __file__ not in where(
        closed.jaxpr.eqns[0]
    ):
        raise problem("equations no longer record the caller's source line")
    out = bind(closed.jaxpr.eqns[0], [jnp.ones((3, 3)), jnp.ones(3)])
    if len(out) != 1 or out[0].shape != (3,):
        raise problem("re-binding an equation with its params failed")

    sizes = []
    jax.jit(jax.vmap(jax.vmap(lambda z: sizes.append(vmapped_size()) or z)))(
        jnp.ones((3, 4))
    )
    if sizes != [12] or vmapped_size() != 1:
        raise problem(f"the sizes of enclosing vmaps are no longer found ({sizes})")

    def scoped_fn(z):
        with jax.named_scope("eqx.nn.BatchNorm"):
            return z - 1.0

    scoped = jax.make_jaxpr(scoped_fn)(jnp.ones(3)).jaxpr.eqns
    if "eqx.nn.BatchNorm" not in scope(scoped[0]):
        raise problem("equations no longer record their jax.named_scope")
