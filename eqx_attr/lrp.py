"""LRP rules and composites for [`eqx_attr.LRP`][], named and defined as in Zennit.

Rules (each maps a layer's output relevance to its input):

- [`Epsilon`][eqx_attr.lrp.Epsilon], [`ZPlus`][eqx_attr.lrp.ZPlus],
  [`AlphaBeta`][eqx_attr.lrp.AlphaBeta], [`Gamma`][eqx_attr.lrp.Gamma],
  [`ZBox`][eqx_attr.lrp.ZBox], [`Flat`][eqx_attr.lrp.Flat],
  [`WSquare`][eqx_attr.lrp.WSquare] for dense and convolutional layers;
- [`Norm`][eqx_attr.lrp.Norm] (proportional split) for average pools and
  skip-connection sums;
- [`Pass`][eqx_attr.lrp.Pass] for activations and other elementwise operations;
- [`Uniform`][eqx_attr.lrp.Uniform] (products of two activations) and
  [`Softmax`][eqx_attr.lrp.Softmax], AttnLRP's rules for attention.

Composites (which rule each kind of layer gets):
[`EpsilonPlus`][eqx_attr.lrp.EpsilonPlus],
[`EpsilonPlusFlat`][eqx_attr.lrp.EpsilonPlusFlat],
[`EpsilonGammaBox`][eqx_attr.lrp.EpsilonGammaBox],
[`EpsilonAlpha2Beta1`][eqx_attr.lrp.EpsilonAlpha2Beta1],
[`AttnLRP`][eqx_attr.lrp.AttnLRP] (transformers and modern layers);
[`AbstractComposite`][eqx_attr.lrp.AbstractComposite] to write your own.

```python
import eqx_attr as xa

a = xa.LRP(model, composite=xa.lrp.EpsilonPlusFlat())(x, target=3)
a = xa.LRP(model, rule=xa.lrp.Epsilon(1e-6))(x, target=3)
a = xa.LRP(model, overrides=((lambda m: m.fc, xa.lrp.Epsilon(0.25)),))(x, 3)
```
"""

from ._rules._lrp_attn_rules import Softmax as Softmax, Uniform as Uniform
from ._rules._lrp_composites import (
    COMPOSITE_NAMES as COMPOSITE_NAMES,
    AbstractComposite as AbstractComposite,
    AttnLRP as AttnLRP,
    EpsilonAlpha2Beta1 as EpsilonAlpha2Beta1,
    EpsilonGammaBox as EpsilonGammaBox,
    EpsilonPlus as EpsilonPlus,
    EpsilonPlusFlat as EpsilonPlusFlat,
    SingleRule as SingleRule,
    composite_by_name as composite_by_name,
)
from ._rules._lrp_rules import (
    AbstractRule as AbstractRule,
    AlphaBeta as AlphaBeta,
    Epsilon as Epsilon,
    Flat as Flat,
    Gamma as Gamma,
    Norm as Norm,
    Pass as Pass,
    WSquare as WSquare,
    ZBox as ZBox,
    ZPlus as ZPlus,
)
