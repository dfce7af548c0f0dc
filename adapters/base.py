"""What every adapter shares: the fusion modules, the feature buffers, content-aware embeddings.

An adapter is an ``nn.Module`` installed on a RecBole model as ``model.fusion_adapter``. It owns

* ``fusion``: a :class:`~fusionlayer.FeatureFusionLayer` over the history's modality streams
  (the sequence/user side), ending in ``user_out``, a Linear initialised to zero;
* ``item_out[name]``: one zero-initialised Linear per wrapped candidate embedding (the item side),
  fed by the item's projected content features;
* the per-item feature tables as non-persistent buffers (they move with ``model.to(device)`` and
  stay out of checkpoints).

Both output Linears start at zero, so a freshly attached model scores exactly like its backbone.

Work done once: the frozen feature tables are normalised once at attach time (the input
LayerNorm's affine part folds into the projection after it), and within one call of an entry point
(``forward``, ``calculate_loss``, ``predict``, ``full_sort_predict``) the projected tables and the
items' content vectors are computed once however often the host model reads ``item_embedding.weight``.

Inference cache: in eval mode with autograd off (``model.eval()`` and ``torch.no_grad()``, as in
RecBole's evaluation), those values are also kept across calls. The cache is dropped by
``model.train()``, by any call with autograd on (every training step runs one before its optimiser
step, which matters for fused optimisers: they do not bump version counters), and whenever a tensor
it was computed from changes storage or in-place version (``load_state_dict``, ``.to()``, in-place
edits). Edits through ``.data`` bypass all of these: call ``model.fusion_adapter.clear_cache()``
after them. With autograd on nothing is kept across calls (a cached graph could be back-propagated twice).

Candidate embeddings are swapped for :class:`ContentEmbedding` wrappers whose ``weight`` is
``base_layer.weight + item_out(content)``: RecBole reads ``item_embedding.weight`` directly in
``calculate_loss`` (CE) and ``full_sort_predict``, and all of them see the fused items.
"""

from __future__ import annotations

import copy
import functools
import types
import warnings
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fusionlayer.config import AdapterOptions
from fusionlayer.fusion import FeatureFusionLayer
from fusionlayer.reduction import normalize_rows, reduce_table, reduce_tables, row_chunks

__all__ = ["ContentEmbedding", "FusionAdapter"]

def _grow_rows(param: nn.Parameter, n_new: int) -> None:
    """Append ``n_new`` zero rows to ``param`` in place (the same Parameter object), and to its ``.grad``.

    Autograd caches a leaf's gradient accumulator, with the leaf's shape, for as long as any graph
    that used it is alive (e.g. the last step's ``loss`` still held by the training loop); ``.data``
    of another shape does not drop it, a change of dtype does. So the data passes through an empty
    tensor of another dtype first: the next backward builds an accumulator of the new shape.
    """
    with torch.no_grad():
        grown = torch.cat([param.data, param.data.new_zeros(n_new, *param.shape[1:])])
        other = torch.float64 if grown.dtype != torch.float64 else torch.float32
        param.data = grown.new_empty(0, dtype=other)
        param.data = grown
        if param.grad is not None:  # gradients accumulated before the growth keep their rows
            param.grad = torch.cat([param.grad, param.grad.new_zeros(n_new, *param.grad.shape[1:])])


