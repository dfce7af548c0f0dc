"""Early validation curves: a few epochs of one variant, to locate where a recipe helps or hurts before spending a
converged run on it. A diagnostic, never a result: nothing is chosen from it, and its lines say so.

    python -m benchmarks.early_curves --dataset amazon-scientific --model BPR --epochs 4 --fusion-option side=history
    python -m benchmarks.early_curves --dataset amazon-scientific --model BPR --epochs 4 --plain

Each run appends one line (validation NDCG@10 after each epoch, seed, options, command, commit, device, date) to
``benchmarks/results/tuning/early-curves-<dataset>.jsonl``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import compat
from benchmarks.cli_args import set_threads
from benchmarks.models import BACKBONES
from benchmarks.provenance import provenance
from benchmarks.queue import append_result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon-scientific", help=f"one of {compat.DATASETS}")
    parser.add_argument("--model", required=True, choices=BACKBONES)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain", action="store_true", help="the plain backbone instead of +fusion")
    parser.add_argument("--fusion-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--zero-content", action="store_true",
                        help="a control: attach with every item's features zero (no content reaches the model), e.g. with "
                             "side=candidate to train the plain backbone under an added loss alone")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="results .jsonl (default benchmarks/results/tuning/early-curves-<dataset>.jsonl)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.plain and (args.fusion_option or args.zero_content):
        parser.error("--plain runs the backbone without fusion: give no --fusion-option or --zero-content with it")
    try:
        options = compat.parse_fusion_options(args.fusion_option)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING)
    set_threads(args.threads)
    from benchmarks.resume import ResumableTrainer

    hparams = compat.load_hparams(dataset=args.dataset)
    hparams["fusion"] = {**hparams["fusion"], **options}
    run_args = argparse.Namespace(dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir, device="cpu",
                                  quick=False)
    variant = "plain" if args.plain else "fusion"
    extra = {"checkpoint_dir": tempfile.mkdtemp(prefix="fusionlayer-early-"), "epochs": args.epochs,
             "stopping_step": args.epochs + 1}
    if args.zero_content:
        hparams["zero_content"] = True  # compat.load_tables gives zero tables
    config, _, (train, valid, _), model = compat.build_run(args.model, variant, args.seed, run_args, hparams, extra=extra)
    trainer = ResumableTrainer(config, model, tempfile.mkdtemp(prefix="fusionlayer-early-"), {"early": True})
    start = time.perf_counter()
    trainer.fit(train, valid, verbose=False, saved=True, show_progress=False)
    row = {"dataset": args.dataset, "model": args.model, "variant": variant, "seed": args.seed, "options": options,
           **({"zero_content": True} if args.zero_content else {}),
           "diagnostic": "early validation curve, not a result",
           "valid_ndcg@10": [round(float(r["ndcg@10"]), 5) for r in trainer.valid_curve],
           "train_seconds": round(time.perf_counter() - start, 1),
           **provenance("benchmarks.early_curves", argv if argv is not None else sys.argv[1:], "cpu")}
    append_result(args.out or compat.RESULTS / "tuning" / f"early-curves-{args.dataset}.jsonl", row)
    print(args.model, variant, options, row["valid_ndcg@10"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
