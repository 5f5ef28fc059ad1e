"""Step metrics: summed on every rank, reduced once per optimizer step, logged on rank 0.

DPO steps log loss, rewards, log-probs and accuracies (`StepAccumulator`); SFT steps the token-mean loss only
(`SftStepAccumulator`); both the throughput and padding metrics. Names follow TRL/torchtune (`rewards/chosen`,
`rewards/margins`, ...) so dashboards carry over.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from cst_dist import prompts
from cst_dist.io import write_text_atomic
from cst_dist.run_layout import RunLayout
from cst_dist.training.distributed import all_reduce_sum

# Sums accumulated over the micro-batches of one step, in this order, reduced in a single collective.
SUM_KEYS = (
    "examples", "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected",
    "examples/s1", "rewards/accuracies/s1", "examples/s0", "rewards/accuracies/s0",
    "tokens/real", "tokens/slots", "stop_requested", "response_tokens", "flops",
)
# Per-example sums that become means over all ranks' examples.
MEAN_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected")
log = logging.getLogger(__name__)
SYSTEM_LABELS = prompts.TRAINING_PROMPT_LABELS


def read_metrics_lines(path: Path) -> list[tuple[str, dict]]:
    """(line, parsed row) of every complete line of a metrics.jsonl; torn or garbled lines are counted and dropped."""
    if not path.is_file():
        return []
    rows, dropped = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append((line, row))
        else:
            dropped += 1
    if dropped:
        log.warning("%s: dropped %d torn or unreadable line(s) (a killed run or a full disk); kept %d", path, dropped,
                    len(rows))
    return rows


class StepAccumulator:
    """The step's sums. Tensors are summed where they live (no host sync inside the micro-batch loop on a GPU); host
    numbers on the CPU; both meet once, in `reduce`."""

    def __init__(self):
        self.sums = torch.zeros(len(SUM_KEYS), dtype=torch.float64)
        self.device_sums: torch.Tensor | None = None

    def add(self, key: str, value: float | torch.Tensor) -> None:
        index = SUM_KEYS.index(key)
        if isinstance(value, torch.Tensor):
            if self.device_sums is None:
                self.device_sums = torch.zeros(len(SUM_KEYS), dtype=torch.float64, device=value.device)
            self.device_sums[index] += value.detach().to(self.device_sums.device, torch.float64)
        else:
            self.sums[index] += float(value)

    def add_batch(self, losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, systems) -> None:
        correct = (chosen_rewards > rejected_rewards).double()
        self.add("examples", len(losses))
        self.add("loss", losses.detach().double().sum())
        self.add("rewards/chosen", chosen_rewards.double().sum())
        self.add("rewards/rejected", rejected_rewards.double().sum())
        self.add("rewards/accuracies", correct.sum())
        self.add("logps/chosen", chosen_logps.detach().double().sum())
        self.add("logps/rejected", rejected_logps.detach().double().sum())
        for index, system in enumerate(systems):
            label = SYSTEM_LABELS.get(system)
            if label:
                self.add(f"examples/{label}", 1)
                self.add(f"rewards/accuracies/{label}", correct[index])

    def reduce(self) -> dict[str, float]:
        """All-reduce the sums and turn them into the step's metrics (means over the examples of all ranks)."""
        sums = self.sums.clone()
        if self.device_sums is not None:
            sums += self.device_sums.cpu()
        total = dict(zip(SUM_KEYS, all_reduce_sum(sums).tolist(), strict=True))
        metrics = self.objective_metrics(total)
        metrics["tokens/real"] = total["tokens/real"]
        metrics["flops"] = total["flops"]
        metrics["padding_ratio"] = 1.0 - total["tokens/real"] / max(total["tokens/slots"], 1.0)
        metrics["stop_requested"] = total["stop_requested"] > 0
        return metrics

    def objective_metrics(self, total: dict[str, float]) -> dict[str, float]:
        """DPO: loss, rewards and log-probs as means over the examples, accuracies per system prompt."""
        n = max(total["examples"], 1.0)
        metrics = {key: total[key] / n for key in MEAN_KEYS}
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        for label in ("s1", "s0"):
            count = total[f"examples/{label}"]
            if count:
                metrics[f"examples/{label}"] = count  # the mix behind the per-prompt accuracy
                metrics[f"rewards/accuracies/{label}"] = total[f"rewards/accuracies/{label}"] / count
        return metrics


class SftStepAccumulator(StepAccumulator):
    """SFT steps: the responses' summed negative log-likelihood and their token count; the loss is their ratio over
    all micro-batches and ranks (a token mean, as the gradient is), and there are no rewards."""

    def add_sft_batch(self, sequence_logps: torch.Tensor, token_counts: torch.Tensor) -> None:
        self.add("examples", len(sequence_logps))
        self.add("loss", -sequence_logps.detach().double().sum())
        self.add("response_tokens", token_counts.sum())

    def objective_metrics(self, total: dict[str, float]) -> dict[str, float]:
        return {"loss": total["loss"] / max(total["response_tokens"], 1.0)}


class MetricsWriter:
    """metrics.jsonl + TensorBoard, rank 0 only. On resume, lines past the resumed step are dropped, so the file
    reads as one uninterrupted run; a torn line (kill -9, full disk) is dropped with a warning, never fatal."""

    def __init__(self, layout: RunLayout, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = layout.metrics
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line, row in read_metrics_lines(self.path) if row["step"] <= resume_step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self.handle = open(self.path, "a")
        self.tensorboard = SummaryWriter(str(layout.tensorboard), purge_step=resume_step + 1)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps({"step": step, **metrics}) + "\n")
        self.handle.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.handle.close()
            self.tensorboard.close()
