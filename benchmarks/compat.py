"""Compatibility benchmark: does fusion make SASRec, GRU4Rec, FPMC and BPR better?

Grid: backbones {FPMC, BPR, GRU4Rec, SASRec} x {plain, fusion (attach)}, plus the standalone
MLPMixerRec (ID only) and M2SR, over seeds. Protocol in ``fusionlayer.data.recbole_data.PROTOCOL``
(5-core, L <= 50, leave-one-out by time, full ranking); hyper-parameters in
``benchmarks/compat_config.json``. Every finished run appends one JSON line to the results file;
a re-run skips what is recorded, so the grid completes over several sittings. Several processes
may share one results file: each run is claimed first (``<results>.claims/<run>.json``, created
with O_EXCL, removed when the run's line is written), so no two live workers train the same run; a
claim left by a process that died on this host is taken over. A run that is stopped part-way resumes
from its last finished epoch (``<results>.runs/<run>/``, see ``benchmarks/resume.py``); the line records
the epochs it resumed at (``resumed_at``). A +fusion run the recipe search (``benchmarks/tune.py``) already
(a candidate, or a confirmation run on another seed) trained with the same protocol and resolved recipe (one
that became a default) is reused, not trained again, and its line says so (``reused_from``).

    python -m benchmarks.compat                     # the full ML-100K grid (hours on 2 CPU cores)
    python -m benchmarks.compat --workers 2 --threads 1   # two single-thread worker processes
    python -m benchmarks.compat --quick             # 1 epoch, 60 users: wiring check (~1-2 min)
    python -m benchmarks.compat --models BPR,FPMC --seeds 0
    python -m benchmarks.compat --models BPR --seeds 0 --fusion-option output_dropout=0.5 \
        --out benchmarks/results/ablation/output_dropout-0.5.jsonl   # a fusion variant, fusion runs only
    python -m benchmarks.report                     # tables, significance, popularity, PNG
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.cli_args import names, set_threads
from benchmarks.models import BACKBONES, MODELS, model_class, variants
from benchmarks.queue import append_result, claim_run, read_results, run_key
from benchmarks.ranking import metrics_from_ranks, rank_users, summarise
from benchmarks.provenance import git_commit, provenance

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PROTOCOLS = HERE / "protocols"
DATASETS = sorted(p.stem for p in PROTOCOLS.glob("*.json"))  # one protocol file per benchmarked dataset
logger = logging.getLogger("fusionlayer.bench.compat")


def load_protocol(dataset: str) -> dict:
    """``benchmarks/protocols/<dataset>.json``: the dataset's RecBole protocol (over
    ``fusionlayer.data.recbole_data.PROTOCOL``), its modalities, their encoders and where its item content is."""
    path = PROTOCOLS / f"{dataset}.json"
    if not path.is_file():
        raise KeyError(f"no benchmark protocol for dataset {dataset!r}: expected {path}; "
                       f"datasets with one: {DATASETS}")
    protocol = json.loads(path.read_text())
    missing = {"recbole", "modalities", "encoders", "content"} - set(protocol)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}; see benchmarks/protocols/ml-100k.json for the fields")
    return protocol


def load_hparams(path: Path = HERE / "compat_config.json", dataset: str = "ml-100k") -> dict:
    """compat_config.json's hyper-parameters with ``dataset``'s protocol: ``recbole`` (RecBole overrides),
    ``modalities``, ``encoders`` and ``content`` (the feature source's options, None for a built-in one)."""
    hparams = json.loads(path.read_text())
    protocol = load_protocol(dataset)
    hparams.update({key: protocol[key] for key in ("modalities", "encoders", "content")})
    hparams["recbole"] = protocol["recbole"]
    return hparams


def grid(models: list[str], seeds: list[int], *, fusion_only: bool = False,
         only: set[str] | None = None) -> list[tuple[str, str, int]]:
    """(model, variant, seed) in run order: seed-major, so every model gets seed 0 first.

    ``fusion_only``: just the backbones' +fusion runs (for ``--fusion-option`` variants, whose plain
    baselines are the main grid's). ``only``: keep these variants (``--variants``).
    """
    runs = []
    for seed in seeds:
        for model in models:
            runs += [(model, variant, seed) for variant in variants(model)
                     if (not fusion_only or variant == "fusion") and (only is None or variant in only)]
    return runs


def resolved_recipe(model: str, fusion_options: dict) -> dict:
    """The +fusion options ``attach()`` resolves for ``model`` from ``fusion_options`` (its adapter's defaults under them)."""
    from fusionlayer.adapters.registry import registered_adapter
    from fusionlayer.config import AdapterOptions

    adapter = registered_adapter(model_class(model))
    return AdapterOptions.from_options(fusion_options, adapter.default_options).to_dict()


def with_later_options_off(recorded: dict, expected: dict) -> dict:
    """A recorded line's resolved fusion options, with each option added after the line was written (absent from it)
    taken from ``expected`` where ``expected`` has it at its off value (cold_dropout 0, reduce_features None, ...):
    that is the behaviour the run had. An added option that ``expected`` turns on stays absent, so the line differs."""
    from fusionlayer.config import AdapterOptions

    off = AdapterOptions().to_dict()
    return {**{k: v for k, v in expected.items() if k not in recorded and k in off and v == off[k]}, **recorded}


def identical_fusion_run(path: Path, model: str, seed: int, hparams: dict) -> dict | None:
    """A recorded full-size +fusion run of ``model`` at ``seed`` in ``path`` that is exactly the run ``hparams``
    would train today: the same protocol (common and per-model hyper-parameters), the same resolved fusion
    recipe and both modalities. The main grid and the recipe search (``benchmarks/tune.py``) reuse each
    other's runs this way, so a candidate that became a default is not trained twice. The line keeps its own
    commit, date and command, and says where it came from (``reused_from``).
    """
    modalities = sorted(hparams.get("modalities", ["text", "image"]))
    expected = {**hparams["common"], **hparams["models"][model], "fusion": resolved_recipe(model, hparams["fusion"])}
    for row in read_results(path):
        recorded = dict(row.get("hparams") or {})
        fusion = recorded.get("fusion")
        if isinstance(fusion, dict):
            recorded["fusion"] = with_later_options_off(fusion, expected["fusion"])
        if (row.get("model"), row.get("variant"), row.get("seed"), bool(row.get("quick"))) == (model, "fusion", seed, False) \
                and bool(row.get("zero_content")) == bool(hparams.get("zero_content")) and sorted(row.get("modalities") or ["text", "image"]) == modalities and recorded == expected:
            return {**row, "reused_from": row.get("reused_from") or str(path.relative_to(RESULTS) if path.is_relative_to(RESULTS) else path.name)}
    return None


def tuning_runs(dataset: str, model: str, folder: Path | None = None) -> list[Path]:
    """The recipe search's results for ``model`` (its candidates on the search's seed), then its confirmation
    runs (the pick and the default on other seeds), under ``folder`` (default ``results/tuning``): where the
    grid looks for an identical +fusion run before training one."""
    folder = RESULTS / "tuning" if folder is None else folder
    return [folder / f"{dataset}-{model}.jsonl", folder / f"confirm-{dataset}-{model}.jsonl"]


def parse_fusion_options(pairs: list[str]) -> dict:
    """``["output_dropout=0.5", "hidden_size=16"]`` -> ``{"output_dropout": 0.5, "hidden_size": 16}``.

    Values are read as JSON (numbers, booleans), else kept as strings, then checked by
    :class:`fusionlayer.AdapterOptions` (what ``attach()`` accepts) before any training. Raises ValueError.
    """
    from fusionlayer.config import AdapterOptions

    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--fusion-option takes KEY=VALUE, got {pair!r}; e.g. --fusion-option output_dropout=0.5")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    try:
        AdapterOptions.from_options(options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--fusion-option: {exc}") from None
    return options


# ----------------------------------------------------------------------------------- one run
def load_tables(dataset_name: str, train_dataset, args, hparams) -> dict:
    from fusionlayer.encoders import load_features

    modalities = tuple(hparams.get("modalities", ("text", "image")))
    aligned = load_features(dataset_name, train_dataset, modalities, encoders=hparams["encoders"],
                            data_root=args.data_dir, cache_dir=args.cache_dir, progress=False,
                            **(hparams.get("content") or {}))
    if hparams.get("zero_content"):  # the no-content control: the same model, every item's content missing
        return {name: a.features.new_zeros(a.features.shape) for name, a in aligned.items()}
    return {name: a.features for name, a in aligned.items()}


def needs_features(model_name: str, variant: str) -> bool:
    """Whether a run reads item content: a +fusion backbone, or M2SR."""
    return variant == "fusion" or model_name == "M2SR"


def build_run(model_name: str, variant: str, seed: int, args, hparams: dict, *, data_root: Path | None = None,
              dataset_name: str | None = None, extra: dict | None = None):
    """``(config, dataset, (train, valid, test), model)`` of one run, built the same way by every benchmark:
    plain and +fusion differ only by ``attach``."""
    import fusionlayer
    from fusionlayer.data.recbole_data import prepare_data, recbole_config
    from recbole.utils import init_seed

    cls = model_class(model_name)
    overrides = {**hparams.get("recbole", {}), **hparams["common"], **hparams["models"][model_name], "seed": seed,
                 "reproducibility": True,
                 "device": args.device, "use_gpu": args.device.startswith("cuda"), **(extra or {})}
    config = recbole_config(cls, dataset_name or args.dataset, data_root=data_root, overrides=overrides)
    init_seed(seed, True)
    dataset, train_data, valid_data, test_data = prepare_data(config)
    tables = load_tables(args.dataset, train_data.dataset, args, hparams) if needs_features(model_name, variant) else {}
    init_seed(seed, True)
    model = cls(config, train_data.dataset, features=tables) if model_name == "M2SR" else cls(config, train_data.dataset)
    if variant == "fusion":
        fusionlayer.attach(model, tables, dataset=train_data.dataset, **hparams["fusion"])
    return config, dataset, (train_data, valid_data, test_data), model.to(args.device)


def train_and_rank(config, model, data, device: str, seed: int, *, state_dir: Path | None = None,
                   fingerprint: dict | None = None) -> dict:
    """Fit with RecBole's own Trainer (early stopping), reload the best epoch, rank validation and test users.

    With ``state_dir`` the training is resumable (:class:`benchmarks.resume.ResumableTrainer`): a run cut
    short continues from its last finished epoch when started again with the same ``fingerprint``."""
    from recbole.trainer import Trainer

    from benchmarks.resume import ResumableTrainer
    from fusionlayer.recbole_compat import load_checkpoint

    train_data, valid_data, test_data = data
    trainer = Trainer(config, model) if state_dir is None else ResumableTrainer(config, model, state_dir, fingerprint)
    start = time.perf_counter()
    trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False)
    train_seconds = time.perf_counter() - start if state_dir is None else trainer.train_seconds
    best_epoch = int(load_checkpoint(trainer.saved_model_file, map_location=device)["epoch"])
    start = time.perf_counter()
    recbole_test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    counts = np.bincount(train_data.dataset.inter_feat[train_data.dataset.iid_field].numpy(),
                         minlength=train_data.dataset.item_num)
    ranks = {split: rank_users(model, loader, counts, device, seed) for split, loader in
             (("valid", valid_data), ("test", test_data))}
    epochs = len(trainer.train_loss_dict)
    return {"ranks": ranks, "recbole_test": {k: round(float(v), 6) for k, v in recbole_test.items()},
            "best_epoch": best_epoch, "epochs_run": epochs, "epoch_cap": int(config["epochs"]),
            "stopped_early": epochs < int(config["epochs"]), "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(time.perf_counter() - start, 1),
            **({"resumed_at": trainer.resumed_at} if getattr(trainer, "resumed_at", None) else {}),
            **({"valid_curve": trainer.valid_curve} if getattr(trainer, "valid_curve", None) else {})}


def run_state_dir(out: Path, key: tuple) -> Path:
    """Where a run of the results file ``out`` keeps its resumable state until its line is written."""
    return Path(f"{out}.runs") / "__".join(str(part) for part in key)


def run_one(model_name: str, variant: str, seed: int, args, hparams: dict, *, state_dir: Path | None = None) -> dict:
    """One run of the grid (data, model, training, ranking) as one results line; resumable with ``state_dir``
    (the caller removes it once the line is written)."""
    import fusionlayer

    data_root, dataset_name = Path(args.data_dir) if args.data_dir else None, args.dataset
    extra = {"checkpoint_dir": tempfile.mkdtemp(prefix="fusionlayer-compat-")}
    if args.quick:
        from fusionlayer.data import slice_users

        extra.update({k: v for k, v in hparams["quick"].items() if k != "users"})
        slice_root = Path(tempfile.mkdtemp(prefix="fusionlayer-slice-"))
        dataset_name = slice_users(args.dataset, hparams["quick"]["users"], slice_root, data_root)
        data_root = slice_root
    try:
        config, dataset, data, model = build_run(model_name, variant, seed, args, hparams, data_root=data_root,
                                                 dataset_name=dataset_name, extra=extra)
        counts = fusionlayer.count_parameters(model)
        recipe = model.fusion_adapter.options.to_dict() if variant == "fusion" else None
        fingerprint = {"dataset": args.dataset, "model": model_name, "variant": variant, "seed": seed,
                       "quick": bool(args.quick), "hparams": {**hparams["common"], **hparams["models"][model_name]},
                       "fusion": recipe, "modalities": hparams.get("modalities"), "device": args.device,
                       **({"recbole": hparams["recbole"]} if hparams.get("recbole") else {}),
                       **({"zero_content": True} if hparams.get("zero_content") else {})}
        trained = train_and_rank(config, model, data, args.device, seed, state_dir=state_dir, fingerprint=fingerprint)
    finally:
        shutil.rmtree(extra["checkpoint_dir"], ignore_errors=True)
        if args.quick:
            shutil.rmtree(data_root, ignore_errors=True)
    ranks = trained.pop("ranks")
    test_ndcg = metrics_from_ranks(ranks["test"]["full"])["ndcg@10"]
    return {
        "dataset": args.dataset, "model": model_name, "variant": variant, "seed": seed, "quick": bool(args.quick),
        "modalities": list(hparams.get("modalities", ["text", "image"])) if needs_features(model_name, variant) else [],
        **({"zero_content": True} if hparams.get("zero_content") and needs_features(model_name, variant) else {}),
        "test": summarise(ranks["test"]), "valid": summarise(ranks["valid"]), **trained,
        "params": int(counts["total"]), "fusion_params": int(counts["fusion"]),
        "n_users": int(dataset.user_num - 1), "n_items": int(dataset.item_num - 1), "n_inter": int(len(dataset.inter_feat)),
        **provenance("benchmarks.compat", getattr(args, "argv", None), args.device),
        "hparams": {**hparams["common"], **hparams["models"][model_name], **({"fusion": recipe} if recipe else {})},
        "per_user": {"user": ranks["test"]["user"].tolist(), "ndcg@10": [round(float(x), 5) for x in test_ndcg],
                     "target_pop": ranks["test"]["target_pop"].tolist()},
    }


# ----------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k", help=f"one of {DATASETS}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; 0 with --quick)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of plain,fusion,standalone (default all)")
    parser.add_argument("--quick", action="store_true", help="1 epoch on the first 60 users: proves the wiring end to end")
    parser.add_argument("--out", type=Path, default=None, help="results .jsonl (default benchmarks/results/compat-<dataset>[-quick].jsonl)")
    parser.add_argument("--data-dir", default=os.environ.get("FUSIONLAYER_DATA"), help="folder holding <dataset>/ (default ../shared/datasets)")
    parser.add_argument("--cache-dir", default=os.environ.get("FUSIONLAYER_CACHE"), help="feature cache (default ~/.cache/fusionlayer)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the grid through run claims (give each --threads)")
    parser.add_argument("--fusion-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override one attach() option of compat_config.json's 'fusion' block (repeatable); "
                             "runs only the backbones' +fusion variants and needs its own --out")
    parser.add_argument("--patience", type=int, default=None, metavar="N",
                        help="early-stopping patience (evaluations without improvement) instead of compat_config.json's "
                             "stopping_step, for a patience study; needs its own --out")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.fusion_options = parse_fusion_options(args.fusion_option)
    except ValueError as exc:
        parser.error(str(exc))
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.dataset not in DATASETS:
        parser.error(f"unknown dataset {args.dataset!r}; choose from {DATASETS}")
    args.models = names(parser, args.models, MODELS, "--models")
    if args.variants is not None:
        args.variants = {v.strip() for v in args.variants.split(",") if v.strip()}
        if not args.variants or args.variants - {"plain", "fusion", "standalone"}:
            parser.error(f"--variants takes a comma-separated subset of plain,fusion,standalone, got {args.variants}")
    if args.seeds is None:
        args.seeds = "0" if args.quick else "0,1,2"
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    default_out = RESULTS / f"compat-{args.dataset}{'-quick' if args.quick else ''}.jsonl"
    if args.fusion_options:
        if args.out is None or args.out.resolve() == default_out.resolve():
            parser.error("--fusion-option needs its own --out (e.g. benchmarks/results/ablation/<name>.jsonl): "
                         "a variant's runs must not mix into the main grid, whose rows are keyed without it")
        if not set(args.models) & set(BACKBONES):
            parser.error(f"--fusion-option applies to the backbones {BACKBONES}, got --models {','.join(args.models)}")
    if args.patience is not None:
        if args.patience < 1:
            parser.error(f"--patience must be >= 1, got {args.patience}")
        if args.out is None or args.out.resolve() == default_out.resolve():
            parser.error("--patience needs its own --out (e.g. benchmarks/results/tuning/patience-<n>.jsonl): "
                         "the main grid's runs use compat_config.json's stopping_step")
    if args.out is None:
        args.out = default_out
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("recbole", "fusionlayer.data", "fusionlayer.encoders", "fusionlayer.adapters"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    set_threads(args.threads)
    if args.workers > 1:
        return run_workers(args, sys.argv[1:] if argv is None else list(argv))
    hparams = load_hparams(dataset=args.dataset)
    hparams["fusion"] = {**hparams["fusion"], **args.fusion_options}
    if args.patience is not None:
        hparams["common"]["stopping_step"] = args.patience
        for model_hparams in hparams["models"].values():  # a backbone's own patience (BPR's) gives way too
            if "stopping_step" in model_hparams:
                model_hparams["stopping_step"] = args.patience
    git_commit()
    done = {run_key(r) for r in read_results(args.out)}
    runs = grid(args.models, args.seeds, fusion_only=bool(args.fusion_options), only=args.variants)
    todo = [(m, v, s) for m, v, s in runs if (args.dataset, m, v, s, args.quick) not in done]
    logger.info("%d runs recorded in %s, %d to do", len(done), args.out, len(todo))
    finished = 0
    for count, (model, variant, seed) in enumerate(todo):
        if args.max_runs is not None and finished >= args.max_runs:
            break
        key = (args.dataset, model, variant, seed, args.quick)
        if key in {run_key(r) for r in read_results(args.out)}:
            continue  # another worker recorded it meanwhile
        claim = claim_run(args.out, key)
        if claim is None:
            logger.info("run %d/%d: %s %s seed %d is claimed by another worker; skipped", count + 1, len(todo), model, variant, seed)
            continue
        try:
            logger.info("run %d/%d: %s %s seed %d", count + 1, len(todo), model, variant, seed)
            row = next(filter(None, (identical_fusion_run(path, model, seed, hparams)
                                     for path in tuning_runs(args.dataset, model))), None) \
                if variant == "fusion" and not args.quick else None
            if row is None:
                row = run_one(model, variant, seed, args, hparams, state_dir=run_state_dir(args.out, key))
            else:
                logger.info("  the recipe search's identical run (%s), reused", row["reused_from"])
            append_result(args.out, row)
            shutil.rmtree(run_state_dir(args.out, key), ignore_errors=True)  # recorded: its snapshot is not needed
        finally:
            claim.unlink(missing_ok=True)
        finished += 1
        logger.info("  test full ndcg@10 %.4f  mrr@10 %.4f  (best epoch %d of %d, %.0f s)", row["test"]["full"]["ndcg@10"],
                    row["test"]["full"]["mrr@10"], row["best_epoch"], row["epochs_run"], row["train_seconds"])
    return 0


def without_workers(argv: list[str]) -> list[str]:
    """``argv`` minus ``--workers N`` / ``--workers=N``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--workers":
            skip = True
        elif not item.startswith("--workers="):
            out.append(item)
    return out


def run_workers(args, argv: list[str]) -> int:
    """Start ``--workers`` copies of this script without ``--workers``; they share the grid through claims."""
    child_argv = without_workers(argv)
    children = []
    for _ in range(args.workers):
        children.append(subprocess.Popen([sys.executable, "-m", "benchmarks.compat", *child_argv], cwd=HERE.parent))
        time.sleep(1)  # stagger start-up so the first claims do not collide on data preparation
    codes = [child.wait() for child in children]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
