"""Export round trip: the HF folder `cst export` writes gives the trained engine's logits, and DeepSpeed's own
zero_to_fp32.py consolidates the same checkpoint to the same weights."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from cst_dist.config import load_config
from cst_dist.models import resolve_model
from cst_dist.run_layout import RunLayout
from cst_dist.stage_process import child_env
from cst_dist.training.checkpoint import find_resume_checkpoint, load_checkpoint
from cst_dist.training.data import BatchPlan
from cst_dist.training.distributed import setup_distributed
from cst_dist.training.engine import setup_policy_engine, setup_reference_engine
from cst_dist.training.export import export_checkpoint
from tests.training.test_training_units import cst_train, train_overrides


def test_export_matches_engine_and_zero_to_fp32(tmp_path, tiny_model_config, preference_dir):
    run_dir = tmp_path / "run"
    result = cst_train(train_overrides(tiny_model_config.path, preference_dir, run_dir,
                                       **{"train.max_steps": 2, "train.reference": "precomputed"}))
    assert result.returncode == 0, result.stderr[-3000:]
    exported = export_checkpoint(RunLayout(run_dir), dtype="float32")
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in exported.iterdir()}

    # The trained ZeRO-3 engine, restored from the same checkpoint in this process (a world of one).
    config = load_config(str(run_dir / "config.yaml"))
    env = setup_distributed()
    spec, plan = resolve_model(config.model, env.device), BatchPlan.of(config.train, env.world_size)
    engine, _ = setup_policy_engine(spec, config.train, plan, total_steps=2)
    load_checkpoint(engine, env, find_resume_checkpoint(RunLayout(run_dir), "auto"))
    input_ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        engine_logits = engine(input_ids=input_ids).logits
        hf_logits = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)(input_ids=input_ids).logits
    torch.testing.assert_close(hf_logits, engine_logits, atol=1e-5, rtol=0)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_config.path, dtype=torch.float32)
    with torch.no_grad():
        assert (initial(input_ids=input_ids).logits - hf_logits).abs().max() > 1e-3  # training moved the model

    # The offloaded reference: a ZeRO-3 inference engine whose parameters are partitioned and live in CPU memory.
    reference = setup_reference_engine(spec, config.train.model_copy(update={"reference": "offload"}), plan)
    assert reference.zero_offload_param().device == "cpu"
    params = list(reference.module.parameters())
    assert params and all(p.ds_tensor.device.type == "cpu" and p.data.numel() == 0 for p in params)
    assert not any(p.requires_grad for p in params)

    consolidated = tmp_path / "zero_to_fp32"
    subprocess.run([sys.executable, str(run_dir / "checkpoints" / "zero_to_fp32.py"), str(run_dir / "checkpoints"),
                    str(consolidated), "--safe_serialization"], check=True, capture_output=True)
    theirs = {}
    for shard in consolidated.glob("*.safetensors"):
        theirs.update(load_file(shard))
    ours = load_file(exported / "model.safetensors")
    assert theirs.keys() == ours.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def test_export_from_another_directory_finds_the_runs_relative_model(tmp_path, tiny_model_config, preference_dir):
    """An absolute run_dir with a model.path relative to where training started: export from elsewhere reads the
    model there (run.json records the working directory), and a missing model is an error, never a rebuild."""
    import shutil

    work, elsewhere, run_dir = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "run"
    shutil.copytree(tiny_model_config.path, work / "models" / "tiny")
    elsewhere.mkdir()
    env = child_env()
    train = subprocess.run([sys.executable, "-m", "cst_dist.cli", "train", "tiny-cpu", *train_overrides(
        "models/tiny", preference_dir, run_dir, **{"train.max_steps": 1})],  # model.tiny stays set
        cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    export = [sys.executable, "-m", "cst_dist.cli", "export", str(run_dir), "--output", str(tmp_path / "out")]
    done = subprocess.run(export, cwd=elsewhere, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "export.json").is_file() and not (elsewhere / "runs").exists()
    umask = os.umask(0o022)
    os.umask(umask)
    for weights in (tmp_path / "out" / "model.safetensors", work / "models" / "tiny" / "model.safetensors"):
        assert weights.stat().st_mode & 0o777 == 0o666 & ~umask  # like every other output, not safetensors' 0600
    shutil.rmtree(work / "models")
    done = subprocess.run([*export[:-1], str(tmp_path / "out2")], cwd=elsewhere, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2 and "does not exist" in done.stderr.strip().splitlines()[-1]
    assert not (elsewhere / "runs").exists() and not (work / "models").exists()  # nothing was built anywhere
