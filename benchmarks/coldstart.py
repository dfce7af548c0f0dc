"""Cold-start benchmark: items no one interacted with in training, scored from their content.

Protocol: the dataset after its protocol file's filter (ML-100K: the compatibility benchmark's 5-core filter); a random 10 % of the items,
chosen with a fixed seed (``--cold-seed``, independent of the run seeds), lose every interaction except
those that are a user's last two, so they never occur in training and appear only as validation/test
targets (leave-one-out by time, full ranking over all items). Every run reports NDCG@10 and Hit@10 on the
test users whose target is cold and on those whose target is warm, and the per-user cold NDCG@10
(``per_user_cold_ndcg``: a list ordered by user id, one value per cold test case, so that the lists of one
seed's runs align; the ids are in ``per_user_cold_users``).

Variants: ``plain`` backbones (which can only guess on cold items), ``fusion`` (attach's defaults),
``fusion+cold`` (``attach(..., cold_dropout=...)``), ``content-only`` (the trained content-only baseline: the
backbone attached with its defaults and its candidate embeddings' ID tables zero and frozen, so every item, warm or
cold, is scored from its content alone, trained on the same split: :func:`hide_item_ids`), ``M2SR`` standalone, and ``ContentKNN``: rank by the
cosine similarity of a candidate's features to the user's most recent items (no training).

    python -m benchmarks.coldstart --models SASRec,BPR,ContentKNN --seeds 0,1,2
    python -m benchmarks.coldstart --quick          # 1 epoch, 60 users: a wiring check, not a result

Every ``fusion+cold`` line also carries ``probe`` (:func:`probe_content`): the targets' ranks with every item
scored from content alone and the cold target's rank among cold items, which tell a content path that
generalises from one that has memorised the warm items. A saved model can be probed afterwards:

    python -m benchmarks.coldstart --models SASRec --seeds 2 --probe-checkpoint path/to/best.pth

Every line also carries ``valid``: the same cold/warm split on the validation cases, which is where a change
to the recipe is chosen (never on test). ``--fusion-option KEY=VALUE`` (repeatable, like the compatibility
grid's) overrides one ``attach()`` option of the +fusion variants, for a remedy study; it needs its own
``--out``, and its lines record the overrides as ``fusion_options``:

    python -m benchmarks.coldstart --models BPR,ContentKNN --variants fusion+cold,standalone --seeds 0 \
        --fusion-option reduce_features=16 --out benchmarks/results/coldstart-remedy/reduce16.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fusionlayer.adapters.base import FusionAdapter, _ColdMaskedLoss
from fusionlayer.evaluation import case_scores, choose_cold_offset, group_ndcg, offset_ranks
from benchmarks import compat
from benchmarks.cli_args import names, set_threads
from benchmarks.provenance import git_commit, provenance
from benchmarks.queue import append_result, read_results
from benchmarks.ranking import case_targets, metrics_from_ranks, rank_users, ranking_scores, ranks_of

RESULTS = compat.RESULTS
MODELS = ["SASRec", "GRU4Rec", "BPR", "FPMC", "M2SR", "ContentKNN"]
COLD_SHARE = 0.10
PROTOCOL = 2  # 2: items unseen in training are neither sampled negatives nor cross-entropy logits while training
logger = logging.getLogger("fusionlayer.bench.coldstart")


VARIANTS = ["plain", "fusion", "fusion+cold", "content-only", "standalone"]
ATTACHED = ("fusion", "fusion+cold", "content-only")  # the variants built with attach() (their lines carry its recipe)


def variants(model: str) -> list[str]:
    return ["standalone"] if model in ("M2SR", "ContentKNN") else [v for v in VARIANTS if v != "standalone"]


def hide_item_ids(model) -> list[str]:
    """``content-only``: the candidate embeddings' ID tables of an attached backbone set to zero and frozen, so every
    candidate item is scored from what the fusion makes of its content alone (SASRec, GRU4Rec, BPR: their one item
    table, so history items too; FPMC keeps its last-item table ``LI_emb``, a history-side ID table, without which
    its item-to-item term could not train). Returns the tables' names."""
    adapter = model.fusion_adapter
    names = list(adapter.candidate_embeddings)
    for name in names:
        table = getattr(model, name)
        weight = getattr(table, "base_layer", table).weight
        with torch.no_grad():
            weight.zero_()
        weight.requires_grad_(False)
    adapter.clear_cache()
    return names


