"""The fast paths compute what the straightforward computation computes, at the same weights.

The library normalises constant feature tables once (folding LayerNorm's affine part into the
projection), shares one projection per entry-point call, rolls right-padded masks instead of
sorting them, masks only where positions meet, and computes only the newest position of the last
fusion block. The reference below does none of that: it projects raw feature rows per position
(LayerNorm then Linear), aligns by a stable sort, multiplies by the mask after every normalisation
and residual, and mixes every position. Losses, scores and every gradient must agree to float
tolerance, on SASRec, GRU4Rec, FPMC, BPR (attached) and M2SR.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusionlayer
from conftest import build, random_features

pytestmark = pytest.mark.needs_ml100k
BACKBONES = ["SASRec", "GRU4Rec", "FPMC", "BPR"]


def stream(module, s):
    """Stream ``s`` of a grouped module (``fusionlayer.layers``): every parameter's s-th slice, as a per-stream module
    would hold it (slices of the same parameters, so gradients reach the grouped weights)."""
    return lambda name: module.get_parameter(name)[s]


def reference_block(block, x, m, s=None):
    """One Mixer block on ``(B, L, D)``, the straightforward way; ``s``: stream s of a grouped block."""
    L, D = x.shape[1], x.shape[2]
    w = stream(block, s) if s is not None else block.get_parameter
    norm = lambda i, v: F.layer_norm(v, (D,), w(f"norm{i}.weight"), w(f"norm{i}.bias"), eps=block.norm1.eps)  # noqa: E731
    h = (norm(1, x) * m).transpose(1, 2)
    h = F.linear(F.gelu(F.linear(h, w("mlp_tokens.fc1.weight")[:, -L:], w("mlp_tokens.fc1.bias"))),
                 w("mlp_tokens.fc2.weight")[-L:], w("mlp_tokens.fc2.bias")[-L:])
    x = x + h.transpose(1, 2) * m
    c = F.linear(F.gelu(F.linear(norm(2, x), w("mlp_channels.fc1.weight"), w("mlp_channels.fc1.bias"))),
                 w("mlp_channels.fc2.weight"), w("mlp_channels.fc2.bias"))
    return x + c * m


def reference_forward_items(layer, item_seq, tables, *, sequences=None, projected_tables=None, mask=None,
                            last_only=False):
    mask = item_seq != 0 if mask is None else mask
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    m = mask.gather(1, order).unsqueeze(-1).float()
    seq = item_seq.gather(1, order)
    streams = {name: layer.projections[name](table[seq]) for name, table in tables.items()}
    streams.update({name: table[seq] for name, table in (projected_tables or {}).items()})
    streams.update({name: torch.take_along_dim(layer.projections[name](x), order.unsqueeze(-1), dim=1)
                    for name, x in (sequences or {}).items()})
    mixed = []
    for s, name in enumerate(layer.config.modality_dims):  # each stream apart, with its slice of the grouped weights
        x = layer.drop(streams[name]) * m
        for block in layer.stream_mixers:
            x = reference_block(block, x, m, s)
        norm = stream(layer.stream_norms, s)
        mixed.append(F.layer_norm(x, x.shape[-1:], norm("weight"), norm("bias"), eps=layer.config.layer_norm_eps) * m)
    x = layer.fuse(torch.cat(mixed, dim=-1)) * m
    for block in layer.fusion_mixers:
        x = reference_block(block, x, m)
    out = layer.fusion_norm(x) * m
    if last_only:
        return out[:, -1]
    return torch.take_along_dim(out, torch.argsort(order, dim=1).unsqueeze(-1), dim=1)


def use_reference(model, raw, monkeypatch):
    """Route ``model`` through the straightforward computation on the raw feature tables."""
    if isinstance(model, fusionlayer.M2SR):
        def forward(item_seq, item_seq_len):
            return reference_forward_items(model.fusion, item_seq, {"id": model.item_embedding.weight, **raw},
                                           last_only=True)

        monkeypatch.setattr(model, "forward", forward)
        return
    adapter = model.fusion_adapter
    layer = adapter.fusion
    content = adapter.content  # the tables, their projection and the cache (adapters/content.py)
    monkeypatch.setattr(content, "memoised", lambda key, inputs, compute: compute())  # nothing shared
    monkeypatch.setattr(content, "projected_tables", lambda: {n: layer.projections[n](t) for n, t in raw.items()})
    monkeypatch.setattr(layer, "forward_items", lambda *a, **k: reference_forward_items(layer, *a, **k))


def build_model(name, tiny_root, tmp_path):
    from recbole.model.general_recommender import BPR
    from recbole.model.sequential_recommender import FPMC, GRU4Rec, SASRec

    classes = {"SASRec": SASRec, "GRU4Rec": GRU4Rec, "FPMC": FPMC, "BPR": BPR, "M2SR": fusionlayer.M2SR}
    overrides = {"dropout_prob": 0.0, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}
    config, train, _, test = build(classes[name], tiny_root, tmp_path, **overrides)
    raw = random_features(train.dataset.item_num)
    raw["text"][5] = 0  # an item without content
    torch.manual_seed(0)
    if name == "M2SR":
        model = fusionlayer.M2SR(config, train.dataset, features=raw)
    else:
        model = classes[name](config, train.dataset)
        fusionlayer.attach(model, raw, dataset=train.dataset, output_dropout=0.0)
        with torch.no_grad():  # open the zero-initialised gates, so the fusion's output counts
            for p in model.fusion_adapter.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.3)
    return model, raw, next(iter(train)), next(iter(test))[0]


def outputs(model):
    """(loss, full_sort scores, predict scores, {name: grad}) of one training batch and one eval batch."""
    model, _, batch, eval_batch = model
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model.calculate_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():
        full = model.full_sort_predict(eval_batch)
        pair = model.predict(batch)
    return loss.detach(), full, pair, grads


@pytest.mark.parametrize("name", [*BACKBONES, "M2SR"])
def test_fast_path_equals_reference_computation(name, tiny_root, tmp_path, monkeypatch):
    setup = build_model(name, tiny_root, tmp_path)
    fast = outputs(setup)
    use_reference(setup[0], setup[1], monkeypatch)
    slow = outputs(setup)
    close(fast[0], slow[0], "loss")
    close(fast[1], slow[1], "full_sort_predict")
    close(fast[2], slow[2], "predict")
    assert fast[3].keys() == slow[3].keys()
    fusion_grads = [n for n in fast[3] if "fusion" in n]
    assert fusion_grads and any(fast[3][n].abs().sum() > 0 for n in fusion_grads)  # the fusion is in the loss
    for key in fast[3]:
        close(fast[3][key], slow[3][key], key)


def close(fast, slow, what):
    """Float tolerance relative to the tensor's scale (sums in another order differ in the last bits)."""
    scale = max(1.0, float(slow.abs().max()))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=2e-5 * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("layout", ["right", "left", "mixed", "empty_row"])
def test_layer_fast_alignment_equals_reference(fusion_layer, layout):
    B, L = 6, 10
    torch.manual_seed(0)
    lengths = torch.tensor([1, 3, 10, 5, 7, 2])
    positions = torch.arange(L)
    mask = {"right": positions < lengths[:, None], "left": positions >= L - lengths[:, None],
            "mixed": torch.rand(B, L) > 0.4}[layout] if layout != "empty_row" else positions < lengths[:, None]
    if layout == "empty_row":
        mask[2] = False
    item_seq = torch.randint(1, 30, (B, L)) * mask
    tables = {"id": torch.randn(30, 16), "text": torch.randn(30, 12), "image": torch.randn(30, 20)}
    fusion_layer.eval()
    for last_only in (False, True):
        fast = fusion_layer.forward_items(item_seq, tables, mask=mask, last_only=last_only)
        slow = reference_forward_items(fusion_layer, item_seq, tables, mask=mask, last_only=last_only)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
