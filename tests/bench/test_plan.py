"""`cst bench plan`: parameter counts of the presets' vendored architectures, agreement with DeepSpeed's own
estimator, the peak estimate against a real `cst train` run's measured peak (RSS on CPU), and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cst_dist.bench.plan import GIB, Inputs, PlanError, architecture_from_file, load_architecture, plan, plan_one
from cst_dist.config import PRESET_DIR, load_config
from cst_dist.stage_process import child_env
from tests.training.launch import read_metrics

GPU = Inputs(gpus=8, gpu_mem_gib=80, host_mem_gib=1024, gpus_per_node=8, runtime_gib=3.0,
             host_runtime_gib_per_rank=8.0, tokens_per_sequence=512, response_share=1.0, dtype_bytes=2)


@pytest.mark.parametrize("preset, published", [("mistral-7b", 7.24e9), ("solar-10.7b", 10.7e9)])
def test_presets_carry_their_architecture_and_its_published_size(preset, published):
    config = load_config(preset)
    arch = load_architecture(config, preset)  # model.path does not exist: the vendored config.json beside the YAML
    assert Path(arch.source) == PRESET_DIR / f"{preset}.config.json"
    assert arch.shape.parameters == pytest.approx(published, rel=0.005)
    # exact counts of OpenHermes-2.5-Mistral-7B (vocab 32002) and SOLAR-10.7B
    assert arch.shape.parameters == {"mistral-7b": 7_241_748_480, "solar-10.7b": 10_731_524_096}[preset]
    assert arch.largest_layer_parameters == arch.shape.vocab_size * 4096  # the embedding / LM head


def test_model_states_are_deepspeeds_estimate():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    config = load_config("mistral-7b", ["train.global_batch_size=64"])
    arch = load_architecture(config, "mistral-7b")
    for gpus in (8, 16, 64):
        result = plan_one(config, arch, Inputs(**{**GPU.__dict__, "gpus": gpus}))
        _, expected, _ = estimate_zero3_model_states_mem_needs(
            arch.shape.parameters, arch.largest_layer_parameters, 8, gpus // 8, cpu_offload=False,
            cpu_offload_params=False)
        assert result.per_gpu_gib["policy model states"] == pytest.approx(expected / GIB, rel=1e-9)
        assert result.zero_stage == 3


def test_fits_flips_and_the_largest_micro_batch_shrinks_with_the_gpu_count():
    config = load_config("mistral-7b", ["train.global_batch_size=64", "train.gradient_checkpointing=false"])
    arch = load_architecture(config, "mistral-7b")
    roomy = plan_one(config, arch, GPU)
    tight = plan_one(config, arch, Inputs(**{**GPU.__dict__, "gpu_mem_gib": roomy.total_gib - 1}))
    assert roomy.fits and roomy.headroom_gib > 0 and not tight.fits and tight.headroom_gib == pytest.approx(-1)
    # by hand: 1 pair = 2 x 512 tokens; per token and layer (8h + 4h_kv + 4I) x 2 bytes = 188,416 bytes; one more
    # layer's worth for the backward in flight, and the final norm's 2h
    layer, tokens, final = (8 * 4096 + 4 * 1024 + 4 * 14336) * 2, 1024, 2 * 4096 * 2
    assert roomy.per_gpu_gib["activations"] * GIB == pytest.approx(tokens * (33 * layer + final))
    checkpointed = plan_one(load_config("mistral-7b", ["train.global_batch_size=64"]), arch, GPU)
    assert checkpointed.per_gpu_gib["activations"] * GIB == pytest.approx(tokens * (32 * 4096 * 2 + 2 * layer + final))
    plans = plan(config, arch, [8, 16, 32, 64], GPU, [1952], 0.4, 989e12, 456)
    largest = [p.largest_micro_batch for p in plans]
    assert largest == sorted(largest, reverse=True) and largest[-1] == 1
    minutes = [p.epoch_minutes["1952"] for p in plans]
    assert minutes[0] == pytest.approx(2 * minutes[1]) == pytest.approx(8 * minutes[3])  # compute-bound projection


def test_bad_input_is_one_clear_error(tmp_path):
    config = load_config("mistral-7b")  # global batch 8
    arch = load_architecture(config, "mistral-7b")
    with pytest.raises(PlanError, match="global_batch_size=8 is not divisible by .* x 16 GPUs"):
        plan(config, arch, [8, 16], GPU, [1952], 0.4, 989e12, 456)
    encoder = tmp_path / "config.json"
    encoder.write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 64}))
    with pytest.raises(PlanError, match=r"config.json: field architectures=\['BertModel'\].*is not a causal LM"):
        architecture_from_file(encoder)
    result = subprocess.run([sys.executable, "-m", "cst_dist.cli", "bench", "plan", "mistral-7b", "--gpus", "16"],
                            capture_output=True, text=True, env=child_env(), timeout=120)
    assert result.returncode != 0 and "is not divisible" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("flags, fragment", [
    (["--mfu", "0"], "--mfu 0.0: must be a share"),
    (["--mfu", "inf"], "--mfu inf: must be a share"),
    (["--gpus-per-node", "0"], "--gpus-per-node 0"),
    (["--gpu-mem", "nan"], "--gpu-mem nan"),
    (["--gpus", "-8"], "--gpus -8"),
    (["--rows", "-1"], "--rows -1"),
    (["--architecture", "/nowhere/config.json"], "--architecture /nowhere/config.json: no such file"),
])
def test_nonsense_numbers_and_missing_files_are_refused(flags, fragment, capsys):
    from cst_dist.cli import main

    assert main(["bench", "plan", "mistral-7b", *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and fragment in error, error


def test_default_gpu_counts_divide_the_global_batch(capsys):
    from cst_dist.cli import main

    assert main(["bench", "plan", "mistral-7b"]) == 0  # global batch 8: 8 GPUs of the usual 8/16/32/64
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["8"]
    assert main(["bench", "plan", "mistral-7b", "train.global_batch_size=6"]) == 0  # none of them: its divisors
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["1", "2", "3", "6"]


def test_peak_estimate_within_25_percent_of_a_real_cpu_run(tmp_path, preference_dir):
    """A 23M-parameter model (hidden 512 x 8 layers), one process, fp32: `cst train`'s measured peak RSS against the
    plan of the same config (the process baseline, 0.59 GiB, is the planner's CPU default)."""
    model = tmp_path / "small"
    overrides = [f"run_dir={tmp_path / 'run'}", f"model.path={model}", f"train.data={preference_dir}",
                 "train.reference=precomputed", "train.max_steps=3", "train.save_steps=100",
                 "model.tiny.hidden_size=512", "model.tiny.num_hidden_layers=8", "model.tiny.intermediate_size=1408",
                 "model.tiny.num_attention_heads=8", "model.tiny.vocab_size=512", "model.tiny.tokenizer_corpus=[]"]
    env = {**child_env(), "OMP_NUM_THREADS": "2"}
    trained = subprocess.run([sys.executable, "-m", "cst_dist.cli", "train", "tiny-cpu", *overrides],
                             capture_output=True, text=True, env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    measured = max(row["peak_memory_gib"] for row in read_metrics(tmp_path / "run"))
    out = tmp_path / "plan.json"
    planned = subprocess.run([sys.executable, "-m", "cst_dist.cli", "bench", "plan", "tiny-cpu", *overrides,
                              "--device", "cpu", "--gpus", "1", "--gpus-per-node", "1", "--gpu-mem", "24",
                              "--json", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert planned.returncode == 0, planned.stderr[-3000:]
    report = json.loads(out.read_text())
    estimate = report["plans"][0]["total_gib"]
    assert report["model"]["parameters"] > 20e6 and report["plans"][0]["zero_stage"] == 1
    assert abs(estimate - measured) / measured < 0.25, (estimate, measured)
    assert "23.08M parameters" in planned.stdout
