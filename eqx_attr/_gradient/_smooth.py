"""SmoothGrad and its variants, as a wrapper around any attribution method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Attribution,
    Image,
    Target,
    check_choice,
    check_chunk_size,
    check_input,
    check_key,
    check_positive_int,
)
from .._engine._fast_derivatives import loop_body
from .._layout import (
    InputLayout,
    from_channels_first,
    input_layout_field,
    resolve_input_layout,
)
from .._memory import resolve_chunk_size
from .._method_entry import Differentiability, MethodEntry
from ._gradients import Gradients

__all__ = ["SmoothGrad"]

KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
NOISE = ("relative", "absolute")


class SmoothGrad(AbstractAttribution):
    """Average an attribution method over noisy copies of the input.

    Smilkov et al., *SmoothGrad: removing noise by adding noise*, 2017 (`kind=
    "smoothgrad"`); the squared variant (`"smoothgrad_sq"`) and VarGrad (`"vargrad"`,
    the variance over samples) are from Adebayo et al., *Local Explanation Methods
    for Deep Neural Networks Lack Sensitivity to Parameter Values*, 2018.

    **Arguments:**

    - `base`: any attribution method, e.g. `xa.Gradients(model)` or
        `xa.IntegratedGradients(model)`.
    - `n_samples`: number of noisy copies (static). Default 25.
    - `stdev`: the noise's standard deviation; relative to the input's range
        `max(x) - min(x)` when `noise="relative"` (default), else absolute.
    - `kind`: `"smoothgrad"` (mean), `"smoothgrad_sq"` (mean of squares) or
        `"vargrad"` (variance).
    - `chunk_size`: attribute at most this many noisy copies at once; `None`: all
        at once; `"auto"` (default): as many as fit the memory budget
        ([`eqx_attr.set_memory_budget`][]; a point is one noisy copy's attribution).
    - `input_layout`: `"chw"`, `"hwc"` or `None` (default: inferred from `x`'s
        shape, see [`eqx_attr.AbstractAttribution`][]): the noise is drawn
        channels first, so one key gives the same (transposed) attribution in
        either layout.

    **Returns:** the base method's output shape.

    ```python
    sg = xa.SmoothGrad(xa.Gradients(model), n_samples=25, stdev=0.15)
    a = sg(x, target=3, key=jax.random.key(1))
    ```
    """

    base: AbstractAttribution
    n_samples: int = eqx.field(static=True, default=25)
    stdev: float = 0.15
    kind: str = eqx.field(static=True, default="smoothgrad")
    noise: str = eqx.field(static=True, default="relative")
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    input_layout: InputLayout = input_layout_field()

    # Written out so that `base` comes first for type checkers too (they would
    # otherwise count the inherited abstract `model` as a constructor argument).
    def __init__(
        self,
        base: AbstractAttribution,
        n_samples: int = 25,
        stdev: float = 0.15,
        kind: str = "smoothgrad",
        noise: str = "relative",
        chunk_size: int | Literal["auto"] | None = "auto",
        *,
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
        self.base = base
        self.n_samples = n_samples
        self.stdev = stdev
        self.kind = kind
        self.noise = noise
        self.chunk_size = chunk_size

    def __check_init__(self):
        if not isinstance(self.base, AbstractAttribution):
            raise TypeError(
                "`base` must be an attribution method such as `xa.Gradients(model)`, "
                f"got {type(self.base).__name__}."
            )
        if getattr(self.base, "return_delta", False) is True:
            raise TypeError(
                "SmoothGrad needs a base method that returns one array; its `base` "
                "has `return_delta=True`: build the base without it."
            )
        check_positive_int(self.n_samples, "n_samples")
        check_choice(self.kind, "kind", KINDS)
        check_choice(self.noise, "noise", NOISE)
        check_chunk_size(self.chunk_size)
        if isinstance(self.stdev, (int, float)) and self.stdev < 0:
            raise ValueError(f"`stdev` must be >= 0, got {self.stdev}.")

    @property
    def model(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
    ) -> Callable[..., Any]:
        return self.base.model

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Attribution:
        key = check_key(key, "SmoothGrad")
        x = check_input(x)
        sigma = jnp.asarray(self.stdev, jnp.float32)
        if self.noise == "relative":
            sigma = sigma * (jnp.max(x) - jnp.min(x)).astype(jnp.float32)
        all_keys = jax.random.split(key, 2 * self.n_samples)
        noise_keys, base_keys = all_keys[: self.n_samples], all_keys[self.n_samples :]
        # The noise is drawn channels first and moved to `x`'s layout, so that
        # one key gives the same (transposed) result for either layout.
        layout = resolve_input_layout(x.shape, self.input_layout)
        cf_shape = (x.shape[-1], *x.shape[:-1]) if layout == "hwc" else x.shape

        def one(keys):
            k_noise, k_base = keys
            eps = jax.random.normal(k_noise, cf_shape, jnp.float32)
            eps = from_channels_first(eps, layout)
            xn = (x + sigma * eps).astype(x.dtype)
            a = self.base(xn, target, key=k_base)
            if not isinstance(a, jax.Array):
                raise TypeError(
                    "SmoothGrad needs a base method that returns one array; got "
                    f"{type(a).__name__} (did you set `return_delta=True`?)."
                )
            a = a.astype(jnp.float32)
            return a, a * a

        keys = (noise_keys, base_keys)
        chunk = resolve_chunk_size(self.chunk_size, one, keys, stacked=False)
        if chunk is None:
            a, a2 = jax.vmap(one)(keys)
            s1, s2 = jnp.mean(a, axis=0), jnp.mean(a2, axis=0)
        else:
            s1, s2 = _chunked_moments(one, keys, self.n_samples, chunk)
        if self.kind == "smoothgrad":
            out = s1
        elif self.kind == "smoothgrad_sq":
            out = s2
        else:
            out = jnp.maximum(s2 - s1 * s1, 0.0)
        return out.astype(x.dtype)


def _chunked_moments(
    fn: Callable, keys: tuple[Array, Array], n: int, chunk_size: int
) -> tuple[Array, Array]:
    """Mean and mean-square of `fn` over `keys`, `chunk_size` samples at a time."""
    chunk_size = min(chunk_size, n)
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n
    k_noise, k_base = keys
    if pad:
        k_noise = jnp.concatenate([k_noise, k_noise[:pad]])
        k_base = jnp.concatenate([k_base, k_base[:pad]])
    valid = (jnp.arange(n_chunks * chunk_size) < n).astype(jnp.float32)
    xs = (
        k_noise.reshape(n_chunks, chunk_size, *k_noise.shape[1:]),
        k_base.reshape(n_chunks, chunk_size, *k_base.shape[1:]),
        valid.reshape(n_chunks, chunk_size),
    )

    def body(carry, chunk):
        kn, kb, m = chunk
        a, a2 = jax.vmap(fn)((kn, kb))
        s1, s2 = carry
        return (
            s1 + jnp.tensordot(m, a, axes=(0, 0)),
            s2 + jnp.tensordot(m, a2, axes=(0, 0)),
        ), None

    shape = jax.eval_shape(lambda k: fn(k)[0], (k_noise[0], k_base[0])).shape
    zero = jnp.zeros(shape, jnp.float32)
    with loop_body():  # convolutions in forms XLA:CPU runs fast in loops
        (s1, s2), _ = jax.lax.scan(body, (zero, zero), xs)
    return s1 / n, s2 / n


ROWS = (
    MethodEntry(
        "smoothgrad",
        SmoothGrad,
        "gradient",
        "SmoothGrad of the gradient (n_samples, stdev)",
        lambda c: SmoothGrad(
            Gradients(c.model),
            n_samples=c.option("n_samples", 32),
            stdev=c.option("stdev", 0.15),
        ),
        needs=frozenset({"key"}),
        differentiable=Differentiability(
            1, 1, "for a fixed key; noise and sums in float32"
        ),
        benchmark=("run.py", "Captum NoiseTunnel(Saliency) (--methods smoothgrad)"),
    ),
)
