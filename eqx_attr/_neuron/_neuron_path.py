"""Path and reference attributions of one neuron to the input: Captum's
`NeuronIntegratedGradients`, `NeuronConductance`, `NeuronDeepLift` and
`NeuronGradientShap`."""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._attribution import (
    Attribution,
    Target,
    batched_map,
    check_chunk_size,
    check_key,
    check_positive_int,
)
from .._gradient._gradient_shap import GradientShap
from .._gradient._integrated import IntegratedGradients, quadrature
from .._layers import layer_activation_and_gradient
from .._layout import InputLayout, input_layout_field
from .._method_entry import BuildContext, Differentiability, MethodEntry
from .._rules._deeplift import DeepLift
from ..baselines import (
    AbstractBaseline,
    UniformNoise,
    Zeros,
    as_baseline,
    draw_baselines,
)
from ._select import AbstractNeuronAttribution, as_neuron, select_neuron

__all__ = [
    "NeuronIntegratedGradients",
    "NeuronConductance",
    "NeuronDeepLift",
    "NeuronGradientShap",
]


class NeuronIntegratedGradients(AbstractNeuronAttribution):
    """Integrated Gradients of one neuron's value with respect to the input.

    Captum's `NeuronIntegratedGradients`: `(x - b) * integral_0^1 grad n(b + a (x -
    b)) da`, with `n` the chosen neuron of the layer (the model cut after it).
    Attributions sum to `n(x) - n(b)` up to the quadrature error.

    **Arguments:**

    - `model`, `where`, `neuron`, `call_index`, `input_layout`: as for
        [`eqx_attr.NeuronGradient`][].
    - `n_steps`, `method`, `baseline`, `chunk_size`: as for
        [`eqx_attr.IntegratedGradients`][] (Captum's defaults: 50 steps,
        `"gausslegendre"`, zero baseline).

    **Returns:** `method(x)` gives an array shaped like `x`.

    ```python
    a = xa.NeuronIntegratedGradients(model, lambda m: m.conv2, (3, 5, 5),
                                     n_steps=16)(x)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    neuron: Any = eqx.field(converter=as_neuron)
    n_steps: int = eqx.field(static=True, default=50, kw_only=True)
    method: str = eqx.field(static=True, default="gausslegendre", kw_only=True)
    baseline: AbstractBaseline = eqx.field(
        default_factory=Zeros, converter=as_baseline, kw_only=True
    )
    chunk_size: int | Literal["auto"] | None = eqx.field(
        static=True, default="auto", kw_only=True
    )
    call_index: int | None = eqx.field(static=True, default=None, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        quadrature(self.method, self.n_steps)
        check_chunk_size(self.chunk_size, allow_auto=True)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        ig = IntegratedGradients(
            self.neuron_function(),
            n_steps=self.n_steps,
            method=self.method,
            baseline=self.baseline,
            chunk_size=self.chunk_size,
        )
        attr, _ = ig.attribute_with_delta(x, key=key)
        return attr


class NeuronConductance(AbstractNeuronAttribution):
    """Neuron conductance: the target's score flowing through one neuron to each input.

    Dhamdhere, Yan & Sundararajan, *How Important Is a Neuron?*, ICLR 2019;
    Captum's `NeuronConductance`. Along the straight path `x(a) = b + a (x - b)`:
    `attr_i = (x_i - b_i) * sum_k w_k dF/dy(x(a_k)) * dy/dx_i(x(a_k))`, with `F`
    the target's score, `y` the neuron and `(a_k, w_k)` the quadrature. Unlike the
    other neuron methods it takes the class `target` as every method does. A
    callable `neuron` is applied to the layer's output and to the target's
    gradient with respect to it (as Captum's), so it must select, not aggregate.

    **Arguments:**

    - `model`, `where`, `neuron`, `call_index`, `input_layout`: as for
        [`eqx_attr.NeuronGradient`][].
    - `n_steps`: quadrature nodes (static). Default 50 (Captum's).
    - `method`: the quadrature, as for [`eqx_attr.IntegratedGradients`][].
        Default `"riemann_trapezoid"` (Captum's).
    - `baseline`: as for [`eqx_attr.IntegratedGradients`][] (several draws are
        averaged). Default zeros.
    - `chunk_size`: evaluate at most this many path points at a time (`"auto"`,
        the default: as many as fit the memory budget).

    **Returns:** `method(x, target)` gives an array shaped like `x`.

    ```python
    a = xa.NeuronConductance(model, lambda m: m.conv2, (3, 5, 5), n_steps=16)(x, 3)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    neuron: Any = eqx.field(converter=as_neuron)
    n_steps: int = eqx.field(static=True, default=50, kw_only=True)
    method: str = eqx.field(static=True, default="riemann_trapezoid", kw_only=True)
    baseline: AbstractBaseline = eqx.field(
        default_factory=Zeros, converter=as_baseline, kw_only=True
    )
    chunk_size: int | Literal["auto"] | None = eqx.field(
        static=True, default="auto", kw_only=True
    )
    call_index: int | None = eqx.field(static=True, default=None, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    takes_target = True

    def __check_init__(self):
        quadrature(self.method, self.n_steps)
        check_chunk_size(self.chunk_size)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        alphas, weights = quadrature(self.method, self.n_steps)
        neuron_fn = self.neuron_function()
        bs = draw_baselines(self.baseline, x, key)  # (n_draws, *x.shape)
        n_draws = bs.shape[0]

        def point(args):
            b, alpha = args
            z = b + alpha.astype(x.dtype) * (x - b)
            _, g_layer = layer_activation_and_gradient(
                self.model, self.where, z, target, call_index=self.call_index
            )
            d_out = select_neuron(g_layer, self.neuron)  # dF / d neuron
            return d_out * jax.grad(neuron_fn)(z)

        b_all = jnp.repeat(bs, self.n_steps, axis=0)
        a_all = jnp.tile(jnp.asarray(alphas, jnp.float32), n_draws)
        grads = batched_map(point, (b_all, a_all), self.chunk_size)
        grads = grads.reshape(n_draws, self.n_steps, *x.shape).astype(jnp.float32)
        w = jnp.asarray(weights, jnp.float32)
        total = jnp.tensordot(w, grads, axes=(0, 1))  # (n_draws, *x.shape)
        return jnp.mean((x[None] - bs) * total, axis=0).astype(x.dtype)


class NeuronDeepLift(AbstractNeuronAttribution):
    """DeepLIFT (Rescale rule) of one neuron's value with respect to the input.

    Captum's `NeuronDeepLift`: [`eqx_attr.DeepLift`][] on the model cut after the
    layer, so `sum(attr) = n(x) - n(b)` (completeness) for a ReLU network. The
    part of the model before the layer must consist of operations DeepLIFT has a
    rule for (as for [`eqx_attr.DeepLift`][]).

    **Arguments:**

    - `model`, `where`, `neuron`, `call_index`, `input_layout`: as for
        [`eqx_attr.NeuronGradient`][].
    - `baseline`: the reference input (`None`/number/array, or one
        `eqx_attr.baselines` draw). Default zeros.
    - `eps`: where `|x - x0| < eps` the plain derivative is used (Captum: 1e-10).

    **Returns:** `method(x)` gives an array shaped like `x`.

    ```python
    a = xa.NeuronDeepLift(model, lambda m: m.conv2, (3, 5, 5))(x)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    neuron: Any = eqx.field(converter=as_neuron)
    baseline: AbstractBaseline = eqx.field(
        default_factory=Zeros, converter=as_baseline, kw_only=True
    )
    eps: float = eqx.field(static=True, default=1e-10, kw_only=True)
    call_index: int | None = eqx.field(static=True, default=None, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        dl = DeepLift(self.neuron_function(), baseline=self.baseline, eps=self.eps)
        return dl(x, key=key)


class NeuronGradientShap(AbstractNeuronAttribution):
    """GradientSHAP of one neuron's value: expected gradients x (input - baseline).

    Captum's `NeuronGradientShap`: per sample a baseline drawn uniformly from
    `baseline`'s draws, `alpha ~ U[0, 1]` and Gaussian noise of `stdev` on `x`;
    the attribution is the mean of `(x~ - b) * grad n(b + alpha (x~ - b))` (see
    [`eqx_attr.GradientShap`][]). Needs `key`.

    **Arguments:**

    - `model`, `where`, `neuron`, `call_index`, `input_layout`: as for
        [`eqx_attr.NeuronGradient`][].
    - `baseline`: the baseline distribution, e.g.
        `xa.baselines.Custom(bs, draws=True)`.
    - `n_samples`: samples per example (Captum's default 5).
    - `stdev`: the noise on the input (Captum's default 0.0).
    - `chunk_size`: evaluate at most this many samples at a time (`"auto"`, the
        default: as many as fit the memory budget).

    **Returns:** `method(x, key=key)` gives an array shaped like `x`.

    ```python
    gs = xa.NeuronGradientShap(model, lambda m: m.conv2, (3, 5, 5),
                               baseline=xa.baselines.UniformNoise(n_draws=4))
    a = gs(x, key=jax.random.key(0))
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    neuron: Any = eqx.field(converter=as_neuron)
    baseline: AbstractBaseline = eqx.field(converter=as_baseline, kw_only=True)
    n_samples: int = eqx.field(static=True, default=5, kw_only=True)
    stdev: float = eqx.field(static=True, default=0.0, kw_only=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(
        static=True, default="auto", kw_only=True
    )
    call_index: int | None = eqx.field(static=True, default=None, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_positive_int(self.n_samples, "n_samples")
        check_chunk_size(self.chunk_size)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        key = check_key(key, "NeuronGradientShap")
        gs = GradientShap(
            self.neuron_function(),
            baseline=self.baseline,
            n_samples=self.n_samples,
            stdev=self.stdev,
            chunk_size=self.chunk_size,
        )
        return gs(x, key=key)


_BENCH = ("bench_neurons.py", "Captum Neuron* loop")


def _neuron(c: BuildContext) -> Any:
    return c.option("neuron", 0)


def _baseline(c: BuildContext) -> Any:
    return c.baseline if c.baseline is not None else 0.0


_NOTE = "the path's gradients are summed in float32 whatever x's dtype"

ROWS = (
    MethodEntry(
        "neuron_integrated_gradients",
        NeuronIntegratedGradients,
        "neuron",
        "Integrated Gradients of one neuron of a layer (where, neuron, n_steps)",
        lambda c: NeuronIntegratedGradients(
            c.model,
            c.need("layer"),
            _neuron(c),
            n_steps=c.option("n_steps", 32),
            baseline=_baseline(c),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        needs=frozenset({"layer", "baseline"}),
        takes_target=False,
        differentiable=Differentiability(1, 1, _NOTE),
        benchmark=_BENCH,
    ),
    MethodEntry(
        "neuron_conductance",
        NeuronConductance,
        "neuron",
        "Conductance of the target through one neuron of a layer (where, neuron)",
        lambda c: NeuronConductance(
            c.model,
            c.need("layer"),
            _neuron(c),
            n_steps=c.option("n_steps", 32),
            baseline=_baseline(c),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        needs=frozenset({"layer", "baseline"}),
        takes_target=True,
        differentiable=Differentiability(1, 1, _NOTE),
        benchmark=(
            None,
            "not timed: n_steps gradients as NeuronIntegratedGradients (timed); "
            "equality with Captum's NeuronConductance is tested",
        ),
    ),
    MethodEntry(
        "neuron_deeplift",
        NeuronDeepLift,
        "neuron",
        "DeepLIFT (Rescale) of one neuron of a layer (where, neuron, baseline)",
        lambda c: NeuronDeepLift(
            c.model, c.need("layer"), _neuron(c), baseline=_baseline(c)
        ),
        needs=frozenset({"layer", "baseline"}),
        takes_target=False,
        baselines="one",
        differentiable=Differentiability(
            1, 1, "Rescale rule; the plain derivative within 1e-10 of the baseline"
        ),
        benchmark=(
            None,
            "not timed: one DeepLIFT pass of the cut model, as DeepLift (timed); "
            "equality with Captum's NeuronDeepLift is tested",
        ),
    ),
    MethodEntry(
        "neuron_gradient_shap",
        NeuronGradientShap,
        "neuron",
        "GradientSHAP of one neuron of a layer (where, neuron, n_samples, stdev)",
        lambda c: NeuronGradientShap(
            c.model,
            c.need("layer"),
            _neuron(c),
            baseline=(
                c.baseline if c.baseline is not None else UniformNoise(n_draws=8)
            ),
            n_samples=c.option("n_samples", 32),
            stdev=c.option("stdev", 0.0),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        needs=frozenset({"layer", "baseline", "key"}),
        takes_target=False,
        baselines="many",
        differentiable=Differentiability(
            1, 1, "for a fixed key; noise and sums in float32"
        ),
        benchmark=(
            None,
            "not timed: n_samples gradients of the cut model; equality with "
            "Captum's NeuronGradientShap is tested",
        ),
    ),
)
