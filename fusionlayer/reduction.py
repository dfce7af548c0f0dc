"""Large catalogues: shrink the frozen feature tables once, at attach time, read in row chunks.

``attach(..., reduce_features=r)`` replaces each ``(N, D)`` table by ``(N, r)``: every row is standardised
(the parameter-free part of the fusion's input LayerNorm) and projected on the table's top ``r`` principal
directions (uncentred, so an all-zero row, an item without that modality, stays zero). The directions come
from a fixed random sample of rows, so the same table always gives the same basis (a reloaded checkpoint
sees the same reduced features). The tables are read in chunks of rows: a float16, memory-mapped table is
never copied whole into float32 memory, and every training step then projects ``r`` instead of ``D``
columns per item, which is what keeps a million-item catalogue's step close to the plain backbone's.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F

__all__ = ["content_components", "normalize_rows", "principal_basis", "reduce_table", "reduce_tables", "row_chunks"]

CHUNK_ELEMENTS = 1 << 24  # about 64 MB of float32 per chunk
SAMPLE_ROWS = 65536  # rows the principal directions are estimated from


def row_chunks(table: torch.Tensor, elements: int = CHUNK_ELEMENTS, *,
               as_float: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, rows)`` over ``table`` in chunks of about ``elements`` values, as float32 (or as stored).

    A read-only memory-mapped table (``numpy.load(..., mmap_mode="r")``) has each chunk's pages released
    once the caller moves on (:func:`_drop_rows`), so one pass over it never holds the whole file resident.
    """
    step = max(1, elements // max(1, table.shape[1]))
    mapped = is_read_only_file_mapping(table)
    for start in range(0, table.shape[0], step):
        rows = table[start:start + step]
        yield start, rows.float() if as_float else rows
        if mapped:  # checked once: the generator holds ``table``, so its mapping cannot go away meanwhile
            _drop_rows(table, start, start + step)


def is_read_only_file_mapping(table: torch.Tensor) -> bool:
    """Whether ``table``'s memory is a shared, read-only mapping of a file (``/proc/self/maps`` "r--s"):
    the only memory whose pages :func:`_drop_rows` may drop (they are read back from the file on access).
    False off Linux, for anything else (private, writable, anonymous memory), and for non-contiguous tables."""
    if table.device.type != "cpu" or not table.is_contiguous() or table.numel() == 0 or not sys.platform.startswith("linux"):
        return False
    first, last = table.data_ptr(), table.data_ptr() + table.numel() * table.element_size() - 1
    found = False  # never cached: an address freed and reused by anonymous memory must not read as a file
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= first < high:  # the table must lie inside one file mapping, read-only and shared
                    found = high > last and fields[1] == "r--s" and fields[4] != "0" and len(fields) >= 6
                    break
    except OSError:
        found = False
    return found


def _drop_rows(table: torch.Tensor, start: int, stop: int) -> None:
    """Drop rows ``start:stop`` of ``table`` from this process's resident memory (``madvise(MADV_DONTNEED)``);
    the data stays in the file and the page cache and is read back on access. Only for tables where
    :func:`is_read_only_file_mapping` holds: on private or anonymous memory the same call would zero the data."""
    row_bytes = table.stride(0) * table.element_size()
    page = mmap.PAGESIZE
    low = (table.data_ptr() + start * row_bytes) // page * page
    high = table.data_ptr() + min(stop, table.shape[0]) * row_bytes
    if high > low:
        _libc().madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), MADV_DONTNEED)


MADV_DONTNEED = 4  # Linux


@functools.lru_cache(maxsize=1)
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc


