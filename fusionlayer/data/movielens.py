"""MovieLens-100K / 1M as RecBole atomic files plus item content (title, genres, plot, poster).

Layout of a dataset folder ``<root>/<name>/`` (RecBole's ``data_path`` is ``<root>``)::

    <name>.inter   user_id:token item_id:token rating:float timestamp:float
    <name>.item    item_id:token movie_title:token_seq release_year:token class:token_seq
    items.csv      optional: movie_id,title,...,overview,... (TMDB plot text)
    posters/<item_id>.jpg   optional

Where no local copy exists, :func:`ensure_dataset` downloads the official GroupLens archive,
checks its MD5 (GroupLens publishes one per archive), extracts it into a temporary folder and
converts it, then renames the finished folder into place, so a crash never leaves half a dataset.

Item content rules (each case counted and logged by :func:`load_item_content`):

* text = ``"{title}. Genres: {g1}, {g2}. {plot}"`` (:func:`item_text`); genres and plot are left
  out when absent; an item whose title and plot are both empty has no text (``text=None``).
* ``items.csv`` lists some ids twice (55 in ML-100K, identical rows): the first row wins.
* an empty plot keeps the title-and-genres text.
* a missing poster file is a missing value (``poster=None``), never an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from fusionlayer.data.content import ContentSpec, ItemContent, catalogue_content

logger = logging.getLogger(__name__)

__all__ = ["DATASETS", "ItemContent", "default_data_root", "ensure_dataset", "item_text", "load_item_content"]

# name -> GroupLens archive, its published MD5, and the folder inside the zip.
DATASETS = {
    "ml-100k": {"url": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                "md5": "0e33842e24a9c977be4e0107933c0723", "folder": "ml-100k"},
    "ml-1m": {"url": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
              "md5": "c4d9eecfca2ab87c1945afe126590906", "folder": "ml-1m"},
}
GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western"]


def default_data_root() -> Path:
    """``../shared/datasets`` next to the project checkout (or the working directory)."""
    candidates = [Path.cwd() / ".." / "shared" / "datasets", Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0].resolve()


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_dataset(name: str, data_root: str | Path | None = None, *, archive: str | Path | None = None,
                   url: str | None = None, md5: str | None = None) -> Path:
    """Return ``<data_root>/<name>`` with ``<name>.inter`` and ``<name>.item``, creating it if needed.

    Args:
        name: ``"ml-100k"`` or ``"ml-1m"``.
        data_root: folder holding dataset folders; default :func:`default_data_root`.
        archive: a local GroupLens zip to convert instead of downloading.
        url, md5: override the archive address and checksum (tests use a zip they build).
    """
    _check_name(name)
    root = Path(data_root) if data_root is not None else default_data_root()
    target = root / name
    if (target / f"{name}.inter").is_file():
        return target
    spec = DATASETS[name]
    expected_md5 = md5 or spec["md5"]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        if archive is None:
            archive = tmp / f"{name}.zip"
            logger.info("downloading %s to %s", url or spec["url"], archive)
            try:
                urllib.request.urlretrieve(url or spec["url"], archive)
            except OSError as exc:
                raise RuntimeError(
                    f"no local copy of {name} under {root} and the download from {url or spec['url']} failed ({exc}); "
                    f"place the RecBole atomic files in {target} or pass archive=<path to {name}.zip>"
                ) from exc
        archive = Path(archive)
        if _md5(archive) != expected_md5:
            raise ValueError(f"{archive} has MD5 {_md5(archive)}, expected {expected_md5}: a corrupt or different archive; delete it and retry")
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp / "raw")
        out = tmp / name
        out.mkdir()
        _convert(name, tmp / "raw" / spec["folder"], out)
        os.replace(out, target)  # atomic: the folder appears complete or not at all
    return target


def _convert(name: str, raw: Path, out: Path) -> None:
    if name == "ml-100k":
        ratings = (line.split("\t") for line in (raw / "u.data").read_text().splitlines() if line)
        items = []
        for line in (raw / "u.item").read_text(encoding="latin-1").splitlines():
            if not line:
                continue
            parts = line.split("|")
            title, year = _split_title(parts[1])
            genres = [g for g, flag in zip(GENRES_100K, parts[5:24]) if flag == "1"]
            items.append((parts[0], title, year, " ".join(genres)))
    else:
        ratings = (line.split("::") for line in (raw / "ratings.dat").read_text().splitlines() if line)
        items = []
        for line in (raw / "movies.dat").read_text(encoding="latin-1").splitlines():
            if not line:
                continue
            movie_id, raw_title, genres = line.split("::")
            title, year = _split_title(raw_title)
            items.append((movie_id, title, year, " ".join(genres.split("|"))))
    with open(out / f"{name}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for user, item, rating, ts in ratings:
            f.write(f"{user}\t{item}\t{rating}\t{ts.strip()}\n")
    with open(out / f"{name}.item", "w") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for row in items:
            f.write("\t".join(row) + "\n")


def _split_title(raw: str) -> tuple[str, str]:
    raw = raw.strip()
    if raw.endswith(")") and "(" in raw and raw[-5:-1].isdigit():
        return raw[: raw.rindex("(")].strip(), raw[-5:-1]
    return raw, ""




def item_text(title: str, genres: list[str], plot: str) -> str | None:
    """The documented text template: ``"{title}. Genres: {g1}, {g2}. {plot}"``; None if no title and no plot."""
    title, plot = title.strip(), plot.strip()
    if not title and not plot:
        return None
    head = ". ".join(p for p in (title.rstrip("."), "Genres: " + ", ".join(genres) if genres else "") if p)
    return f"{head}. {plot}" if head and plot else head or plot


def _movielens_text(row) -> str | None:
    title, year = (row.get("movie_title") or "").strip(), (row.get("release_year") or "").strip()
    return item_text(f"{title} ({year})" if title and year else title, (row.get("class") or "").split(),
                     row.get("overview") or "")


def _movielens_content():

    return ContentSpec(text_file="items.csv", token_field="movie_id", template=_movielens_text, image_dir="posters",
                       text_reader=_read_items_csv)


_RECORD_START = re.compile(r"^\d+,")  # an items.csv record starts with its numeric movie_id


def _csv_rows(text: str) -> tuple[list[dict[str, str]], int]:
    """Parse ``items.csv``; returns (rows, malformed lines).

    A record that swallowed the records after it (an unterminated quote makes the csv module read on
    to the next quote) is detected by counting physical lines that start a record; the file is then
    parsed one physical line at a time, and the lines that still do not parse are counted, not dropped silently.
    """
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    lines = text.splitlines()
    starts = sum(1 for line in lines[1:] if _RECORD_START.match(line))
    if len(rows) >= starts:
        return rows, 0
    header, malformed, rows = next(csv.reader([lines[0]])), 0, []
    for line in lines[1:]:
        if not _RECORD_START.match(line):
            continue
        fields = next(csv.reader([line]), [])
        if line.count('"') % 2 or len(fields) != len(header):  # the line with the unbalanced quote: counted
            malformed += 1
            fields = (fields + [""] * len(header))[:len(header)]
        rows.append(dict(zip(header, fields)))
    return rows, malformed


def _read_items_csv(csv_path: Path) -> tuple[list[str], list[dict[str, str]], dict[str, int]]:
    """``items.csv`` as ``(columns, rows, counts)`` for the generic content source: a record that swallowed the
    ones after it is repaired line by line and counted; a plot with bytes that are not UTF-8 is counted and left
    out rather than garbled. A missing file is no plots (every item then counts as an empty plot)."""
    counts = {"malformed_csv_lines": 0, "non_utf8_csv_rows": 0}
    if not csv_path.is_file():
        return ["movie_id", "overview"], [], counts
    text = csv_path.read_bytes().decode("utf-8", errors="replace")
    rows, counts["malformed_csv_lines"] = _csv_rows(text)
    for row in rows:
        if "\ufffd" in (row.get("overview") or ""):
            counts["non_utf8_csv_rows"] += 1
            row["overview"] = ""
    for key, value in counts.items():
        if value:
            logger.warning("%s: %d %s (those plots are left empty)", csv_path, value, key.replace("_", " "))
    columns = next(csv.reader([text.splitlines()[0]])) if text.strip() else ["movie_id", "overview"]
    return columns, rows, counts


def _read_plots(csv_path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """``{movie_id: overview}`` from ``items.csv`` (the first row of a duplicated id wins) and its counts."""
    _, rows, counts = _read_items_csv(csv_path)
    plots: dict[str, str] = {}
    counts = {"duplicate_csv_rows": 0, **counts}
    for row in rows:
        token = (row.get("movie_id") or "").strip()
        counts["duplicate_csv_rows"] += token in plots
        plots.setdefault(token, (row.get("overview") or "").strip())
    return plots, counts


def load_item_content(name: str, data_root: str | Path | None = None) -> tuple[list[ItemContent], dict[str, int]]:
    """Read every item's text and poster path, in the order of ``<name>.item``: the generic content source
    (:func:`fusionlayer.data.content.catalogue_content`) with MovieLens's spec (``items.csv`` plots, ``posters/``).

    Returns:
        The items, and counts of duplicate ``items.csv`` rows, malformed or non-UTF-8 ``items.csv`` lines,
        empty plots, items without text and missing posters (also logged).
    """
    from dataclasses import replace


    folder = ensure_dataset(name, data_root)
    empty_plots = [0]

    def text(row) -> str | None:
        empty_plots[0] += not (row.get("overview") or "").strip()
        return _movielens_text(row)

    contents, found = catalogue_content(name, folder.parent, replace(_movielens_content(), template=text))
    counts = {"items": found["items"], "duplicate_csv_rows": found["duplicate_text_rows"],
              "malformed_csv_lines": found["malformed_csv_lines"], "non_utf8_csv_rows": found["non_utf8_csv_rows"],
              "empty_plot": empty_plots[0], "no_text": found["no_text"], "no_poster": found["no_image"]}
    logger.info("%s item content: %s", name, counts)
    return contents, counts


def __getattr__(name: str):
    if name == "MOVIELENS_CONTENT":  # MovieLens as an instance of the generic source (data/content.py)
        return _movielens_content()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
