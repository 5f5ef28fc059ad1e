"""Benchmark files and prompts, no model: each public layout read from JSONL and Parquet, prompts equal to
lm-evaluation-harness's format character for character (expected strings typed from its task templates), shots
chosen as the harness chooses them, one-line errors for malformed rows, unconfigured tasks listed as skipped."""

from __future__ import annotations

import logging
import random

import pytest

from cst_dist.config import BenchmarksConfig, BenchmarkTaskConfig
from cst_dist.evaluation.benchmarks import BenchmarkError
from cst_dist.evaluation.benchmarks.fewshot import build_prompts, render
from cst_dist.evaluation.benchmarks.run import load_suite
from cst_dist.evaluation.benchmarks.tasks import read_docs
from cst_dist.io import RecordError
from cst_dist.prompts import SAFE_SYSTEM_PROMPT
from tests.evaluation.benchmark_fixtures import (
    ARC_TEST,
    ARC_TRAIN,
    HELLASWAG_TRAIN,
    HELLASWAG_VAL,
    MMLU_DEV,
    MMLU_TEST,
    TRUTHFULQA,
    write_all,
    write_jsonl,
    write_parquet,
)

# TruthfulQA's QA preamble as the harness's truthfulqa_mc1.yaml writes it (typed here, not imported).
PREAMBLE = ("Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States "
            "is 78 years.\n\nQ: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was "
            "president of the United States in 1955.\n\nQ: Which party did he belong to?\nA: He belonged to the "
            "Republican Party.\n\nQ: What is the square root of banana?\nA: I have no comment.\n\nQ: How does a "
            "telescope work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer."
            "\n\nQ: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.")


def texts(task, docs, pool, shots, system=None, chat=False, seed=1234):
    return [render(prompt, system, chat) for prompt in build_prompts(task, docs, pool, shots, seed, "s")]


@pytest.mark.parametrize("layout", ["jsonl", "parquet"])
def test_every_layout_reads_the_same_documents(tmp_path, layout):
    write = write_jsonl if layout == "jsonl" else write_parquet
    docs = {task: read_docs(task, write(tmp_path / f"{task}.{layout}", rows)) for task, rows in (
        ("arc_challenge", ARC_TEST), ("hellaswag", HELLASWAG_VAL), ("mmlu", MMLU_TEST), ("truthfulqa_mc2", TRUTHFULQA))}
    arc = docs["arc_challenge"]
    assert [doc.gold for doc in arc] == [1, 0, 1, 2]  # B of A..D, 1 of 1..4, 2 of 1..3, C of A..D
    assert arc[2].choices == ("a ruler", "a balance", "a thermometer") and arc[1].row == 2
    assert arc[0].query == "Question: Which gas do plants take in to make food?\nAnswer:"
    assert [doc.gold for doc in docs["hellaswag"]] == [3, 3, 0]
    assert [(doc.subject, doc.gold) for doc in docs["mmlu"]] == [("elementary_mathematics", 1),
                                                                 ("college_medicine", 2), ("elementary_mathematics", 1)]
    assert docs["mmlu"][1].choices == ("A", "B", "C", "D")
    mc2 = docs["truthfulqa_mc2"]
    assert [doc.labels for doc in mc2] == [(1, 1, 0, 0), (1, 0, 0), (1, 0, 0, 1, 0)]
    assert mc2[1].choices == ("In San Francisco.", "In China.", "In Japan.")


def test_arc_prompt_is_the_harness_format(tmp_path):
    docs = read_docs("arc_challenge", write_jsonl(tmp_path / "test.jsonl", ARC_TEST))
    pool = read_docs("arc_challenge", write_jsonl(tmp_path / "train.jsonl", ARC_TRAIN[:1]))
    context, system = texts("arc_challenge", docs[1:2], pool, 1)[0]
    assert context == ("Question: What do bees make?\nAnswer: honey\n\n"
                       "Question: What happens to ice in a warm room?\nAnswer:") and system is None
    assert texts("arc_challenge", docs[3:], None, 0)[0][0] == (
        "Question: A student drops a ball. Which force pulls it down?\nAnswer:")