def _standardise(rows: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(rows, rows.shape[-1:], eps=eps)


def normalize_rows(table: torch.Tensor, eps: float, *, in_place: bool = False) -> torch.Tensor:
    """Every row standardised (the parameter-free part of LayerNorm), detached, in float32, computed in
    chunks of rows: written into ``table`` itself when ``in_place`` (a float32 table the caller owns), else
    into one new float32 table (a float16 or memory-mapped input is never converted whole first)."""
    own = in_place and table.dtype == torch.float32 and table.is_contiguous()
    out = table if own else torch.empty(table.shape, dtype=torch.float32, device=table.device)
    with torch.no_grad():
        for start, rows in row_chunks(table):
            out[start:start + len(rows)] = _standardise(rows, eps)
    return out.detach()


def principal_basis(table: torch.Tensor, r: int, eps: float, sample_rows: int = SAMPLE_ROWS) -> torch.Tensor:
    """``(D, r)`` float32: the top ``r`` right singular vectors of the standardised rows (a fixed sample).

    Signs are fixed (largest-magnitude entry of each direction positive), so the basis is reproducible.
    """
    N, D = table.shape
    if N > sample_rows:
        rows = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:sample_rows].sort().values.to(table.device)
        chunks = _sampled_chunks(table, rows)
    else:
        chunks = (rows for _, rows in row_chunks(table, elements=4096 * D))
    gram = torch.zeros(D, D, dtype=torch.float64)
    for rows in chunks:  # (D, D) accumulated chunk by chunk: no sample-sized float64 copy
        x = _standardise(rows, eps).double()
        gram += (x.T @ x).cpu()
    values, vectors = torch.linalg.eigh(gram)
    basis = vectors[:, torch.argsort(values, descending=True)[:r]]
    signs = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    return (basis * signs).float().contiguous()


def _sampled_chunks(table: torch.Tensor, rows: torch.Tensor) -> Iterator[torch.Tensor]:
    """``table[rows]`` (sorted ids) in chunks of 4096 rows, as float32; a memory-mapped table's pages in the
    span of each chunk are released after it (the kernel maps whole runs of cached pages around each read)."""
    mapped = is_read_only_file_mapping(table)
    for chunk in rows.split(4096):
        yield table[chunk].float()
        if mapped:
            _drop_rows(table, int(chunk[0]), int(chunk[-1]) + 1)


def reduce_table(table: torch.Tensor, basis: torch.Tensor, eps: float) -> torch.Tensor:
    """``(N, r)`` float32: the standardised rows of ``table`` times ``basis``, computed chunk by chunk."""
    out = torch.empty(table.shape[0], basis.shape[1], dtype=torch.float32)
    basis = basis.to(table.device)
    for start, rows in row_chunks(table):
        out[start:start + len(rows)] = (_standardise(rows, eps) @ basis).cpu()
    return out


def reduce_tables(tables: Mapping[str, torch.Tensor], r: int, eps: float) -> tuple[dict[str, torch.Tensor],
                                                                                 dict[str, torch.Tensor]]:
    """``(reduced tables, bases)`` for every modality; a table no wider than ``r`` is kept as it is."""
    reduced, bases = {}, {}
    for name, table in tables.items():
        if table.shape[1] <= r:
            reduced[name] = table.float()
            continue
        bases[name] = principal_basis(table, r, eps)
        reduced[name] = reduce_table(table, bases[name], eps)
    return reduced, bases


def content_components(tables: Mapping[str, torch.Tensor], present: torch.Tensor, width: int,
                       eps: float) -> torch.Tensor:
    """``(N, k)`` float32, ``k <= width``: the tables' leading principal components, the columns split evenly over
    the modalities (each table reduced on its own, :func:`principal_basis`, so no wide concatenation is built), then
    centred and scaled to unit variance over the items with content (``present``, ``(N,)`` bool). The rows of
    items without content are zero. ``attach(..., content_init=True)`` starts ID embeddings from them."""
    names = list(tables)
    shares = [width // len(names) + (1 if i < width % len(names) else 0) for i in range(len(names))]
    parts = [reduce_table(tables[name], principal_basis(tables[name], min(k, tables[name].shape[1]), eps), eps)
             for name, k in zip(names, shares) if k > 0]
    components = torch.cat(parts, dim=1).to(present.device)
    rows = components[present]
    if rows.shape[0] < 2:
        raise ValueError(f"content_init needs at least two items with content, got {rows.shape[0]}")
    components = (components - rows.mean(0)) / rows.std(0).clamp_min(1e-12)
    return components.masked_fill(~present.unsqueeze(1), 0.0)