def write_cold_dataset(inter: dict[str, np.ndarray], out_root: Path, name: str, cold_seed: int) -> tuple[str, set[str]]:
    """Write ``<name>`` under ``out_root``: cold items keep only users' last-two interactions. Returns (name, cold tokens)."""
    items = sorted(set(inter["item_id"].tolist()))
    cold = set(random.Random(cold_seed).sample(items, max(1, round(COLD_SHARE * len(items)))))
    order = np.lexsort((inter["timestamp"], inter["user_id"]))
    users, item_ids, times = inter["user_id"][order], inter["item_id"][order], inter["timestamp"][order]
    last_two = np.zeros(len(users), bool)
    ends = np.r_[np.flatnonzero(users[1:] != users[:-1]), len(users) - 1]
    last_two[ends] = True
    last_two[ends[ends > 0] - 1] = True  # (for a one-interaction user this marks the previous user's last: kept anyway)
    keep = ~np.isin(item_ids, list(cold)) | last_two
    folder = out_root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{t}" for u, i, t in zip(users[keep], item_ids[keep], times[keep])]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return name, cold


def filtered_interactions(args, hparams) -> dict[str, np.ndarray]:
    """The benchmark dataset's interactions after its protocol's filter (ML-100K: RecBole's 5-core), as tokens."""
    from fusionlayer.data.recbole_data import recbole_config
    from recbole.data import create_dataset

    config = recbole_config(compat.model_class("BPR"), args.dataset_name, data_root=args.data_root,
                            overrides={**hparams.get("recbole", {}), **hparams["common"],
                                       "checkpoint_dir": str(args.work / "saved")})
    dataset = create_dataset(config)
    tokens = {f: dataset.field2id_token[f] for f in (dataset.uid_field, dataset.iid_field)}
    column = lambda field: np.asarray(dataset.inter_feat[field])  # noqa: E731
    return {"user_id": tokens[dataset.uid_field][column(dataset.uid_field)],
            "item_id": tokens[dataset.iid_field][column(dataset.iid_field)],
            "timestamp": column(dataset.time_field)}


def content_knn_scores(tables: dict[str, torch.Tensor], item_seq: torch.Tensor, recent: int = 5) -> torch.Tensor:
    """(B, n_items): mean cosine similarity of each item's features to the user's ``recent`` newest items."""
    feats = torch.cat([torch.nn.functional.normalize(t.float(), dim=1) for t in tables.values()], dim=1)
    feats = torch.nn.functional.normalize(feats, dim=1)
    lengths = (item_seq != 0).sum(1)
    scores = torch.zeros(len(item_seq), feats.shape[0])
    for b, (seq, n) in enumerate(zip(item_seq, lengths)):
        history = seq[max(0, int(n) - recent):int(n)]
        if len(history):
            scores[b] = (feats @ feats[history].T).mean(1)
    return scores


class ContentKNN(torch.nn.Module):
    """The content-only baseline as a RecBole-like model (``full_sort_predict`` only)."""

    def __init__(self, tables: dict[str, torch.Tensor], item_seq_field: str, user_field: str) -> None:
        super().__init__()
        self.tables, self.ITEM_SEQ, self.USER_ID = tables, item_seq_field, user_field

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return content_knn_scores(self.tables, interaction[self.ITEM_SEQ])


