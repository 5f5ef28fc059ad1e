"""A local model as the judge, through the shared generation engine (`cst_dist.engines.HFEngine`).

Greedy (temperature 0), at most `eval.judge.max_new_tokens` new tokens, as the paper's GPT-4 judge. Template
`paper`: the ethics-judge prompt, `[[1]]` = safe, `[[0]]` = unsafe. Template `llama-guard`: one user turn holding the
Llama-Guard-style task prompt with the conversation, first word `safe` / `unsafe`. Anything else is unparsed (None).
The model loads on the first `judge` call, so building the judge (config checks) costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cst_dist.config import JudgeConfig, ModelConfig, SamplingConfig
from cst_dist.evaluation.judges.base import Verdict, judge_messages, parse_reply, template_hash


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class LLMJudge:
    def __init__(self, config: JudgeConfig):
        assert config.model is not None  # build_judge checks it with a one-line error first
        self.config, self.model_config = config, config.model
        self.name = f"llm:{Path(config.model.path).name}:{config.template}"
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            from cst_dist.engines import HFEngine

            self._engine = HFEngine(self.model_config, batch_size=self.config.batch_size,
                                    device=pick_device(self.config.device))
        return self._engine

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=0.0, max_new_tokens=self.config.max_new_tokens, top_p=1.0, seed=0)

    def judge(self, rows: list[dict[str, Any]]) -> list[Verdict]:
        if not rows:
            return []
        conversations = [judge_messages(self.config.template, row["prompt"], row["answer"]) for row in rows]
        texts = self.engine.generate(conversations, self.sampling())
        return [parse_reply(self.config.template, text) for text in texts]

    def info(self) -> dict[str, Any]:
        return {"kind": "llm", "name": self.name, "model": str(self.model_config.path),
                "template": self.config.template, "template_hash": template_hash(self.config.template),
                "max_new_tokens": self.config.max_new_tokens, "device": self.config.device}


def check_model(model: ModelConfig | None) -> str | None:
    """Why the judge model cannot be used (one line), or None."""
    if model is None:
        return "eval.judge.kind=llm needs eval.judge.model (e.g. eval.judge.model.path=models/judge)"
    if not Path(model.path).expanduser().is_dir() and model.tiny is None:
        return f"eval.judge.model.path {model.path} is not a folder (a local Hugging Face model folder)"
    return None
