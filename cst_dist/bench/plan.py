"""`cst bench plan`: will a training config fit, per GPU and per node, and how long will an epoch take.

Sources of each figure (also printed with the table):
  - parameters: counted exactly on the meta device (`cst_dist.flops.model_shape`); no weights needed. The 7B / 10.7B
    presets carry their public config.json beside the YAML (`<preset>.config.json`).
  - policy model states: DeepSpeed's own estimators (`estimate_zero3_model_states_mem_needs`, and the ZeRO-2 one for
    stages 1-2), which assume mixed precision: 2 + 2 bytes of bf16 weights and gradients plus 12-14 bytes of fp32
    master weights and Adam moments per parameter, partitioned over the ranks. fp32 runs (CPU) use the same terms with
    4-byte weights and gradients (our formula: DeepSpeed has no fp32 estimator).
  - activations: our formula for Llama/Mistral layers (SwiGLU MLP, grouped-query attention, a fused attention kernel,
    so no sequence x sequence term), after Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models", sec. 4.1) applied to this layer (counted below). With gradient
    checkpointing only each layer's input (h) is kept, plus one layer's full set while it is recomputed.
  - logits: the LM head runs only at response positions (`cst_dist.logprobs.forward_logps`). Chunked
    (train.logits_chunk_size, the default): one chunk's fp32 logits and their softmax in backward, plus, for a bf16
    head, the fp32 accumulator of its weight gradient; the logits of all responses never exist. Unchunked (null):
    values and gradients of every response position in the model dtype, plus the fp32 log-sum-exp chunk of 1024.
  - the reference: offloaded (host memory: its bf16 partitions, per node), on the GPU (its partition plus a gathered
    layer), or precomputed (nothing).
  - a runtime allowance (`--runtime-gib`): CUDA context, NCCL and allocator slack on a GPU; on CPU the Python, torch,
    DeepSpeed and transformers process itself, measured (docs/planner.md).
Activations per token and layer, counted for Llama/Mistral as autograd keeps them: each RMSNorm its input and its
normalized value (2h, twice), q/k/v as projected and as rotated for the attention kernel (2 x (h + 2 h_kv)), the
attention output (h), and the MLP's gate, up, SiLU and product (4I): 8h + 4h_kv + 4I values of the activation dtype.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cst_dist.config import ConfigError, RunConfig, resolve_preset
from cst_dist.errors import UserError

if TYPE_CHECKING:  # torch loads only when a plan is made: `cst --help` and the other commands stay light
    from cst_dist.flops import ModelShape

GIB = 2**30
H100_BF16_PEAK = 989e12  # H100 SXM dense bf16, FLOP/s (NVIDIA's data sheet)
LOGSUMEXP_CHUNK = 1024  # tokens upcast to fp32 at a time (cst_dist.logprobs)
PAPER_ROWS = 1952  # the paper's released multitask set
SELF_CRITIQUE_ROWS = 100_000  # a real self-critique run
# Real tokens per CST row (chosen + rejected, prompt included) on the released set, measured with the 8k BPE that
# gives 4.7 characters a token (close to Mistral's): 3,647 real tokens per step of 8 rows.
TOKENS_PER_ROW = 456


class PlanError(UserError, ValueError):
    pass


@dataclass
class Architecture:
    hf_config: object
    source: str
    shape: ModelShape
    largest_layer_parameters: int


def load_architecture(config: RunConfig, config_name: str, architecture: str | None = None) -> Architecture:
    """The model's shape from `--architecture FILE`, else `model.path`/config.json, else the preset's vendored
    `<preset>.config.json`; it must describe a causal LM."""
    if architecture and not Path(architecture).is_file():
        raise PlanError(f"--architecture {architecture}: no such file (a model's config.json)")
    candidates = [Path(architecture)] if architecture else []
    candidates.append(Path(config.model.path) / "config.json")
    try:
        preset = resolve_preset(config_name)
        candidates.append(preset.with_name(preset.stem + ".config.json"))
    except ConfigError:
        pass
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise PlanError(f"no model architecture: none of {', '.join(map(str, candidates))} exists; pass "
                        "--architecture CONFIG_JSON (a model's config.json)")
    return architecture_from_file(path)


def architecture_from_file(path: Path) -> Architecture:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from cst_dist.flops import model_shape

    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: not a readable config.json ({exc})") from None
    model_type = values.get("model_type")
    architectures = values.get("architectures") or []
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or any(
            not name.endswith("ForCausalLM") for name in architectures):
        raise PlanError(f"{path}: field architectures={architectures} / model_type={model_type!r} is not a causal LM; "
                        "the planner sizes decoder-only causal LMs (e.g. LlamaForCausalLM, MistralForCausalLM)")
    values = {k: v for k, v in values.items() if not k.startswith("_") and k != "model_type"}
    hf_config = AutoConfig.for_model(model_type, **values)
    return Architecture(hf_config, str(path), model_shape(hf_config), largest_layer_parameters(hf_config))


def largest_layer_parameters(hf_config) -> int:
    """The most parameters one module holds directly (what ZeRO-3 gathers at once; DeepSpeed's `model_to_params`)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())


@dataclass
class Inputs:
    gpus: int
    gpu_mem_gib: float
    host_mem_gib: float
    gpus_per_node: int
    runtime_gib: float
    host_runtime_gib_per_rank: float
    tokens_per_sequence: int  # packed tokens a sequence takes in a micro-batch (max_length: the worst case)
    response_share: float  # share of those tokens whose logits are computed (the responses)
    dtype_bytes: int  # 2 (bf16 on GPU) or 4 (fp32 on CPU)


@dataclass
class GpuPlan:
    gpus: int
    nodes: int
    micro_batch_size: int
    accumulation: int
    zero_stage: int
    per_gpu_gib: dict[str, float] = field(default_factory=dict)
    total_gib: float = 0.0
    headroom_gib: float = 0.0
    fits: bool = False
    largest_micro_batch: int | None = None
    largest_tokens_per_micro_batch: int = 0
    host_per_node_gib: dict[str, float] = field(default_factory=dict)
    host_total_gib: float = 0.0
    host_fits: bool = True
    epoch_minutes: dict[str, float] = field(default_factory=dict)


def policy_state_bytes(params: int, largest: int, gpus: int, gpus_per_node: int, stage: int, offload: bool,
                       dtype_bytes: int) -> float:
    """Per-GPU model states: DeepSpeed's estimators (mixed precision); fp32 adds 2 + 2 bytes for weights + grads."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    nodes = max(gpus // gpus_per_node, 1)
    per_node = min(gpus, gpus_per_node)
    if stage == 3:
        _, gpu, _ = estimate_zero3_model_states_mem_needs(params, largest, per_node, nodes, cpu_offload=offload,
                                                          cpu_offload_params=False)
        replicated = params / gpus  # weights and gradients are partitioned too
    else:
        _, gpu = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=offload)
        replicated = params  # every rank holds all weights and gradients below stage 3
    return gpu + (2 * 2 * replicated if dtype_bytes == 4 else 0)


def activation_bytes(shape: ModelShape, hf_config, tokens: int, checkpointing: bool, dtype_bytes: int) -> float:
    h = shape.hidden_size
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or h // heads
    kv = getattr(hf_config, "num_key_value_heads", heads) * head_dim
    per_layer = (8 * h + 4 * kv + 4 * hf_config.intermediate_size) * dtype_bytes  # per token (module docstring)
    if checkpointing:
        kept = shape.layers * h * dtype_bytes + per_layer  # layer inputs + the layer being recomputed
    else:
        kept = shape.layers * per_layer
    backward = per_layer  # one layer's activation gradients in flight
    return tokens * (kept + backward + 2 * h * dtype_bytes)  # + the final norm's input and output


def logits_bytes(shape: ModelShape, tokens: int, response_share: float, dtype_bytes: int,
                 chunk_size: int | None) -> float:
    """Logits at the response positions and their gradient: all at once in the model dtype (chunk_size None), or
    one fp32 chunk and its softmax at a time (+ the fp32 weight-gradient accumulator of a 16-bit head)."""
    responses = tokens * response_share
    if chunk_size is None:
        return 2 * responses * shape.vocab_size * dtype_bytes
    accumulator = shape.vocab_size * shape.hidden_size * 4 if dtype_bytes < 4 else 0.0
    return 2 * min(chunk_size, responses) * shape.vocab_size * 4 + accumulator


def logsumexp_bytes(shape: ModelShape) -> float:
    """The fp32 chunk of logits being reduced, and its exponentials."""
    return 2 * LOGSUMEXP_CHUNK * shape.vocab_size * 4


def reference_gpu_bytes(mode: str, params: int, largest: int, gpus: int, dtype_bytes: int) -> float:
    if mode == "precomputed":
        return 0.0
    gathered = 2 * largest * dtype_bytes  # the layer in use and the one prefetched
    return gathered + (params * dtype_bytes / gpus if mode == "gpu" else 0.0)


def plan_one(config: RunConfig, arch: Architecture, inputs: Inputs, micro_batch: int | None = None) -> GpuPlan:
    train = config.train
    gpus = inputs.gpus
    micro = micro_batch or train.micro_batch_size
    if train.global_batch_size % (micro * gpus):
        raise PlanError(f"--gpus {gpus}: train.global_batch_size={train.global_batch_size} is not divisible by "
                        f"train.micro_batch_size={micro} x {gpus} GPUs; raise the global batch (e.g. "
                        f"train.global_batch_size={micro * gpus * max(1, train.global_batch_size // (micro * gpus))})")
    stage = (3 if gpus > 1 else 1) if train.zero_stage == "auto" else int(train.zero_stage)
    shape, largest, b = arch.shape, arch.largest_layer_parameters, inputs.dtype_bytes
    nodes = max(-(-gpus // inputs.gpus_per_node), 1)
    tokens = micro * 2 * inputs.tokens_per_sequence  # chosen + rejected of each pair, packed
    chunk = train.logits_chunk_size
    parts = {
        "policy model states": policy_state_bytes(shape.parameters, largest, gpus, inputs.gpus_per_node, stage,
                                                  train.optimizer_offload, b),
        "buffers": (logsumexp_bytes(shape) if chunk is None else 0.0)
        + ((0.9 * shape.hidden_size**2 + shape.hidden_size**2) * b if stage == 3 else 0.0),  # ZeRO-3's buckets
        "activations": activation_bytes(shape, arch.hf_config, tokens, train.gradient_checkpointing, b),
        "logits": logits_bytes(shape, tokens, inputs.response_share, b, chunk),
        "reference": reference_gpu_bytes(train.reference, shape.parameters, largest, gpus, b),
        "runtime allowance": inputs.runtime_gib * GIB,
    }
    total = sum(parts.values())
    plan = GpuPlan(gpus, nodes, micro, train.global_batch_size // (micro * gpus), stage,
                   {k: v / GIB for k, v in parts.items()}, total / GIB, inputs.gpu_mem_gib - total / GIB)
    plan.fits = plan.headroom_gib >= 0
    # Chunked logits do not grow with the micro-batch (one chunk at a time): they stay in the fixed part.
    per_token = (activation_bytes(shape, arch.hf_config, 1, train.gradient_checkpointing, b)
                 + (logits_bytes(shape, 1, inputs.response_share, b, None) if chunk is None else 0.0))
    fixed = total - parts["activations"] - (parts["logits"] if chunk is None else 0.0)
    plan.largest_tokens_per_micro_batch = max(int((inputs.gpu_mem_gib * GIB - fixed) // per_token), 0)
    per_pair = 2 * inputs.tokens_per_sequence
    candidates = [m for m in range(1, train.global_batch_size // gpus + 1)
                  if train.global_batch_size % (m * gpus) == 0 and m * per_pair <= plan.largest_tokens_per_micro_batch]
    plan.largest_micro_batch = max(candidates) if candidates else None
    # host memory per node: each rank's process, the offloaded reference's and optimizer's partitions of this node
    ranks_here = min(gpus, inputs.gpus_per_node)
    host = {"rank processes": ranks_here * inputs.host_runtime_gib_per_rank * GIB}
    if train.reference == "offload":
        host["offloaded reference"] = shape.parameters * b * ranks_here / gpus
    if train.optimizer_offload:
        host["offloaded optimizer"] = shape.parameters * 12 * ranks_here / gpus  # fp32 master + Adam (DeepSpeed)
    plan.host_per_node_gib = {k: v / GIB for k, v in host.items()}
    plan.host_total_gib = sum(plan.host_per_node_gib.values())
    plan.host_fits = plan.host_total_gib <= inputs.host_mem_gib
    return plan


def epoch_minutes(shape: ModelShape, rows: int, gpus: int, mfu: float, peak: float, tokens_per_row: int,
                  live_reference: bool) -> float:
    """Compute-bound time of one epoch at `mfu` of `peak` per GPU (a projection: the MFU is an input)."""
    sequence = tokens_per_row // 2
    per_row = shape.training_flops([sequence, sequence], [sequence, sequence] if live_reference else [])
    return rows * per_row / (gpus * mfu * peak) / 60


def plan(config: RunConfig, arch: Architecture, gpu_counts: list[int], base: Inputs, rows: list[int], mfu: float,
         peak: float, tokens_per_row: int) -> list[GpuPlan]:
    plans = []
    for gpus in gpu_counts:
        if gpus <= 0:
            raise PlanError(f"--gpus {gpus}: GPU counts must be positive")
        result = plan_one(config, arch, Inputs(**{**asdict(base), "gpus": gpus}))
        result.epoch_minutes = {str(n): epoch_minutes(arch.shape, n, gpus, mfu, peak, tokens_per_row,
                                                      config.train.reference != "precomputed") for n in rows}
        plans.append(result)
    return plans


def format_plan(plans: list[GpuPlan], arch: Architecture, config: RunConfig, inputs: Inputs, mfu: float,
                peak: float) -> str:
    params = arch.shape.parameters
    name = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.2f}M"
    train = config.train
    head = (f"model: {name} parameters ({params:,}; architecture {arch.source}); "
            f"{'bf16' if inputs.dtype_bytes == 2 else 'fp32'}; micro-batch {train.micro_batch_size} pairs x 2 "
            f"sequences x {inputs.tokens_per_sequence} tokens; gradient checkpointing "
            f"{'on' if train.gradient_checkpointing else 'off'}; reference {train.reference}; optimizer offload "
            f"{'on' if train.optimizer_offload else 'off'}; {inputs.gpu_mem_gib:g} GiB per GPU, "
            f"{inputs.host_mem_gib:g} GiB per node of {inputs.gpus_per_node} GPUs")
    rows = list(plans[0].epoch_minutes) if plans else []
    header = ["GPUs", "ZeRO", "states GiB", "activations GiB", "logits GiB", "reference GiB", "total GiB",
              "headroom GiB", "fits", "largest micro-batch", "host GiB/node"] + [f"epoch min ({int(r):,} rows)"
                                                                                for r in rows]
    lines = [head, "", "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for p in plans:
        g = p.per_gpu_gib
        cells = [str(p.gpus), str(p.zero_stage), f"{g['policy model states']:.1f}", f"{g['activations']:.1f}",
                 f"{g['logits']:.1f}", f"{g['reference']:.1f}", f"{p.total_gib:.1f}", f"{p.headroom_gib:+.1f}",
                 "yes" if p.fits and p.host_fits else ("no (host)" if p.fits else "no"),
                 str(p.largest_micro_batch) if p.largest_micro_batch else "none",
                 f"{p.host_total_gib:.0f}"] + [f"{p.epoch_minutes[r]:.1f}" for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"epoch times are a projection: model FLOPs (6N per trained token, 2N per live-reference token, "
              f"attention) at {mfu:.0%} MFU of {peak / 1e12:.0f} TFLOP/s per GPU, {TOKENS_PER_ROW} tokens a row "
              "unless --tokens-per-row; states from DeepSpeed's estimators, activations and logits from our formulas "
              "(docs/planner.md)"]
    return "\n".join(lines)