def keep_unseen_items_out_of_training(model, train_data, unseen: np.ndarray) -> None:
    """Items without a training interaction do not exist while the model trains: never a sampled negative
    (pairwise losses) and never a logit of the cross-entropy over the catalogue. Without this, training
    pushes exactly the held-out items down (they are the only items that are never a positive), which
    leaks the held-out set into the model and makes content-based scoring of cold items look useless.
    A protocol rule for every variant (plain ones too); ``attach(..., cold_dropout>0)`` applies the same rule
    by itself (``FusionAdapter.excluded_negatives``), so for ``fusion+cold`` the two coincide."""
    unseen = np.asarray(unseen, dtype=np.int64)
    sampler = getattr(train_data, "_sampler", None)
    if sampler is not None and hasattr(sampler, "item_num"):
        allowed = np.setdiff1d(np.arange(1, sampler.item_num), unseen)
        sampler._uni_sampling = lambda n: allowed[np.random.randint(0, len(allowed), n)]
    loss = getattr(model, "loss_fct", None)
    if isinstance(loss, torch.nn.CrossEntropyLoss):  # not when attach(..., cold_dropout>0) already masks it (the same rule)
        mask = torch.zeros(model.n_items, dtype=torch.bool)
        mask[torch.as_tensor(unseen)] = True
        model.loss_fct = _ColdMaskedLoss(loss, _FixedMask(mask))


class _FixedMask:
    """The held-out items, for :class:`_ColdMaskedLoss` (which asks for its mask at every loss)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self) -> torch.Tensor:
        return self.mask


def split_metrics(ranks: dict[str, np.ndarray], targets: np.ndarray, cold_ids: np.ndarray) -> dict:
    metrics = metrics_from_ranks(ranks["full"])
    is_cold = np.isin(targets, cold_ids)
    out = group_ndcg(ranks["full"], is_cold)
    for group, rows in (("cold", is_cold), ("warm", ~is_cold)):
        # where the target lands beyond the top 10 (1 = first): tells "near miss" from "never considered"
        out[group]["median_rank"] = float(np.median(ranks["full"][rows]) + 1) if rows.any() else None
    # one value per cold test case, ordered by user id (one test case per user), so that runs of one seed align
    users, ndcg = ranks["user"][is_cold], metrics["ndcg@10"][is_cold]
    order = np.argsort(users, kind="stable")
    out["per_user_cold_ndcg"] = [round(float(x), 5) for x in ndcg[order]]
    out["per_user_cold_users"] = [int(u) for u in users[order]]
    return out


def state_dir(args, model: str, variant: str, seed: int) -> Path:
    """A run's resumable state (``benchmarks/resume.py``) until its line is written."""
    return compat.run_state_dir(args.out, (model, variant, seed, f"cold{args.cold_seed}", PROTOCOL, bool(args.quick)))


def build_cold_run(model: str, variant: str, seed: int, args, hparams: dict, cold_tokens: set[str]):
    """``(config, data, net, recipe, cold_ids, train_counts)`` of one cold-start run, before training: the model is
    built (and attached) on the held-out dataset exactly as :func:`run_one` trains it (ContentKNN: its scorer)."""
    fusion = {**hparams["fusion"], **getattr(args, "fusion_options", {}),
              **({"cold_dropout": args.cold_dropout} if variant == "fusion+cold" else {})}
    recipe = {**hparams, "fusion": fusion}
    knn = model == "ContentKNN"
    extra = {"checkpoint_dir": str(args.work / "saved"), "user_inter_num_interval": "[0,inf)",
             "item_inter_num_interval": "[0,inf)", **(hparams["quick"] if args.quick else {})}
    extra.pop("users", None)
    run_args = argparse.Namespace(**{**vars(args), "dataset": args.dataset})  # features keyed by the dataset's tokens
    built_as = "plain" if knn else "fusion" if variant in ATTACHED else variant
    config, dataset, data, built = compat.build_run("SASRec" if knn else model, built_as,
                                                    seed, run_args, recipe, data_root=args.work,
                                                    dataset_name=args.cold_name, extra=extra)
    train_data = data[0]
    counts = np.bincount(train_data.dataset.inter_feat[train_data.dataset.iid_field].numpy(),
                         minlength=train_data.dataset.item_num)
    tokens = train_data.dataset.field2id_token[train_data.dataset.iid_field]
    cold_ids = np.array([i for i, t in enumerate(tokens) if t in cold_tokens])
    if knn:
        tables = compat.load_tables(args.dataset, train_data.dataset, run_args, hparams)
        return config, data, ContentKNN(tables, built.ITEM_SEQ, built.USER_ID), recipe, cold_ids, counts
    if variant == "content-only":
        hide_item_ids(built)
    seen = FusionAdapter.training_items(train_data.dataset, train_data.dataset.item_num).numpy()
    keep_unseen_items_out_of_training(built, train_data, np.flatnonzero(~seen[1:]) + 1)  # attach's cold items
    return config, data, built, recipe, cold_ids, counts


