"""Cold-start benchmark: items no one interacted with in training, scored from their content.

Protocol (issue 15): ML-100K after the compatibility benchmark's 5-core filter; a random 10 % of the items,
chosen with a fixed seed (``--cold-seed``, independent of the run seeds), lose every interaction except
those that are a user's last two, so they never occur in training and appear only as validation/test
targets (leave-one-out by time, full ranking over all items). Every run reports NDCG@10 and Hit@10 on the
test users whose target is cold and on those whose target is warm, and the per-user cold NDCG@10
(``per_user_cold_ndcg``: a list ordered by user id, one value per cold test case, so that the lists of one
seed's runs align; the ids are in ``per_user_cold_users``).

Variants: ``plain`` backbones (which can only guess on cold items), ``fusion`` (attach's defaults),
``fusion+cold`` (``attach(..., cold_dropout=...)``), ``M2SR`` standalone, and ``ContentKNN``: rank by the
cosine similarity of a candidate's features to the user's most recent items (no training).

    python -m benchmarks.coldstart --models SASRec,BPR,ContentKNN --seeds 0,1,2
    python -m benchmarks.coldstart --quick          # 1 epoch, 60 users: a wiring check, not a result
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fusionlayer.adapters.base import FusionAdapter, _ColdMaskedLoss
from benchmarks import compat
from benchmarks.cli_args import names, set_threads
from benchmarks.provenance import provenance
from benchmarks.queue import append_result, read_results
from benchmarks.ranking import metrics_from_ranks, rank_users

RESULTS = compat.RESULTS
MODELS = ["SASRec", "GRU4Rec", "BPR", "FPMC", "M2SR", "ContentKNN"]
COLD_SHARE = 0.10
PROTOCOL = 2  # 2: items unseen in training are neither sampled negatives nor cross-entropy logits while training
logger = logging.getLogger("fusionlayer.bench.coldstart")


def variants(model: str) -> list[str]:
    return ["standalone"] if model in ("M2SR", "ContentKNN") else ["plain", "fusion", "fusion+cold"]


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
    """The benchmark dataset's interactions after RecBole's 5-core filter, as tokens."""
    from fusionlayer.data.recbole_data import recbole_config
    from recbole.data import create_dataset

    config = recbole_config(compat.model_class("BPR"), args.dataset_name, data_root=args.data_root,
                            overrides={**hparams["common"], "checkpoint_dir": str(args.work / "saved")})
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
    out = {}
    for group, rows in (("cold", is_cold), ("warm", ~is_cold)):
        out[group] = {"ndcg@10": round(float(metrics["ndcg@10"][rows].mean()), 6) if rows.any() else None,
                      "hit@10": round(float(metrics["hit@10"][rows].mean()), 6) if rows.any() else None,
                      "users": int(rows.sum()),
                      # where the target lands beyond the top 10 (1 = first): tells "near miss" from "never considered"
                      "median_rank": float(np.median(ranks["full"][rows]) + 1) if rows.any() else None}
    # one value per cold test case, ordered by user id (one test case per user), so that runs of one seed align
    users, ndcg = ranks["user"][is_cold], metrics["ndcg@10"][is_cold]
    order = np.argsort(users, kind="stable")
    out["per_user_cold_ndcg"] = [round(float(x), 5) for x in ndcg[order]]
    out["per_user_cold_users"] = [int(u) for u in users[order]]
    return out


def state_dir(args, model: str, variant: str, seed: int) -> Path:
    """A run's resumable state (``benchmarks/resume.py``) until its line is written."""
    return compat.run_state_dir(args.out, (model, variant, seed, f"cold{args.cold_seed}", PROTOCOL, bool(args.quick)))


