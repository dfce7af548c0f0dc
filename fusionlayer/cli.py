"""Command line: ``fusionlayer encode | demo | bench``.

    fusionlayer encode --dataset ml-100k --modality text [--encoder minilm] [--data-dir DIR] [--cache-dir DIR]
    fusionlayer encode --dataset NAME --data-dir DIR --modality text --text-fields title,description [--template ...]
    fusionlayer encode --dataset NAME --data-dir DIR --modality image --image-dir DIR | --image-field FIELD
    fusionlayer demo [--epochs 2]
    fusionlayer bench compat [--quick] ...      (python -m benchmarks.compat, from the source checkout's root)
    fusionlayer bench scaling [--quick] ...     (python -m benchmarks.scaling)

Environment (read here only, never by the library): ``FUSIONLAYER_DATA`` (datasets root, default
``../shared/datasets``), ``FUSIONLAYER_CACHE`` (feature cache, default ``~/.cache/fusionlayer``).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import pickle
import sys
import time
import warnings
from pathlib import Path

from fusionlayer import __version__
from fusionlayer.encoders.presets import PRESETS

__all__ = ["main"]


def _encode(args: argparse.Namespace) -> int:
    from fusionlayer.data.content import ContentSpec
    from fusionlayer.encoders import encode_items

    options = {"batch_size": args.batch_size, "device": args.device, "progress": not args.no_progress}
    if args.modality == "text":
        options["local_files_only"] = not args.download
    given = {k: getattr(args, k) for k in ("text_fields", "template", "text_file", "token_field", "image_dir",
                                           "image_field", "image_root") if getattr(args, k) is not None}
    content = ContentSpec(**given) if given else None
    start = time.perf_counter()
    result = encode_items(args.dataset, args.modality, args.encoder, data_root=args.data_dir,
                          cache_dir=args.cache_dir, content=content, **options)
    stats, content = result.stats, result.stats.get("content", {})
    print(f"{args.dataset} {args.modality} with {result.meta['encoder']}: {len(result.tokens)} items x {result.dim} "
          f"({'cache hit' if stats['hit'] else 'encoded ' + str(stats['encoded'])}, reused {stats['reused']}, "
          f"missing {stats['missing']}) in {time.perf_counter() - start:.2f} s")
    print(f"  content: {content}")
    for token, reason in stats["failures"][:10]:
        print(f"  item {token}: {reason}")
    if len(stats["failures"]) > 10:
        print(f"  ... and {len(stats['failures']) - 10} more missing inputs")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Encode ML-100K content (cached), then train M2SR and GRU4Rec + fusion briefly, print test scores."""
    import fusionlayer
    from fusionlayer.data.recbole_data import prepare_data, recbole_config
    from fusionlayer.encoders import load_features

    fusionlayer.patch_recbole()
    from recbole.model.sequential_recommender import GRU4Rec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    for name in ("M2SR", "GRU4Rec+fusion"):
        model_class = fusionlayer.M2SR if name == "M2SR" else GRU4Rec
        config = recbole_config(model_class, "ml-100k", data_root=args.data_dir, overrides={
            "epochs": args.epochs, "hidden_size": 64, "embedding_size": 64, "n_layers": 1, "num_layers": 1,
            "channel_hidden_size": 128, "token_hidden_size": 32, "dropout_prob": 0.0, "train_batch_size": 1024,
            "seed": 0, "checkpoint_dir": str(Path(args.workdir) / "saved")})
        init_seed(0, True)
        dataset, train_data, valid_data, test_data = prepare_data(config)
        features = load_features("ml-100k", train_data.dataset, data_root=args.data_dir, cache_dir=args.cache_dir)
        tables = {m: f.features for m, f in features.items()}
        print(f"{name}: {dataset.user_num - 1} users, {dataset.item_num - 1} items; features "
              + ", ".join(f"{m} {tuple(t.shape)}" for m, t in tables.items()))
        init_seed(0, True)
        if name == "M2SR":
            model = fusionlayer.M2SR(config, train_data.dataset, features=tables)
        else:
            model = fusionlayer.attach(GRU4Rec(config, train_data.dataset), tables)
        trainer = Trainer(config, model)
        start = time.perf_counter()
        trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False)
        test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
        print(f"{name}: {args.epochs} epochs in {time.perf_counter() - start:.0f} s, params "
              f"{fusionlayer.count_parameters(model)}; test " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    return 0


def _checkout_root() -> Path | None:
    """The source checkout whose ``benchmarks/`` to run: the working directory's, else the one this package
    was installed from in editable mode; None for a wheel install run elsewhere."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "benchmarks" / "__init__.py").is_file():
            return root
    return None


def _bench(args: argparse.Namespace, rest: list[str]) -> int:
    """``python -m benchmarks.<which> <rest>`` in the source checkout, as a child process (the library never edits
    ``sys.path``); its exit status is ours."""
    root = _checkout_root()
    if root is None:
        print(f"the benchmarks ship with the source checkout, not the wheel: clone the repository and run "
              f"`python -m benchmarks.{args.which}` from its root", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, "-m", f"benchmarks.{args.which}", *rest], cwd=root).returncode


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionlayer", description="Multi-modal fusion for sequential recommenders.")
    parser.add_argument("--version", action="version", version=f"fusionlayer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    data_default, cache_default = os.environ.get("FUSIONLAYER_DATA"), os.environ.get("FUSIONLAYER_CACHE")

    presets = "\n".join(f"  {name:18s} {modality:5s} {text}" for name, (modality, text) in PRESETS.items())
    enc = sub.add_parser("encode", help="encode item text or images into the feature cache",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=f"encoder presets:\n{presets}\nor a model name/path: text: a transformers hub name "
                                "or local directory; image: timm:<model>[@<checkpoint>] or open_clip:<model>[@<tag|checkpoint>]")
    enc.add_argument("--dataset", default="ml-100k",
                     help="the dataset's name: its folder under --data-dir holds <name>.inter and <name>.item "
                          "(ml-100k and ml-1m have built-in content; others need the content options below)")
    enc.add_argument("--modality", required=True, choices=["text", "image"])
    enc.add_argument("--text-fields", default=None, help="comma-separated columns of <name>.item (or --text-file) "
                                                          "joined into each item's text, e.g. title,description")
    enc.add_argument("--template", default=None, help="how the fields are joined, e.g. '{title}. {categories}. {description}' "
                                                       "(default: the non-empty fields joined by '. ')")
    enc.add_argument("--text-file", default=None, help="a CSV/TSV/Parquet file in the dataset folder with the text "
                                                        "columns, keyed by the item token (default: <name>.item)")
    enc.add_argument("--token-field", default=None, help="the --text-file column holding the item token (default: item_id)")
    enc.add_argument("--image-dir", default=None, help="a folder (relative to the dataset folder) of <token>.<jpg|png|...>")
    enc.add_argument("--image-field", default=None, help="a column of image paths relative to --image-root (URLs are refused)")
    enc.add_argument("--image-root", default=None, help="where --image-field paths start (default: the dataset folder)")
    enc.add_argument("--encoder", default=None, help="preset or model name/path (default: minilm for text, effnet-lite0 for image)")
    enc.add_argument("--data-dir", default=data_default, help="folder holding <dataset>/ (default ../shared/datasets)")
    enc.add_argument("--cache-dir", default=cache_default, help="feature cache root (default ~/.cache/fusionlayer)")
    enc.add_argument("--batch-size", type=_positive_int, default=32)
    enc.add_argument("--device", default="cpu")
    enc.add_argument("--download", action="store_true", help="allow hub downloads for text models (default: offline, fail fast)")
    enc.add_argument("--no-progress", action="store_true")

    demo = sub.add_parser("demo", help="short real run on ML-100K: M2SR and GRU4Rec + fusion")
    demo.add_argument("--epochs", type=_positive_int, default=1)
    demo.add_argument("--data-dir", default=data_default)
    demo.add_argument("--cache-dir", default=cache_default)
    demo.add_argument("--workdir", default=".", help="where RecBole writes its checkpoints (saved/)")

    bench = sub.add_parser("bench", help="run a benchmark script (compat or scaling); other options pass through")
    bench.add_argument("which", choices=["compat", "scaling"])
    return parser


# What a user's input or environment causes (bad values, names, files, permissions, weights, a missing
# optional package such as pyarrow for --text-file x.parquet); anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, LookupError, OSError, RuntimeError, ImportError, pickle.UnpicklingError)


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (KeyError's without its quotes), never empty."""
    message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return text or f"{type(exc).__name__} (no message)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.command == "bench":
        return _bench(args, rest)
    try:
        return _encode(args) if args.command == "encode" else _demo(args)
    except USER_ERRORS as exc:  # say what, not where: one line, no traceback
        print(f"fusionlayer {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
