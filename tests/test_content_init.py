"""``attach(..., content_init=True)``: ID embeddings start from the items' content (a content prior), on all four
backbones; nothing else about the model changes, and checkpoints hold nothing new."""

from __future__ import annotations

import pytest
import torch

import fusionlayer
from conftest import backbone_class, fresh, random_features
from fusionlayer.config import AdapterOptions

pytestmark = pytest.mark.needs_ml100k
BACKBONES = ["SASRec", "GRU4Rec", "FPMC", "BPR"]
TABLES = {"SASRec": ["item_embedding"], "GRU4Rec": ["item_embedding"], "FPMC": ["IU_emb", "IL_emb", "LI_emb"],
          "BPR": ["item_embedding"]}


def _weight(model, name):
    module = getattr(model, name)
    return getattr(module, "base_layer", module).weight


@pytest.mark.parametrize("name", BACKBONES)
def test_item_tables_start_from_the_content(name, setups, tmp_path):
    model, base, (_, train, _, _, batch) = fresh(name, setups, content_init=True)
    features = random_features(train.dataset.item_num)
    features["text"][7], features["image"][7] = features["text"][3], features["image"][3]  # two items alike
    torch.manual_seed(0)
    other = backbone_class(name)(setups(name)[0], train.dataset)
    fusionlayer.attach(other, features, dataset=train.dataset, content_init=True)
    for table in TABLES[name]:
        before, after = _weight(base, table), _weight(model, table)
        assert torch.equal(after[0], before[0])  # the padding row keeps its start
        assert not torch.equal(after[1:], before[1:])
        assert abs(float(after[1:].detach().std()) / float(before[1:].detach().std()) - 1) < 0.2  # its own spread
        w = _weight(other, table)
        assert torch.allclose(w[7], w[3], atol=1e-5) and not torch.allclose(w[7], w[4], atol=1e-3)
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    # nothing new in checkpoints: the state dict has the keys of an attach without the option
    plain_attach, _, _ = fresh(name, setups)
    assert model.state_dict().keys() == plain_attach.state_dict().keys()
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    plain_attach.load_state_dict(torch.load(path), strict=True)
    for table in TABLES[name]:
        assert torch.equal(_weight(plain_attach, table), _weight(model, table))


def test_items_without_content_keep_their_start(setups):
    config, train, _, _, _ = setups("SASRec")
    features = random_features(train.dataset.item_num)
    features["text"][5] = features["image"][5] = 0  # no content at all
    torch.manual_seed(0)
    model = backbone_class("SASRec")(config, train.dataset)
    start = model.item_embedding.weight.detach().clone()
    fusionlayer.attach(model, features, content_init=True)
    assert torch.equal(_weight(model, "item_embedding")[5], start[5])
    assert not torch.equal(_weight(model, "item_embedding")[6], start[6])


@pytest.mark.parametrize("bad", [1, "yes", None, 0.5])
def test_content_init_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="content_init must be True or False"):
        AdapterOptions(content_init=bad)
