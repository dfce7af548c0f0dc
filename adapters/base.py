"""The adapter proper: the fusion weights, and what they add on each side of a RecBole model.

An adapter is an ``nn.Module`` installed on a RecBole model as ``model.fusion_adapter``. It owns the weights
(the only state a checkpoint holds besides ``cold_score_offset``):

* ``fusion``: a :class:`~fusionlayer.FeatureFusionLayer` over the history's modality streams (the
  sequence/user side, :meth:`FusionAdapter.fuse_history`), ending in ``user_out``, a Linear initialised to zero;
* ``item_out[name]``: one zero-initialised Linear per wrapped candidate embedding (the item side), fed by
  the item's content vector (:meth:`FusionAdapter.fused_weight`, :meth:`FusionAdapter.fused_rows`);
* ``cold_out[name]`` (``cold_regression`` only, else empty): the cold items' rows regressed from their content.

Both output Linears start at zero, so a freshly attached model scores exactly like its backbone. The per-item
state lives in two parts, children of the adapter: ``content`` (:class:`~fusionlayer.adapters.content.ItemContent`:
the feature tables, their projection, the call cache) and ``cold``
(:class:`~fusionlayer.adapters.cold.ColdItems`: the items scored from content alone). Their attributes that
host code reads stay readable on the adapter (``item_present``, ``normed_<modality>``, ``cold_items``, ...).

Candidate embeddings are swapped for :class:`ContentEmbedding` wrappers whose ``weight`` is
``base_layer.weight + item_out(content)``: RecBole reads ``item_embedding.weight`` directly in
``calculate_loss`` (CE) and ``full_sort_predict``, and all of them see the fused items. ``adapters/install.py``
puts the wrappers in place and runs the model's entry points in a per-call scope, within which every value is
computed once (``adapters/content.py``: the inference cache across calls).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fusionlayer.adapters.catalogue import grow_item_embeddings
from fusionlayer.adapters.cold import _ColdMaskedLoss  # (also re-exported: benchmarks and tests import it here)
from fusionlayer.adapters.cold import ColdItems, training_items
from fusionlayer.adapters.content import ItemContent, module_tensors, prepare_tables
from fusionlayer.adapters.install import ContentEmbedding, install_adapter, uninstall_adapter
from fusionlayer.config import AdapterOptions
from fusionlayer.fusion import FeatureFusionLayer

__all__ = ["ContentEmbedding", "FusionAdapter"]


_OFFSET_KEY = "cold_score_offset"  # where checkpoints hold the cold items' offset: on the adapter itself


def _offset_saved_on_the_adapter(module: nn.Module, state_dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: ``cold.cold_score_offset`` saved as ``cold_score_offset``, its key from before the
    cold-item policy was a module of its own, so checkpoints from before and after read alike."""
    inner = prefix + "cold." + _OFFSET_KEY
    if inner in state_dict:
        state_dict[prefix + _OFFSET_KEY] = state_dict.pop(inner)


