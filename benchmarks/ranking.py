"""Full-ranking evaluation of the compatibility benchmark: each user's rank of the held-out item.

Ranks count the items scored strictly higher (ties in the user's favour, as RecBole's topk may break
them either way); the user's training items and the padding id are excluded. Metrics at K = 10.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["K", "case_targets", "metrics_from_ranks", "rank_users", "ranking_scores", "ranks_of", "summarise"]

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
def rank_users(model, eval_data, train_item_counts: np.ndarray, device: str, seed: int) -> dict[str, np.ndarray]:
    """Per-user rank of the held-out item: full ranking and against 100 uniform negatives.

    Ranks count the items scored strictly higher (ties in the user's favour, as RecBole's topk may
    break them either way); the user's training items and the padding id are excluded.
    """
    model.eval()
    generator = torch.Generator().manual_seed(10_000 + seed)
    users, full_rank, uni_rank, target_pop = [], [], [], []
    uid = model.USER_ID
    for interaction, history_index, positive_u, positive_i in eval_data:
        interaction = interaction.to(device)
        scores = ranking_scores(model, interaction, history_index)
        rows, t = case_targets(len(interaction), positive_u, positive_i)
        s = scores[rows]
        target_score = s.gather(1, t.unsqueeze(1))
        full_rank.append(ranks_of(s, t))
        allowed = torch.isfinite(s)
        allowed[torch.arange(len(rows)), t] = False
        negatives = torch.multinomial(allowed.float(), 100, replacement=False, generator=generator)
        uni_rank.append((s.gather(1, negatives) > target_score).sum(1))
        users.append(interaction[uid].cpu()[rows])
        target_pop.append(torch.from_numpy(train_item_counts[t.numpy()]))
    return {"user": torch.cat(users).numpy(), "full": torch.cat(full_rank).numpy(),
            "uni100": torch.cat(uni_rank).numpy(), "target_pop": torch.cat(target_pop).numpy()}


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, np.ndarray]:
    hit = ranks < K
    return {"mrr@10": np.where(hit, 1.0 / (ranks + 1), 0.0), "ndcg@10": np.where(hit, 1.0 / np.log2(ranks + 2), 0.0),
            "hit@10": hit.astype(float)}


def summarise(ranked: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {protocol: {m: round(float(v.mean()), 6) for m, v in metrics_from_ranks(ranked[protocol]).items()}
            for protocol in ("full", "uni100")}
