"""`cst <stage> CONFIG [key=value ...]`: a thin layer that loads the config and calls one stage."""

from __future__ import annotations

import argparse
import logging
import sys

from cst_dist.config import ConfigError, load_config, save_resolved_config
from cst_dist.data.io import RecordError

STAGES = {
    "build": "pairs (+ released set, extra tasks) -> preference set (CST doubling or plain DPO)",
}


def setup_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])


def run_build(config) -> None:
    from cst_dist.data.build import build_preference_set

    result = build_preference_set(config)
    print(f"preference set written to {result.output} ({result.manifest_path})")


RUNNERS = {"build": run_build}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cst", description="Configurable Safety Tuning at cluster scale")
    commands = parser.add_subparsers(dest="stage", required=True)
    for stage, help_text in STAGES.items():
        command = commands.add_parser(stage, help=help_text, description=help_text)
        command.add_argument("config", help="YAML file or preset name in configs/ (e.g. tiny-cpu)")
        command.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.beta=0.05 build.mode=dpo")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        config = load_config(args.config, args.overrides)
        save_resolved_config(config)
        RUNNERS[args.stage](config)
    except (ConfigError, RecordError, FileNotFoundError) as error:
        print(f"cst {args.stage}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
