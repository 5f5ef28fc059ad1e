"""The workload every variant shares (parent process): the model folder and the preference rows, written for both
sides from one tokenization (`cst_dist.chat.ChatEncoder`, the encoder every stage of the package uses)."""

from __future__ import annotations

import json
from pathlib import Path

REFUSAL = "I'm sorry, but I can't help with that. It could cause real harm, and I won't assist with it."


def build_model(args, work: Path) -> dict:
    """`--model DIR` as it is (a local HF folder: its weights, tokenizer and chat template), else a random tiny Llama
    built offline from --hidden-size/--layers/... with a BPE trained on the released set."""
    from cst_dist.config import ModelConfig, TinyModelConfig
    from cst_dist.flops import model_shape
    from cst_dist.models import ensure_model, load_model_config

    if args.model:
        path = Path(args.model).resolve()
        ensure_model(ModelConfig(path=str(path)))  # a clear error if the folder is not a model
        kind = "pretrained"
    else:
        corpus = [args.released] if Path(args.released).is_file() else []
        tiny = TinyModelConfig(
            vocab_size=args.vocab_size, tokenizer_corpus=corpus,
            hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size or 2 * args.hidden_size,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads,
            max_position_embeddings=max(1024, args.max_length),
        )
        path = work / "model"
        ensure_model(ModelConfig(path=str(path), tiny=tiny))
        kind = "random"
    config = json.loads((path / "config.json").read_text())
    # Counted on the meta device from the folder's own config (vocabulary, tied embeddings): cst_dist.flops.
    shape = model_shape(load_model_config(ModelConfig(path=str(path))))
    return {
        "path": str(path), "kind": kind, "name": config.get("_model_name_or_path") or path.name,
        "parameters": shape.parameters, "matmul_parameters": shape.matmul_parameters,
        "lm_head_share_of_matmul_flops": shape.vocab_size * shape.hidden_size / shape.matmul_parameters,
        "tied_embeddings": shape.matmul_parameters == shape.parameters,
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"], "layers": config["num_hidden_layers"],
        "heads": config["num_attention_heads"], "kv_heads": config.get("num_key_value_heads"),
        "vocab_size": config["vocab_size"], "dtype": "float32" if args.device == "cpu" else "bfloat16",
        "attention": "cst: auto (varlen for packed batches); TRL: sdpa",
    }


