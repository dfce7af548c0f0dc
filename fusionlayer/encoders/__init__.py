"""Item content encoders (text: transformers; image: timm or open_clip) and the on-disk feature cache.

The heavy imports (transformers, timm, open_clip) happen only when an encoder is built.
"""

from fusionlayer.encoders.cache import AlignedFeatures, CachedFeatures, FeatureStore
from fusionlayer.encoders.presets import PRESETS, build_encoder

__all__ = ["AlignedFeatures", "CachedFeatures", "FeatureStore", "PRESETS", "build_encoder"]

from fusionlayer.encoders.pipeline import default_cache_dir, encode_items, load_features  # noqa: E402

__all__ += ["default_cache_dir", "encode_items", "load_features"]