def run_one(model: str, variant: str, seed: int, args, hparams: dict, cold_tokens: set[str]) -> dict:
    """Train (unless ContentKNN) on the cold-start dataset and rank the test users."""
    config, data, net, recipe, cold_ids, counts = build_cold_run(model, variant, seed, args, hparams, cold_tokens)
    test_data = data[2]
    if model == "ContentKNN":
        trained = {"epochs_run": 0}
    else:
        fingerprint = {"model": model, "variant": variant, "seed": seed, "cold_seed": args.cold_seed, "protocol": PROTOCOL,
                       "quick": bool(args.quick), "recipe": recipe, "device": args.device}
        trained = compat.train_and_rank(config, net, data, args.device, seed,
                                        state_dir=state_dir(args, model, variant, seed), fingerprint=fingerprint)
        trained.pop("ranks")
    ranks = rank_users(net, test_data, counts, args.device, seed)
    targets = _targets(test_data)
    # the same split on the validation cases: where a recipe change is chosen (the test split never chooses)
    valid_split = split_metrics(rank_users(net, data[1], counts, args.device, seed), _targets(data[1]), cold_ids)
    # where cold targets go wrong (issue 15): content-only scores of every item, and the rank among cold items
    probed = {"probe": probe_content(net, test_data, cold_ids, args.device, full_data_counts(args, data[0].dataset)),
              # whether the cold items fail on scale (a validation-chosen offset fixes it) or on order (it cannot)
              "calibrated": calibrate_cold_offset(case_scores(net, data[1], args.device),
                                                  case_scores(net, test_data, args.device), cold_ids)} \
        if variant == "fusion+cold" else {}
    return {"dataset": args.dataset, "model": model, "variant": variant, "seed": seed, "quick": bool(args.quick),
            **split_metrics(ranks, targets, cold_ids), "cold_items": int(len(cold_ids)),
            "epochs_run": trained.get("epochs_run"), "best_epoch": trained.get("best_epoch"), "protocol": PROTOCOL,
            **({} if model == "ContentKNN" else {"patience": int(config["stopping_step"])}),
            "valid": {group: valid_split[group] for group in ("cold", "warm")},
            **({"fusion": compat.resolved_recipe(model, recipe["fusion"])} if variant in ATTACHED else {}),
            **({"fusion_options": args.fusion_options} if variant in ATTACHED and args.fusion_options else {}),
            **probed, "test": {}, **provenance("benchmarks.coldstart", args.argv, args.device)}


