"""Adapter for RecBole's BPR (matrix factorisation, pairwise loss; a general recommender).

BPR's batches carry no sequence, so the adapter takes each user's training history from the
dataset given to ``attach(..., dataset=train_data.dataset)``: the newest ``max_seq_length`` items per
user, in timestamp order where the dataset has one, kept as a buffer. Only the training split's
interactions may be given (the validation and test items must not leak into the history).

Where fusion enters, and why:

* **User side.** ``get_user_embedding`` (used by ``forward``, ``calculate_loss``, ``predict`` and
  ``full_sort_predict``) returns the user embedding plus the fused history (ID stream: the history's
  item embeddings; plus image and text) through ``user_out`` (zero at attach). MF's user vector is
  a free parameter learnt from few interactions; the history's content gives it a prior.
* **The positive left out** (``hold_out_target=True``). The history holds every training item, so in
  training each positive sits in its own user's history, which evaluation never has: the content path
  can learn to score an item by its likeness to itself. With the option, a training step's fused
  history leaves out the positive being scored (one history per case instead of one per user).
* **Candidate side.** ``item_embedding`` becomes a :class:`ContentEmbedding`, so every score,
  including ``full_sort_predict``'s ``item_embedding.weight``, sees the item's content.

What the compatibility benchmark measured is in ``benchmarks/results/`` and the README, not here.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from fusionlayer.adapters.base import FusionAdapter
from fusionlayer.adapters.content import module_tensors
from fusionlayer.recbole_compat import SPLIT_ATTR

__all__ = ["BPRAdapter", "user_histories"]


def user_histories(dataset, n_users: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n_users, max_len)`` newest-last item ids (right-padded with 0) and their lengths."""
    inter = dataset.inter_feat
    users = inter[dataset.uid_field].long()
    items = inter[dataset.iid_field].long()
    time_field = getattr(dataset, "time_field", None)
    order = torch.argsort(inter[time_field].double(), stable=True) if time_field and time_field in inter else torch.arange(len(users))
    order = order[torch.argsort(users[order], stable=True)]  # by user, then time
    users, items = users[order], items[order]
    counts = torch.bincount(users, minlength=n_users)
    starts = torch.cumsum(counts, 0) - counts
    lengths = counts.clamp(max=max_len)
    history = torch.zeros(n_users, max_len, dtype=torch.long)
    for offset in range(max_len):  # fill column by column: the newest `lengths[u]` items of each user
        rows = torch.nonzero(lengths > offset).flatten()
        history[rows, offset] = items[starts[rows] + counts[rows] - lengths[rows] + offset]
    return history, lengths


class BPRAdapter(FusionAdapter):
    candidate_embeddings = ("item_embedding",)
    overrides = ("get_user_embedding", "calculate_loss", "full_sort_predict")
    id_stream_dim_attr = "embedding_size"

    def __init__(self, model: nn.Module, tables, *, options, dataset=None) -> None:
        super().__init__(model, tables, options=options, dataset=dataset)
        history, lengths = user_histories(dataset, model.n_users, self.config.max_seq_length)
        self.register_buffer("history", history, persistent=False)
        self.register_buffer("history_len", lengths, persistent=False)

    @classmethod
    def check_model(cls, model: nn.Module, *, dataset=None, options=None) -> None:
        super().check_model(model, dataset=dataset, options=options)
        if dataset is None or not hasattr(dataset, "inter_feat"):
            raise ValueError(
                "BPR batches carry no history: pass the training dataset, "
                "fusionlayer.attach(model, features=..., dataset=train_data.dataset)"
            )
        role = getattr(dataset, SPLIT_ATTR, None)
        if role in ("full", "valid", "test"):
            raise ValueError(
                f"the dataset passed to attach() is RecBole's {role!r} dataset: it holds validation/test interactions, "
                "which would leak into the users' fused histories; pass the training split, "
                "fusionlayer.attach(model, features=..., dataset=train_data.dataset)")
        if role is None:
            warnings.warn(
                "cannot tell whether this dataset holds only training interactions (it was not built by RecBole's "
                "Dataset.build after import fusionlayer); make sure it is train_data.dataset, or the "
                "evaluation items leak into the fused histories", UserWarning, stacklevel=4)
        if dataset.user_num != model.n_users or dataset.item_num != model.n_items:
            raise ValueError(
                f"dataset has {dataset.user_num} users / {dataset.item_num} items but the model was built for "
                f"{model.n_users} / {model.n_items}; pass the dataset the model was built on (train_data.dataset)"
            )

    def fused_full_sort_predict(self, interaction) -> torch.Tensor:
        """RecBole's ``user_e @ item_weight.T``, by :meth:`score_items` (old items bit for bit after ``add_items``)."""
        user_e = self.model.get_user_embedding(interaction[self.model.USER_ID])
        return self.score_items(user_e, self.model.item_embedding.weight).view(-1)

    def fused_calculate_loss(self, interaction) -> torch.Tensor:
        """BPR's own loss; with ``hold_out_target`` in a training step, the positives are left out of their users'
        fused histories (read by :meth:`fused_get_user_embedding` from the step's scope)."""
        if self.options.hold_out_target and self.history_on and self._scope is not None \
                and self._scope.get("training_loss"):
            self._scope["held_out"] = interaction[self.model.ITEM_ID]
        return self.base_calculate_loss(interaction)

    def fused_get_user_embedding(self, user: torch.Tensor) -> torch.Tensor:
        if not self.history_on:
            return self.base_get_user_embedding(user)
        held = self._scope.get("held_out") if self._scope is not None else None
        if held is not None and held.shape == user.shape:  # a history per case: the positive left out
            history = self.history[user]
            history = history.masked_fill(history == held.to(history.device).unsqueeze(1), 0)
            fused = self.fuse_history(history, id_sequence=self.model.item_embedding(history))
            return self.base_get_user_embedding(user) + fused
        if self.content.caching():  # inference: every user's fused history once, kept while nothing it depends on changes
            return self.base_get_user_embedding(user) + self.fused_users()[user]
        users, inverse = torch.unique(user, return_inverse=True)  # a batch repeats users: fuse each once
        history, embedding = self.history[users], self.model.item_embedding
        # inference reads the whole fused table (cached across calls); training the histories' rows only
        if not self.content.caching() and history.numel() < self.rows_fraction * embedding.num_embeddings:
            fused = self.fuse_history(history, id_sequence=embedding(history))
        else:
            fused = self.fuse_history(history, id_table=embedding.weight)
        return self.base_get_user_embedding(user) + fused[inverse]

    def fused_users(self, chunk: int = 4096) -> torch.Tensor:
        """(n_users, E): every user's fused history, for inference (RecBole's full-sort evaluation of a general model
        scores one user per call); in the inference cache, recomputed when a parameter or buffer it reads changes."""
        embedding = self.model.item_embedding
        inputs = [*module_tensors(self), getattr(embedding, "base_layer", embedding).weight]

        def compute() -> torch.Tensor:
            weight = embedding.weight
            return torch.cat([self.fuse_history(self.history[start:start + chunk], id_table=weight)
                              for start in range(0, self.history.shape[0], chunk)])
        return self.content.memoised("fused_users", inputs, compute)