def test_random_shots_follow_the_harness_sampler(tmp_path):
    """ARC/HellaSwag: one random.Random(1234) per task, n documents drawn per question in file order (as the
    harness's ContextSampler does); from the evaluated file itself, a question never appears in its own shots."""
    docs = read_docs("arc_challenge", write_jsonl(tmp_path / "test.jsonl", ARC_TEST))
    pool = read_docs("arc_challenge", write_jsonl(tmp_path / "train.jsonl", ARC_TRAIN))
    rnd = random.Random(1234)
    expected = []
    for row in ARC_TEST:
        shots = rnd.sample(ARC_TRAIN, 2)
        answer = [s["choices"]["text"][s["choices"]["label"].index(s["answerKey"])] for s in shots]
        expected.append(f"Question: {shots[0]['question']}\nAnswer: {answer[0]}\n\n"
                        f"Question: {shots[1]['question']}\nAnswer: {answer[1]}\n\n"
                        f"Question: {row['question']}\nAnswer:")
    assert [context for context, _ in texts("arc_challenge", docs, pool, 2)] == expected
    assert [context for context, _ in texts("arc_challenge", docs, pool, 2, seed=7)] != expected
    own = texts("arc_challenge", docs, docs, 3)  # the evaluated file as its own shot pool: 3 others each time
    for (context, _), row in zip(own, ARC_TEST, strict=True):
        assert context.count("Question:") == 4 and context.count(row["question"]) == 1


def test_hellaswag_preprocessing_and_prompt(tmp_path):
    docs = read_docs("hellaswag", write_jsonl(tmp_path / "val.jsonl", HELLASWAG_VAL))
    pool = read_docs("hellaswag", write_parquet(tmp_path / "train.parquet", HELLASWAG_TRAIN))
    assert texts("hellaswag", docs[:1], pool, 1)[0][0] == (
        "Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman "
        "wearing winter clothes smiles. Then , the man continues removing the snow on his car.\n\n"
        "Roof shingle removal: A man is sitting on a roof. He")
    # [title] -> ". ", other [markup] removed, double spaces -> one (once), ctx_b capitalized (here empty).
    assert docs[2].query == "Home and Garden: How to clean a grill. Heat the grill. Scrape the grates."
    assert docs[2].choices == (" Use a brush. Wear gloves.", "Eat the grill.", "Paint the grill.", "Sell it.")
    assert docs[1].query == ("Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. "
                             "The lady")


def test_mmlu_prompt_takes_the_first_dev_questions_of_the_subject(tmp_path):
    docs = read_docs("mmlu", write_parquet(tmp_path / "test.parquet", MMLU_TEST))
    dev = read_docs("mmlu", write_jsonl(tmp_path / "dev.jsonl", MMLU_DEV))
    rendered = texts("mmlu", docs, dev, 2)
    assert rendered[0] == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "What is 1 + 1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "What is 3 x 3?\nA. 6\nB. 9\nC. 12\nD. 33\nAnswer: B\n\n"
        "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:", None)
    assert rendered[1][0] == (
        "The following are multiple choice questions (with answers) about college medicine.\n\n"
        "Which organ filters blood?\nA. kidney\nB. heart\nC. skin\nD. bone\nAnswer: A\n\n"
        "Which cells carry oxygen?\nA. neurons\nB. platelets\nC. white cells\nD. red cells\nAnswer: D\n\n"
        "Which organ pumps blood?\nA. lung\nB. liver\nC. heart\nD. kidney\nAnswer:")
    with pytest.raises(BenchmarkError, match="2 questions of subject 'college_medicine'"):
        build_prompts("mmlu", docs, dev, 3, 1234, "eval.benchmarks.mmlu")


def test_truthfulqa_prompt_holds_the_qa_preamble(tmp_path):
    docs = read_docs("truthfulqa_mc2", write_jsonl(tmp_path / "tqa.jsonl", TRUTHFULQA))
    assert texts("truthfulqa_mc2", docs, None, 0)[0][0] == (
        PREAMBLE + "\n\nQ: What happens if you eat watermelon seeds?\nA:")
    with pytest.raises(BenchmarkError, match="fixed 6-shot QA preamble"):
        build_prompts("truthfulqa_mc2", docs, docs, 1, 1234, "eval.benchmarks.truthfulqa_mc2")


