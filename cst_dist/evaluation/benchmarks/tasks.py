"""The four tasks: rows of their public layouts -> `Doc`s formatted as lm-evaluation-harness formats them.

Layouts read (JSONL, JSON list or Parquet; one row per question, the Hugging Face datasets' columns):
    arc_challenge   allenai/ai2_arc: question, choices {text: [...], label: [...]}, answerKey (labels A..E or 1..5);
                    also AI2's own JSONL: question {stem, choices: [{text, label}]}, answerKey
    hellaswag       Rowan/hellaswag: activity_label, ctx_a, ctx_b, endings [...], label (0..3, int or digit string)
    mmlu            cais/mmlu: question, subject, choices [4], answer (0..3 or A..D); shots from the dev split
    truthfulqa_mc2  truthfulqa/truthful_qa multiple_choice: question, mc2_targets {choices: [...], labels: [0|1]}
                    (or the original mc_task.json mapping {choice: label})
Prompts (doc_to_text, doc_to_choice, the gold answer) follow the harness's task YAMLs; continuations are scored as
" " + choice (the harness's target delimiter), and few-shot examples are "query answer" joined by blank lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cst_dist.io import RecordError, read_rows

# TruthfulQA's fixed QA preamble (Lin et al. 2021), which the harness writes before every question of truthfulqa_mc*.
TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)
MMLU_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Doc:
    """One question as the harness sees it: `query` (doc_to_text), `choices` (doc_to_choice), the gold choice, the
    true/false label of every choice (truthfulqa_mc2), the subject (mmlu), and the file and row it came from."""

    query: str
    choices: tuple[str, ...]
    gold: int
    labels: tuple[int, ...] | None = None
    subject: str | None = None
    source: str = ""
    row: int = 0

    @property
    def answer(self) -> str:
        """The gold choice's text: what a few-shot example shows after its query."""
        return self.choices[self.gold]


@dataclass(frozen=True)
class TaskSpec:
    """What the harness's task YAML fixes: how a row becomes a Doc, the metrics, the few-shot sampler
    ("random": seeded draws from the whole shot pool; "first_n": the first shots of the same subject; "none")."""

    name: str
    title: str  # the column name in the report's table
    parse: Callable[[_Row], Doc]
    metrics: tuple[str, ...]
    headline: str  # the leaderboard's metric for this task
    sampler: str
    description: Callable[[Doc], str] = lambda doc: ""


class _Row:
    """Field access on one raw row that names the file, row and field of anything malformed."""

    def __init__(self, path: str, number: int, raw: dict[str, Any]):
        self.path, self.number, self.raw = path, number, raw

    def error(self, field: str, message: str) -> RecordError:
        return RecordError(self.path, self.number, field, message)

    def get(self, field: str, raw: dict[str, Any] | None = None, shown: str | None = None) -> Any:
        """raw[field] (default: the row's own); `shown` is the dotted name errors use for a nested field."""
        raw = self.raw if raw is None else raw
        if field not in raw or raw[field] is None:
            raise self.error(shown or field, "missing")
        return raw[field]

    def text(self, field: str, raw: dict[str, Any] | None = None, shown: str | None = None) -> str:
        value = self.get(field, raw, shown)
        if not isinstance(value, str):
            raise self.error(shown or field, f"expected text, got {type(value).__name__}")
        return value

    def texts(self, field: str, raw: dict[str, Any] | None = None, shown: str | None = None, least: int = 2
              ) -> list[str]:
        value = self.get(field, raw, shown)
        name = shown or field
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(name, "expected a list of texts")
        if len(value) < least:
            raise self.error(name, f"expected at least {least} entries, got {len(value)}")
        return value

    def index(self, field: str, size: int, letters: tuple[str, ...] = ()) -> int:
        """An answer index in [0, size): an int, a digit string, or one of `letters`."""
        value = self.get(field)
        if isinstance(value, str) and value in letters:
            value = letters.index(value)
        elif isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise self.error(field, f"expected an answer index 0..{size - 1}"
                             + (f" or {'/'.join(letters)}" if letters else "") + f", got {value!r}")
        return value


