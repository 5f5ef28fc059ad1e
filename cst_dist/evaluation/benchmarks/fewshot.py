"""Few-shot prompts as lm-evaluation-harness builds them (plain text, or one chat turn under a chat template).

Plain text, the leaderboard's setting:
    [system prompt + "\n\n"] description + "".join(shot.query + " " + shot.answer + "\n\n") + query
and each choice is scored as the continuation " " + choice. Under a chat template (`lm_eval --apply_chat_template`,
few-shot not multi-turn) the system turn is the system prompt and the description joined by a blank line, the user
turn is the shots and the query, and choices are scored without the leading space.

Shots: ARC and HellaSwag draw `n` documents per question from the few-shot file with one `random.Random(seed)` per
task, question after question in file order (seed 1234, the harness's default, picks the harness's shots from the
same train split); MMLU takes the first `n` dev questions of the question's subject; TruthfulQA has none (its fixed
preamble is part of every query). When the shots come from the evaluated file itself, a question never shows itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cst_dist.evaluation.benchmarks import BenchmarkError
from cst_dist.evaluation.benchmarks.tasks import TASKS, Doc

FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Prompt:
    """One question's prompt before rendering: the task description, its shots (query, answer) and the query."""

    description: str
    shots: tuple[tuple[str, str], ...]
    query: str


def join_delimited(prefix: str | None, suffix: str, delimiter: str) -> str:
    """prefix + delimiter + suffix, without the delimiter when either side is empty or already has whitespace at
    the join (the harness's rule for the system prompt before the description)."""
    if not prefix:
        return suffix
    if not suffix:
        return prefix
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else prefix + delimiter + suffix


def choose_shots(task: str, docs: list[Doc], pool: list[Doc] | None, num_fewshot: int, seed: int,
                 setting: str) -> list[list[Doc]]:
    """The shots of every question of `docs` (in order). `pool`: the few-shot file's documents (None: no file);
    `setting`: the config section named in errors (eval.benchmarks.<task>)."""
    if num_fewshot == 0:
        return [[] for _ in docs]
    sampler = TASKS[task].sampler
    if sampler == "none":
        raise BenchmarkError(f"{setting}.num_fewshot={num_fewshot}: {task} has no few-shot examples (its prompt "
                             "always holds the fixed 6-shot QA preamble, as in the harness); set it to 0")
    if pool is None:
        raise BenchmarkError(f"{setting}.num_fewshot={num_fewshot} needs {setting}.fewshot_path (the "
                             f"{'dev' if sampler == 'first_n' else 'train'} split), or set num_fewshot=0")
    if sampler == "first_n":
        by_subject: dict[str | None, list[Doc]] = {}
        for shot in pool:
            by_subject.setdefault(shot.subject, []).append(shot)
        return [_first_n(doc, by_subject.get(doc.subject, []), num_fewshot, pool[0].source, setting) for doc in docs]
    rnd = random.Random(seed)
    in_pool = {_key(shot) for shot in pool}
    shots = []
    for doc in docs:
        own = _key(doc) in in_pool  # shots drawn from the evaluated file: draw one more, leave the question out
        if len(pool) < num_fewshot + own:
            raise BenchmarkError(f"{setting}.num_fewshot={num_fewshot} but {pool[0].source} has only {len(pool)} "
                                 "documents to draw shots from")
        drawn = rnd.sample(pool, num_fewshot + own)
        shots.append([shot for shot in drawn if _key(shot) != _key(doc)][:num_fewshot])
    return shots


def _key(doc: Doc) -> tuple[str, int]:
    return doc.source, doc.row


def _first_n(doc: Doc, subject_pool: list[Doc], num_fewshot: int, source: str, setting: str) -> list[Doc]:
    shots = [shot for shot in subject_pool[: num_fewshot + 1] if _key(shot) != _key(doc)][:num_fewshot]
    if len(shots) < num_fewshot:
        raise BenchmarkError(f"{setting}.num_fewshot={num_fewshot} but {source} has {len(subject_pool)} questions "
                             f"of subject {doc.subject!r} (row {doc.row} of {doc.source})")
    return shots


def build_prompts(task: str, docs: list[Doc], pool: list[Doc] | None, num_fewshot: int, seed: int,
                  setting: str) -> list[Prompt]:
    description = TASKS[task].description
    return [Prompt(description(doc), tuple((shot.query, shot.answer) for shot in shots), doc.query)
            for doc, shots in zip(docs, choose_shots(task, docs, pool, num_fewshot, seed, setting), strict=True)]


def render(prompt: Prompt, system: str | None, chat: bool) -> tuple[str, str | None]:
    """(context, system turn): plain text holds everything in the context (system turn None); under a chat
    template the context is the user turn and the system turn holds the system prompt and the description."""
    head = join_delimited(system, prompt.description, FEWSHOT_DELIMITER)
    body = "".join(query + TARGET_DELIMITER + answer + FEWSHOT_DELIMITER for query, answer in prompt.shots)
    body += prompt.query
    if chat:
        return body, head or None
    return head + body, None


def continuations(doc: Doc, chat: bool) -> tuple[str, ...]:
    """The scored continuations: " " + choice in plain text; the bare choice after a chat template's
    generation prompt (the harness drops the target delimiter there)."""
    return tuple(choice if chat else TARGET_DELIMITER + choice for choice in doc.choices)
