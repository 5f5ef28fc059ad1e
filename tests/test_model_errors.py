"""One-line errors for model folders a user may point at: broken config.json, no tokenizer files, no weights, a hub
name instead of a folder; and the loud warning when a tiny model is built at a path that did not exist."""

from __future__ import annotations

import logging
import shutil

import pytest

from cst_dist.cli import main
from cst_dist.config import ModelConfig, TinyModelConfig, load_config
from cst_dist.models import ModelLoadError, ensure_model, load_model, load_tokenizer, resolve_model


def broken_copy(tiny_model_config, tmp_path, remove=(), config_text=None):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_config.path, folder)
    for name in remove:
        (folder / name).unlink()
    if config_text is not None:
        (folder / "config.json").write_text(config_text)
    return ModelConfig(path=str(folder))


def one_line_error(call, *fragments):
    with pytest.raises(ModelLoadError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_broken_config_json(tiny_model_config, tmp_path):
    config = broken_copy(tiny_model_config, tmp_path, config_text='{"model_type": "llama",')
    one_line_error(lambda: load_tokenizer(config), "config.json", "not a valid JSON object")


def test_missing_tokenizer_files_are_named_not_sentencepiece(tiny_model_config, tmp_path):
    config = broken_copy(tiny_model_config, tmp_path, remove=("tokenizer.json",))
    with pytest.raises(ModelLoadError) as caught:
        load_tokenizer(config)
    assert "no tokenizer files" in str(caught.value) and "sentencepiece" not in str(caught.value).lower()


def test_missing_weights(tiny_model_config, tmp_path):
    config = broken_copy(tiny_model_config, tmp_path, remove=("model.safetensors",))
    one_line_error(lambda: load_model(resolve_model(config)), "has no weights", "*.safetensors")


def test_hub_name_fails_in_one_line_without_network(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "tiny-cpu", "model.path=teknium/OpenHermes-2.5-Mistral-7B", "model.tiny=null",
                 f"run_dir={tmp_path / 'run'}", f"train.data={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "local Hugging Face model folder" in err[0], err


def test_tiny_model_built_at_a_missing_path_is_said_loudly(tmp_path, caplog):
    config = ModelConfig(path=str(tmp_path / "typo"), tiny=TinyModelConfig(vocab_size=300, hidden_size=16,
                                                                           intermediate_size=32))
    with caplog.at_level(logging.WARNING, logger="cst_dist.models"):
        ensure_model(config)
    assert any("NEW RANDOM tiny model" in record.getMessage() for record in caplog.records)


def test_home_is_expanded_in_every_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config("tiny-cpu", ["run_dir=~/runs/x", "model.path=~/m", "build.pairs=[~/p]", "train.resume=~/c"])
    assert config.run_dir == f"{tmp_path}/runs/x" and config.model.path == f"{tmp_path}/m"
    assert config.build.pairs == [f"{tmp_path}/p"] and config.train.resume == f"{tmp_path}/c"


def test_debug_flag_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError):
        main(["--debug", "train", "tiny-cpu", "model.path=nowhere", "model.tiny=null", f"run_dir={tmp_path / 'r'}"])
