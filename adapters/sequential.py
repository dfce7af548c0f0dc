"""Adapters for RecBole's sequential models: SASRec, GRU4Rec, and any model with the same contract.

Where fusion enters, and why:

* **Sequence side.** The backbone's own per-position output is the ID stream (SASRec: the last
  Transformer layer; GRU4Rec: the GRU output after its ``dense`` projection), captured by a forward
  hook on that submodule. The image and text features of the same history are the other streams of
  a :class:`~fusionlayer.FeatureFusionLayer`; its fused output at the newest item goes through
  ``user_out`` (zero at attach) and is added to the backbone's sequence vector. The backbone keeps
  modelling order and recency; the fusion adds what the items *are*.
* **Candidate side.** ``item_embedding`` becomes a :class:`ContentEmbedding`: every item's
  embedding gains its projected content (zero at attach). RecBole scores with
  ``item_embedding.weight`` in ``calculate_loss`` (CE) and ``full_sort_predict``, and looks up the
  history through the same module, so training, ``predict`` and full ranking all see the content;
  rarely seen items, whose ID embeddings learn least, gain most.

A model that is not registered but has ``item_embedding`` and ``forward(item_seq, item_seq_len)``
returning ``(B, H)`` gets :class:`GenericSequentialAdapter`: the same two sides, with the history's
item embeddings as the ID stream (no hook into an unknown backbone).

What the compatibility benchmark measured for these backbones is in ``benchmarks/results/`` and the
README, not here.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from fusionlayer.adapters.base import FusionAdapter

__all__ = ["SequentialAdapter", "SASRecAdapter", "GRU4RecAdapter", "GenericSequentialAdapter"]


class _Capture:
    """Forward hook keeping the backbone's per-position output for the adapter (a class, not a
    closure, so that a deep copy of the model feeds the copy's adapter and the model pickles)."""

    def __init__(self, adapter: "SequentialAdapter") -> None:
        self.adapter = adapter

    def __call__(self, module, args, output) -> None:
        self.adapter._captured.append(self.adapter.select_sequence(output))


class SequentialAdapter(FusionAdapter):
    """Base for models with ``item_embedding`` and ``forward(item_seq, item_seq_len) -> (B, H)``.

    Class attributes:
        sequence_module: the submodule whose output is the per-position sequence ``(B, L, H)``;
            None = use the history's item embeddings as the ID stream.
    """

    candidate_embeddings = ("item_embedding",)
    overrides = ("forward", "full_sort_predict")
    sequence_module: str | None = None

    @classmethod
    def check_model(cls, model: nn.Module, *, dataset=None, options=None) -> None:
        super().check_model(model, dataset=dataset, options=options)
        params = list(inspect.signature(model.forward).parameters)
        if params[:2] != ["item_seq", "item_seq_len"]:
            raise TypeError(f"{type(model).__name__}.forward must take (item_seq, item_seq_len), got {params}")
        if cls.sequence_module and not isinstance(getattr(model, cls.sequence_module, None), nn.Module):
            raise TypeError(f"{type(model).__name__} has no submodule {cls.sequence_module!r}")

    @staticmethod
    def select_sequence(output) -> torch.Tensor:
        return output

    def install(self, model: nn.Module) -> None:
        super().install(model)
        self._captured: list[torch.Tensor] = []
        self._hook = None
        if self.sequence_module:
            self._hook = getattr(model, self.sequence_module).register_forward_hook(_Capture(self))

    def uninstall(self, model: nn.Module) -> None:
        if self._hook is not None:
            self._hook.remove()
        super().uninstall(model)

    def fused_forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        seq_output = self.base_forward(item_seq, item_seq_len)  # (B, H)
        if not self.history_on:
            self._captured.clear()
            return seq_output
        if self.sequence_module:
            id_sequence = self._captured.pop()  # (B, L, H): the backbone's per-position output
        else:
            id_sequence = self.model.item_embedding(item_seq)
        self._captured.clear()
        return seq_output + self.fuse_history(item_seq, id_sequence=id_sequence)

    def fused_full_sort_predict(self, interaction) -> torch.Tensor:
        """RecBole's ``seq_output @ item_embedding.weight.T`` (SASRec, GRU4Rec), by :meth:`score_items`: old items'
        scores stay bit for bit after ``add_items``."""
        model = self.model
        seq_output = model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
        return self.score_items(seq_output, model.item_embedding.weight)


class SASRecAdapter(SequentialAdapter):
    """SASRec: ID stream = the last Transformer layer's output (``trm_encoder`` returns all layers)."""

    sequence_module = "trm_encoder"

    @staticmethod
    def select_sequence(output) -> torch.Tensor:
        return output[-1]


class GRU4RecAdapter(SequentialAdapter):
    """GRU4Rec: ID stream = the GRU output after ``dense`` (width ``embedding_size``)."""

    sequence_module = "dense"
    id_stream_dim_attr = "embedding_size"
    # The recipe search's pick on seed 0's validation split, confirmed on seeds 1 and 2 (mean validation NDCG@10
    # 0.0786 against the default's 0.0769): benchmarks/results/tuning/report.md.
    default_options = {"output_scale": 0.1}


class GenericSequentialAdapter(SequentialAdapter):
    """Any unregistered model with RecBole's sequential contract; ID stream = the item embeddings.

    Before any change, ``check_model`` runs the model's ``forward`` on a tiny probe batch (eval mode,
    no autograd, the random state restored) and refuses a model whose output is not ``(B, H)``: a
    model returning per-position outputs or a list would otherwise mix users' vectors silently.

    The model's own ``full_sort_predict`` stays (its scoring is unknown here): after ``add_items`` the old items'
    fused embeddings are unchanged bit for bit, their scores are as exact as that method's one matmul.
    """

    overrides = ("forward",)

    @classmethod
    def id_stream_dim(cls, model: nn.Module) -> int:
        return int(model.item_embedding.embedding_dim)

    @classmethod
    def check_model(cls, model: nn.Module, *, dataset=None, options=None) -> None:
        super().check_model(model, dataset=dataset, options=options)
        L = int(getattr(model, "max_seq_length", 0) or 0)
        n_items = int(model.item_embedding.num_embeddings)
        if L < 1 or n_items < 2:
            raise TypeError(f"{type(model).__name__} needs max_seq_length >= 1 and at least one item for the generic adapter")
        B = 3 if L != 3 else 2  # a batch size unlike L, so (L, H) or (B, L, H) outputs cannot pass for (B, H)
        device = model.item_embedding.weight.device
        lengths = torch.tensor([L, 1, max(1, L // 2)][:B], device=device)
        item_seq = (torch.arange(L, device=device) % (n_items - 1) + 1).expand(B, L) * (torch.arange(L, device=device) < lengths[:, None])
        was_training = model.training
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                model.eval()
                output = model.forward(item_seq, lengths)
        except Exception as exc:  # noqa: BLE001  (any failure of an unknown model: refuse, with its reason)
            raise TypeError(f"{type(model).__name__}.forward failed on a probe batch ({type(exc).__name__}: {exc}); "
                            "the generic adapter needs forward(item_seq, item_seq_len) -> (B, H)") from exc
        finally:
            model.train(was_training)
        H = cls.id_stream_dim(model)
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != (B, H):
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise TypeError(f"{type(model).__name__}.forward returned {got} for a probe batch of {B} histories, "
                            f"not ({B}, {H}) = (B, item_embedding dim); the generic adapter adds the fused history to "
                            "one vector per user. Register a dedicated adapter with fusionlayer.register_adapter")
