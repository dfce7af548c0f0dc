"""Choose the +fusion recipe per backbone on validation: run the declared search space, record, pick.

The space is ``benchmarks/results/tuning/space.json`` (committed before its runs). Each candidate is
one +fusion run of the compatibility benchmark's converged protocol on the space's seed, with one
``attach()`` option (or the set of modalities) changed from the defaults. Every finished run appends
one line to ``benchmarks/results/tuning/<dataset>-<model>.jsonl`` (a re-run skips what is recorded; the
'default' candidate reuses the main grid's +fusion run of the same seed when its protocol and recipe are the same);
``--pick`` writes ``picks.json`` and ``report.md``: per backbone, the candidate with the best validation NDCG@10, next
to the plain baseline's validation NDCG@10 from the main grid when it is there (a candidate that changes the
modalities is a modality's contribution, reported and never picked). A pick other than 'default' is
then confirmed (``--confirm``): it and the default are trained on the space's ``confirm_seeds`` too, and the pick
is *adopted* (becomes the adapter's ``default_options``) only if its mean validation NDCG@10 over the search's
seed and those seeds is above the default's; one seed's validation split is too small to tell the candidates
apart (a run's standard error is about 10 % of its score). Test metrics are recorded but choose nothing.

    python -m benchmarks.tune --models BPR,FPMC          # run what is missing (minutes per BPR/FPMC run)
    python -m benchmarks.tune --confirm --models FPMC     # the pick and the default on the confirm seeds
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


SPACES = TUNING  # where the declared spaces are (results may go elsewhere: TUNING)


def space_path(dataset: str) -> Path:
    """The declared search space of ``dataset``: ``space.json`` for ML-100K (the first), else ``space-<dataset>.json``."""
    return SPACES / ("space.json" if dataset == "ml-100k" else f"space-{dataset}.json")


def outputs(dataset: str) -> tuple[Path, Path]:
    """Where ``--pick`` writes: ``picks.json`` and ``report.md`` for ML-100K, else ``picks-<dataset>.json``, ``report-<dataset>.md``."""
    suffix = "" if dataset == "ml-100k" else f"-{dataset}"
    return TUNING / f"picks{suffix}.json", TUNING / f"report{suffix}.md"


def load_space(path: Path = TUNING / "space.json") -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no search space at {path}: declare one (see {TUNING / 'space.json'}) before its runs")
    space = json.loads(path.read_text())
    names = [c["name"] for c in space["candidates"]]
    if len(set(names)) != len(names) or "default" not in names:
        raise ValueError(f"{path}: candidate names must be unique and include 'default', got {names}")
    if any("," in name for name in names):
        raise ValueError(f"{path}: candidate names cannot contain ',' (--candidates is a comma-separated list), got "
                         f"{[name for name in names if ',' in name]}")
    for candidate in space["candidates"]:
        compat.parse_fusion_options([f"{k}={json.dumps(v)}" for k, v in candidate["options"].items()])
    confirm_seeds = space.get("confirm_seeds", [])
    if not all(isinstance(x, int) for x in confirm_seeds) or space["seed"] in confirm_seeds:
        raise ValueError(f"{path}: confirm_seeds must be integers other than the search's seed {space['seed']}, "
                         f"got {confirm_seeds}")
    return space


def results_path(dataset: str, model: str) -> Path:
    return compat.tuning_runs(dataset, model, TUNING)[0]


def _recipe(hparams: dict, candidate: dict) -> dict:
    recipe = {**hparams, "fusion": {**hparams["fusion"], **candidate["options"]}}
    if "modalities" in candidate:
        recipe["modalities"] = candidate["modalities"]
    if candidate.get("zero_content"):
        recipe["zero_content"] = True
    return recipe


def _record(out: Path, model: str, candidate: dict, seed: int, args, recipe: dict, reuse: Path | None) -> None:
    """Claim, then reuse (``reuse``'s identical run) or train one candidate at one seed, and append its line to ``out``.

    Several processes may search at once: each run is claimed first (``<results>.claims/``, as the grid's
    workers do), so two never train the same run, and a stopped run resumes from its snapshot."""
    name = candidate["name"]
    recorded = lambda: {(r.get("candidate"), r.get("seed")) for r in compat.read_results(out)}  # noqa: E731
    if (name, seed) in recorded():
        return
    key = (model, name, seed)
    claim = claim_run(out, key)
    if claim is None:
        logger.info("%s %s seed %d is claimed by another process; skipped", model, name, seed)
        return
    try:
        if (name, seed) in recorded():
            return  # recorded by another process between the check and the claim
        row = compat.identical_fusion_run(reuse, model, seed, recipe) if reuse is not None else None
        if row is None:
            logger.info("%s %s (seed %d)", model, name, seed)
            row = compat.run_one(model, "fusion", seed, args, recipe, state_dir=compat.run_state_dir(out, key))
            row["command"] = provenance("benchmarks.tune")["command"]
        else:
            logger.info("%s %s seed %d: the identical run of %s (same protocol and recipe), reused", model, name, seed,
                        row["reused_from"])
        row.update(candidate=name, modalities=candidate.get("modalities", recipe.get("modalities", ["text", "image"])))
        compat.append_result(out, row)
        shutil.rmtree(compat.run_state_dir(out, key), ignore_errors=True)
        logger.info("  valid ndcg@10 %.4f (best epoch %d of %d)", row["valid"]["full"]["ndcg@10"],
                    row["best_epoch"], row["epochs_run"])
    finally:
        claim.unlink(missing_ok=True)


def run(args, space: dict) -> None:
    """Run every candidate not yet recorded, on the space's seed, in the space's order (only ``args.candidates``
    when given). The 'default' candidate reuses the main grid's identical +fusion run when there is one."""
    hparams = compat.load_hparams(dataset=args.dataset)
    wanted = getattr(args, "candidates", None)
    grid = compat.RESULTS / f"compat-{args.dataset}.jsonl"
    for model in args.models:
        for candidate in space["candidates"]:
            if (not wanted or candidate["name"] in wanted) and applies(candidate, model, space):
                _record(results_path(args.dataset, model), model, candidate, space["seed"], args,
                        _recipe(hparams, candidate), grid if candidate["name"] == "default" else None)


def confirm_path(dataset: str, model: str) -> Path:
    return compat.tuning_runs(dataset, model, TUNING)[1]


def confirm(args, space: dict) -> None:
    """Train a backbone's pick (when it is not 'default') and the default on the space's ``confirm_seeds``.

    Both are +fusion runs of the grid's protocol; the default's are the grid's own runs when identical
    (reused). Their validation scores decide whether the pick becomes the library's default (:func:`pick`).

    With ``args.candidates``, those candidates are trained on the confirm seeds now, whether or not the search is
    complete and whatever it picks (a second lane can run them while the search's last runs train). This changes
    nothing in the decision: :func:`pick` still adopts only the search's own pick, and reads only its runs."""
    hparams = compat.load_hparams(dataset=args.dataset)
    grid = compat.RESULTS / f"compat-{args.dataset}.jsonl"
    by_name = {c["name"]: c for c in space["candidates"]}
    named = [name for name in (getattr(args, "candidates", None) or []) if name != "default"]
    picks = pick(args.dataset, space)
    for model in args.models:
        p = picks.get(model)
        if named:
            wanted = named
        elif p is None or p["pick"] == "default":
            continue
        elif not p["complete"]:
            logger.info("%s: the search is not complete; its pick is confirmed once it is", model)
            continue
        else:
            wanted = [p["pick"]]
        for seed in space.get("confirm_seeds", []):
            for name in ("default", *wanted):
                _record(confirm_path(args.dataset, model), model, by_name[name], seed, args,
                        _recipe(hparams, by_name[name]), grid)


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
        options = {c["name"]: c["options"] for c in space["candidates"]}
        pickable = pickable_candidates(space, model)
        best = max((name for name in scores if name in pickable), key=scores.get, default="default")
        plain = next((r["valid"]["full"]["ndcg@10"] for r in main if r["model"] == model), None)
        complete = pickable <= set(rows)
        check = confirmation(dataset, model, space, best, rows) if best != "default" else None
        adopted = best if complete and (best == "default" or (check or {}).get("confirmed")) else "default"
        picks[model] = {"pick": best, "options": options[best],
                        "valid_ndcg@10": scores, "plain_valid_ndcg@10": plain, "complete": complete,
                        "epochs_run": {name: r["epochs_run"] for name, r in rows.items()},
                        "confirmation": check, "adopted": adopted,
                        "adopted_options": options[adopted]}
    return picks


def verdict(model: str, options: dict, confirmed: bool) -> str:
    """The confirmation's sentence. A confirmed pick is called attach()'s default only when ``attach()`` resolves
    ``options`` for ``model`` with no options given (its adapter's ``default_options``)."""
    if not confirmed:
        return f"**not confirmed**; attach() keeps its defaults for {model}."
    if compat.resolved_recipe(model, {}) == compat.resolved_recipe(model, options):
        return f"**confirmed**; attach() defaults to it for {model}."
    return (f"**confirmed** on validation; attach()'s default for {model} is not changed yet (a default changes by "
            "hand, in the adapter's default_options, once the other dataset's rows are re-run with it).")


def applies(candidate: dict, model: str, space: dict) -> bool:
    """Whether ``candidate`` is searched for ``model`` (a candidate may name its backbones in ``models``)."""
    return model in candidate.get("models", space["models"])


def pickable_candidates(space: dict, model: str | None = None) -> set[str]:
    """The candidates that can become a backbone's default: those that change attach() options. A candidate that
    changes the modalities (``"modalities"`` in space.json) measures a modality's contribution; it is reported,
    never picked: attach() uses the feature tables the user gives it, and one dataset's validation split is no
    ground for a library default that drops a user's text or images (space.json's second amendment). A candidate
    with ``"zero_content": true`` is the no-content control of its options (every item's features zero, so nothing
    of the text or images reaches the model): it tells a gain from the content apart from one of the changed
    objective or the added parameters, and is reported, never picked."""
    return {c["name"] for c in space["candidates"] if "modalities" not in c and not c.get("zero_content")
            and (model is None or applies(c, model, space))}


def confirmation(dataset: str, model: str, space: dict, best: str, rows: dict) -> dict | None:
    """The pick against the default, by validation NDCG@10 per seed: the search's seed plus the
    ``confirm_seeds`` runs recorded for both (``confirm-<dataset>-<model>.jsonl``). None until every
    confirm seed has both runs. Confirmed when the pick's mean over those seeds is above the default's."""
    seeds = [space["seed"], *space.get("confirm_seeds", [])]
    per_seed = {name: {space["seed"]: rows[name]["valid"]["full"]["ndcg@10"]} for name in ("default", best) if name in rows}
    for r in compat.read_results(confirm_path(dataset, model)):
        if r.get("candidate") in per_seed and r["seed"] in seeds:
            per_seed[r["candidate"]][r["seed"]] = r["valid"]["full"]["ndcg@10"]
    if len(per_seed) < 2 or any(set(scores) != set(seeds) for scores in per_seed.values()):
        return None
    mean = {name: sum(scores.values()) / len(scores) for name, scores in per_seed.items()}
    return {"seeds": seeds, "valid_ndcg@10": {name: {str(k): v for k, v in sorted(scores.items())}
                                                for name, scores in per_seed.items()},
            "mean_valid_ndcg@10": {name: round(v, 6) for name, v in mean.items()}, "confirmed": mean[best] > mean["default"]}


def _pct(value: float, base: float | None) -> str:
    return f"{100 * (value / base - 1):+.1f} %" if base else "-"


def tuning_report(dataset: str, space: dict, picks: dict, made: dict | None = None) -> str:
    """Every candidate's validation NDCG@10 per backbone, against the default recipe and the plain baseline,
    with when it peaked (best epoch of epochs run) and its training time; the modalities' contributions."""
    main = {r["model"]: r for r in compat.read_results(compat.RESULTS / f"compat-{dataset}.jsonl")
            if r["variant"] == "plain" and int(r["seed"]) == space["seed"] and not r.get("quick")}
    lines = [f"# +fusion recipe search on {dataset} (seed {space['seed']}, validation only)", "",
             "Written by `python -m benchmarks.tune --pick` from the runs beside it; the space is "
             f"`{space_path(dataset).name}` "
             "(declared before its runs" + ("; its `amended` field says what was added after some had run" if space.get("amended") else "")
             + "). Test metrics are recorded in the .jsonl files but choose nothing.", ""]
    runs = [r for model in picks for path in (results_path(dataset, model), confirm_path(dataset, model))
            for r in compat.read_results(path)]
    if runs:
        lines += [runs_summary(runs) + (f". Picked by `{made['command']}` at commit {made['commit']}, {made['date']}."
                                        if made else "."), ""]
    for model, p in picks.items():
        rows = {r["candidate"]: r for r in compat.read_results(results_path(dataset, model))}
        default, plain = p["valid_ndcg@10"].get("default"), p["plain_valid_ndcg@10"]
        lines += [f"## {model}: pick `{p['pick']}`" + ("" if p["complete"] else " (search not complete)"), ""]
        missing = [c["name"] for c in space["candidates"] if c["name"] not in rows and applies(c, model, space)]
        if missing:
            lines += [f"Not yet run: {', '.join(f'`{m}`' for m in missing)}.", ""]
        check = p.get("confirmation")
        if p["pick"] != "default":
            if check is None:
                lines += [f"Not yet confirmed on seeds {space.get('confirm_seeds')} (`python -m benchmarks.tune --confirm "
                          f"--models {model}`{'' if p['complete'] else ', once the search is complete'}): "
                          f"attach() keeps its defaults for {model}.", ""]
            else:
                per = "; ".join(f"`{name}` " + ", ".join(f"{v:.4f}" for v in scores.values())
                                for name, scores in check["valid_ndcg@10"].items())
                lines += [f"Confirmation on seeds {', '.join(map(str, check['seeds']))} (validation NDCG@10 per seed: {per}): "
                          f"mean `{p['pick']}` {check['mean_valid_ndcg@10'][p['pick']]:.4f} against `default` "
                          f"{check['mean_valid_ndcg@10']['default']:.4f}: "
                          + verdict(model, p["options"], check["confirmed"]), ""]
        lines += [
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
            lines += ["", "Modalities (reported, never picked; change in validation NDCG@10 when one is removed from "
                      "text + image; single runs on one seed): "
                      + "; ".join(f"without {gone}: {_pct(alone, both)}" for gone, alone in (("image", text), ("text", image))
                                  if alone) + "."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(BACKBONES))
    parser.add_argument("--dataset", default="ml-100k", help=f"one of {compat.DATASETS}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--candidates", default=None,
                        help="comma-separated candidate names from space.json to run (default: all, in order); "
                             "with --confirm, run these candidates' confirmation seeds now, before the search is "
                             "complete (adoption still follows the search's pick)")
    parser.add_argument("--pick", action="store_true", help="only write picks.json from the recorded runs")
    parser.add_argument("--confirm", action="store_true",
                        help="run each finished search's pick (when not 'default') and the default on the space's "
                             "confirm_seeds; the pick becomes the library default only if its mean validation wins")
    args = parser.parse_args(argv)
    if args.confirm and args.pick:
        parser.error("--confirm runs confirmation seeds and --pick only reads recorded runs: give one of them")
    args.models = names(parser, args.models, BACKBONES, "--models")
    space = load_space(space_path(args.dataset))
    if args.candidates is not None:
        args.candidates = names(parser, args.candidates, [c["name"] for c in space["candidates"]], "--candidates")
    args.quick = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("recbole", "fusionlayer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    set_threads(args.threads)
    if args.confirm:
        confirm(args, space)
    elif not args.pick:
        run(args, space)
    picks = pick(args.dataset, space)
    made = provenance("benchmarks.tune", argv)
    picks_file, report_file = outputs(args.dataset)
    atomic_write_json(picks_file, {**made, "picks": picks})
    atomic_write_bytes(report_file, tuning_report(args.dataset, space, picks, made).encode())
    for model, p in picks.items():
        print(f"{model}: pick {p['pick']} ({p['valid_ndcg@10'].get(p['pick'])} valid NDCG@10; "
              f"default {p['valid_ndcg@10'].get('default')}, plain {p['plain_valid_ndcg@10']}); adopted {p['adopted']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