def probe_content(model, test_data, cold_ids: np.ndarray, device: str = "cpu",
                  item_interactions: np.ndarray | None = None) -> dict:
    """Where an attached model trained with ``cold_dropout`` puts the test targets, scored three ways.

    - ``full``: as evaluated (cold items from content alone, warm items ID + content);
    - ``content_only``: every item scored from its content alone (every item flagged cold for the pass);
    - ``among_cold``: the cold target's rank among the cold items only (content against content).

    Ranks start at 1 and exclude padding and the user's history, as :func:`rank_users` does. Reports the median
    rank and the hits in the top 10 per group (``cold``/``warm``), and the mean norm of the content's part of
    the item embeddings (``content_norm``) for warm and cold items, and of the warm items' ID part (``id_norm``,
    when the embedding is wrapped): a content path that scores warm items almost as well as the whole model but
    cold ones far worse has learnt the warm items, not content. With ``item_interactions`` (each internal id's
    interaction count in the full data, before the held-out items lost theirs), ``target_interactions`` gives
    the median count of the cold and the warm targets: whether cold targets are simply rarer."""
    adapter = getattr(model, "fusion_adapter", None)
    if adapter is None or not adapter.options.scores_cold_items:
        raise ValueError("probe_content needs a model attached with cold_dropout > 0 or cold_regression > 0 (content-only scoring hides "
                         "ID embeddings through it); got "
                         + ("no attached adapter" if adapter is None else f"cold_dropout={adapter.options.cold_dropout}"))
    model.eval()
    flagged = adapter.cold_items
    cold = torch.zeros(flagged.shape[0], dtype=torch.bool)
    cold[torch.as_tensor(cold_ids, dtype=torch.long)] = True

    def scores(flags: torch.Tensor, interaction, history_index) -> torch.Tensor:
        adapter.cold_items = flags  # the buffer every content-alone decision reads
        adapter.clear_cache()
        return ranking_scores(model, interaction, history_index)

    ranks: dict[str, list[np.ndarray]] = {"full": [], "content_only": [], "among_cold": []}
    target_ids: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for interaction, history_index, positive_u, positive_i in test_data:
                interaction = interaction.to(device)
                rows, t = case_targets(len(interaction), positive_u, positive_i)
                full = scores(flagged, interaction, history_index)[rows]
                content = scores(torch.ones_like(flagged), interaction, history_index)[rows]
                for name, s in (("full", full), ("content_only", content),
                                ("among_cold", content.masked_fill(~cold, -torch.inf))):
                    ranks[name].append(ranks_of(s, t).numpy())
                target_ids.append(t)
    finally:
        adapter.cold_items = flagged
        adapter.clear_cache()
    with torch.no_grad():  # the content's part does not depend on which items are flagged cold
        name = sorted(adapter.item_out)[0]
        norms = adapter.item_delta(name).norm(dim=1).cpu()
        base = getattr(getattr(model, name, None), "base_layer", None)
        id_norms = base.weight.norm(dim=1).cpu() if isinstance(base, torch.nn.Embedding) else None
    targets = torch.cat(target_ids) if target_ids else torch.zeros(0, dtype=torch.long)
    is_cold = cold[targets].numpy()
    warm_items = ~cold
    warm_items[0] = False  # padding
    out: dict = {}
    for group, rows in (("cold", is_cold), ("warm", ~is_cold)):
        out[group] = {"users": int(rows.sum())}
        for name, parts in ranks.items():
            if name == "among_cold" and group == "warm":
                continue
            r = np.concatenate(parts)[rows] if parts else np.zeros(0)
            out[group][name] = {"median_rank": float(np.median(r) + 1) if r.size else None, "hits@10": int((r < 10).sum())}
    out["content_norm"] = {"warm": round(float(norms[warm_items].mean()), 4) if warm_items.any() else None,
                           "cold": round(float(norms[cold].mean()), 4) if cold.any() else None}
    if id_norms is not None and warm_items.any():
        out["id_norm"] = {"warm": round(float(id_norms[warm_items].mean()), 4)}
    if item_interactions is not None and len(targets):
        counts = np.asarray(item_interactions)[targets.numpy()]
        out["target_interactions"] = {group: float(np.median(counts[rows])) if rows.any() else None
                                      for group, rows in (("cold", is_cold), ("warm", ~is_cold))}
    return out


def calibrate_cold_offset(valid: tuple, test: tuple, cold_ids: np.ndarray) -> dict:
    """What :func:`fusionlayer.calibrate_cold_offset` does to a model, on recorded scores: the cold-score offset
    chosen on the validation cases (best cold NDCG@10 with warm NDCG@10 within 2 % of no offset), then applied
    to the test cases. Items scored from content alone sit on another scale than warm ones (ID + content), so a
    content ordering that is right among the cold items can still leave them all below the warm ones: this tells
    that failure (an offset fixes it) from a wrong ordering (it cannot). ``valid`` and ``test`` are
    :func:`case_scores` triples; the test split never takes part in the choice. Returns ``offset``,
    ``offset_in_std``, ``valid`` and ``test`` splits as :func:`split_metrics`, and the test cases'
    ``per_user_cold_ndcg``/``per_user_cold_users``."""
    v_scores, v_targets, _ = valid
    cold = torch.zeros(v_scores.shape[1], dtype=torch.bool)
    cold[torch.as_tensor(cold_ids, dtype=torch.long)] = True
    choice = choose_cold_offset(v_scores, v_targets, cold)
    valid_split, test_split = (split_metrics({"full": offset_ranks(scores, targets, cold, choice["offset"]), "user": users},
                                             targets.numpy(), cold_ids)
                               for scores, targets, users in (valid, test))
    return {"offset": round(choice["offset"], 6), "offset_in_std": choice["offset_in_std"],
            "valid": {g: valid_split[g] for g in ("cold", "warm")}, "test": {g: test_split[g] for g in ("cold", "warm")},
            "per_user_cold_ndcg": test_split["per_user_cold_ndcg"], "per_user_cold_users": test_split["per_user_cold_users"]}