def run_one(model: str, variant: str, seed: int, args, hparams: dict, cold_tokens: set[str]) -> dict:
    """Train (unless ContentKNN) on the cold-start dataset and rank the test users."""
    fusion = {**hparams["fusion"], **({"cold_dropout": args.cold_dropout} if variant == "fusion+cold" else {})}
    recipe = {**hparams, "fusion": fusion}
    knn = model == "ContentKNN"
    extra = {"checkpoint_dir": str(args.work / "saved"), "user_inter_num_interval": "[0,inf)",
             "item_inter_num_interval": "[0,inf)", **(hparams["quick"] if args.quick else {})}
    extra.pop("users", None)
    run_args = argparse.Namespace(**{**vars(args), "dataset": "ml-100k"})  # features keyed by ML-100K's tokens
    config, dataset, data, built = compat.build_run("SASRec" if knn else model, "plain" if knn else variant.split("+")[0],
                                                    seed, run_args, recipe, data_root=args.work,
                                                    dataset_name=args.cold_name, extra=extra)
    train_data, valid_data, test_data = data
    counts = np.bincount(train_data.dataset.inter_feat[train_data.dataset.iid_field].numpy(),
                         minlength=train_data.dataset.item_num)
    if knn:
        tables = compat.load_tables("ml-100k", train_data.dataset, run_args, hparams)
        net, trained = ContentKNN(tables, built.ITEM_SEQ, built.USER_ID), {"epochs_run": 0}
    else:
        seen = FusionAdapter.training_items(train_data.dataset, train_data.dataset.item_num).numpy()
        keep_unseen_items_out_of_training(built, train_data, np.flatnonzero(~seen[1:]) + 1)  # attach's cold items
        fingerprint = {"model": model, "variant": variant, "seed": seed, "cold_seed": args.cold_seed, "protocol": PROTOCOL,
                       "quick": bool(args.quick), "recipe": recipe, "device": args.device}
        net, trained = built, compat.train_and_rank(config, built, data, args.device, seed,
                                                    state_dir=state_dir(args, model, variant, seed), fingerprint=fingerprint)
        trained.pop("ranks")
    ranks = rank_users(net, test_data, counts, args.device, seed) if knn else \
        rank_users(built, test_data, counts, args.device, seed)
    tokens = train_data.dataset.field2id_token[train_data.dataset.iid_field]
    cold_ids = np.array([i for i, t in enumerate(tokens) if t in cold_tokens])
    targets = _targets(test_data)
    return {"dataset": args.dataset, "model": model, "variant": variant, "seed": seed, "quick": bool(args.quick),
            **split_metrics(ranks, targets, cold_ids), "cold_items": int(len(cold_ids)),
            "epochs_run": trained.get("epochs_run"), "best_epoch": trained.get("best_epoch"), "protocol": PROTOCOL,
            **({} if knn else {"patience": int(config["stopping_step"])}),
            **({"fusion": compat.resolved_recipe(model, fusion)} if variant.startswith("fusion") else {}),
            "test": {}, **provenance("benchmarks.coldstart", args.argv, args.device)}


def same_recipe(row: dict, cold_dropout: float | None = None) -> bool:
    """Whether a recorded +fusion line used the recipe a run would use today: attach()'s defaults for its backbone,
    with ``cold_dropout`` for fusion+cold (the line's own when None). A default adopted since makes the line stale:
    the benchmark re-runs it and the report leaves it out. Lines written before the recipe was recorded count as
    current; when a default changes, they are moved to ``results/history/`` by hand."""
    if "fusion" not in row or not str(row.get("variant", "")).startswith("fusion"):
        return True
    fusion = compat.load_hparams()["fusion"]
    if row["variant"] == "fusion+cold":
        fusion = {**fusion, "cold_dropout": row["fusion"].get("cold_dropout") if cold_dropout is None else cold_dropout}
    return row["fusion"] == compat.resolved_recipe(row["model"], fusion)


def _targets(test_data) -> np.ndarray:
    out = []
    for interaction, _, positive_u, positive_i in test_data:
        target = torch.full((len(interaction),), -1, dtype=torch.long)
        target[positive_u] = positive_i
        out.append(target[target >= 0])
    return torch.cat(out).numpy()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="SASRec,BPR,M2SR,ContentKNN")
    parser.add_argument("--variants", default="plain,fusion,fusion+cold,standalone")
    parser.add_argument("--seeds", default=None)
    parser.add_argument("--cold-seed", type=int, default=2024, help="seed of the held-out item set (fixed across runs)")
    parser.add_argument("--cold-dropout", type=float, default=0.3, help="attach(cold_dropout=...) of fusion+cold")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.models = names(parser, args.models, MODELS, "--models")
    args.variants = set(names(parser, args.variants, ["plain", "fusion", "fusion+cold", "standalone"], "--variants"))
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    args.out = args.out or RESULTS / f"coldstart-{args.dataset}{'-quick' if args.quick else ''}.jsonl"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("recbole").setLevel(logging.WARNING)
    set_threads(args.threads)
    hparams = compat.load_hparams()
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
        args.cold_name, cold = write_cold_dataset(filtered_interactions(args, hparams), args.work,
                                                  f"{args.dataset}-cold{args.cold_seed}", args.cold_seed)
        done = {(r["model"], r["variant"], int(r["seed"])) for r in read_results(args.out)
                if r["model"] == "ContentKNN" or (r.get("protocol") == PROTOCOL and same_recipe(r, args.cold_dropout))}
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
