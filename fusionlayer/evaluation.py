"""Full-ranking evaluation helpers shared by the library (cold-score calibration) and the benchmarks.

Ranks count the items scored strictly higher (ties in the user's favour, as RecBole's topk may break them
either way); the padding id and the user's training items are excluded. Metrics at K = 10.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["K", "OFFSET_GRID", "case_scores", "case_targets", "choose_cold_offset", "group_ndcg", "metrics_from_ranks",
           "offset_ranks", "ranking_scores", "ranks_of"]

K = 10


def ranking_scores(model, interaction, history_index) -> torch.Tensor:
    """(B, n_items) float scores on the CPU, with the padding id and the user's training items at -inf."""
    scores = model.full_sort_predict(interaction).view(len(interaction), -1).float().cpu()
    scores[:, 0] = -torch.inf
    if history_index is not None:
        scores[history_index] = -torch.inf
    return scores


def case_targets(n: int, positive_u: torch.Tensor, positive_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, targets)``: the rows of a batch of ``n`` that hold an evaluation case, and each one's held-out item."""
    target = torch.full((n,), -1, dtype=torch.long)
    target[positive_u] = positive_i
    rows = torch.nonzero(target >= 0).flatten()
    return rows, target[rows]


def ranks_of(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, the number of items scored strictly higher than the row's target (0 = first)."""
    return (scores > scores.gather(1, targets.unsqueeze(1))).sum(1)


@torch.no_grad()
def case_scores(model, eval_data, device="cpu") -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """``(scores, targets, users)`` of every case of a full-sort evaluation loader: (cases, n_items) scores as
    :func:`ranking_scores` gives them, each case's held-out item, and its user id (None when the batches carry
    no ``model.USER_ID`` field). Raises TypeError for batches that are not ``(interaction, history_index,
    positive_u, positive_i)``."""
    scores, targets, users = [], [], []
    uid = getattr(model, "USER_ID", None)
    for batch in eval_data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 4):
            raise TypeError("expected RecBole's full-sort evaluation dataloader, whose batches are (interaction, "
                            f"history_index, positive_u, positive_i); got a batch of {type(batch).__name__}"
                            + (f" with {len(batch)} parts" if isinstance(batch, (tuple, list)) else ""))
        interaction, history_index, positive_u, positive_i = batch
        rows, t = case_targets(len(interaction), positive_u, positive_i)
        scores.append(ranking_scores(model, interaction.to(device), history_index)[rows])
        targets.append(t)
        if users is not None and uid is not None and uid in interaction:
            users.append(interaction[uid].cpu()[rows])
        else:
            users = None
    if not targets:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), np.zeros(0, dtype=np.int64)
    return torch.cat(scores), torch.cat(targets), torch.cat(users).numpy() if users is not None else None


def offset_ranks(scores: torch.Tensor, targets: torch.Tensor, cold: torch.Tensor, offset: float) -> np.ndarray:
    """Each case's rank (0 = first) once ``offset`` is added to the scores of the items flagged ``cold``."""
    return ranks_of(scores + offset * cold.to(scores.dtype), targets).numpy()


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, np.ndarray]:
    hit = ranks < K
    return {"mrr@10": np.where(hit, 1.0 / (ranks + 1), 0.0), "ndcg@10": np.where(hit, 1.0 / np.log2(ranks + 2), 0.0),
            "hit@10": hit.astype(float)}


OFFSET_GRID = tuple(k / 4 for k in range(0, 33))  # cold-score offsets tried, in units of the scores' std


def group_ndcg(ranks: np.ndarray, is_cold: np.ndarray) -> dict[str, dict[str, float | int | None]]:
    """``{"cold"|"warm": {"ndcg@10", "hit@10", "users"}}`` of the cases whose target is / is not cold."""
    metrics = metrics_from_ranks(ranks)
    return {group: {"ndcg@10": round(float(metrics["ndcg@10"][rows].mean()), 6) if rows.any() else None,
                    "hit@10": round(float(metrics["hit@10"][rows].mean()), 6) if rows.any() else None,
                    "users": int(rows.sum())}
            for group, rows in (("cold", is_cold), ("warm", ~is_cold))}


def choose_cold_offset(scores: torch.Tensor, targets: torch.Tensor, cold: torch.Tensor, *, max_warm_loss: float = 0.02,
                       grid=OFFSET_GRID) -> dict:
    """The constant to add to cold items' scores (``cold``: (n_items,) bool) that gives the evaluation cases
    ``(scores, targets)`` the highest cold-target NDCG@10 while the warm targets' NDCG@10 stays within
    ``max_warm_loss`` (relative) of no offset. ``grid``: candidates in units of the finite scores' std (the
    earlier one kept on ties; no offset unless one improves the cold targets). Returns ``offset``,
    ``offset_in_std``, and the ``before`` and ``after`` :func:`group_ndcg`."""
    finite = torch.isfinite(scores)
    std = float(scores[finite].std()) if int(finite.sum()) > 1 else 0.0
    is_cold = cold[targets].numpy()
    before = group_ndcg(ranks_of(scores, targets).numpy(), is_cold)
    best, floor = (0.0, before), (1 - max_warm_loss) * (before["warm"]["ndcg@10"] or 0.0)
    for k in grid:
        if k == 0:
            continue
        split = group_ndcg(offset_ranks(scores, targets, cold, k * std), is_cold)
        if (split["warm"]["ndcg@10"] or 0.0) >= floor and (split["cold"]["ndcg@10"] or 0.0) > (best[1]["cold"]["ndcg@10"] or 0.0):
            best = (k, split)
    return {"offset": best[0] * std, "offset_in_std": best[0], "before": before, "after": best[1]}
