"""The command line: help lists the presets, encode reports what it did, bad names fail clearly."""

from __future__ import annotations

import pytest

from fusionlayer import cli


def test_encode_help_lists_presets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["encode", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for preset in ("minilm", "effnet-lite0", "bert-base-uncased", "clip-vit-b-32"):
        assert preset in out


def test_unknown_image_encoder_is_a_clear_error(tmp_path, capsys):
    code = cli.main(["encode", "--modality", "image", "--encoder", "no-such-thing", "--cache-dir", str(tmp_path)])
    assert code == 2 and "unknown image encoder 'no-such-thing'" in capsys.readouterr().err  # a message, no traceback


@pytest.mark.needs_ml100k
def test_a_text_model_that_cannot_load_is_a_message_not_a_traceback(tmp_path, capsys):
    from conftest import SHARED

    code = cli.main(["encode", "--dataset", "ml-100k", "--modality", "text", "--encoder", "no-such-org/no-such-model",
                     "--data-dir", str(SHARED), "--cache-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot load text model 'no-such-org/no-such-model'" in err and "Traceback" not in err


def test_version(capsys):
    import fusionlayer

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"fusionlayer {fusionlayer.__version__}"


def test_bench_rejects_unknown_benchmark(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "speed"])


def test_bench_finds_the_checkout_from_any_directory(tmp_path):
    """``fusionlayer bench compat`` run outside the checkout (an editable install) reaches the benchmark's own
    argument parser, instead of saying the benchmarks are missing."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fusionlayer.cli", "bench", "compat", "--models", "Nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--models: unknown or no names ['Nope']" in done.stderr


@pytest.mark.needs_ml100k
@pytest.mark.slow
def test_encode_text_then_cache_hit(capsys):
    from conftest import SHARED

    assert cli.main(["encode", "--dataset", "ml-100k", "--modality", "text", "--data-dir", str(SHARED), "--no-progress"]) == 0
    assert cli.main(["encode", "--dataset", "ml-100k", "--modality", "text", "--data-dir", str(SHARED), "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "1682 items x 384" in out[-2] and "cache hit" in out[-2]
    assert "'no_poster': 19" in out[-1] and "'empty_plot': 18" in out[-1]


def test_demo_refuses_a_non_positive_epoch_count(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--epochs", "0"])
    assert exit_info.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("error, line", [
    (ImportError("Unable to find a usable engine; tried using: 'pyarrow'.\nA suitable version of pyarrow is required.\n"
                 " - Missing optional dependency 'pyarrow'. Use pip or conda to install pyarrow."),
     "Unable to find a usable engine; tried using: 'pyarrow'. A suitable version of pyarrow is required. - Missing "
     "optional dependency 'pyarrow'. Use pip or conda to install pyarrow."),
    (TypeError("template must be a string"), "template must be a string"),
    (PermissionError(), "PermissionError (no message)"),
    (KeyError("unknown text field(s) ['x']"), "unknown text field(s) ['x']"),
])
def test_encode_errors_are_one_line_and_status_2(monkeypatch, tmp_path, capsys, error, line):
    """A user error (a missing optional package for --text-file x.parquet, a bad value, a permission) is one line
    on stderr and status 2: no traceback before it, never an empty message."""
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("fusionlayer.encoders.encode_items", fail)
    code = cli.main(["encode", "--modality", "text", "--cache-dir", str(tmp_path)])
    assert code == 2 and capsys.readouterr().err == f"fusionlayer encode: error: {line}\n"


def test_a_file_that_is_not_a_checkpoint_is_one_clear_line(tmp_path, capsys):
    """``--encoder timm:<model>@<file>`` with a file torch's weights-only loader refuses: our message, not
    torch's multi-line UnpicklingError after a traceback."""
    from PIL import Image

    folder = tmp_path / "data" / "pics"
    (folder / "images").mkdir(parents=True)
    (folder / "pics.inter").write_text("user_id:token\titem_id:token\nu1\ta\nu1\tb\n")
    for token in "ab":
        Image.new("RGB", (16, 16)).save(folder / "images" / f"{token}.png")
    bad = tmp_path / "weights.pth"
    bad.write_text("not a checkpoint")
    code = cli.main(["encode", "--dataset", "pics", "--data-dir", str(tmp_path / "data"), "--cache-dir",
                     str(tmp_path / "cache"), "--modality", "image", "--image-dir", "images",
                     "--encoder", f"timm:resnet18@{bad}", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot read weights from {bad} (torch's weights-only loader refused it" in err
