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

from typing import Iterator, Mapping

import torch
import torch.nn.functional as F

__all__ = ["normalize_rows", "principal_basis", "reduce_table", "reduce_tables", "row_chunks"]

CHUNK_ELEMENTS = 1 << 24  # about 64 MB of float32 per chunk
SAMPLE_ROWS = 65536  # rows the principal directions are estimated from


def row_chunks(table: torch.Tensor, elements: int = CHUNK_ELEMENTS, *,
               as_float: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, rows)`` over ``table`` in chunks of about ``elements`` values, as float32 (or as stored)."""
    step = max(1, elements // max(1, table.shape[1]))
    for start in range(0, table.shape[0], step):
        rows = table[start:start + step]
        yield start, rows.float() if as_float else rows


def _standardise(rows: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(rows, rows.shape[-1:], eps=eps)


def normalize_rows(table: torch.Tensor, eps: float, *, in_place: bool = False) -> torch.Tensor:
    """Every row standardised (the parameter-free part of LayerNorm), detached, in float32; row by row
    chunks, written into ``table`` itself when ``in_place`` (a float32 table the caller owns)."""
    if not in_place or table.dtype != torch.float32 or not table.is_contiguous():
        return F.layer_norm(table.float(), table.shape[-1:], eps=eps).detach()
    with torch.no_grad():
        for start, rows in row_chunks(table):
            table[start:start + len(rows)] = _standardise(rows, eps)
    return table.detach()


def principal_basis(table: torch.Tensor, r: int, eps: float, sample_rows: int = SAMPLE_ROWS) -> torch.Tensor:
    """``(D, r)`` float32: the top ``r`` right singular vectors of the standardised rows (a fixed sample).

    Signs are fixed (largest-magnitude entry of each direction positive), so the basis is reproducible.
    """
    N, D = table.shape
    if N > sample_rows:
        rows = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:sample_rows].sort().values.to(table.device)
        chunks = (table[chunk].float() for chunk in rows.split(4096))
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
