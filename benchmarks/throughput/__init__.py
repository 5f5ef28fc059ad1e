"""The parts of `benchmarks/trainer_throughput.py` (the entry point), one job each: `variants` (what each variant
runs), `workload` (model and rows), `trl_peer` (TRL's DPOTrainer in a worker), `launch` (child processes, `cst train`
and its records), `memory` (the planner's prediction against the measured peak) and `report` (summaries, table)."""
