"""Judges: who decides whether an answer is safe. One interface (`Judge.judge(rows) -> verdicts`), four kinds:

    classifier  TF-IDF + logistic regression trained on the harmless pairs (offline default; measures its agreement)
    llm         a local model with the paper's ethics-judge prompt or a Llama-Guard-style preset
    http        an OpenAI-compatible endpoint (GPT-4 as in the paper, or a vLLM server), cached, retried
    keyword     refusal phrases: a baseline only (about 50% agreement with careful judges)

Verdicts: {"safe": True | False | None, "judge_raw": str}; None = unparsed, counted apart by the scorer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cst_dist.config import ConfigError, EvalConfig, JudgeConfig
from cst_dist.evaluation.judges.base import Judge, Verdict, parse_llama_guard, parse_paper

__all__ = ["Judge", "Verdict", "build_judge", "build_refusal_judge", "judge_info", "parse_llama_guard",
           "parse_paper"]


def _path(value: str | None, default: Path) -> Path:
    return Path(value).expanduser() if value else default


def build_judge(judge: JudgeConfig, *, workdir: Path, train_data: Path | None) -> Judge:
    """The judge `judge` describes. Settings are checked first (one-line ConfigError naming the key).

    workdir: the eval output folder; the classifier is saved at workdir/judge/classifier.json and the http cache
    kept at workdir/judge/cache.jsonl unless eval.judge.classifier_path / eval.judge.cache say otherwise.
    train_data: what the classifier learns from when eval.judge.train_data is unset (a `cst build` folder or the
    released JSON); None and no saved classifier is an error.
    """
    workdir = Path(workdir)
    check_settings(judge)
    if judge.kind == "keyword":
        from cst_dist.evaluation.judges.keyword import KeywordJudge

        return KeywordJudge()
    if judge.kind == "http":
        missing = [key for key in ("base_url", "model_name") if not getattr(judge, key)]
        if missing:
            raise ConfigError(f"eval.judge.kind=http needs eval.judge.{missing[0]} (e.g. "
                              + ("eval.judge.base_url=http://localhost:8000/v1)" if missing[0] == "base_url"
                                 else "eval.judge.model_name=gpt-4)"))
        from cst_dist.evaluation.judges.http import HttpJudge

        return HttpJudge(judge, _path(judge.cache, workdir / "judge" / "cache.jsonl"))
    if judge.kind == "llm":
        from cst_dist.evaluation.judges.llm import LLMJudge, check_model

        problem = check_model(judge.model)
        if problem:
            raise ConfigError(problem)
        return LLMJudge(judge)
    from cst_dist.evaluation.judges.classifier import load_or_train

    source = _path(judge.train_data, train_data) if judge.train_data or train_data else None
    return load_or_train(_path(judge.classifier_path, workdir / "judge" / "classifier.json"), source)


def build_refusal_judge(eval_cfg: EvalConfig, *, workdir: Path):
    """The over-refusal section's labeller (judges/refusal.py): the offline rules, or eval.judge's llm / http model
    asked with the refusal template (eval.refusal_judge=judge; its verdicts share the http judge's cache)."""
    from cst_dist.evaluation.judges.refusal import ModelRefusalJudge, RefusalRules

    if eval_cfg.refusal_judge == "rules":
        return RefusalRules()
    if eval_cfg.judge.kind not in ("llm", "http"):
        raise ConfigError(f"eval.refusal_judge=judge asks eval.judge's model with the refusal template, but "
                          f"eval.judge.kind={eval_cfg.judge.kind} has none; set eval.judge.kind=llm or http, or "
                          "eval.refusal_judge=rules")
    return ModelRefusalJudge(build_judge(eval_cfg.judge.model_copy(update={"template": "refusal"}), workdir=workdir,
                                         train_data=None))


# The settings each kind reads; any other setting away from its default would do nothing, silently.
KIND_SETTINGS = {
    "classifier": {"classifier_path", "train_data"},
    "llm": {"model", "template", "max_new_tokens", "batch_size", "device"},
    "http": {"template", "max_new_tokens", "base_url", "model_name", "api_key_env", "concurrency", "timeout_s",
             "max_retries", "retry_backoff_s", "retry_budget_s", "cache"},
    "keyword": set(),
}


def check_settings(judge: JudgeConfig) -> None:
    """A setting the chosen kind does not read, set away from its default, is an error naming it."""
    defaults = JudgeConfig()
    ignored = [name for name in JudgeConfig.model_fields if name != "kind" and name not in KIND_SETTINGS[judge.kind]
               and getattr(judge, name) != getattr(defaults, name)]
    if ignored:
        users = sorted(kind for kind, names in KIND_SETTINGS.items() if ignored[0] in names)
        raise ConfigError(f"eval.judge.{ignored[0]} does nothing for eval.judge.kind={judge.kind} (it is read by "
                          f"kind={' or '.join(users)}); remove it or change the kind")


def judge_info(judge: Judge) -> dict[str, Any]:
    """What the report's "judge" entry holds: kind, name, and each kind's own facts (the classifier's held-out
    agreement, the http judge's requests and cache, ...)."""
    info = getattr(judge, "info", None)
    if callable(info):
        return info()
    return {"kind": judge.name.split(":", 1)[0], "name": judge.name}