def _offset_loaded_into_the_policy(module: nn.Module, state_dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook, the other way round; a checkpoint from before the offset existed loads as 0."""
    saved, inner = prefix + _OFFSET_KEY, prefix + "cold." + _OFFSET_KEY
    if saved in state_dict:
        state_dict[inner] = state_dict.pop(saved)
    elif inner not in state_dict:  # uncalibrated
        state_dict[inner] = torch.zeros_like(module.cold.cold_score_offset)


def _delegated(part: str, name: str, *, settable: bool = False) -> property:
    """``adapter.<name>`` read (and written, if ``settable``) on ``adapter.<part>``, where its state now lives:
    host code, benchmarks and tests keep reading it on the adapter."""
    def get(self):
        return getattr(getattr(self, part), name)

    def put(self, value) -> None:
        setattr(getattr(self, part), name, value)

    return property(get, put if settable else None, doc=f"``self.{part}.{name}``: see {part}.py")


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
        dataset: the training dataset (its items seen in training; histories for adapters that need them, e.g. BPR).
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
        normed, bases, present = prepare_tables(tables, options, stacklevel=3)
        id_dim = self.id_stream_dim(model)
        self.config = options.fusion_config({"id": id_dim, **{n: t.shape[1] for n, t in normed.items()}},
                                            getattr(model, "max_seq_length", 50))
        self.fusion = FeatureFusionLayer(config=self.config)
        self.content = ItemContent(normed, present, fusion=self.fusion, bases=bases,
                                   feature_dims={name: int(t.shape[1]) for name, t in tables.items()},  # as given
                                   layer_norm_eps=options.layer_norm_eps)
        self.cold = ColdItems(len(present), options=options, seen=training_items(dataset, len(present)), stacklevel=3)
        self.register_state_dict_post_hook(_offset_saved_on_the_adapter)
        self.register_load_state_dict_pre_hook(_offset_loaded_into_the_policy)
        self.output_dropout = nn.Dropout(options.output_dropout)
        self.history_on = options.side in ("both", "history")
        self.wrapped = self.candidate_embeddings if options.side in ("both", "candidate") else ()
        self.user_out = nn.Linear(self.config.hidden_size, id_dim, bias=False) if self.history_on else None
        self.item_out = nn.ModuleDict({name: nn.Linear(self.config.hidden_size, getattr(model, name).embedding_dim,
                                                       bias=False) for name in self.wrapped})
        for linear in [self.user_out, *self.item_out.values()]:
            if linear is not None:
                nn.init.zeros_(linear.weight)  # freshly attached == base model
        # cold_regression: cold items' candidate rows, regressed from the normalised feature tables (empty without it)
        width = sum(int(t.shape[1]) for t in normed.values())
        self.cold_out = nn.ModuleDict({name: nn.Linear(width, getattr(model, name).embedding_dim)
                                       for name in (self.wrapped if options.cold_regression > 0 else ())})
        for linear in self.cold_out.values():
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.item_tokens = list(dataset.field2id_token[dataset.iid_field]) if hasattr(dataset, "field2id_token") else None
        self._model_ref: list[nn.Module] = []  # the host model, kept out of the module tree

    # ---------------------------------------------------------------- the parts' state and helpers, on the adapter
    modalities = _delegated("content", "modalities")
    feature_dims = _delegated("content", "feature_dims")
    item_present = _delegated("content", "item_present")
    _scope = _delegated("content", "scope", settable=True)  # values shared within one entry-point call
    _memo = _delegated("content", "memo")  # the inference cache
    normalized_tables = _delegated("content", "normalized_tables")  # methods too: adapter.clear_cache()
    projected_tables = _delegated("content", "projected_tables")
    score_items = _delegated("content", "score_items")
    clear_cache = _delegated("content", "clear_cache")
    cold_items = _delegated("cold", "cold_items", settable=True)
    cold_score_offset = _delegated("cold", "cold_score_offset", settable=True)
    _cold_lookup = _delegated("cold", "lookup")
    training_items = staticmethod(training_items)

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("normed_", "basis_")):  # the content tables (``normed_text``, ...)
            return getattr(self.content, name)
        return super().__getattr__(name)

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

    def init_from_content(self, model: nn.Module) -> None:
        """``content_init``: each item table's rows of items with content start from the content's leading principal
        components (:func:`~fusionlayer.reduction.content_components`), at the spread of the table's own initial
        rows; the padding row, items without content and any columns beyond the components keep their start."""
        from fusionlayer.reduction import content_components

        present = self.item_present.view(-1).clone()
        present[0] = False  # RecBole's padding id
        names = self.item_tables or self.candidate_embeddings
        width = max(getattr(model, name).embedding_dim for name in names)
        components = content_components(self.normalized_tables(), present.cpu(), width, self.options.layer_norm_eps)
        with torch.no_grad():
            for name in names:
                weight = getattr(model, name).weight
                k = min(components.shape[1], weight.shape[1])
                spread = weight[1:].std()
                rows = present.to(weight.device)
                weight[rows, :k] = (components[:, :k].to(weight.device, weight.dtype) * spread)[rows]

    # ---------------------------------------------------------------- the history side
    def fuse_history(self, item_seq: torch.Tensor, *, id_table: torch.Tensor | None = None,
                     id_sequence: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H_out): the fused history at its newest item, through ``user_out`` (zero at attach).

        Adapters call it only when ``history_on`` (``side`` is ``"both"`` or ``"history"``).
        """
        if self.backbone_only():  # the backbone's own pass (backbone_loss): nothing added
            return item_seq.new_zeros(item_seq.shape[0], self.user_out.out_features, dtype=self.user_out.weight.dtype)
        tables, sequences, mask = {}, {}, item_seq != 0
        scoped = self._scope is not None and "projected_tables" in self._scope
        few = item_seq.numel() < self.rows_fraction * self.item_present.shape[0]
        if few and not (scoped or self.content.caching()):
            # a large catalogue: project only the rows the histories use, indexed by their place among them
            unique, inverse = torch.unique(item_seq, return_inverse=True)
            projected, item_seq = self.content.projected_rows(unique), inverse.view_as(item_seq)
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

    def extra_losses(self, interaction: Any) -> torch.Tensor | float:
        """What a training step adds to the host's loss, in the step's scope: with ``softmax_loss``, the cross-entropy
        of the fused full-catalogue scores at the positive item (for pairwise hosts); with ``cold_regression``, its
        weight times :meth:`regression_loss`; 0 without either."""
        total: torch.Tensor | float = 0.0
        weight = self.options.softmax_loss
        if weight > 0 and self.pairwise:
            model = self.model
            target = interaction[model.ITEM_ID]
            scores = model.full_sort_predict(interaction).view(target.shape[0], -1)
            # cold items are no negatives here either (the cold-item policy), as in the host's own loss
            total = weight * _ColdMaskedLoss(nn.CrossEntropyLoss(), self.excluded_negatives)(scores, target.long())
        if len(self.cold_out):  # cold_regression (its Linears exist only then)
            total = total + self.options.cold_regression * self.regression_loss()
        return total

    # ---------------------------------------------------------------- cold_regression
    regression_rows: int = 4096  # warm items a training step regresses onto (all of them when fewer)

    def cold_features(self, ids: torch.Tensor) -> torch.Tensor:
        """(len(ids), D): the items' normalised feature tables side by side, ``cold_out``'s input."""
        return torch.cat([table.index_select(0, ids) for table in self.normalized_tables().values()], dim=1)

    def regressed_rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """(len(ids), E): the candidate rows ``cold_out[name]`` regresses for the items ``ids`` from their content;
        zero for an item without content (which then scores 0 for everyone, as under ``cold_dropout``)."""
        return self.cold_out[name](self.cold_features(ids)) * self.item_present.index_select(0, ids)

    def regressed_cold_rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """:meth:`regressed_rows` of the sorted cold ``ids``, one matmul per block of :meth:`ItemContent.item_blocks`:
        items added later never change an attach-time cold item's row (a matmul over more rows may round
        differently)."""
        n_items = int(self.item_present.shape[0])
        blocks = self.content.item_blocks(n_items)
        if len(blocks) == 1:
            return self.regressed_rows(name, ids)
        parts = []
        for block in blocks:  # several blocks: explicit starts and stops
            inside = ids[(ids >= block.start) & (ids < block.stop)]
            if inside.numel():
                parts.append(self.regressed_rows(name, inside))
        return torch.cat(parts)

    def regression_loss(self) -> torch.Tensor | float:
        """The regression's relative squared error, ``sum |cold_out(x_i) - e_i|^2 / sum |e_i|^2`` averaged over the
        candidate embeddings, on up to ``regression_rows`` warm items drawn at random (with content, not cold,
        not padding), ``e_i`` being their fused candidate rows with the gradient stopped: only ``cold_out`` learns."""
        if torch.is_grad_enabled():  # cold_out may change after this call: nothing kept across calls (content.py)
            self.clear_cache()
        ids = self.warm_ids()
        if ids is None:
            return 0.0
        if ids.numel() > self.regression_rows:
            ids = ids[torch.randint(ids.numel(), (self.regression_rows,), device=ids.device)]
        features, total = self.cold_features(ids), 0.0
        with torch.no_grad():
            content = self.content.content_rows(ids)
        for name in self.cold_out:
            with torch.no_grad():  # in float32: squared sums of a float16 model's rows overflow
                target = getattr(self.model, name).base_layer.weight.index_select(0, ids) + self._delta(name, content)
                target = target.float()
            error = (self.cold_out[name](features).float() - target).pow(2).sum()
            total = total + error / target.pow(2).sum().clamp_min(1e-12)
        return total / len(self.cold_out)

    def warm_ids(self) -> torch.Tensor | None:
        """(k,) long: the items with content that are not cold (padding aside), None when there are none; kept until
        ``cold_items`` or ``item_present`` is replaced or edited in place."""
        cold, present = self.cold_items, self.item_present
        kept = self.__dict__.get("_warm_ids")
        if kept is None or kept[0] is not cold or kept[1] is not present or kept[2] != (cold._version, present._version):
            ids = torch.nonzero(present.view(-1) & ~cold.view(-1)).flatten()
            ids = ids[ids != 0]
            kept = (cold, present, (cold._version, present._version), ids if ids.numel() else None)
            self.__dict__["_warm_ids"] = kept
        return kept[3]

    @property
    def pairwise(self) -> bool:
        """The host trains with sampled negatives (RecBole's pairwise input type: BPR, FPMC)."""
        return getattr(getattr(self.model, "input_type", None), "name", None) == "PAIRWISE"

    def backbone_only(self) -> bool:
        """In the backbone's own pass of a training step (``backbone_loss``): the fusion adds nothing."""
        return self._scope is not None and self._scope.get("backbone_only", False)

    # ---------------------------------------------------------------- the candidate side
    def _delta(self, name: str, content: torch.Tensor) -> torch.Tensor:
        """What ``content`` adds to the candidate embedding ``name``: ``item_out`` times ``output_scale``."""
        out, scale = self.item_out[name](content), self.options.output_scale
        return out if scale == 1 else out * scale

    def item_delta(self, name: str) -> torch.Tensor:
        """(n_items, E): what the content adds to the candidate embedding ``name`` (zero at attach)."""
        def compute():
            content = self.content.item_content()
            return self.content.by_item_blocks(lambda block: self._delta(name, content[block]), content.shape[0])
        inputs = [*self.content.inputs(), self.item_out[name].weight]
        return self.content.memoised(f"item_delta:{name}", inputs, compute)

    def fused_weight(self, name: str, base_weight: torch.Tensor) -> torch.Tensor:
        """``base_weight + item_delta(name)``: the weight host code reads from a wrapped embedding.

        With ``cold_dropout``, the ID part of cold items is zero (content alone), and in training a
        fresh random share of items loses its ID part for the whole step (DropoutNet). With ``cold_regression``,
        the cold items' rows are their regressed ones (:meth:`regressed_rows`).
        """
        if self.backbone_only():
            return base_weight
        regressed = name in self.cold_out
        inputs = [*self.content.inputs(), self.item_out[name].weight, base_weight, self.cold_items,
                  *(module_tensors(self.cold_out[name]) if regressed else ())]

        def compute() -> torch.Tensor:
            weight = self.cold.id_part(base_weight, self._scope) + self.item_delta(name)
            ids = self.cold.cold_ids() if regressed else None
            if ids is None:
                return weight
            ids = ids.to(weight.device)  # cold_regression: the cold items' rows are their regressed ones
            return weight.index_copy(0, ids, self.regressed_cold_rows(name, ids).to(weight.dtype))
        return self.content.memoised(f"weight:{name}", inputs, compute)

    def fused_rows(self, name: str, base_layer: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        """``F.embedding(ids, fused_weight(name, ...))``, computing only the rows ``ids`` uses when they are
        fewer than half the catalogue and the whole weight is not already at hand (pairwise losses and
        histories over a large catalogue never project every item)."""
        if self.backbone_only():
            return F.embedding(ids, base_layer.weight, base_layer.padding_idx)
        scoped = self._scope is not None and f"weight:{name}" in self._scope
        rows_only = self.rows_fraction * base_layer.num_embeddings
        few = not scoped and not self.content.caching() and ids.numel() < rows_only
        unique, inverse = torch.unique(ids.reshape(-1), return_inverse=True) if few else (None, None)
        if unique is None or unique.numel() >= rows_only:
            return F.embedding(ids, self.fused_weight(name, base_layer.weight), base_layer.padding_idx)
        base = F.embedding(unique, base_layer.weight, base_layer.padding_idx)
        hidden = self.cold.hidden(self._scope)
        if hidden is not None:
            base = base.masked_fill(hidden.index_select(0, unique), 0.0)
        content = self.content.content_rows(unique)
        rows = base + self._delta(name, content)
        if name in self.cold_out:  # cold_regression: cold items take their regressed rows
            where = torch.nonzero(self.cold_items.index_select(0, unique).view(-1)).flatten()
            if where.numel():
                rows = rows.index_copy(0, where, self.regressed_rows(name, unique[where]).to(rows.dtype))
        return rows.index_select(0, inverse).view(*ids.shape, -1)

    # ---------------------------------------------------------------- cold items (adapters/cold.py)
    def excluded_negatives(self) -> torch.Tensor | None:
        """:meth:`ColdItems.excluded` in the current entry-point call: the items a training loss leaves out."""
        return self.cold.excluded(self._scope)

    def redraw_cold_negatives(self, interaction: Any) -> Any:
        """:meth:`ColdItems.redraw_negatives` of the model's sampled negatives; called by the training
        ``calculate_loss`` before the host reads the batch."""
        if not self.options.scores_cold_items:
            return interaction
        return self.cold.redraw_negatives(interaction, getattr(self.model, "NEG_ITEM_ID", None))

    # ---------------------------------------------------------------- growing the catalogue
    def add_items(self, tables: Mapping[str, torch.Tensor], tokens: list[str],
                  grown: list[torch.Tensor] | None = None) -> list[int]:
        """Append items known only by their content; returns their new internal ids (see ``fusionlayer.add_items``).

        ``grown`` (a list, if given) receives the Parameters that gained rows (the ID embeddings)."""
        n_new, first = len(tokens), int(self.model.n_items)
        self.content.append(tables)
        self.cold.append(n_new)  # no ID embedding: content alone
        params = grow_item_embeddings(self.model, self.item_tables or self.candidate_embeddings, n_new)
        if grown is not None:
            grown.extend(params)
        if self.item_tokens is not None:
            self.item_tokens.extend(tokens)
        self.clear_cache()
        return list(range(first, first + n_new))

    # ---------------------------------------------------------------- install / uninstall
    @property
    def model(self) -> nn.Module:
        return self._model_ref[0]

    def install(self, model: nn.Module) -> None:
        """Install on ``model`` in place (``adapters/install.py``); subclasses add their own hooks after it."""
        install_adapter(self, model)

    def uninstall(self, model: nn.Module) -> None:
        """Restore ``model`` exactly (``adapters/install.py``)."""
        uninstall_adapter(self, model)
