"""Full-ranking evaluation of the compatibility benchmark: each user's rank of the held-out item.

Ranks count the items scored strictly higher (ties in the user's favour, as RecBole's topk may break
them either way); the user's training items and the padding id are excluded. Metrics at K = 10.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["K", "metrics_from_ranks", "rank_users", "summarise"]

K = 10


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
        scores = model.full_sort_predict(interaction).view(len(interaction), -1).float().cpu()
        scores[:, 0] = -torch.inf
        if history_index is not None:
            scores[history_index] = -torch.inf
        target = torch.full((len(interaction),), -1, dtype=torch.long)
        target[positive_u] = positive_i
        rows = torch.nonzero(target >= 0).flatten()
        s, t = scores[rows], target[rows]
        target_score = s.gather(1, t.unsqueeze(1))
        full_rank.append((s > target_score).sum(1))
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
