"""Datasets and item content: MovieLens atomic files, plot text, posters."""

from fusionlayer.data.movielens import (
    DATASETS,
    ItemContent,
    default_data_root,
    ensure_dataset,
    item_text,
    load_item_content,
)
from fusionlayer.data.slicing import slice_users

__all__ = ["DATASETS", "ItemContent", "default_data_root", "ensure_dataset", "item_text", "load_item_content", "slice_users"]
