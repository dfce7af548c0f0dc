"""Backbone adapters, installed as ``fusionlayer.adapters`` (one file per backbone family).

Read this first. An adapter is split by concern, one file each, imports pointing down the list only:

* ``sequential.py``, ``bpr.py``, ``fpmc.py``: where fusion enters each backbone (the embeddings to wrap, the
  methods to override and how they call :meth:`FusionAdapter.fuse_history` and :meth:`FusionAdapter.score_items`)
  and what each backbone must provide; ``registry.py`` maps model classes to them.
* ``base.py``: :class:`FusionAdapter`, the adapter proper. It owns the weights (the fusion layer, ``user_out``,
  ``item_out``, with ``cold_regression`` ``cold_out``: all a checkpoint holds, with ``cold_score_offset``) and computes both sides of the fusion: the
  fused history, and the content part of the candidate embeddings. It composes two parts, its children
  ``content`` and ``cold``, and keeps their attributes readable (and, where host code writes them, writable) on
  itself: ``model.fusion_adapter.cold_items``, ``.normed_text``, ``.clear_cache()``, ...
* ``install.py``: putting an adapter on a model and taking it off (PEFT's inject / unload):
  :class:`ContentEmbedding` wrappers, overridden methods, entry points run in a per-call scope.
* ``content.py``: :class:`~fusionlayer.adapters.content.ItemContent`, the items' frozen feature tables
  (normalised, reduced, presence flags), their projection through the fusion's input projections, the call
  cache (once per call; across calls at inference) and work over blocks of items, so added items never change
  the values of the others.
* ``cold.py``: :class:`~fusionlayer.adapters.cold.ColdItems`, the cold-item policy (``cold_dropout``,
  ``cold_regression``): which
  items are scored from content alone, which negatives a training step leaves out or redraws, the calibrated
  score offset.
* ``catalogue.py``: growing the host model's ID tables when items are added after attach.

``content`` and ``cold`` know nothing of the adapter (``content`` reads the fusion layer's input projections):
what they need from a call, such as the scope's values or RecBole's field names, is passed in.
"""

from fusionlayer.adapters.base import ContentEmbedding, FusionAdapter
from fusionlayer.adapters.bpr import BPRAdapter
from fusionlayer.adapters.fpmc import FPMCAdapter
from fusionlayer.adapters.registry import get_adapter, list_adapters, register_adapter
from fusionlayer.adapters.sequential import GenericSequentialAdapter, GRU4RecAdapter, SASRecAdapter, SequentialAdapter

__all__ = ["BPRAdapter", "ContentEmbedding", "FPMCAdapter", "FusionAdapter", "GRU4RecAdapter",
           "GenericSequentialAdapter", "SASRecAdapter", "SequentialAdapter", "get_adapter", "list_adapters",
           "register_adapter"]
