"""M2SR and MLPMixerRec as RecBole models: train with RecBole's Trainer, full ranking, errors."""

from __future__ import annotations

import pytest
import torch

from conftest import build, random_features

pytestmark = pytest.mark.needs_ml100k


def fixed_batch_loss(model, train_data):
    model.eval()
    with torch.no_grad():
        return float(model.calculate_loss(next(iter(train_data))))


@pytest.mark.parametrize("name", ["M2SR", "MLPMixerRec"])
def test_trains_one_epoch_with_recbole_trainer(name, tiny_root, tmp_path):
    import fusionlayer
    from recbole.trainer import Trainer

    cls = getattr(fusionlayer, name)
    config, train, valid, test = build(cls, tiny_root, tmp_path, learning_rate=0.003)
    n_items = train.dataset.item_num
    model = cls(config, train.dataset, features=random_features(n_items)) if name == "M2SR" else cls(config, train.dataset)
    before = fixed_batch_loss(model, train)
    trainer = Trainer(config, model)
    trainer.fit(train, valid, verbose=False, saved=True, show_progress=False)
    after = fixed_batch_loss(model, train)
    assert torch.isfinite(torch.tensor(after)) and after < before
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    assert set(result) == {"mrr@10", "ndcg@10", "hit@10"}
    interaction = next(iter(test))[0]
    scores = model.full_sort_predict(interaction)
    assert scores.shape == (len(interaction), n_items) and torch.isfinite(scores).all()


def test_m2sr_rejects_bad_features(tiny_root, tmp_path):
    import fusionlayer

    config, train, _, _ = build(fusionlayer.M2SR, tiny_root, tmp_path)
    n = train.dataset.item_num
    with pytest.raises(ValueError, match=f"has {n - 1:,} rows but the model's dataset has {n:,} item ids"):
        fusionlayer.M2SR(config, train.dataset, features={"text": torch.randn(n - 1, 8)})
    bad = torch.randn(n, 8)
    bad[5, 2] = float("nan")
    with pytest.raises(ValueError, match=r"1 rows with NaN/Inf values \(first item ids: \[5\]\)"):
        fusionlayer.M2SR(config, train.dataset, features={"text": bad})
    with pytest.raises(ValueError, match="'id' is reserved"):
        fusionlayer.M2SR(config, train.dataset, features={"id": torch.randn(n, 8)})
    with pytest.raises(TypeError, match="must be floating point"):
        fusionlayer.M2SR(config, train.dataset, features={"text": torch.ones(n, 8, dtype=torch.long)})


def test_m2sr_uses_the_features(tiny_root, tmp_path):
    import fusionlayer

    config, train, _, test = build(fusionlayer.M2SR, tiny_root, tmp_path)
    torch.manual_seed(0)
    model = fusionlayer.M2SR(config, train.dataset, features=random_features(train.dataset.item_num)).eval()
    interaction = next(iter(test))[0]
    a = model.full_sort_predict(interaction)
    model.normed_text.mul_(2)
    assert not torch.allclose(a, model.full_sort_predict(interaction))


def test_m2sr_without_features_warns_that_it_is_id_only(tiny_root, tmp_path):
    import warnings

    import fusionlayer

    config, train, _, _ = build(fusionlayer.M2SR, tiny_root, tmp_path)
    with pytest.warns(UserWarning, match="without item features, so it is the ID-only MLPMixerRec"):
        fusionlayer.M2SR(config, train.dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusionlayer.MLPMixerRec(config, train.dataset)  # ID-only by design: no warning
