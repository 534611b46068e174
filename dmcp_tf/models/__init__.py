"""Model zoo: gated supernets and the paper's pruned structures."""

from dmcp_tf.models.mobilenet_v2 import mobilenet_v2
from dmcp_tf.models.paper_structures import (
    MOBILENET_V2_STRUCTURES,
    RESNET50_STRUCTURES,
    mobilenet_v2_config,
    resnet50_config,
)
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.models.resnet import fashion_resnet, resnet, resnet18, resnet50

SUPERNETS = {
    "mobilenet_v2": mobilenet_v2,
    "resnet50": resnet50,
    "resnet18": resnet18,
    "fashion_resnet": fashion_resnet,
}


def build_supernet(name, **kwargs):
    """Builds a supernet of the zoo by name (see `SUPERNETS`)."""
    if name not in SUPERNETS:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(SUPERNETS)}.")
    return SUPERNETS[name](**kwargs)


def mobilenet_v2_dmcp(structure, **kwargs):
    """A Table 8 MobileNetV2 (`"300M"`, `"210M"`, `"97M"`, `"59M"`), freshly initialised."""
    supernet = mobilenet_v2(1.5, **kwargs)
    return rebuild(supernet, mobilenet_v2_config(structure), copy_weights=False, name=f"mobilenet_v2_dmcp_{structure}")


def resnet50_dmcp(structure, **kwargs):
    """A Table 7 ResNet-50 (`"2.8G"`), freshly initialised."""
    supernet = resnet50(**kwargs)
    return rebuild(supernet, resnet50_config(structure), copy_weights=False, name=f"resnet50_dmcp_{structure}")


PAPER_MODELS = {
    **{f"mobilenet_v2_{s}": (lambda s=s, **kw: mobilenet_v2_dmcp(s, **kw)) for s in MOBILENET_V2_STRUCTURES},
    **{f"resnet50_{s}": (lambda s=s, **kw: resnet50_dmcp(s, **kw)) for s in RESNET50_STRUCTURES},
}

__all__ = [
    "SUPERNETS", "PAPER_MODELS", "build_supernet", "mobilenet_v2", "mobilenet_v2_dmcp", "resnet",
    "resnet18", "resnet50", "resnet50_dmcp", "fashion_resnet", "mobilenet_v2_config", "resnet50_config",
]
