"""Choose the +fusion recipe per backbone on validation: run the declared search space, record, pick.

The space is ``benchmarks/results/tuning/space.json`` (committed before its runs). Each candidate is
one +fusion run of the compatibility benchmark's converged protocol on the space's seed, with one
``attach()`` option (or the set of modalities) changed from the defaults. Every finished run appends
one line to ``benchmarks/results/tuning/<dataset>-<model>.jsonl`` (a re-run skips what is recorded; the
'default' candidate reuses the main grid's +fusion run of the same seed when its protocol and recipe are the same);
``--pick`` writes ``picks.json`` and ``report.md``: per backbone, the candidate with the best validation NDCG@10, next
to the plain baseline's validation NDCG@10 from the main grid when it is there. Test metrics are
recorded but choose nothing.

    python -m benchmarks.tune --models BPR,FPMC          # run what is missing (minutes per BPR/FPMC run)
    python -m benchmarks.tune --pick                     # write picks.json from what is recorded
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from benchmarks import compat
from benchmarks.cli_args import names, set_threads
from benchmarks.models import BACKBONES
from benchmarks.provenance import atomic_write_bytes, atomic_write_json, provenance, runs_summary
from benchmarks.queue import claim_run

TUNING = compat.RESULTS / "tuning"
logger = logging.getLogger("fusionlayer.bench.tune")


def load_space(path: Path = TUNING / "space.json") -> dict:
    space = json.loads(path.read_text())
    names = [c["name"] for c in space["candidates"]]
    if len(set(names)) != len(names) or "default" not in names:
        raise ValueError(f"{path}: candidate names must be unique and include 'default', got {names}")
    for candidate in space["candidates"]:
        compat.parse_fusion_options([f"{k}={json.dumps(v)}" for k, v in candidate["options"].items()])
    return space


def results_path(dataset: str, model: str) -> Path:
    return TUNING / f"{dataset}-{model}.jsonl"


def resolved_recipe(model: str, fusion_options: dict) -> dict:
    """The +fusion options ``attach()`` resolves for ``model`` from ``fusion_options`` (its adapter's defaults under them)."""
    from fusionlayer.adapters.registry import registered_adapter
    from fusionlayer.config import AdapterOptions

    from benchmarks.models import model_class

    adapter = registered_adapter(model_class(model))
    return AdapterOptions.from_options(fusion_options, adapter.default_options).to_dict()


def grid_default_row(dataset: str, model: str, seed: int, hparams: dict, grid: Path | None = None) -> dict | None:
    """The main grid's +fusion run of ``model`` at ``seed`` when it is exactly the 'default' candidate's run.

    It is when it was trained with the same protocol (common and per-model hyper-parameters) and the same
    resolved fusion recipe as the default candidate would be today, at full size. Reusing it spares one
    run per backbone (up to an hour and a half for SASRec at one thread); the line keeps its own commit,
    date and command, and says where it came from (``reused_from``).
    """
    from fusionlayer.config import AdapterOptions

    if "modalities" in hparams:
        return None
    grid = grid or compat.RESULTS / f"compat-{dataset}.jsonl"
    expected = {**hparams["common"], **hparams["models"][model], "fusion": resolved_recipe(model, hparams["fusion"])}
    off = AdapterOptions().to_dict()  # an option added after a run was recorded is absent from its line; its
    # off value (cold_dropout 0, reduce_features None) is the behaviour the run had, anything else is not
    for row in compat.read_results(grid):
        recorded = dict(row.get("hparams") or {})
        fusion = recorded.get("fusion")
        if isinstance(fusion, dict):
            recorded["fusion"] = {**{k: v for k, v in expected["fusion"].items() if k not in fusion and v == off.get(k)}, **fusion}
        if (row.get("model"), row.get("variant"), row.get("seed"), bool(row.get("quick"))) == (model, "fusion", seed, False) \
                and recorded == expected:
            return {**row, "reused_from": grid.name}
    return None


def run(args, space: dict) -> None:
    """Run every candidate not yet recorded, in the space's order (only ``args.candidates`` when given).

    Several processes may search at once: each run is claimed first (``<results>.claims/``, as the grid's
    workers do), so two never train the same candidate, and a stopped run resumes from its snapshot.
    """
    hparams = compat.load_hparams()
    wanted = getattr(args, "candidates", None)
    for model in args.models:
        out = results_path(args.dataset, model)
        for candidate in space["candidates"]:
            name = candidate["name"]
            if (wanted and name not in wanted) or name in {row.get("candidate") for row in compat.read_results(out)}:
                continue
            key = (model, name, space["seed"])
            claim = claim_run(out, key)
            if claim is None:
                logger.info("%s %s is claimed by another process; skipped", model, name)
                continue
            try:
                if name in {row.get("candidate") for row in compat.read_results(out)}:
                    continue  # recorded by another process between the check and the claim
                recipe = {**hparams, "fusion": {**hparams["fusion"], **candidate["options"]}}
                if "modalities" in candidate:
                    recipe["modalities"] = candidate["modalities"]
                row = grid_default_row(args.dataset, model, space["seed"], recipe) if name == "default" else None
                if row is None:
                    logger.info("%s %s (seed %d)", model, name, space["seed"])
                    row = compat.run_one(model, "fusion", space["seed"], args, recipe,
                                         state_dir=compat.run_state_dir(out, key))
                    row["command"] = provenance("benchmarks.tune")["command"]
                else:
                    logger.info("%s default: the grid's seed-%d +fusion run (same protocol and recipe)", model, space["seed"])
                row.update(candidate=name, modalities=candidate.get("modalities", ["text", "image"]))
                compat.append_result(out, row)
                shutil.rmtree(compat.run_state_dir(out, key), ignore_errors=True)
                logger.info("  valid ndcg@10 %.4f (best epoch %d of %d)", row["valid"]["full"]["ndcg@10"],
                            row["best_epoch"], row["epochs_run"])
            finally:
                claim.unlink(missing_ok=True)


def pick(dataset: str, space: dict) -> dict:
    """Per backbone: every candidate's validation NDCG@10, the pick, and the plain baseline's."""
    main = [r for r in compat.read_results(compat.RESULTS / f"compat-{dataset}.jsonl")
            if r["variant"] == "plain" and int(r["seed"]) == space["seed"] and not r.get("quick")]
    picks = {}
    for model in space["models"]:
        rows = {r["candidate"]: r for r in compat.read_results(results_path(dataset, model))}
        if not rows:
            continue
        scores = {name: r["valid"]["full"]["ndcg@10"] for name, r in rows.items()}
        best = max(scores, key=scores.get)
        plain = next((r["valid"]["full"]["ndcg@10"] for r in main if r["model"] == model), None)
        picks[model] = {"pick": best, "options": next(c["options"] for c in space["candidates"] if c["name"] == best),
                        "valid_ndcg@10": scores, "plain_valid_ndcg@10": plain,
                        "complete": len(rows) == len(space["candidates"]),
                        "epochs_run": {name: r["epochs_run"] for name, r in rows.items()}}
    return picks


def _pct(value: float, base: float | None) -> str:
    return f"{100 * (value / base - 1):+.1f} %" if base else "-"


def tuning_report(dataset: str, space: dict, picks: dict, made: dict | None = None) -> str:
    """Every candidate's validation NDCG@10 per backbone, against the default recipe and the plain baseline,
    with when it peaked (best epoch of epochs run) and its training time; the modalities' contributions."""
    main = {r["model"]: r for r in compat.read_results(compat.RESULTS / f"compat-{dataset}.jsonl")
            if r["variant"] == "plain" and int(r["seed"]) == space["seed"] and not r.get("quick")}
    lines = [f"# +fusion recipe search on {dataset} (seed {space['seed']}, validation only)", "",
             "Written by `python -m benchmarks.tune --pick` from the runs beside it; the space is `space.json` "
             "(declared before its runs). Test metrics are recorded in the .jsonl files but choose nothing.", ""]
    runs = [r for model in picks for r in compat.read_results(results_path(dataset, model))]
    if runs:
        lines += [runs_summary(runs) + (f". Picked by `{made['command']}` at commit {made['commit']}, {made['date']}."
                                        if made else "."), ""]
    for model, p in picks.items():
        rows = {r["candidate"]: r for r in compat.read_results(results_path(dataset, model))}
        default, plain = p["valid_ndcg@10"].get("default"), p["plain_valid_ndcg@10"]
        lines += [f"## {model}: pick `{p['pick']}`" + ("" if p["complete"] else " (search not complete)"), "",
                  "| candidate | valid NDCG@10 | vs default | vs plain | best epoch / epochs run | train s |",
                  "|---|---|---|---|---|---|"]
        if model in main:
            r = main[model]
            lines.append(f"| plain (no fusion) | {plain:.4f} | | | {r.get('best_epoch', '-')} / {r['epochs_run']} | "
                         f"{r.get('train_seconds', 0):.0f} |")
        for name, score in sorted(p["valid_ndcg@10"].items(), key=lambda kv: -kv[1]):
            r = rows[name]
            label = f"{name} (the grid's run, `{r['reused_from']}`)" if r.get("reused_from") else name
            lines.append(f"| {label} | {score:.4f} | {_pct(score, default) if name != 'default' else ''} | "
                         f"{_pct(score, plain)} | {r.get('best_epoch', '-')} / {r['epochs_run']} | "
                         f"{r.get('train_seconds', 0):.0f} |")
        both, text, image = (p["valid_ndcg@10"].get(k) for k in ("default", "modalities=text", "modalities=image"))
        if both and (text or image):
            lines += ["", "Modalities (validation NDCG@10 lost when one is removed from text + image): "
                      + "; ".join(f"without {gone}: {_pct(alone, both)}" for gone, alone in (("image", text), ("text", image))
                                  if alone) + "."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(BACKBONES))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--candidates", default=None,
                        help="comma-separated candidate names from space.json to run (default: all, in order)")
    parser.add_argument("--pick", action="store_true", help="only write picks.json from the recorded runs")
    args = parser.parse_args(argv)
    args.models = names(parser, args.models, BACKBONES, "--models")
    space = load_space()
    if args.candidates is not None:
        args.candidates = names(parser, args.candidates, [c["name"] for c in space["candidates"]], "--candidates")
    args.quick = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("recbole", "fusionlayer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    set_threads(args.threads)
    if not args.pick:
        run(args, space)
    picks = pick(args.dataset, space)
    made = provenance("benchmarks.tune", argv)
    atomic_write_json(TUNING / "picks.json", {**made, "picks": picks})
    atomic_write_bytes(TUNING / "report.md", tuning_report(args.dataset, space, picks, made).encode())
    for model, p in picks.items():
        print(f"{model}: pick {p['pick']} ({p['valid_ndcg@10'][p['pick']]:.4f} valid NDCG@10; "
              f"default {p['valid_ndcg@10'].get('default')}, plain {p['plain_valid_ndcg@10']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