def full_data_counts(args, train_dataset) -> np.ndarray | None:
    """Each internal item id's interaction count in the benchmark's data before items were held out (by token)."""
    counts = getattr(args, "item_counts", None)
    if counts is None:
        return None
    tokens = train_dataset.field2id_token[train_dataset.iid_field]
    return np.array([int(counts.get(t, 0)) for t in tokens])


def probe_checkpoint(args, hparams: dict, cold_tokens: set[str]) -> dict:
    """:func:`probe_content` of a saved fusion+cold model (a run's ``best.pth``), with the run's identity."""
    from fusionlayer.recbole_compat import load_checkpoint

    model, seed = args.models[0], args.seeds[0]
    _, data, net, recipe, cold_ids, _ = build_cold_run(model, "fusion+cold", seed, args, hparams, cold_tokens)
    net.load_state_dict(load_checkpoint(args.probe_checkpoint, map_location=args.device)["state_dict"])
    digest = hashlib.sha256(args.probe_checkpoint.read_bytes()).hexdigest()
    return {"dataset": args.dataset, "model": model, "variant": "fusion+cold", "seed": seed, "quick": bool(args.quick),
            "protocol": PROTOCOL, "fusion": compat.resolved_recipe(model, recipe["fusion"]),
            **({"fusion_options": args.fusion_options} if args.fusion_options else {}), "checkpoint_sha256": digest,
            "probe": probe_content(net, data[2], cold_ids, args.device, full_data_counts(args, data[0].dataset)),
            **provenance("benchmarks.coldstart", args.argv, args.device)}


def same_recipe(row: dict, cold_dropout: float | None = None, fusion_options: dict | None = None) -> bool:
    """Whether a recorded +fusion line used the recipe a run would use today: attach()'s defaults for its backbone
    under ``fusion_options`` (a remedy study's ``--fusion-option`` overrides; the line's own when None), with
    ``cold_dropout`` for fusion+cold (the line's own when None). A default adopted since makes the line stale:
    the benchmark re-runs it and the report leaves it out. Lines written before the recipe was recorded count as
    current; when a default changes, they are moved to ``results/history/`` by hand."""
    if "fusion" not in row or row.get("variant") not in ATTACHED:
        return True
    overrides = (row.get("fusion_options") or {}) if fusion_options is None else fusion_options
    fusion = {**compat.load_hparams()["fusion"], **overrides}
    if row["variant"] == "fusion+cold":
        fusion = {**fusion, "cold_dropout": row["fusion"].get("cold_dropout") if cold_dropout is None else cold_dropout}
    expected = compat.resolved_recipe(row["model"], fusion)
    return compat.with_later_options_off(row["fusion"], expected) == expected