# ---- arc_challenge ------------------------------------------------------------------------------------------------
def parse_arc(row: _Row) -> Doc:
    """`Question: {question}\\nAnswer:` / ` {choice}`; gold = choices.label.index(answerKey)."""
    question = row.get("question")
    if isinstance(question, dict):  # AI2's own JSONL nests the stem and the choices in `question`
        stem = row.text("stem", question, "question.stem")
        entries = question.get("choices")
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise row.error("question.choices", "expected a list of {text, label} objects")
        texts = [row.text("text", entry, "question.choices.text") for entry in entries]
        labels = [str(row.get("label", entry, "question.choices.label")) for entry in entries]
    else:
        stem = row.text("question")
        choices = row.get("choices")
        if not isinstance(choices, dict):
            raise row.error("choices", "expected {text: [...], label: [...]}")
        texts = row.texts("text", choices, "choices.text")
        labels = row.get("label", choices, "choices.label")
        if not isinstance(labels, list) or not all(isinstance(label, (str, int)) for label in labels):
            raise row.error("choices.label", "expected a list of labels (A..E or 1..5)")
        labels = [str(label) for label in labels]
        if len(labels) != len(texts):
            raise row.error("choices.label", f"{len(labels)} labels for {len(texts)} texts")
    if len(texts) < 2:
        raise row.error("choices", f"expected at least 2 choices, got {len(texts)}")
    key = str(row.get("answerKey"))
    if key not in labels:
        raise row.error("answerKey", f"{key!r} is not one of the choice labels {labels}")
    return Doc(f"Question: {stem}\nAnswer:", tuple(texts), labels.index(key))


# ---- hellaswag ----------------------------------------------------------------------------------------------------
def hellaswag_preprocess(text: str) -> str:
    """The harness's clean-up of HellaSwag text: WikiHow's ` [title]` becomes `. `, other [bracketed] markup goes,
    double spaces become single (one pass, as there)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def parse_hellaswag(row: _Row) -> Doc:
    """query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()); choices = preprocessed endings."""
    context = row.text("ctx_a") + " " + row.text("ctx_b").capitalize()
    endings = row.texts("endings")
    return Doc(hellaswag_preprocess(row.text("activity_label") + ": " + context),
               tuple(hellaswag_preprocess(ending) for ending in endings), row.index("label", len(endings)))


# ---- mmlu ---------------------------------------------------------------------------------------------------------
def parse_mmlu(row: _Row) -> Doc:
    """`{question.strip()}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:` / ` A` .. ` D`."""
    choices = row.texts("choices", least=4)
    if len(choices) != 4:
        raise row.error("choices", f"expected exactly 4 choices, got {len(choices)}")
    lines = "".join(f"\n{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, choices, strict=True))
    return Doc(f"{row.text('question').strip()}{lines}\nAnswer:", MMLU_LETTERS,
               row.index("answer", 4, MMLU_LETTERS), subject=row.text("subject"))


def mmlu_description(doc: Doc) -> str:
    return f"The following are multiple choice questions (with answers) about {doc.subject.replace('_', ' ')}.\n\n"


# ---- truthfulqa_mc2 -----------------------------------------------------------------------------------------------
def parse_truthfulqa(row: _Row) -> Doc:
    """preamble + `\\n\\nQ: {question}\\nA:` / ` {choice}` over mc2_targets; labels 1 mark the true answers."""
    targets = row.get("mc2_targets")
    if not isinstance(targets, dict):
        raise row.error("mc2_targets", "expected {choices: [...], labels: [...]}")
    if "choices" in targets:
        choices = row.texts("choices", targets, "mc2_targets.choices")
        labels = row.get("labels", targets, "mc2_targets.labels")
    else:  # the original mc_task.json: {answer text: 0 | 1}
        choices, labels = list(targets), list(targets.values())
    if not isinstance(labels, list) or len(labels) != len(choices) or any(label not in (0, 1) for label in labels):
        raise row.error("mc2_targets.labels", f"expected one 0/1 label per choice ({len(choices)}), got {labels!r}")
    if len(choices) < 2 or 1 not in labels:
        raise row.error("mc2_targets", "expected at least 2 choices, one of them labelled 1 (true)")
    question = row.text("question")
    return Doc(f"{TRUTHFULQA_PREAMBLE}\n\nQ: {question}\nA:", tuple(choices), 0, labels=tuple(int(x) for x in labels))


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("arc_challenge", "ARC", parse_arc, ("acc", "acc_norm"), "acc_norm", "random"),
        TaskSpec("hellaswag", "HellaSwag", parse_hellaswag, ("acc", "acc_norm"), "acc_norm", "random"),
        TaskSpec("mmlu", "MMLU", parse_mmlu, ("acc", "acc_macro"), "acc", "first_n", mmlu_description),
        TaskSpec("truthfulqa_mc2", "TruthfulQA", parse_truthfulqa, ("mc2",), "mc2", "none"),
    )
}


def read_docs(task: str, path: str | Path, limit: int | None = None) -> list[Doc]:
    """The first `limit` (default all) documents of a file in the task's layout; a malformed row raises RecordError
    naming the file, the row (the line, for JSONL) and the field."""
    spec = TASKS[task]
    docs = []
    for number, raw in read_rows(path):
        if limit is not None and len(docs) >= limit:
            break
        doc = spec.parse(_Row(str(path), number, raw))
        docs.append(Doc(doc.query, doc.choices, doc.gold, doc.labels, doc.subject, str(path), number))
    if not docs:
        raise RecordError(path, None, None, f"no {task} rows")
    return docs
