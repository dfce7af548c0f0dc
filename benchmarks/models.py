"""The one table of benchmarked models: name -> RecBole class, and which variants each model has.

Backbones run ``plain`` and ``fusion`` (``attach()``); the standalone Mixers (M2SR, MLPMixerRec) run
as themselves (``standalone``).
"""

from __future__ import annotations

__all__ = ["BACKBONES", "STANDALONE", "MODELS", "model_class", "variants"]

BACKBONES = ["BPR", "FPMC", "GRU4Rec", "SASRec"]
STANDALONE = ["MLPMixerRec", "M2SR"]
MODELS = BACKBONES + STANDALONE


def model_class(name: str) -> type:
    """The RecBole model class for a benchmark name (RecBole imported on first use)."""
    import fusionlayer

    fusionlayer.patch_recbole()
    from recbole.model.general_recommender import BPR
    from recbole.model.sequential_recommender import FPMC, GRU4Rec, SASRec

    classes = {"BPR": BPR, "FPMC": FPMC, "GRU4Rec": GRU4Rec, "SASRec": SASRec,
               "MLPMixerRec": fusionlayer.MLPMixerRec, "M2SR": fusionlayer.M2SR}
    if name not in classes:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(classes)}")
    return classes[name]


def variants(name: str) -> list[str]:
    """``["plain", "fusion"]`` for a backbone, ``["standalone"]`` for a Mixer model."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {MODELS}")
    return ["standalone"] if name in STANDALONE else ["plain", "fusion"]
