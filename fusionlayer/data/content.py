"""Item content for any RecBole dataset: text from columns joined by a template, images from a folder or a column.

The catalogue is the dataset's ``<name>.item`` atomic file (or, without one, the items of ``<name>.inter``).
Text comes from one or more columns of that file, or of a CSV/TSV/Parquet file keyed by the item token,
joined by a template such as ``"{title}. {categories}. {description}"`` (default: the non-empty fields
joined by ". "). Images come from a folder holding ``<token>.<ext>``, or from a column of paths relative
to a root. Missing text or images are counted (zero rows with ``present=False`` downstream), never fatal;
what cannot be right (unknown fields, an empty template, duplicate catalogue tokens, URLs offline) is a
clear error before anything is encoded. MovieLens (:func:`fusionlayer.data.load_item_content`) is one
instance of this source.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


__all__ = ["ContentSpec", "IMAGE_EXTENSIONS", "ItemContent", "catalogue_content", "read_table"]

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


@dataclass(frozen=True)
class ItemContent:
    """Raw content of one item, keyed by its dataset token (the original item id)."""

    token: str
    text: str | None  # None: nothing to encode
    poster: Path | None  # None: no poster file


@dataclass(frozen=True)
class ContentSpec:
    """Where an item's text and image come from (every path relative to the dataset folder unless absolute)."""

    text_fields: tuple[str, ...] = ()  # columns joined into the item's text
    template: str | Callable[[Mapping[str, str]], str | None] | None = None  # "{title}. {description}", or a function
    text_file: str | None = None  # CSV/TSV/Parquet with the text columns (default: the .item atomic file)
    token_field: str | None = None  # the text file's item-token column (default: the catalogue's item id field)
    image_dir: str | None = None  # a folder of <token>.<ext>
    image_field: str | None = None  # a column of image paths relative to image_root
    image_root: str | None = None  # default: the dataset folder
    # reads text_file -> (columns, rows, counts of what was wrong); default read_table. MovieLens's items.csv
    # brings its own (a record that swallows the next ones is repaired and counted).
    text_reader: Callable[[Path], tuple[list[str], list[dict[str, str]], dict[str, int]]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.text_fields, str):
            object.__setattr__(self, "text_fields", tuple(f.strip() for f in self.text_fields.split(",") if f.strip()))
        if isinstance(self.template, str) and not self.template.strip():
            raise ValueError("template is empty; give fields in braces, e.g. --template '{title}. {description}'")
        if self.image_dir and self.image_field:
            raise ValueError("give either image_dir (a folder of <token>.<ext>) or image_field (a column of paths), not both")

    @property
    def wants_text(self) -> bool:
        return bool(self.text_fields or self.template)


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]], dict[str, int]]:
    """``(columns, rows, counts)`` of a RecBole atomic file (``name:type`` headers, tab-separated), a CSV,
    a TSV or a Parquet file; undecodable bytes are counted (``non_utf8_rows``) and their rows kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check --data-dir / the file name")
    counts = {"non_utf8_rows": 0}
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path).astype(str)
        return list(frame.columns), frame.to_dict("records"), counts
    text = path.read_bytes().decode("utf-8", errors="replace")
    delimiter = "," if path.suffix == ".csv" else "\t"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path} is empty; it needs a header row naming its columns")
    if path.suffix in (".item", ".inter", ".user"):
        header = [h.split(":")[0] for h in header]  # RecBole atomic files: name:type
    rows = []
    for fields in reader:
        if not fields or not any(fields):
            continue
        row = dict(zip(header, fields + [""] * (len(header) - len(fields))))
        counts["non_utf8_rows"] += any("\ufffd" in v for v in row.values())
        rows.append(row)
    return header, rows, counts


def _check_template(spec: ContentSpec, columns: Sequence[str], where: str) -> None:
    wanted = list(spec.text_fields)
    if isinstance(spec.template, str):
        wanted += [name for _, name, _, _ in string.Formatter().parse(spec.template) if name]
    unknown = sorted(set(wanted) - set(columns))
    if unknown:
        raise KeyError(f"unknown text field(s) {unknown}: {where} has columns {list(columns)}")


def _text(spec: ContentSpec, row: Mapping[str, str]) -> str | None:
    if callable(spec.template):
        return spec.template(row)
    values = {k: (v or "").strip() for k, v in row.items()}
    if spec.template is None:
        text = ". ".join(values[f] for f in spec.text_fields if values.get(f))
    else:
        fields = [name for _, name, _, _ in string.Formatter().parse(spec.template) if name]
        if not any(values.get(f) for f in fields):
            return None
        text = spec.template.format_map(values)
    text = text.strip()
    # Only format characters (a zero-width space, a BOM) or whitespace: nothing to encode, counted as missing.
    return text if any(ch.isprintable() and not ch.isspace() for ch in text) else None


def _image_index(base: Path) -> dict[str, Path]:
    """``{stem: path}`` of the image files directly in ``base``, read once (one listing, not a stat per item and
    extension). Extensions match in any case (``.JPG`` from a camera is a ``.jpg``); where one token has several
    images, the first extension of :data:`IMAGE_EXTENSIONS` wins."""
    if not base.is_dir():  # counted (every item: no_image); encoding images from it is refused (encode_items)
        logger.warning("image folder %s does not exist: no item has an image", base)
        return {}
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    index: dict[str, tuple[int, Path]] = {}
    with os.scandir(base) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            order = rank.get(ext.lower())
            if order is not None and entry.is_file() and (stem not in index or order < index[stem][0]):
                index[stem] = (order, Path(entry.path))
    return {stem: path for stem, (_, path) in index.items()}


def _image(spec: ContentSpec, folder: Path, token: str, row: Mapping[str, str],
           index: Mapping[str, Path] | None = None) -> Path | None:
    if spec.image_dir:
        base = folder / spec.image_dir
        if index is not None and (token in index or not any(sep in token for sep in "/\\")):
            return index.get(token)
        return next((base / f"{token}{ext}" for ext in IMAGE_EXTENSIONS if (base / f"{token}{ext}").is_file()), None)
    value = (row.get(spec.image_field) or "").strip()
    if not value:
        return None
    path = Path(spec.image_root or folder) / value
    return path if path.is_file() else None


# Slightly over 60 lines: the catalogue, its text source and its image source are read in one pass that counts
# every missing or malformed value in one place.
def catalogue_content(name: str, data_root: str | Path, spec: ContentSpec) -> tuple[list[ItemContent], dict[str, Any]]:
    """Every catalogue item's text and image path, in the order of ``<name>.item`` (or of first appearance in
    ``<name>.inter``), with counts of what is missing or wrong (also logged).

    Raises:
        FileNotFoundError: no dataset folder / file. KeyError: an unknown field. ValueError: duplicate
        catalogue tokens, an empty template, URLs in the image column (offline).
    """
    folder = Path(data_root) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no dataset folder {folder}; --data-dir must hold {name}/{name}.inter")
    item_file = folder / f"{name}.item"
    if item_file.is_file():
        columns, catalogue, counts = read_table(item_file)
        id_field = columns[0] if "item_id" not in columns else "item_id"
    else:
        columns, inter, counts = read_table(folder / f"{name}.inter")
        id_field = "item_id" if "item_id" in columns else next((c for c in columns if "item" in c), columns[0])
        catalogue = [{id_field: t} for t in dict.fromkeys(row[id_field] for row in inter)]
    tokens = [row[id_field].strip() for row in catalogue]
    if not tokens:
        source = item_file if item_file.is_file() else folder / f"{name}.inter"
        raise ValueError(f"{source} has a header but no item rows: there is nothing to encode; "
                         "check that the file is complete (one row per item under the header)")
    duplicates = sorted(t for t, n in Counter(tokens).items() if n > 1)
    if duplicates:
        raise ValueError(f"{item_file.name} lists item token(s) {duplicates[:5]} more than once; each item needs one row")
    rows = {t: row for t, row in zip(tokens, catalogue)}
    counts.update({"items": len(tokens), "duplicate_text_rows": 0, "no_text": 0, "no_image": 0})
    if spec.text_file:
        text_columns, text_rows, text_counts = (spec.text_reader or read_table)(folder / spec.text_file)
        key = spec.token_field or id_field
        if key not in text_columns:
            raise KeyError(f"{spec.text_file} has no token column {key!r} (columns {text_columns}); pass token_field")
        _check_template(spec, [*columns, *text_columns], f"{item_file.name} + {spec.text_file}")
        for count, value in text_counts.items():
            counts[count] = counts.get(count, 0) + value
        extra: dict[str, dict[str, str]] = {}
        for row in text_rows:
            token = row[key].strip()
            counts["duplicate_text_rows"] += token in extra
            extra.setdefault(token, row)
        rows = {t: {**row, **extra.get(t, {})} for t, row in rows.items()}
    elif spec.wants_text:
        _check_template(spec, columns, item_file.name)
    if spec.image_field:
        values = [rows[t].get(spec.image_field, "") for t in tokens]
        if spec.image_field not in (columns if not spec.text_file else [*columns, *text_columns]):
            raise KeyError(f"unknown image field {spec.image_field!r}; columns: {columns}")
        urls = [v for v in values if v.strip().lower().startswith(("http://", "https://"))]
        if urls:
            raise ValueError(f"{len(urls)} image(s) are URLs (e.g. {urls[0]!r}); fusionlayer encodes offline: download "
                             "them and give --image-field with local paths (relative to --image-root) or --image-dir")
    contents = []
    index = _image_index(folder / spec.image_dir) if spec.image_dir else None
    for token in tokens:
        text = _text(spec, rows[token]) if spec.wants_text else None
        image = _image(spec, folder, token, rows[token], index) if (spec.image_dir or spec.image_field) else None
        counts["no_text"] += spec.wants_text and text is None
        counts["no_image"] += bool(spec.image_dir or spec.image_field) and image is None
        contents.append(ItemContent(token=token, text=text, poster=image))
    logger.info("%s item content: %s", name, counts)
    return contents, counts
