"""The model zoo: Equinox modules mapping ONE example to a vector of logits."""

from ._blocks import (
    AdaptiveAvgPool2d as AdaptiveAvgPool2d,
    FrozenBatchNorm2d as FrozenBatchNorm2d,
    LayerNorm as LayerNorm,
)
from ._paths import where_from_path as where_from_path
from ._pretrained import (
    ARCHITECTURES as ARCHITECTURES,
    create_model as create_model,
    load_pretrained as load_pretrained,
)
from ._resnet import (
    BasicBlock as BasicBlock,
    Bottleneck as Bottleneck,
    ResNet as ResNet,
    resnet18 as resnet18,
    resnet34 as resnet34,
    resnet50 as resnet50,
    resnet101 as resnet101,
    resnet152 as resnet152,
)
from ._segmenter import (
    SmallSegmenter as SmallSegmenter,
    digit_masks as digit_masks,
)
from ._small import MLP as MLP, SmallCNN as SmallCNN
from ._state import WithState as WithState, with_state as with_state
from ._vgg import (
    VGG as VGG,
    vgg11 as vgg11,
    vgg11_bn as vgg11_bn,
    vgg13 as vgg13,
    vgg13_bn as vgg13_bn,
    vgg16 as vgg16,
    vgg16_bn as vgg16_bn,
    vgg19 as vgg19,
    vgg19_bn as vgg19_bn,
)
from ._vit import (
    Attention as Attention,
    Block as Block,
    Mlp as Mlp,
    PatchEmbed as PatchEmbed,
    ViT as ViT,
    vit_base as vit_base,
    vit_small as vit_small,
    vit_tiny as vit_tiny,
)
from ._weight_files import (
    WeightsError as WeightsError,
    read_state_dict as read_state_dict,
)
from ._weights import (
    from_torch_state_dict as from_torch_state_dict,
    load as load,
    save as save,
    to_torch_state_dict as to_torch_state_dict,
)
from ._zoo import (
    MODEL_SPECS as MODEL_SPECS,
    ModelSpec as ModelSpec,
    model_spec as model_spec,
    spec_of as spec_of,
)
