#!/usr/bin/env bash
# Shared helpers of the slurm/ scripts: sourced by them, never submitted or run on its own.
#   source "${CST_REPO:-$SLURM_SUBMIT_DIR}/slurm/_common.sh"
# A batch script runs from a copy in Slurm's spool folder, so the scripts find the repository through CST_REPO
# (set by slurm/pipeline.sh and slurm/scaling_study.sh) or the folder the job was submitted from.
# Environment it reads:
#   CST_LOG_DIR  where per-node logs go (default: logs, beside the job's own log in the #SBATCH --output default)
#   CST_REPO     the cst-dist checkout (default: $SLURM_SUBMIT_DIR, i.e. submit from the repository root)
#   CST_PYTHON   the Python that runs cst, torchrun and Ray (default: $CST_VENV/bin/python, else the checkout's
#                .venv/bin/python, else python3 on PATH); it is exported as PYTHON for the launchers
#   CST_VENV     a virtual environment to take bin/python from
set -euo pipefail

CST_REPO=${CST_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
if [[ ! -f "$CST_REPO/slurm/_common.sh" ]]; then
  echo "cst-slurm: $CST_REPO is not a cst-dist checkout: submit from the repository root or set CST_REPO" >&2
  exit 2
fi
export CST_REPO
CST_LOG_DIR=${CST_LOG_DIR:-logs}
export CST_LOG_DIR

# log MESSAGE...: one time-stamped line on stderr (the job's log), naming the job and the node
log() {
  printf '[cst-slurm %s job %s %s] %s\n' "$(date +%H:%M:%S)" "${SLURM_JOB_ID:--}" "${SLURMD_NODENAME:-$(hostname -s)}" \
    "$*" >&2
}

# die MESSAGE [EXIT CODE]: log the error and exit (default 1)
die() { log "ERROR: $1"; exit "${2:-1}"; }

# require_job SCRIPT: a batch script needs the allocation Slurm gives it (node list, job id)
require_job() {
  [[ -n "${SLURM_JOB_ID:-}" && -n "${SLURM_JOB_NODELIST:-}" ]] ||
    die "$1 runs inside a Slurm job: submit it with \`sbatch slurm/$1 ...\` from the repository root" 2
}

# require_slurm: the commands that submit jobs
require_slurm() { command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run this on a Slurm login node" 2; }

# The interpreter every stage runs under (exported: the launchers read PYTHON).
select_python() {
  if [[ -n "${CST_PYTHON:-}" ]]; then
    PYTHON=$CST_PYTHON
  elif [[ -n "${CST_VENV:-}" ]]; then
    PYTHON=$CST_VENV/bin/python
  elif [[ -x "$CST_REPO/.venv/bin/python" ]]; then
    PYTHON=$CST_REPO/.venv/bin/python
  else
    PYTHON=$(command -v python3 || true)
  fi
  [[ -n "$PYTHON" && -x "$PYTHON" ]] || die "no Python found (set CST_PYTHON or CST_VENV, or run 'make install')" 2
  export PYTHON
}
select_python

# job_port BASE: a port that differs between jobs (BASE + job id mod 10000), so jobs sharing a node do not collide
job_port() { echo $(( $1 + ${SLURM_JOB_ID:-0} % 10000 )); }

# node_names: the job's nodes, one per line, in Slurm's order (the first runs the batch script)
node_names() { scontrol show hostnames "$SLURM_JOB_NODELIST"; }

# node_ip NAME: the IPv4 address a node name resolves to (the name itself if it does not resolve)
node_ip() { getent ahostsv4 "$1" | awk 'NR == 1 {print $1; found = 1} END {exit !found}' || echo "$1"; }

# config_query CONFIG [overrides...] -- QUERY: what the run layout of CONFIG says. QUERY: run_dir, or
# complete:STAGE[,STAGE...] (true/false per stage, space-separated: the run layout's test for the stage's output).
config_query() {
  "$PYTHON" - "$@" <<'PY'
import sys

from cst_dist.config import load_config

args = sys.argv[1:]
split = args.index("--")
config, query = load_config(args[0], args[1:split]), args[split + 1]
if query == "run_dir":
    print(config.run_dir)
elif query.startswith("complete:"):
    print(" ".join(str(config.layout.stage_complete(stage)).lower() for stage in query[9:].split(",")))
else:
    raise SystemExit(f"config_query: unknown query {query!r}")
PY
}

# show_logs FILE...: copy into this log the error lines (at most 10) and the last lines (CST_LOG_TAIL, default 15) of
# each file: after a failure, the per-node logs' story is in the job's own log too
show_logs() {
  local file errors
  for file in "$@"; do
    [[ -f "$file" ]] || continue
    errors=$(grep -aiE 'error' "$file" | grep -avE '^[[:space:]]*(File |raise |return )' | head -n 10 || true)
    [[ -n "$errors" ]] && { log "errors in $file:"; echo "$errors" >&2; }
    log "last lines of $file:"
    tail -n "${CST_LOG_TAIL:-15}" "$file" >&2 || true
  done
}

# wait_step PID: wait for a background process (srun, a driver) while traps keep running; returns its exit status
wait_step() {
  local pid=$1 rc=0
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
  wait "$pid" || rc=$?
  return "$rc"
}

# ---- Ray across the job's nodes (generate.sbatch, eval.sbatch) ----------------------------------------------------
# The head runs on the first node, one worker on each other node, each as its own `srun` step holding the CPUs and
# GPUs Slurm gave that node; the driver (cst generate / cst eval, in the batch script) joins through RAY_ADDRESS.
# Ports derive from the job id; a random token (RAY_AUTH_TOKEN) per job keeps other jobs' drivers out.
RAY_STEP_PIDS=()

ray_up() {
  local nodes head head_ip port count
  mapfile -t nodes < <(node_names)
  count=${#nodes[@]}
  head=${nodes[0]}
  head_ip=$(node_ip "$head")
  port=$(job_port 20000)
  # no 30 s drain on SIGTERM (that is for Ray Serve on Kubernetes): ray_down stops the nodes at once
  export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0
  RAY_AUTH_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  export RAY_AUTH_TOKEN
  export RAY_ADDRESS="$head_ip:$port"
  export CST_RAY_PORT=$port
  # A temporary folder of this job's own on every node: `ray start --head` writes the cluster's address into
  # <temp dir>/ray_current_cluster, and in the shared /tmp/ray that would send every later `ray.init()` on the node
  # (other users' local Ray too) to this job's cluster after it is gone.
  export CST_RAY_TMP=${CST_RAY_TMP:-/tmp/cst-ray-$SLURM_JOB_ID}
  mkdir -p "$CST_LOG_DIR"
  log "starting Ray on $count node(s): head $head ($RAY_ADDRESS)"
  # Per node, evaluated there: its own IP, the CPUs and GPUs Slurm gave it. The ports Ray would otherwise fix (GCS
  # 6379, client server 10001, dashboard agent 52365) derive from the job id (and the node's id within the job), so
  # jobs sharing a node do not collide; every other Ray port is picked free at random.
  local start_node='
    set -euo pipefail
    ip=$(getent ahostsv4 "$SLURMD_NODENAME" | awk "NR == 1 {print \$1}"); ip=${ip:-$(hostname -i | cut -d" " -f1)}
    gpus=${SLURM_GPUS_ON_NODE:-0}; [[ "$gpus" =~ ^[0-9]+$ ]] || gpus=0
    common=(--node-ip-address="$ip" --num-cpus="${SLURM_CPUS_ON_NODE:-1}" --num-gpus="$gpus"
            --dashboard-agent-listen-port=$((40000 + SLURM_JOB_ID % 2000 * 10 + SLURM_NODEID % 10))
            --temp-dir="$CST_RAY_TMP" --disable-usage-stats --block)
    if [[ "$1" == head ]]; then
      role=(--head --port="$CST_RAY_PORT" --include-dashboard=false --ray-client-server-port=$((CST_RAY_PORT + 10000)))
    else
      role=(--address="$RAY_ADDRESS")
    fi
    # ray_down ends the node with SIGTERM (ray start then exits 1): that is a clean stop, not a failed task
    trap "stopped=1" TERM
    rc=0
    "$PYTHON" -m ray.scripts.scripts start "${role[@]}" "${common[@]}" || rc=$?
    # the Ray logs of this node go with it (CST_RAY_KEEP_TMP=1 keeps them)
    [[ "${CST_RAY_KEEP_TMP:-0}" == 1 ]] || rm -rf "$CST_RAY_TMP"
    [[ "${stopped:-0}" == 1 ]] && exit 0
    exit "$rc"'
  # Head and workers start together (a worker retries until the head answers); then wait for all of them.
  srun --overlap --nodes=1 --ntasks=1 --nodelist="$head" --job-name=cst-ray-head \
    --output="$CST_LOG_DIR/ray-%j-head.log" bash -c "$start_node" ray-node head &
  RAY_STEP_PIDS+=($!)
  if (( count > 1 )); then
    srun --overlap --nodes=$((count - 1)) --ntasks=$((count - 1)) --ntasks-per-node=1 --exclude="$head" \
      --job-name=cst-ray-workers --output="$CST_LOG_DIR/ray-%j-worker%n.log" bash -c "$start_node" ray-node worker &
    RAY_STEP_PIDS+=($!)
  fi
  ray_wait_nodes "$count"
}

# ray_wait_nodes N: block until N nodes are alive in the cluster at RAY_ADDRESS (CST_RAY_WAIT_S, default 180 s)
ray_wait_nodes() {
  local pid
  for pid in "${RAY_STEP_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { show_logs "$CST_LOG_DIR/ray-$SLURM_JOB_ID"-*.log; die "a Ray node step exited"; }
  done
  "$PYTHON" - "$1" "${CST_RAY_WAIT_S:-180}" <<'PY' \
    || { show_logs "$CST_LOG_DIR/ray-$SLURM_JOB_ID"-*.log; die "Ray did not come up"; }
import os, socket, sys, time

want, timeout = int(sys.argv[1]), float(sys.argv[2])
deadline = time.time() + timeout
host, _, port = os.environ["RAY_ADDRESS"].rpartition(":")
while True:  # the head's GCS port first: ray.init itself retries for minutes on a dead address
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit(f"the Ray head at {host}:{port} did not open its port within {timeout:g} s")
        time.sleep(1)
import ray

ray.init(logging_level="ERROR", log_to_driver=False)
while True:
    alive = [node for node in ray.nodes() if node["Alive"]]
    if len(alive) >= want or time.time() > deadline:
        break
    time.sleep(1)
for node in alive:
    resources = node["Resources"]
    print(f"ray node {node['NodeID']} at {node['NodeManagerAddress']}: CPU {resources.get('CPU', 0):g} "
          f"GPU {resources.get('GPU', 0):g}", file=sys.stderr)
if len(alive) < want:
    sys.exit(f"{len(alive)} of {want} Ray nodes joined within {timeout:g} s")
PY
  log "Ray: $1 node(s) alive"
}

# ray_down: stop Ray on every node; runs on every exit path (trap). SIGTERM to every process of the Ray steps (each
# node's `ray start --block` and what it started) lets them exit on their own; steps still running after
# CST_RAY_STOP_S (default 20 s) are ended by srun. Never `ray stop`: it kills every Ray instance on the node, other
# jobs' too.
ray_down() {
  local steps pid i alive
  (( ${#RAY_STEP_PIDS[@]} )) || return 0
  steps=$(squeue -h -s -j "$SLURM_JOB_ID" -o '%i %j' 2>/dev/null | awk '$2 ~ /^cst-ray-/ {print $1}' || true)
  [[ -n "$steps" ]] && scancel --quiet --signal=TERM $steps 2>/dev/null || true
  for i in $(seq 1 $(( ${CST_RAY_STOP_S:-20} * 5 ))); do
    alive=0
    for pid in "${RAY_STEP_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.2
  done
  for pid in "${RAY_STEP_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${RAY_STEP_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  RAY_STEP_PIDS=()
  log "Ray stopped"
}

# requeue_self REASON: put this job back in the queue; its next run continues (train.resume=auto, finished shards).
# At most CST_MAX_REQUEUES restarts (default 10), so a job that can never finish does not loop forever.
requeue_self() {
  local count=${SLURM_RESTART_COUNT:-0} max=${CST_MAX_REQUEUES:-10}
  (( count < max )) || die "not requeued ($1): the job already restarted $count times (CST_MAX_REQUEUES=$max)" 3
  log "requeueing job $SLURM_JOB_ID: $1 (restart $((count + 1)))"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}

# stop_driver: the USR1 trap of run_ray_stage
stop_driver() {
  STOP_SIGNAL=USR1
  log "USR1: stopping the driver (its finished shards stay), then requeueing"
  [[ -z "$DRIVER" ]] || kill -TERM "$DRIVER" 2>/dev/null || true
}

# run_ray_stage STAGE COMMAND...: Ray up on every node of the job, COMMAND as the driver (RAY_ADDRESS set), Ray down
# on every exit path. USR1 (time limit near, preemption notice) requeues the job: the stage's finished shards are kept
# and its next run skips them. The exit code is the driver's.
run_ray_stage() {
  local stage=$1 rc=0
  shift
  trap ray_down EXIT
  trap 'log "SIGTERM: stopping"; exit 143' TERM
  STOP_SIGNAL= DRIVER=
  trap stop_driver USR1
  ray_up
  if [[ -z "$STOP_SIGNAL" ]]; then  # (a signal while Ray started: requeue without starting the driver)
    log "running: $*"
    "$@" &
    DRIVER=$!
    wait_step "$DRIVER" || rc=$?
  fi
  if [[ -n "$STOP_SIGNAL" ]]; then
    ray_down
    requeue_self "$stage stopped on $STOP_SIGNAL"
  fi
  (( rc == 0 )) && log "$stage finished" || log "$stage failed (exit $rc)"
  return "$rc"
}
