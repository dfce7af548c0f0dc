"""Synthetic RecBole models and batches over an ML-100K-sized catalogue (no dataset files needed)."""

from __future__ import annotations

import itertools

import torch

N_USERS, N_ITEMS = 944, 1683  # ML-100K with RecBole's padding ids
FEATURE_DIMS = {"text": 384, "image": 1280}
MODEL_CONFIG = {
    "SASRec": {"n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.5,
               "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
               "loss_type": "CE"},
    "GRU4Rec": {"embedding_size": 64, "hidden_size": 128, "num_layers": 1, "dropout_prob": 0.3, "loss_type": "CE"},
    "FPMC": {"embedding_size": 64, "loss_type": "BPR"},
    "BPR": {"embedding_size": 64},
    "M2SR": {"hidden_size": 64, "n_layers": 1, "channel_hidden_size": 128, "token_hidden_size": 32, "loss_type": "CE"},
}


class RecBoleLikeConfig(dict):
    """A dict that answers None for absent keys, as RecBole's Config does."""

    def __missing__(self, key):
        return None


class SyntheticDataset:
    """What RecBole models read from a dataset: sizes, and (for BPR's adapter) the interactions."""

    uid_field, iid_field, time_field = "user_id", "item_id", "timestamp"

    def __init__(self, n_inter: int = 20_000, seed: int = 0, n_items: int = N_ITEMS, n_users: int = N_USERS) -> None:
        g = torch.Generator().manual_seed(seed)
        self.user_num, self.item_num = n_users, n_items
        self.inter_feat = {"user_id": torch.randint(1, n_users, (n_inter,), generator=g),
                           "item_id": torch.randint(1, n_items, (n_inter,), generator=g),
                           "timestamp": torch.rand(n_inter, generator=g)}

    def num(self, field: str) -> int:
        return self.user_num if field == self.uid_field else self.item_num


def config_for(name: str, L: int) -> RecBoleLikeConfig:
    return RecBoleLikeConfig(USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id", LIST_SUFFIX="_list",
                             ITEM_LIST_LENGTH_FIELD="item_length", NEG_PREFIX="neg_", MAX_ITEM_LIST_LENGTH=L,
                             device="cpu", **MODEL_CONFIG[name])


def features(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {m: torch.randn(N_ITEMS, d, generator=g) for m, d in FEATURE_DIMS.items()}
    for t in out.values():
        t[0] = 0
    return out


def build_model(name: str, variant: str, L: int, n_items: int = N_ITEMS, feature_tables=None, **attach_options):
    """A RecBole model on a synthetic catalogue of ``n_items`` ids; ``variant="fusion"`` attaches
    ``feature_tables`` (default: random ML-100K-sized ones) with ``attach_options``."""
    import fusionlayer

    fusionlayer.patch_recbole()
    from recbole.model.general_recommender import BPR
    from recbole.model.sequential_recommender import FPMC, GRU4Rec, SASRec

    classes = {"SASRec": SASRec, "GRU4Rec": GRU4Rec, "FPMC": FPMC, "BPR": BPR, "M2SR": fusionlayer.M2SR}
    dataset = SyntheticDataset(n_items=n_items)
    config = config_for(name, L)
    if name == "M2SR":
        return fusionlayer.M2SR(config, dataset, features=feature_tables or features())
    model = classes[name](config, dataset)
    if variant == "fusion":
        fusionlayer.attach(model, feature_tables if feature_tables is not None else features(), dataset=dataset,
                           **attach_options)
    return model


def synthetic_batch(model, B: int, L: int, device: str, *, train: bool, seed: int = 0):
    from recbole.data.interaction import Interaction

    g = torch.Generator().manual_seed(seed)
    n_items, n_users = int(getattr(model, "n_items", N_ITEMS)), int(getattr(model, "n_users", N_USERS) or N_USERS)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    seq = torch.randint(1, n_items, (B, L), generator=g) * (torch.arange(L)[None] < lengths[:, None])
    data = {"user_id": torch.randint(1, n_users, (B,), generator=g), "item_id_list": seq, "item_length": lengths,
            "item_id": torch.randint(1, n_items, (B,), generator=g), "neg_item_id": torch.randint(1, n_items, (B,), generator=g)}
    return Interaction(data).to(device)


def training_step(model, batches, lr: float = 1e-3):
    """A closure that runs one Adam step of ``model.calculate_loss`` on the next of ``batches`` (cycling)."""
    batches = batches if isinstance(batches, list) else [batches]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    count = itertools.count()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.calculate_loss(batches[next(count) % len(batches)]).backward()
        optimizer.step()

    return step
