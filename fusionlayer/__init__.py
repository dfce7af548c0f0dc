"""fusionlayer: multi-modal Mixer fusion (M2SR / MMMLP) for sequential recommenders.

``import fusionlayer`` needs only torch; ``M2SR``, ``MLPMixerRec`` and ``attach`` import RecBole on
first use (after :func:`patch_recbole`).
"""

from fusionlayer.attach import (
    add_items,
    attach,
    backbone_state_dict,
    calibrate_cold_offset,
    count_parameters,
    detach,
    fusion_state_dict,
    is_attached,
    list_adapters,
    load_backbone_state_dict,
    load_fusion_state_dict,
    register_adapter,
)
from fusionlayer.config import AdapterOptions, FusionConfig
from fusionlayer.fusion import FeatureFusionLayer
from fusionlayer.layers import MixerBlock, MlpBlock
from fusionlayer.recbole_compat import patch_recbole

__version__ = "0.1.0"

__all__ = [
    "AdapterOptions", "FeatureFusionLayer", "add_items", "calibrate_cold_offset", "FusionConfig", "MixerBlock", "MlpBlock", "M2SR", "MLPMixerRec", "attach", "detach",
    "register_adapter", "list_adapters", "count_parameters", "fusion_state_dict", "load_fusion_state_dict", "backbone_state_dict", "load_backbone_state_dict",
    "is_attached", "patch_recbole",
]

_LAZY = {"M2SR": "fusionlayer.models", "MLPMixerRec": "fusionlayer.models"}  # they import RecBole


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fusionlayer' has no attribute {name!r}")
