#!/usr/bin/env bash
# Trainer throughput at several node counts and model shapes: one Slurm job per (node count, shape) runs
# benchmarks/trainer_throughput.py, and a last job (afterany: it runs whatever failed) collects every result into one
# table. Run it (do not sbatch it) on a login node, from the repository root:
#   slurm/scaling_study.sh [--nodes "1 2 4"] [--shapes "256x4 512x8"] [--steps 20] [--out DIR] [-- BENCHMARK OPTIONS]
#   slurm/scaling_study.sh --collect DIR          (the table again from DIR's JSON files; submits nothing)
# A shape is <hidden size>x<layers>. Options after `--` go to every benchmark run (e.g. -- --variants cst,cst-zero0).
# Output: one line per job, "<nodes>n-<shape> <job id>", then "collect <job id>"; results in DIR (default
# benchmarks/results/scaling-<date>): <nodes>n-<shape>.json (the benchmark's JSON plus a `slurm` section: job id,
# nodes, CPUs, GPUs) and scaling.md / scaling.json (one row per run and variant).
# Today's benchmark trains in one process on the first node of its job: the node counts are the plumbing that a
# multi-node benchmark plugs into, and the table says what each job was given.
# Settings (environment): CST_SBATCH_ARGS (extra sbatch options for every job), CST_LOG_DIR (logs, default logs).
# The #SBATCH block below applies to every benchmark job (this script submits itself with --run; --nodes per job).
#
#SBATCH --job-name=cst-scaling
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=01:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
if [[ -z "${SLURM_JOB_ID:-}" ]]; then  # on the login node: the checkout is where this file is
  CST_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  export CST_REPO
fi
common="${CST_REPO:-${SLURM_SUBMIT_DIR:-.}}/slurm/_common.sh"
[[ -f $common ]] || { echo "cst-slurm: $common not found: submit from the repository root or set CST_REPO" >&2; exit 2; }
source "$common"

# collect DIR: every <nodes>n-<shape>.json of DIR -> DIR/scaling.md and DIR/scaling.json
collect() {
  "$PYTHON" - "$1" <<'PY'
import json
import sys
from pathlib import Path

folder = Path(sys.argv[1])
rows, missing = [], []
for path in sorted(folder.glob("*n-*x*.json")):
    result = json.loads(path.read_text())
    slurm, model = result.get("slurm", {}), result["model"]
    for row in result["table"]:
        rows.append({
            "nodes": slurm.get("nodes"), "shape": f"{model['hidden_size']}x{model['layers']}",
            "parameters": model["parameters"], "variant": row["variant"],
            "real_tokens_per_s": row["real_tokens_per_s"], "median_step_time_s": row["median_step_time_s"],
            "padding_share": row["padding_share"], "cpus_per_task": slurm.get("cpus_per_task"),
            "gpus_per_node": slurm.get("gpus_per_node"), "job_id": slurm.get("job_id"), "file": path.name,
        })
for log in sorted(folder.glob("*.missing")):
    missing.append(log.stem)
rows.sort(key=lambda r: (r["parameters"], r["variant"], r["nodes"] or 0))
lines = ["| nodes | shape | parameters | variant | real tokens/s | median step s | padding % | CPUs | GPUs/node | job |",
         "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    lines.append(f"| {r['nodes']} | {r['shape']} | {r['parameters']:,} | {r['variant']} | {r['real_tokens_per_s']:,.0f} "
                 f"| {r['median_step_time_s']:.3f} | {100 * r['padding_share']:.1f} | {r['cpus_per_task']} "
                 f"| {r['gpus_per_node']} | {r['job_id']} |")
table = "\n".join(lines)
if missing:
    table += "\n\nNo result (see the job logs): " + ", ".join(missing)
(folder / "scaling.md").write_text(table + "\n")
(folder / "scaling.json").write_text(json.dumps({"rows": rows, "missing": missing}, indent=2) + "\n")
print(table)
print(f"{len(rows)} rows from {folder}; table in {folder / 'scaling.md'}", file=sys.stderr)
PY
}

# run JSON [BENCHMARK OPTIONS]: inside a job: the benchmark on this node, then what Slurm gave the job into its JSON
run_benchmark() {
  local out=$1 rc=0
  shift
  log "benchmark on $SLURM_JOB_NUM_NODES node(s) ($SLURM_JOB_NODELIST): $*"
  "$PYTHON" "$CST_REPO/benchmarks/trainer_throughput.py" --threads "${SLURM_CPUS_PER_TASK:-2}" --out "$out" "$@" \
    || rc=$?
  if (( rc != 0 )); then
    echo "exit $rc, job $SLURM_JOB_ID" > "${out%.json}.missing"
    die "benchmark failed (exit $rc)" "$rc"
  fi
  "$PYTHON" - "$out" <<'PY'
import json
import os
import sys
from pathlib import Path

path = Path(sys.argv[1])
result = json.loads(path.read_text())
gpus = os.environ.get("SLURM_GPUS_ON_NODE", "0")
result["slurm"] = {"job_id": os.environ["SLURM_JOB_ID"], "nodes": int(os.environ["SLURM_JOB_NUM_NODES"]),
                   "nodelist": os.environ["SLURM_JOB_NODELIST"], "cpus_per_task": os.environ.get("SLURM_CPUS_PER_TASK"),
                   "gpus_per_node": int(gpus) if gpus.isdigit() else gpus}
path.write_text(json.dumps(result, indent=2, default=str) + "\n")
PY
  log "wrote $out"
}

case "${1:-}" in
  --collect) [[ $# -eq 2 ]] || die "usage: $0 --collect DIR" 2; collect "$2"; exit 0 ;;
  --run) shift; require_job scaling_study.sh; run_benchmark "$@"; exit 0 ;;
esac
require_slurm

NODES="1 2 4"
SHAPES="256x4 512x8"
STEPS=20
OUT=$CST_REPO/benchmarks/results/scaling-$(date +%Y%m%d-%H%M%S)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --shapes) SHAPES=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see the header of $0)" 2 ;;
  esac
done
mkdir -p "$OUT" "$CST_LOG_DIR"
OUT=$(cd "$OUT" && pwd)
JOBS=()
for shape in $SHAPES; do
  [[ "$shape" =~ ^([0-9]+)x([0-9]+)$ ]] || die "shape '$shape' is not <hidden size>x<layers>" 2
  for nodes in $NODES; do
    name=${nodes}n-$shape
    # word splitting of CST_SBATCH_ARGS is intended
    # shellcheck disable=SC2206
    options=(--parsable --nodes="$nodes" --job-name="cst-scaling-$name" --output="$CST_LOG_DIR/%x-%j.out"
             ${CST_SBATCH_ARGS:-})
    job=$(sbatch "${options[@]}" "$CST_REPO/slurm/scaling_study.sh" --run "$OUT/$name.json" \
      --steps "$STEPS" --hidden-size "${BASH_REMATCH[1]}" --layers "${BASH_REMATCH[2]}" "$@")
    JOBS+=("${job%%;*}")
    echo "$name ${job%%;*}"
  done
done
# shellcheck disable=SC2206
job=$(sbatch --parsable --nodes=1 --ntasks=1 --job-name=cst-scaling-collect --output="$CST_LOG_DIR/%x-%j.out" \
  ${CST_SBATCH_ARGS:-} --dependency="afterany:$(IFS=:; echo "${JOBS[*]}")" \
  --wrap="\"$CST_REPO/slurm/scaling_study.sh\" --collect \"$OUT\"")
echo "collect ${job%%;*}"
log "results and table in $OUT"