def _targets(test_data) -> np.ndarray:
    return torch.cat([case_targets(len(interaction), positive_u, positive_i)[1]
                      for interaction, _, positive_u, positive_i in test_data]).numpy()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="SASRec,BPR,M2SR,ContentKNN")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default=None)
    parser.add_argument("--cold-seed", type=int, default=2024, help="seed of the held-out item set (fixed across runs)")
    parser.add_argument("--cold-dropout", type=float, default=0.3, help="attach(cold_dropout=...) of fusion+cold")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dataset", default="ml-100k", help=f"one of {compat.DATASETS}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--fusion-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override one attach() option of the +fusion variants (repeatable), for a remedy study; "
                             "needs its own --out")
    parser.add_argument("--probe-checkpoint", type=Path, default=None,
                        help="instead of training: load this best.pth of one fusion+cold run (one --models, one --seeds) "
                             "and append its probe_content() to coldstart-probe-<dataset>.jsonl")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.models = names(parser, args.models, MODELS, "--models")
    args.variants = set(names(parser, args.variants, VARIANTS, "--variants"))
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    default_out = RESULTS / f"coldstart-{args.dataset}{'-quick' if args.quick else ''}.jsonl"
    try:
        args.fusion_options = compat.parse_fusion_options(args.fusion_option)
    except ValueError as exc:
        parser.error(str(exc))
    if args.fusion_options:
        if args.out is None or args.out.resolve() == default_out.resolve():
            parser.error("--fusion-option needs its own --out (e.g. benchmarks/results/coldstart-remedy/<name>.jsonl): "
                         "the benchmark's own lines use attach()'s defaults, and a remedy's must not mix into them")
        if "cold_dropout" in args.fusion_options:
            parser.error("--fusion-option cold_dropout=...: use --cold-dropout (fusion+cold's own option)")
        if "M2SR" in args.models:
            parser.error("--fusion-option overrides attach() options of the backbones' +fusion variants; M2SR "
                         "standalone has no attach() recipe: leave it out of --models")
    args.out = args.out or default_out
    if args.probe_checkpoint is not None:
        if len(args.models) != 1 or len(args.seeds) != 1 or args.models[0] in ("ContentKNN", "M2SR"):
            parser.error(f"--probe-checkpoint needs one attached backbone in --models and one seed in --seeds; got "
                         f"--models {','.join(args.models)} --seeds {','.join(map(str, args.seeds))}")
        if not args.probe_checkpoint.is_file():
            parser.error(f"--probe-checkpoint {args.probe_checkpoint}: no such file (a run's best.pth, under "
                         f"<results>.runs/<run>/ while it trains)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    git_commit()  # the commit this process runs, read now: a commit made while it trains is not its code
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("recbole").setLevel(logging.WARNING)
    set_threads(args.threads)
    hparams = compat.load_hparams(dataset=args.dataset)
    for model_hparams in hparams["models"].values():
        # One patience for every cold-start run (the common one, 10): the compatibility grid's longer patience for
        # BPR came after this benchmark's first runs, and the variants compared within a seed must share it.
        model_hparams.pop("stopping_step", None)
    args.work = Path(tempfile.mkdtemp(prefix="fusionlayer-coldstart-"))
    try:
        from fusionlayer.data import default_data_root, slice_users

        args.data_root, args.dataset_name = Path(args.data_dir) if args.data_dir else default_data_root(), args.dataset
        if args.quick:
            args.dataset_name = slice_users(args.dataset, hparams["quick"]["users"], args.work, args.data_root)
            args.data_root = args.work
        interactions = filtered_interactions(args, hparams)
        args.item_counts = dict(zip(*np.unique(interactions["item_id"], return_counts=True)))
        args.cold_name, cold = write_cold_dataset(interactions, args.work,
                                                  f"{args.dataset}-cold{args.cold_seed}", args.cold_seed)
        if args.probe_checkpoint is not None:
            append_result(args.out.with_name(args.out.name.replace("coldstart-", "coldstart-probe-", 1)),
                          probe_checkpoint(args, hparams, cold))
            return 0
        done = {(r["model"], r["variant"], int(r["seed"])) for r in read_results(args.out)
                if r["model"] == "ContentKNN" or (r.get("protocol") == PROTOCOL
                                                  and same_recipe(r, args.cold_dropout, args.fusion_options))}
        for seed in args.seeds:
            for model in args.models:
                for variant in [v for v in variants(model) if v in args.variants]:
                    if (model, variant, seed) in done:
                        continue
                    logger.info("%s %s seed %d", model, variant, seed)
                    row = run_one(model, variant, seed, args, hparams, cold)
                    append_result(args.out, row)
                    shutil.rmtree(state_dir(args, model, variant, seed), ignore_errors=True)
                    logger.info("  cold ndcg@10 %s (%d users), warm %s", row["cold"]["ndcg@10"], row["cold"]["users"],
                                row["warm"]["ndcg@10"])
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
