"""Full-ranking evaluation of the compatibility benchmark: each user's rank of the held-out item.

Ranks count the items scored strictly higher (ties in the user's favour, as RecBole's topk may break
them either way); the user's training items and the padding id are excluded. Metrics at K = 10.
"""

from __future__ import annotations

import numpy as np
import torch

from fusionlayer.evaluation import K, case_targets, metrics_from_ranks, ranking_scores, ranks_of

__all__ = ["K", "case_targets", "metrics_from_ranks", "rank_users", "ranking_scores", "ranks_of", "summarise"]


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


def summarise(ranked: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {protocol: {m: round(float(v.mean()), 6) for m, v in metrics_from_ranks(ranked[protocol]).items()}
            for protocol in ("full", "uni100")}