def test_the_original_truthfulqa_and_ai2_layouts(tmp_path):
    """mc_task.json's {answer: label} mapping and AI2's own ARC JSONL (question.stem, question.choices)."""
    [tqa] = read_docs("truthfulqa_mc2", write_jsonl(tmp_path / "mc_task.jsonl", [
        {"question": "Q?", "mc2_targets": {"Yes.": 1, "No.": 0, "Maybe.": 1}}]))
    assert tqa.choices == ("Yes.", "No.", "Maybe.") and tqa.labels == (1, 0, 1)
    [arc] = read_docs("arc_challenge", write_jsonl(tmp_path / "ai2.jsonl", [
        {"id": "x", "question": {"stem": "Why?", "choices": [{"text": "a", "label": "1"}, {"text": "b", "label": 2}]},
         "answerKey": "2"}]))
    assert (arc.query, arc.choices, arc.gold) == ("Question: Why?\nAnswer:", ("a", "b"), 1)


def test_system_prompt_and_chat_template_measurements(tmp_path):
    """Plain text: the system prompt before the description, joined by a blank line (lm_eval --system_instruction;
    a task without a description gets it straight before the first question, as there). Chat template: the system
    turn holds both, the user turn the shots and the question, choices are scored without the leading space."""
    mmlu = read_docs("mmlu", write_jsonl(tmp_path / "test.jsonl", MMLU_TEST[:1]))
    dev = read_docs("mmlu", write_jsonl(tmp_path / "dev.jsonl", MMLU_DEV))
    description = "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
    shots = "What is 1 + 1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
    query = "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:"
    assert texts("mmlu", mmlu, dev, 1, SAFE_SYSTEM_PROMPT)[0] == (
        SAFE_SYSTEM_PROMPT + "\n\n" + description + shots + query, None)
    assert texts("mmlu", mmlu, dev, 1, SAFE_SYSTEM_PROMPT, chat=True)[0] == (
        shots + query, SAFE_SYSTEM_PROMPT + "\n\n" + description)
    assert texts("mmlu", mmlu, dev, 1, None, chat=True)[0] == (shots + query, description)
    arc = read_docs("arc_challenge", write_jsonl(tmp_path / "arc.jsonl", ARC_TEST[:1]))
    assert texts("arc_challenge", arc, None, 0, SAFE_SYSTEM_PROMPT)[0][0] == (
        SAFE_SYSTEM_PROMPT + "Question: Which gas do plants take in to make food?\nAnswer:")
    files = write_all(tmp_path / "all")
    config = BenchmarksConfig(mmlu=BenchmarkTaskConfig(path=str(files["mmlu"]["path"]), num_fewshot=0),
                              system_prompts=[None, SAFE_SYSTEM_PROMPT], chat_template=True)
    items = load_suite(config).items()
    assert [item.id for item in items[:2]] == ["mmlu-000000-p0", "mmlu-000000-p1"]
    assert items[1].continuations == ("A", "B", "C", "D") and items[1].chat and items[1].system.startswith(
        SAFE_SYSTEM_PROMPT + "\n\nThe following are")


def test_unconfigured_tasks_are_skipped_and_listed(tmp_path, caplog):
    files = write_all(tmp_path)
    config = BenchmarksConfig(mmlu=BenchmarkTaskConfig(**{k: str(v) for k, v in files["mmlu"].items()}, num_fewshot=2),
                              truthfulqa_mc2=BenchmarkTaskConfig(path=str(files["truthfulqa_mc2"]["path"]), limit=2))
    with caplog.at_level(logging.INFO, logger="cst_dist.evaluation.benchmarks.run"):
        suite = load_suite(config)
    assert [(t.task, len(t.docs), t.num_fewshot) for t in suite.tasks] == [("mmlu", 3, 2), ("truthfulqa_mc2", 2, 0)]
    assert suite.skipped == [{"task": "arc_challenge", "reason": "no eval.benchmarks.arc_challenge.path"},
                             {"task": "hellaswag", "reason": "no eval.benchmarks.hellaswag.path"}]
    assert "arc_challenge (no eval.benchmarks.arc_challenge.path)" in caplog.text
    assert len(suite.items()) == 5


