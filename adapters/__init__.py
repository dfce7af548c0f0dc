"""Backbone adapters, installed as ``fusionlayer.adapters`` (one file per backbone family)."""

from fusionlayer.adapters.base import ContentEmbedding, FusionAdapter
from fusionlayer.adapters.bpr import BPRAdapter
from fusionlayer.adapters.fpmc import FPMCAdapter
from fusionlayer.adapters.registry import get_adapter, list_adapters, register_adapter
from fusionlayer.adapters.sequential import GenericSequentialAdapter, GRU4RecAdapter, SASRecAdapter, SequentialAdapter

__all__ = ["BPRAdapter", "ContentEmbedding", "FPMCAdapter", "FusionAdapter", "GRU4RecAdapter",
           "GenericSequentialAdapter", "SASRecAdapter", "SequentialAdapter", "get_adapter", "list_adapters",
           "register_adapter"]