def build_rows(args, work: Path, model_path: str) -> dict:
    """Build the CST preference set with the package, sample the benchmark's rows, write them for both sides."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cst_dist.build.run import build_preference_set, write_preference_set
    from cst_dist.chat import ChatEncoder
    from cst_dist.config import DataConfig, ModelConfig, RunConfig
    from cst_dist.data.schemas import PREFERENCE_FIELDS
    from cst_dist.models import load_tokenizer

    released = Path(args.released)
    config = RunConfig(run_dir=str(work / "build"), model=ModelConfig(path=model_path))
    config.build.eval_fraction = 0.0
    config.build.mode = "cst"
    config.build.output = str(work / "preference_full")
    if released.is_file():
        config.build.released = str(released)
        source = {"kind": "released", "path": str(released),
                  "note": "the paper's released multitask set (vicgalle/configurable-system-prompt-multitask)"}
    else:
        from cst_dist.data.advbench import load_advbench

        pairs_file = work / "advbench_pairs.jsonl"
        with open(pairs_file, "w", encoding="utf-8") as handle:
            for index, row in enumerate(load_advbench()):
                pair = {"id": f"advbench-{index}", "prompt": row["goal"], "y0": row["target"], "y1": REFUSAL}
                handle.write(json.dumps(pair) + "\n")
        config.build.pairs = [str(pairs_file)]
        source = {"kind": "advbench-fallback", "path": str(pairs_file),
                  "note": f"{released} is absent: AdvBench pairs with y0 = target, y1 = a fixed refusal, CST-doubled"}
    result = build_preference_set(config)
    table = pq.read_table(result.output / "data" / "train-00000-of-00001.parquet")
    total = table.num_rows

    # One tokenization for both sides: the project's chat encoder renders the template and applies its BOS rule.
    # TRL 1.16 drops rows whose prompt alone fills max_length (it has no max_prompt_length to cut it); cst would cut
    # such a prompt to max_prompt_length and keep the row. Those rows are left out for both sides, so that both train
    # on exactly the same rows (with the tiny 512-token BPE they are the long persona system prompts).
    chat = ChatEncoder(load_tokenizer(ModelConfig(path=model_path)))
    encoded, candidates = [], []
    for index, row in enumerate(table.to_pylist()):
        messages = chat.messages(row["system"], row["prompt"])
        prompt_ids = chat.encode_conversation(messages)
        if len(prompt_ids) < args.max_length:
            candidates.append(index)
            encoded.append({"prompt_ids": prompt_ids,
                            "chosen_ids": chat.ids(chat.response_text(messages, row["chosen"])),
                            "rejected_ids": chat.ids(chat.response_text(messages, row["rejected"]))})
    wanted = min(args.rows, len(candidates))
    order = sorted(np.random.default_rng(args.seed).permutation(len(candidates))[:wanted])
    subset = table.take(pa.array([candidates[i] for i in order]))
    rows = subset.to_pylist()
    folder = write_preference_set(work / "preference", {"train": [{k: r[k] for k in PREFERENCE_FIELDS} for r in rows]},
                                  {"mode": "benchmark-sample", "seed": args.seed, "rows": len(rows)})

    # TRL gets the same ids (its own tokenization of text would add an EOS after ChatML's `<|im_end|>\n` and a second
    # BOS where the template writes one): the benchmark's `trl_peer` feeds them to DPOTrainer as they are.
    with open(work / "trl_rows.jsonl", "w", encoding="utf-8") as handle:
        for i in order:
            handle.write(json.dumps(encoded[i]) + "\n")
    assert set(PREFERENCE_FIELDS) <= set(subset.column_names)
    tasks: dict[str, int] = {}
    for row in rows:
        tasks[row["task"]] = tasks.get(row["task"], 0) + 1
    cut = DataConfig(max_length=args.max_length, max_prompt_length=args.max_prompt_length)
    return {**source, "set_rows": total, "rows_prompt_over_max_length": total - len(candidates),
            "benchmark_rows": wanted, "sample_seed": args.seed, "tasks": tasks,
            "heaviest_micro_batch": heaviest_micro_batch([encoded[i] for i in order], cut, args.micro_batch),
            "preference_dir": str(folder), "trl_rows": str(work / "trl_rows.jsonl")}


def heaviest_micro_batch(pairs: list[dict], cut, micro_batch: int) -> dict:
    """The largest micro-batch the sample can make (its `micro_batch` longest pairs, cut as cst cuts them): the shape
    that sets the activation peak, given to the memory planner. Tokens per sequence (chosen and rejected both carry
    the prompt) and the share of them whose logits are computed (positions predicting a response token)."""
    lengths = []
    for pair in pairs:
        prompt = min(len(pair["prompt_ids"]), cut.max_prompt_length)
        budget = cut.max_length - prompt
        responses = [min(len(pair[key]), budget) for key in ("chosen_ids", "rejected_ids")]
        lengths.append((2 * prompt + sum(responses), sum(responses)))
    top = sorted(lengths, reverse=True)[:micro_batch]
    tokens = sum(t for t, _ in top)
    sequences = 2 * len(top)
    return {"pairs": len(top), "tokens": tokens, "tokens_per_sequence": -(-tokens // max(sequences, 1)),
            "response_share": sum(r for _, r in top) / max(tokens, 1)}


def prepare_worker(spec: dict) -> dict:
    """The model, the rows and the first matrix-product peak, in a child process: the parent stays a small process,
    because Linux carries a parent's RSS at fork into each child's `ru_maxrss` (kept across exec), which would set a
    floor under every variant's measured peak memory."""
    import argparse

    from .launch import measure_peak

    args = argparse.Namespace(**spec["args"])
    work = Path(spec["work"])
    model = build_model(args, work)
    data = build_rows(args, work, model["path"])
    return {"model": model, "data": data, "peak": measure_peak(args.threads, args.device)}
