"""A small slice of any RecBole dataset: the interactions of its first users, for wiring checks and tests."""

from __future__ import annotations

from pathlib import Path

from fusionlayer.data.movielens import DATASETS, default_data_root, ensure_dataset

__all__ = ["slice_users"]


def slice_users(name: str, users: int, out_root: str | Path, data_root: str | Path | None = None) -> str:
    """Write the interactions of the first ``users`` users of dataset ``name`` as dataset ``<name>-u<users>``
    under ``out_root``; returns the new dataset's name.

    The first users are the ``users`` smallest user ids when every id is a number (MovieLens: users
    ``1..users``), else the first ``users`` distinct ids in the file's order. Item tokens are unchanged, so
    the feature cache of ``name`` serves the slice. ``ml-100k`` and ``ml-1m`` are fetched where absent.
    """
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise ValueError(f"users must be a positive int, got {users!r}")
    root = Path(data_root) if data_root is not None else default_data_root()
    folder = ensure_dataset(name, root) if name in DATASETS else root / name
    source = folder / f"{name}.inter"
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist; expected the RecBole atomic file <data_root>/{name}/{name}.inter")
    lines = source.read_text().splitlines()
    if not lines:
        raise ValueError(f"{source} is empty; it needs a header line and interaction rows")
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    column = [h.split(":")[0] for h in header.split("\t")].index("user_id") if "user_id:" in header else 0
    tokens = list(dict.fromkeys(row.split("\t")[column] for row in rows))  # distinct, in the file's order
    if all(t.isdigit() for t in tokens):
        tokens.sort(key=int)
    keep = set(tokens[:users])
    sliced = f"{name}-u{users}"
    target = Path(out_root) / sliced
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{sliced}.inter").write_text("\n".join([header, *(r for r in rows if r.split("\t")[column] in keep)]) + "\n")
    return sliced
