"""The `eval` section: judge, general benchmarks, models to score, protocol, sections beyond the paper."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from cst_dist.config.base import StrictModel
from cst_dist.config.stages import ModelConfig, SamplingConfig
from cst_dist.prompts import SAFE_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT


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


# Sections of `cst eval` beyond the paper's two numbers (docs/beyond-the-paper.md), in the order they run.
EVAL_SECTIONS = ("overrefusal", "overrides", "switch", "wordings", "adherence")


class OverRefusalConfig(StrictModel):
    """`eval.overrefusal`: XSTest's safe-but-scary and unsafe contrast prompts under every configuration, each
    answer labelled full compliance / full refusal / partial refusal."""

    path: str | None = Field(
        None, description="A CSV in XSTest's layout (id, prompt, type, label); default: the vendored XSTest v2."
    )
    per_type: int | None = Field(
        None, gt=0, description="Keep N prompts of each type (a seeded sample, stratified by type); null: all 450."
    )
    system_prompts: list[str | None] = Field(
        default_factory=lambda: [SAFE_SYSTEM_PROMPT, UNCENSORED_SYSTEM_PROMPT, UNCENSORED_EVAL_SYSTEM_PROMPT, None],
        description="Configurations to answer under (null: no system prompt).",
    )


class OverridesConfig(StrictModel):
    """`eval.overrides`: held-out harmful prompts under s1, wrapped in user-turn override attempts."""

    templates: str | None = Field(
        None, description="JSONL of {id, description, template with {prompt}}; default: the vendored set."
    )
    max_prompts: int | None = Field(None, gt=0, description="Use the first N held-out test prompts.")


class SwitchConfig(StrictModel):
    """`eval.switch`: two-turn conversations whose configuration changes before the second turn."""

    form: Literal["auto", "second_system", "new_system", "both"] = Field(
        "auto", description="second_system: a second system message before turn 2; new_system: the new system "
        "prompt replaces the first, earlier turns kept; auto: second_system where the chat template renders it, "
        "else new_system; both: each form (second_system must be renderable)."
    )
    max_prompts: int | None = Field(None, gt=0, description="Use the first N held-out test prompts as turn 2.")


class WordingsConfig(StrictModel):
    """`eval.wordings`: S1 and S0 under paraphrased safe and uncensored system prompts never seen in training."""

    path: str | None = Field(
        None, description="JSONL of {id, condition: S1 | S0, system}; default: the vendored 8 + 8 paraphrases."
    )
    max_prompts: int | None = Field(None, gt=0, description="Use the first N held-out test prompts.")


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
    sections: list[str] = Field(
        default_factory=list, description=f"Sections beyond the paper ({', '.join(EVAL_SECTIONS)}); empty: the "
        "paper's protocol only. Run at each model's latest step."
    )
    overrefusal: OverRefusalConfig = Field(default_factory=OverRefusalConfig)
    overrides: OverridesConfig = Field(default_factory=OverridesConfig)
    switch: SwitchConfig = Field(default_factory=SwitchConfig)
    wordings: WordingsConfig = Field(default_factory=WordingsConfig)
    refusal_judge: Literal["rules", "judge"] = Field(
        "rules", description="Who labels over-refusal answers: rules (offline string rules), judge (eval.judge's "
        "llm or http model with the refusal template)."
    )

    @field_validator("sections")
    @classmethod
    def _known_sections(cls, sections: list[str]) -> list[str]:
        unknown = [name for name in sections if name not in EVAL_SECTIONS]
        if unknown:
            raise ValueError(f"unknown section {unknown[0]!r} (known: {', '.join(EVAL_SECTIONS)})")
        if len(set(sections)) != len(sections):
            raise ValueError("a section is named twice")
        return sections
    output: str | None = Field(None, description="Default: <run_dir>/eval.")