class ContentEmbedding(nn.Module):
    """An ``nn.Embedding`` stand-in whose rows add the item's fused content features.

    Keeps what host code reads: ``weight``, ``num_embeddings``, ``embedding_dim``, ``padding_idx``.

    Args:
        base_layer: the original embedding (kept, reachable as ``base_layer``).
        adapter: the owning adapter (not registered as a child: it is ``model.fusion_adapter``).
        name: the embedding's attribute name on the model (selects ``adapter.item_out[name]``).
    """

    def __init__(self, base_layer: nn.Embedding, adapter: "FusionAdapter", name: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.__dict__["_adapter"] = adapter  # plain reference: no module cycle, no duplicate state
        self.adapter_key = name

    @property
    def weight(self) -> torch.Tensor:
        return self._adapter.fused_weight(self.adapter_key, self.base_layer.weight)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # A plain model's key (``item_embedding.weight``) is the base layer's: a plain checkpoint
        # loaded into an attached model (``strict=False``) keeps its item embeddings, not silently drops them.
        plain, wrapped = prefix + "weight", prefix + "base_layer.weight"
        if plain in state_dict and wrapped not in state_dict:
            state_dict[wrapped] = state_dict.pop(plain)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        saved, rows = state_dict.get(wrapped), self.base_layer.num_embeddings
        if isinstance(saved, torch.Tensor) and saved.dim() == 2 and saved.shape[0] > rows:
            error_msgs.append(f"the checkpoint holds {saved.shape[0] - rows} more items than this model ({saved.shape[0]} "
                              f"rows in {wrapped}, {rows} here): items added with fusionlayer.add_items; add the same "
                              "items again (add_items with their features and tokens, in the same order) before loading")

    @property
    def num_embeddings(self) -> int:
        return self.base_layer.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base_layer.embedding_dim

    @property
    def padding_idx(self) -> int | None:
        return self.base_layer.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._adapter.fused_rows(self.adapter_key, self.base_layer, ids)


class _Scoped:
    """A model entry point run inside the adapter's step scope (one projection per call).

    A plain class rather than a closure, so an attached model can be deep-copied and pickled.
    """

    def __init__(self, adapter: "FusionAdapter", function, name: str) -> None:
        self.adapter, self.function, self.name = adapter, function, name

    def __call__(self, *args, **kwargs):
        adapter = self.adapter
        if adapter._scope is not None:
            return self.function(*args, **kwargs)
        training_loss = self.name == "calculate_loss" and adapter.training and torch.is_grad_enabled()
        if training_loss:
            adapter.check_training()
            if args:
                args = (adapter.redraw_cold_negatives(args[0]), *args[1:])
        adapter._scope = {"training_loss": True} if training_loss else {}
        try:
            out = self.function(*args, **kwargs)
        finally:
            adapter._scope = None
        if self.name in ("predict", "full_sort_predict") and args:
            out = adapter.offset_cold_scores(self.name, args[0], out)
        return out


class _ColdMaskedLoss(nn.Module):
    """The host's full-softmax loss (``nn.CrossEntropyLoss``) with some items left out of the softmax: their
    logits set to -inf, unless an item is this batch's target.

    ``excluded`` is called at each loss: it returns an (n_items,) bool mask, or None for "leave nothing out".
    :meth:`FusionAdapter.install` installs it with the adapter's :meth:`~FusionAdapter.excluded_negatives`
    when ``cold_dropout > 0`` (items never seen in training, during training steps only); ``base`` is the
    original loss, restored by ``detach``. Benchmarks that keep held-out items out of a model's training use it
    with a fixed mask.
    """

    def __init__(self, base: nn.Module, excluded) -> None:
        super().__init__()
        self.base = base
        self.__dict__["_excluded"] = excluded  # a plain callable (may be the adapter's bound method): no module cycle

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        excluded = self._excluded()
        if excluded is None or logits.dim() != 2 or logits.shape[1] != excluded.shape[0] or target.dim() != 1 \
                or target.is_floating_point():
            return self.base(logits, target)
        valid = (target >= 0) & (target < logits.shape[1])  # not ignore_index
        excluded = excluded.to(logits.device).index_fill(0, target[valid], False)  # a target stays a candidate
        base = self.base
        if not base.label_smoothing:  # -inf: a softmax weight (and gradient) of exactly zero
            return base(logits.masked_fill(excluded, float("-inf")), target)
        keep = ~excluded  # label smoothing spreads mass over every class: leave the excluded ones out
        column = keep.cumsum(0) - 1
        target = torch.where(valid, column[target.clamp(0, logits.shape[1] - 1)], target)
        weight = None if base.weight is None else base.weight[keep]
        return F.cross_entropy(logits[:, keep], target, weight=weight, ignore_index=base.ignore_index,
                               reduction=base.reduction, label_smoothing=base.label_smoothing)


def _unbound(model: nn.Module, name: str):
    """``model.<name>`` as ``partial(Class.<name>, model)`` when it is the class's own method.

    A bound method pickles as ``getattr(model, name)``, which after attach would find the override.
    """
    method = getattr(model, name)
    if isinstance(method, types.MethodType) and method.__self__ is model:
        return functools.partial(method.__func__, model)
    return method


class FusionAdapter(nn.Module):
    """Base adapter. Subclasses name the embeddings to wrap and the methods they override.

    Class attributes:
        candidate_embeddings: attribute names of the candidate-item embeddings to wrap.
        overrides: method names installed on the model instance (``forward``, ...), implemented
            here as ``fused_<name>``; the originals stay reachable as ``self.base_<name>``.
        id_stream_dim_attr: the model attribute holding the width of the ID stream (the
            user/sequence vector the fusion adds to).

    Args:
        model: the RecBole model (read for sizes only; ``install`` changes it).
        tables: validated ``{modality: (n_items, D)}`` tables.
        options: validated :class:`~fusionlayer.config.AdapterOptions` (``attach``'s keyword options
            over the adapter's ``default_options``).
        dataset: the training dataset (used by adapters that need histories, e.g. BPR).
    """

    candidate_embeddings: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    entry_points: tuple[str, ...] = ("forward", "calculate_loss", "predict", "full_sort_predict")
    item_tables: tuple[str, ...] = ()  # every item-indexed embedding of the model (default: the candidate ones)
    id_stream_dim_attr: str = "hidden_size"
    default_options: dict[str, Any] = {}  # this backbone's defaults over AdapterOptions' own
    # Content of only the rows a call uses when they are fewer than this share of the catalogue (large
    # catalogues, pairwise losses); otherwise every item once per call, shared by all reads.
    rows_fraction: float = 0.5

    def __init__(self, model: nn.Module, tables: Mapping[str, torch.Tensor], *, options: AdapterOptions,
                 dataset: Any = None) -> None:
        super().__init__()
        self.options = options
        self.modalities = list(tables)
        self.feature_dims = {name: int(t.shape[1]) for name, t in tables.items()}  # as given (add_items checks them)
        given = {t.data_ptr() for t in tables.values()}  # the caller's memory: never written
        present = torch.zeros(next(iter(tables.values())).shape[0], dtype=torch.bool)
        empty = []
        for name, table in tables.items():
            rows_present = 0
            for start, rows in row_chunks(table):
                nonzero = (rows != 0).any(dim=1).cpu()
                present[start:start + len(rows)] |= nonzero
                rows_present += int(nonzero[1 if start == 0 else 0:].sum())
            if rows_present == 0:
                empty.append(name)
        if empty:
            warnings.warn(f"features {empty} are zero for every item (a zero row means 'missing'): "
                          f"{'the fusion has no content to add' if len(empty) == len(tables) else 'those modalities add nothing'}; "
                          "check that the features were aligned to this dataset (FeatureStore.align logs how many "
                          "items have no cached row)", UserWarning, stacklevel=3)
        present[0] = False  # RecBole's padding id
        self.register_buffer("item_present", present.unsqueeze(1), persistent=False)
        if options.reduce_features:  # large catalogues: (N, D) -> (N, r) once, in row chunks
            tables, bases = reduce_tables(tables, options.reduce_features, options.layer_norm_eps)
            for name, basis in bases.items():
                self.register_buffer(f"basis_{name}", basis, persistent=False)
        else:  # kept as given: normalize_rows below writes each one, chunk by chunk, into float32
            size = sum(t.numel() for t in tables.values()) * 4
            if size > 4 * 2**30:
                warnings.warn(f"the normalised feature tables take {size / 2**30:.1f} GiB of float32 memory; for a "
                              f"catalogue this large pass reduce_features=64 (tables read in chunks, {64 * 4} bytes "
                              f"per item and modality)", UserWarning, stacklevel=3)
        id_dim = self.id_stream_dim(model)
        self.config = options.fusion_config({"id": id_dim, **{n: t.shape[1] for n, t in tables.items()}},
                                            getattr(model, "max_seq_length", 50))
        H = self.config.hidden_size
        self.fusion = FeatureFusionLayer(config=self.config)
        for name, table in tables.items():  # constant: normalised once (in place, by rows, where we own it)
            normed = normalize_rows(table, options.layer_norm_eps, in_place=table.data_ptr() not in given)
            self.register_buffer(f"normed_{name}", normed, persistent=False)
        self.output_dropout = nn.Dropout(options.output_dropout)
        self.history_on = options.side in ("both", "history")
        self.wrapped = self.candidate_embeddings if options.side in ("both", "candidate") else ()
        self.user_out = nn.Linear(H, id_dim, bias=False) if self.history_on else None
        self.item_out = nn.ModuleDict({name: nn.Linear(H, getattr(model, name).embedding_dim, bias=False)
                                       for name in self.wrapped})
        for linear in [self.user_out, *self.item_out.values()]:
            if linear is not None:
                nn.init.zeros_(linear.weight)  # freshly attached == base model
        self.block_starts = [0]  # the first row of the attach-time items and of each add_items call's (item_blocks)
        # Items whose ID embedding carries nothing: never seen in training (from ``dataset``) or added later.
        cold = torch.zeros(present.shape[0], dtype=torch.bool)
        seen = self.training_items(dataset, present.shape[0])
        if seen is not None:
            cold = ~seen
            cold[0] = False
        elif options.cold_dropout > 0:
            warnings.warn("cold_dropout is set but attach() got no dataset, so no item is known to be unseen in training: "
                          "such items keep their ID embeddings (never trained as positives) instead of being scored from "
                          "content alone. Pass the training split, attach(..., dataset=train_data.dataset); items added "
                          "with fusionlayer.add_items are scored from content alone either way", UserWarning, stacklevel=3)
        self.register_buffer("cold_items", cold.unsqueeze(1), persistent=False)
        # added to the scores of items scored from content alone (fusionlayer.calibrate_cold_offset); saved with
        # the model, 0 in a checkpoint from before it existed
        self.register_buffer("cold_score_offset", torch.zeros(()))
        self.item_tokens = list(dataset.field2id_token[dataset.iid_field]) if hasattr(dataset, "field2id_token") else None
        self._model_ref: list[nn.Module] = []  # the host model, kept out of the module tree
        self._memo: dict[str, tuple[tuple, Any]] = {}  # inference cache, see the module docstring
        self._scope: dict[str, Any] | None = None  # values shared within one entry-point call

    # ---------------------------------------------------------------- sizes and checks
    @classmethod
    def id_stream_dim(cls, model: nn.Module) -> int:
        return int(getattr(model, cls.id_stream_dim_attr))

    @classmethod
    def check_model(cls, model: nn.Module, *, dataset: Any = None, options: AdapterOptions | None = None) -> None:
        """Raise before any change if ``model`` lacks what this adapter needs."""
        for name in cls.candidate_embeddings:
            if not isinstance(getattr(model, name, None), nn.Embedding):
                raise TypeError(f"{type(model).__name__}.{name} must be an nn.Embedding for {cls.__name__}")
        model_length = getattr(model, "max_seq_length", None)
        if options is not None and options.max_seq_length is not None and model_length is not None \
                and options.max_seq_length < model_length:
            raise ValueError(f"max_seq_length={options.max_seq_length} is shorter than the model's histories "
                             f"({type(model).__name__}.max_seq_length={model_length}); leave it out to use the model's")

    # ---------------------------------------------------------------- feature access
    def normalized_tables(self) -> dict[str, torch.Tensor]:
        """``{modality: (n_items, D)}``: the feature tables after the parameter-free part of LayerNorm."""
        return {name: getattr(self, f"normed_{name}") for name in self.modalities}

    def clear_cache(self) -> None:
        """Drop the inference cache (see the module docstring for when this happens by itself)."""
        self._memo.clear()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "cold_score_offset"
        if key not in state_dict:  # saved before the offset existed: uncalibrated
            state_dict[key] = torch.zeros_like(self.cold_score_offset)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def offset_cold_scores(self, entry_point: str, interaction, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` of ``predict`` or ``full_sort_predict`` with ``cold_score_offset`` added to the items
        flagged cold (scored from content alone): unchanged while the offset is 0."""
        offset = self.cold_score_offset
        if not bool(offset):
            return scores
        cold = self.cold_items.reshape(-1).to(device=scores.device, dtype=scores.dtype)
        if entry_point == "full_sort_predict":
            return (scores.reshape(-1, cold.shape[0]) + offset.to(scores) * cold).reshape(scores.shape)
        items = interaction[self.model.ITEM_ID].to(scores.device).long()
        return scores + offset.to(scores) * cold[items].reshape(scores.shape)

    def train(self, mode: bool = True) -> "FusionAdapter":
        if mode:
            self.clear_cache()
        return super().train(mode)

    def _content_inputs(self) -> list[torch.Tensor]:
        """The tensors the projected tables and the content vectors are computed from."""
        return [*self.normalized_tables().values(), self.item_present,
                *(p for name in self.modalities for p in self.fusion.projections[name].parameters())]

    def caching(self) -> bool:
        """Inference (eval mode, autograd off): values may be kept across calls (the inference cache)."""
        return not (torch.is_grad_enabled() or self.training)

    def _memoised(self, key: str, inputs: list[torch.Tensor], compute):
        """``compute()``, once per entry-point call; in eval mode with autograd off, across calls too
        while none of ``inputs`` has changed storage or version."""
        scope = self._scope
        if scope is not None and key in scope:
            return scope[key]
        if not self.caching():
            self._memo.clear()
            value = compute()
        else:
            stamp = tuple((t.data_ptr(), t._version, t.dtype) for t in inputs)
            hit = self._memo.get(key)
            if hit is not None and hit[0] == stamp:
                value = hit[1]
            else:
                value = compute()
                self._memo[key] = (stamp, value)
        if scope is not None:
            scope[key] = value
        return value

    # ---------------------------------------------------------------- items added after attach
    def item_blocks(self, n_items: int) -> list[slice]:
        """The rows to compute separately: all of them, or once items were added after attach, the attach-time
        items and those of each ``add_items`` call. Work over an item axis (projections, scores) runs block by
        block, so adding items never changes an existing item's value: one matmul over more rows or columns
        may round differently."""
        starts = [start for start in self.block_starts if start < n_items]
        if len(starts) == 1:
            return [slice(None)]
        return [slice(start, end) for start, end in zip(starts, [*starts[1:], n_items])]

    def by_item_blocks(self, compute, n_items: int, dim: int = 0):
        """``compute(block)`` for each of :meth:`item_blocks`, concatenated along ``dim`` (no copy for one block);
        a ``{name: tensor}`` result is concatenated per name."""
        parts = [compute(block) for block in self.item_blocks(n_items)]
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], Mapping):
            return {name: torch.cat([part[name] for part in parts], dim=dim) for name in parts[0]}
        return torch.cat(parts, dim=dim)

    def score_items(self, query: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``torch.matmul(query, weight.T)``, RecBole's full-sort scoring, over :meth:`item_blocks` of ``weight``:
        ``(..., E) x (n_items, E) -> (..., n_items)``, old items' scores bit for bit after ``add_items``."""
        return self.by_item_blocks(lambda block: torch.matmul(query, weight[block].transpose(0, 1)),
                                   weight.shape[0], dim=-1)

    def projected_tables(self) -> dict[str, torch.Tensor]:
        """``{modality: (n_items, H)}``: the content tables through the fusion's input projections."""
        def compute():
            tables = self.normalized_tables()
            return self.by_item_blocks(
                lambda block: self.fusion.project_normalized_tables({name: t[block] for name, t in tables.items()}),
                self.item_present.shape[0])
        return self._memoised("projected_tables", self._content_inputs(), compute)

    @staticmethod
    def _content(projected: Mapping[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Items' content vectors from their projected modality rows: GELU of the sum, zero where absent."""
        return F.gelu(torch.stack(list(projected.values())).sum(0)) * present

    def _delta(self, name: str, content: torch.Tensor) -> torch.Tensor:
        """What ``content`` adds to the candidate embedding ``name``: ``item_out`` times ``output_scale``."""
        out, scale = self.item_out[name](content), self.options.output_scale
        return out if scale == 1 else out * scale

    def item_content(self) -> torch.Tensor:
        """(n_items, H): the sum of the items' projected modality features, zero for absent items."""
        return self._memoised("item_content", self._content_inputs(),
                              lambda: self._content(self.projected_tables(), self.item_present))

    def item_delta(self, name: str) -> torch.Tensor:
        """(n_items, E): what the content adds to the candidate embedding ``name`` (zero at attach)."""
        def compute():
            content = self.item_content()
            return self.by_item_blocks(lambda block: self._delta(name, content[block]), content.shape[0])
        return self._memoised(f"item_delta:{name}", [*self._content_inputs(), self.item_out[name].weight], compute)

    def fused_weight(self, name: str, base_weight: torch.Tensor) -> torch.Tensor:
        """``base_weight + item_delta(name)``: the weight host code reads from a wrapped embedding.

        With ``cold_dropout``, the ID part of cold items is zero (content alone), and in training a
        fresh random share of items loses its ID part for the whole step (DropoutNet).
        """
        inputs = [*self._content_inputs(), self.item_out[name].weight, base_weight, self.cold_items]
        return self._memoised(f"weight:{name}", inputs, lambda: self._id_part(base_weight) + self.item_delta(name))

    def _id_part(self, base_weight: torch.Tensor) -> torch.Tensor:
        hidden = self._hidden_ids()
        return base_weight if hidden is None else base_weight.masked_fill(hidden, 0.0)

    def _hidden_ids(self) -> torch.Tensor | None:
        """(n_items, 1) bool: items whose ID embedding is hidden now (None without ``cold_dropout``)."""
        rate = self.options.cold_dropout
        if rate <= 0:
            return None
        hidden = self.cold_items
        if self.training and torch.is_grad_enabled():
            key = "cold_draw"  # one draw per entry-point call: every read of the step sees the same items hidden
            if self._scope is not None and key in self._scope:
                draw = self._scope[key]
            else:
                draw = torch.rand(hidden.shape, device=hidden.device) < rate
                if self._scope is not None:
                    self._scope[key] = draw
            hidden = hidden | draw
        return hidden

    def fused_rows(self, name: str, base_layer: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        """``F.embedding(ids, fused_weight(name, ...))``, computing only the rows ``ids`` uses when they are
        fewer than half the catalogue and the whole weight is not already at hand (pairwise losses and
        histories over a large catalogue never project every item)."""
        scoped = self._scope is not None and f"weight:{name}" in self._scope
        rows_only = self.rows_fraction * base_layer.num_embeddings
        few = not scoped and not self.caching() and ids.numel() < rows_only
        unique, inverse = torch.unique(ids.reshape(-1), return_inverse=True) if few else (None, None)
        if unique is None or unique.numel() >= rows_only:
            return F.embedding(ids, self.fused_weight(name, base_layer.weight), base_layer.padding_idx)
        base = F.embedding(unique, base_layer.weight, base_layer.padding_idx)
        hidden = self._hidden_ids()
        if hidden is not None:
            base = base.masked_fill(hidden.index_select(0, unique), 0.0)
        content = self._content(self._projected_rows(unique), self.item_present.index_select(0, unique))
        return (base + self._delta(name, content)).index_select(0, inverse).view(*ids.shape, -1)

    def _projected_rows(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{modality: (len(ids), H)}``: :meth:`projected_tables` at the rows ``ids`` only."""
        return self.fusion.project_normalized_tables({m: t.index_select(0, ids) for m, t in self.normalized_tables().items()})

    @staticmethod
    def training_items(dataset: Any, n_items: int) -> torch.Tensor | None:
        """(n_items,) bool: items with at least one interaction in ``dataset`` (None without one): a target,
        or, in a sequential dataset's training cases, an item of a history (a user's first item is never a target)."""
        inter = getattr(dataset, "inter_feat", None)
        if inter is None:
            return None
        fields = [dataset.iid_field]
        history = getattr(dataset, "item_id_list_field", None)
        if history is not None and history in getattr(inter, "columns", ()):
            fields.append(history)
        seen = torch.zeros(n_items, dtype=torch.bool)
        for field in fields:
            ids = torch.as_tensor(inter[field]).long().flatten()
            seen |= torch.bincount(ids, minlength=n_items)[:n_items] > 0
        return seen

    def fuse_history(self, item_seq: torch.Tensor, *, id_table: torch.Tensor | None = None,
                     id_sequence: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H_out): the fused history at its newest item, through ``user_out`` (zero at attach).

        Adapters call it only when ``history_on`` (``side`` is ``"both"`` or ``"history"``).
        """
        tables, sequences, mask = {}, {}, item_seq != 0
        scoped = self._scope is not None and "projected_tables" in self._scope
        if not (scoped or self.caching()) and item_seq.numel() < self.rows_fraction * self.item_present.shape[0]:
            # a large catalogue: project only the rows the histories use, indexed by their place among them
            unique, inverse = torch.unique(item_seq, return_inverse=True)
            projected, item_seq = self._projected_rows(unique), inverse.view_as(item_seq)
            id_table = id_table.index_select(0, unique) if id_table is not None else None
        else:
            projected = self.projected_tables()
        if id_sequence is not None:
            sequences["id"] = id_sequence
        else:
            tables["id"] = id_table
        fused = self.fusion.forward_items(item_seq, tables, sequences=sequences, projected_tables=projected,
                                          mask=mask, last_only=True)
        out = self.user_out(self.output_dropout(fused))
        return out if self.options.output_scale == 1 else out * self.options.output_scale

    # ---------------------------------------------------------------- cold items in training
    def excluded_negatives(self) -> torch.Tensor | None:
        """(n_items,) bool: items a training step must not use as negatives (None when there are none).

        With ``cold_dropout > 0``, items never seen in training (and items added later) are scored from
        content alone. Used as negatives, they would only ever be pushed down (no step has them as a
        positive), and the content path would learn to bury exactly those items: left out during training
        steps, as items unknown at training time would be. Evaluation ranks every item."""
        if self.options.cold_dropout <= 0 or self._scope is None or not self._scope.get("training_loss"):
            return None
        return self._cold_lookup()[0]

    def _cold_lookup(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(the cold mask or None when no item is cold, the ids a cold negative is redrawn from), computed
        once per state of ``cold_items`` (kept until the buffer is replaced, moved or edited in place), so
        a training step does not synchronise with the device or scan the catalogue to find them."""
        cold = self.cold_items  # replaced (add_items, .to()) or edited in place (its _version): recomputed
        cached = self.__dict__.get("_cold_cache")
        if cached is None or cached[0] is not cold or cached[1] != cold._version:
            column, found = cold[:, 0], (None, None)
            if bool(column.any()):  # no cold item: nothing to mask, no redraw pool to build
                allowed = torch.nonzero(~column).flatten()
                allowed = allowed[allowed != 0]  # 0 is padding
                found = (column, allowed if allowed.numel() else None)
            cached = (cold, cold._version, *found)
            self.__dict__["_cold_cache"] = cached
        return cached[2], cached[3]

    def redraw_cold_negatives(self, interaction: Any) -> Any:
        """``interaction`` with each sampled negative (RecBole's ``neg_<item_id>`` field) that is a cold item
        (``cold_items``, see :meth:`excluded_negatives`) redrawn uniformly from the other items, in a copy: the
        caller's is untouched. Called by the training ``calculate_loss`` before the host reads the batch.
        Ids outside the catalogue pass through unchanged, for the host model to report."""
        if self.options.cold_dropout <= 0:
            return interaction
        cold, allowed = self._cold_lookup()
        if cold is None or allowed is None:
            return interaction
        field = getattr(self.model, "NEG_ITEM_ID", None)
        try:
            negatives = interaction[field]
        except (KeyError, TypeError, IndexError, AttributeError):
            return interaction
        if not isinstance(negatives, torch.Tensor) or negatives.is_floating_point() or not negatives.numel():
            return interaction
        cold, allowed = cold.to(negatives.device), allowed.to(negatives.device)
        inside = (negatives >= 0) & (negatives < cold.shape[0])
        hit = cold[negatives.clamp(0, cold.shape[0] - 1)] & inside
        if not bool(hit.any()):  # one synchronisation; a sampler that already avoids cold items draws nothing here
            return interaction
        draw = allowed[torch.randint(allowed.numel(), negatives.shape, device=negatives.device)]
        redrawn = torch.where(hit, draw.to(negatives.dtype), negatives)
        if hasattr(interaction, "interaction") and isinstance(interaction.interaction, dict):  # RecBole's Interaction
            out = copy.copy(interaction)
            out.interaction = {**interaction.interaction, field: redrawn}
            return out
        if isinstance(interaction, Mapping):
            return {**interaction, field: redrawn}
        return interaction

    def check_training(self) -> None:
        """Warn once if, by the third training step, the zero-initialised outputs are all still zero:
        the optimiser does not hold the fusion parameters (a Trainer built before ``attach``)."""
        self._training_calls = getattr(self, "_training_calls", 0) + 1
        if self._training_calls != 3:
            return
        outputs = [m.weight for m in [self.user_out, *self.item_out.values()] if m is not None]
        if outputs and all(w.requires_grad for w in outputs) and not any(bool(w.detach().any()) for w in outputs):
            warnings.warn(
                "the fusion's output weights are still exactly zero after 2 training steps: the optimiser does not "
                "update them. Build RecBole's Trainer (or your optimiser) after fusionlayer.attach(model, ...), "
                "so that it holds the fusion parameters.", UserWarning, stacklevel=4)

    # ---------------------------------------------------------------- growing the catalogue
    def add_items(self, tables: Mapping[str, torch.Tensor], tokens: list[str],
                  grown: list[torch.Tensor] | None = None) -> list[int]:
        """Append items known only by their content; returns their new internal ids (see ``fusionlayer.add_items``).

        ``grown`` (a list, if given) receives the Parameters that gained rows (the ID embeddings)."""
        model, n_new = self.model, len(tokens)
        first_row = int(self.item_present.shape[0])
        grown = [] if grown is None else grown
        reference = next(iter(self.normalized_tables().values()))
        tables = {name: reduce_table(t, getattr(self, f"basis_{name}").cpu(), self.options.layer_norm_eps)
                  if hasattr(self, f"basis_{name}") else t for name, t in tables.items()}
        normed = self.fusion.normalize_tables({k: t.to(reference) for k, t in tables.items()})
        present = torch.zeros(n_new, 1, dtype=torch.bool, device=reference.device)
        for name in self.modalities:
            setattr(self, f"normed_{name}", torch.cat([getattr(self, f"normed_{name}"), normed[name]]))
            present |= (tables[name] != 0).any(dim=1, keepdim=True).to(present.device)
        self.item_present = torch.cat([self.item_present, present])
        self.cold_items = torch.cat([self.cold_items, torch.ones_like(present)])  # no ID embedding: content alone
        for name in self.item_tables or self.candidate_embeddings:
            embedding = getattr(model, name)
            embedding = getattr(embedding, "base_layer", embedding)
            _grow_rows(embedding.weight, n_new)  # same Parameter object, more rows (zero: no ID signal)
            embedding.num_embeddings += n_new
            grown.append(embedding.weight)
        first = int(model.n_items)
        model.n_items = first + n_new
        if self.item_tokens is not None:
            self.item_tokens.extend(tokens)
        self.block_starts = [*self.block_starts, first_row]  # the new rows: a block of their own (item_blocks)
        self.clear_cache()
        return list(range(first, first + n_new))

    # ---------------------------------------------------------------- install / uninstall
    @property
    def model(self) -> nn.Module:
        return self._model_ref[0]

    def install(self, model: nn.Module) -> None:
        self._model_ref.append(model)
        model.add_module("fusion_adapter", self)
        for name in self.wrapped:
            setattr(model, name, ContentEmbedding(getattr(model, name), self, name))
        for name in self.overrides:
            setattr(self, f"base_{name}", _unbound(model, name))  # the original class's method
            model.__dict__[name] = types.MethodType(getattr(type(self), f"fused_{name}"), self)
        for name in self.entry_points:
            if callable(getattr(model, name, None)):
                model.__dict__[name] = _Scoped(self, model.__dict__.get(name) or _unbound(model, name), name)
        if self.options.cold_dropout > 0 and isinstance(getattr(model, "loss_fct", None), nn.CrossEntropyLoss):
            model.loss_fct = _ColdMaskedLoss(model.loss_fct, self.excluded_negatives)
        self.train(model.training)  # a model attached in eval mode stays in eval mode

    def uninstall(self, model: nn.Module) -> None:
        for name in {*self.overrides, *self.entry_points}:
            model.__dict__.pop(name, None)
        for name in self.wrapped:
            setattr(model, name, getattr(model, name).base_layer)
        if isinstance(getattr(model, "loss_fct", None), _ColdMaskedLoss):
            model.loss_fct = model.loss_fct.base
        del model._modules["fusion_adapter"]
        self._model_ref.clear()