def test_shots_without_a_file_name_the_setting(tmp_path):
    files = write_all(tmp_path)
    config = BenchmarksConfig(arc_challenge=BenchmarkTaskConfig(path=str(files["arc_challenge"]["path"])))
    with pytest.raises(BenchmarkError, match=r"eval.benchmarks.arc_challenge.num_fewshot=25 needs "
                                             r"eval.benchmarks.arc_challenge.fewshot_path \(the train split\)"):
        load_suite(config)
    too_many = BenchmarksConfig(arc_challenge=BenchmarkTaskConfig(path=str(files["arc_challenge"]["path"]),
                                                                  fewshot_path=str(files["arc_challenge"]
                                                                                   ["fewshot_path"])))
    with pytest.raises(BenchmarkError, match="has only 3 documents"):
        load_suite(too_many)


@pytest.mark.parametrize(("task", "rows", "line", "field", "message"), [
    ("arc_challenge", ARC_TEST[:1] + [{k: v for k, v in ARC_TEST[1].items() if k != "answerKey"}], 2, "answerKey",
     "missing"),
    ("arc_challenge", [{**ARC_TEST[0], "answerKey": "E"}], 1, "answerKey", "'E' is not one of the choice labels"),
    ("hellaswag", HELLASWAG_VAL[:2] + [{**HELLASWAG_VAL[2], "label": "7"}], 3, "label", "answer index 0..3"),
    ("hellaswag", [{**HELLASWAG_VAL[0], "endings": "one ending"}], 1, "endings", "expected a list of texts"),
    ("mmlu", [MMLU_TEST[0], {**MMLU_TEST[1], "choices": ["a", "b", "c"]}], 2, "choices", "at least 4 entries"),
    ("mmlu", [{k: v for k, v in MMLU_TEST[0].items() if k != "subject"}], 1, "subject", "missing"),
    ("truthfulqa_mc2", [{**TRUTHFULQA[0], "mc2_targets": {"choices": ["a", "b"], "labels": [1]}}], 1,
     "mc2_targets.labels", "one 0/1 label per choice"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, task, rows, line, field, message):
    path = write_jsonl(tmp_path / f"{task}.jsonl", rows)
    with pytest.raises(RecordError) as error:
        read_docs(task, path)
    text = str(error.value)
    assert text.startswith(f"{path}, row {line}, field '{field}': ") and message in text and "\n" not in text


def test_a_line_that_is_not_json_and_a_bad_parquet_row(tmp_path):
    path = tmp_path / "arc.jsonl"
    path.write_text(write_jsonl(tmp_path / "ok.jsonl", ARC_TEST[:2]).read_text() + "{not json\n")
    with pytest.raises(RecordError, match=r"arc.jsonl, row 3: not valid JSON"):
        read_docs("arc_challenge", path)
    parquet = write_parquet(tmp_path / "mmlu.parquet", MMLU_TEST[:2] + [{**MMLU_TEST[2], "answer": 9}])
    with pytest.raises(RecordError, match=r"mmlu.parquet, row 3, field 'answer': expected an answer index 0..3"):
        read_docs("mmlu", parquet)


def test_a_malformed_file_stops_cst_eval_in_one_line_before_any_model_loads(tiny_model_config, tmp_path, capsys):
    from cst_dist.cli import main

    path = write_jsonl(tmp_path / "arc.jsonl", ARC_TEST[:2] + [{**ARC_TEST[2], "choices": {"text": ["a", "b"]}}])
    code = main(["eval", "tiny-cpu", f"run_dir={tmp_path / 'run'}", f"model.path={tiny_model_config.path}",
                 "eval.judge.kind=keyword", f"eval.benchmarks.arc_challenge.path={path}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [f"cst eval: error: {path}, row 3, field 'choices.label': missing"], lines
    assert not (tmp_path / "run" / "eval" / "base").exists()  # nothing was generated
