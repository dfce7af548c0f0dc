"""fusionlayer: multi-modal Mixer fusion (M2SR / MMMLP) for sequential recommenders.

``import fusionlayer`` needs only torch; ``M2SR``, ``MLPMixerRec`` and ``attach`` import RecBole on
first use.

Importing fusionlayer also makes RecBole 1.2.1 usable on numpy 2 and torch >= 2.6, so a script that
builds RecBole's ``Config``, ``create_dataset``, ``data_preparation`` and ``Trainer`` itself works
after ``import fusionlayer``, with no further call (:mod:`fusionlayer.recbole_compat` lists each change):

* numpy's removed aliases ``np.float_``, ``np.complex_``, ``np.unicode_``, ``np.bool8`` are added back;
* RecBole's ``Trainer`` loads its checkpoints (which torch >= 2.6's ``weights_only`` load refuses)
  through a restricted unpickler that accepts only the types RecBole's checkpoints hold;
* importing RecBole's sequential models no longer leaves autograd anomaly detection switched on;
* ``Dataset.build`` marks the train/valid/test splits (so ``attach`` can refuse a non-training split);
* without CUDA, RecBole's distributed training runs on gloo and the CPU instead of nccl.

The import itself imports no RecBole module: the RecBole modules are patched as they are imported
(an import hook), or at once if they were imported before fusionlayer. :func:`patch_recbole` applies
everything explicitly and is idempotent.
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
from fusionlayer.recbole_compat import install_hooks, patch_recbole

install_hooks()  # RecBole 1.2.1 on numpy 2 / torch >= 2.6 (see above); cheap, idempotent

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
