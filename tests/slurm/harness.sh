#!/usr/bin/env bash
# A throwaway Slurm cluster on this host for tests/slurm: Debian's slurm-wlm, no systemd, no cgroups, no accounting DB.
#   tests/slurm/harness.sh up      install (apt, when missing), configure, start; wait until every node is idle
#   tests/slurm/harness.sh down    cancel jobs, stop the daemons this harness started (by pid file, never by name)
# Two slurmd daemons fake two nodes, n1 and n2, on this one host (Debian builds Slurm with MULTIPLE_SLURMD). Each fake
# node gets its own loopback address (n1 = 127.0.0.11, n2 = 127.0.0.12, in /etc/hosts), so what the slurm/ scripts
# derive from node names (the rendezvous host, each Ray node's IP) differs between nodes as on a real cluster.
# Needs root (packages, daemons, /etc/slurm, /etc/hosts). Idempotent; `up` after `up` restarts nothing.
#
# Settings (environment):
#   CST_SLURM_ROOT=/tmp/cst-slurm   state, spool, logs, pid files; jobs' completion records in log/jobcomp.log
#   CST_SLURM_NODES=2               fake nodes n1..nN
#   CST_SLURM_CPUS=2                CPUs each fake node advertises (they share the host's cores)
#   CST_SLURM_PORT=6817             slurmctld port; slurmd of node i listens on PORT+i
#   CST_SLURM_NO_INSTALL=0          1: never call apt-get
set -euo pipefail

ROOT=${CST_SLURM_ROOT:-/tmp/cst-slurm}
NODES=${CST_SLURM_NODES:-2}
CPUS=${CST_SLURM_CPUS:-2}
PORT=${CST_SLURM_PORT:-6817}
NO_INSTALL=${CST_SLURM_NO_INSTALL:-0}
CONF=/etc/slurm/slurm.conf
MARK="# managed-by: cst-dist tests/slurm/harness.sh"
HOSTS_MARK="# cst-slurm-harness"

log() { echo "[slurm-harness] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive PIDFILE COMM: PIDFILE names a live process whose command is COMM
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1") || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ]
}

# stop_pidfile PIDFILE COMM: TERM the process the pid file names (if it is COMM), wait, then KILL
stop_pidfile() {
  local pid i
  pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
  pid=$(cat "$1")
  log "stopping $2 (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

node_names() { seq -f 'n%g' 1 "$NODES"; }
node_addr() { echo "127.0.0.$((10 + ${1#n}))"; }

install_packages() {
  local need=0 b guard=0 apt_log="$ROOT/apt.log" pkgs="slurmctld slurmd slurm-client munge"
  for b in slurmctld slurmd sbatch munged; do command -v "$b" >/dev/null || need=1; done
  [ "$need" = 0 ] && return 0
  [ "$NO_INSTALL" = 1 ] && die "Slurm/munge are not installed and CST_SLURM_NO_INSTALL=1"
  command -v apt-get >/dev/null || die "Slurm/munge are not installed and there is no apt-get to install them"
  log "installing $pkgs (apt-get; log: $apt_log)"
  # keep the packages' init scripts from starting daemons during the install; only our own guard is removed again
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends $pkgs >"$apt_log" 2>&1; then
    apt-get update -q >>"$apt_log" 2>&1 || true
    if ! apt-get install -y -q --no-install-recommends $pkgs >>"$apt_log" 2>&1; then
      [ "$guard" = 1 ] && rm -f /usr/sbin/policy-rc.d
      tail -n 20 "$apt_log" >&2
      die "apt-get install $pkgs failed"
    fi
  fi
  [ "$guard" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "installed $(slurmd -V)"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
  fi
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  log "starting munged"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  if id munge >/dev/null 2>&1; then
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
  else
    /usr/sbin/munged --force
  fi
  local i
  for i in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$ROOT/run/munged.pid"  # ours: `down` stops it
}

slurm_conf() {
  local host=$1 n i=1
  cat <<EOF
$MARK
ClusterName=cstci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$PORT
AuthType=auth/munge
# a requeued job may start again this many seconds after it ended (default 120)
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# every job's end (COMPLETED, FAILED, CANCELLED, REQUEUED ...) as one line: what the tests read job states from
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/log/jobcomp.log
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2,batch_sched_delay=0
# a job whose dependency can never be met (an earlier stage failed) is cancelled, not left pending
DependencyParameters=kill_invalid_depend
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
# finished jobs leave scontrol after 5 s; this also keeps sbatch --wait polling every 2 s (not 8, 32 ...)
MinJobAge=5
Waittime=0
MailProg=/bin/true
EOF
  for n in $(node_names); do
    echo "NodeName=$n NodeHostname=$host NodeAddr=$(node_addr "$n") Port=$((PORT + i)) CPUs=$CPUS RealMemory=4000 State=UNKNOWN"
    i=$((i + 1))
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (installs packages, starts daemons, writes /etc/slurm and /etc/hosts)"
  mkdir -p "$ROOT"/{state,spool,log,run}
  install_packages
  start_munge
  local host tmp changed=0 n states bad i
  host=$(hostname -s)
  mkdir -p /etc/slurm
  tmp=$(mktemp)
  slurm_conf "$host" > "$tmp"
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then rm -f "$tmp"
  else
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then cp -p "$CONF" "$CONF.bak.$(date +%s)"; log "backed up $CONF"; fi
    mv "$tmp" "$CONF"; chmod 0644 "$CONF"; changed=1
  fi
  # node names resolve to their own loopback address (rewritten in place: /etc/hosts may be a bind mount)
  tmp=$(mktemp)
  grep -vF "$HOSTS_MARK" /etc/hosts > "$tmp" || true
  for n in $(node_names); do echo "$(node_addr "$n") $n $HOSTS_MARK" >> "$tmp"; done
  cmp -s "$tmp" /etc/hosts || cat "$tmp" > /etc/hosts
  rm -f "$tmp"

  if [ "$changed" = 1 ]; then  # another configuration: the daemons restart with the new one
    for f in "$ROOT"/run/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd; done
    stop_pidfile "$ROOT/run/slurmctld.pid" slurmctld
  fi
  if ! pid_alive "$ROOT/run/slurmctld.pid" slurmctld; then
    log "starting slurmctld"
    (cd "$ROOT" && slurmctld) || die "slurmctld did not start; see $ROOT/log/slurmctld.log"
  fi
  for i in $(seq 1 150); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
  scontrol ping 2>/dev/null | grep -q 'is UP' || { tail -n 20 "$ROOT/log/slurmctld.log" >&2; die "slurmctld does not answer"; }
  for n in $(node_names); do
    mkdir -p "$ROOT/spool/$n"
    if ! pid_alive "$ROOT/run/slurmd-$n.pid" slurmd; then
      log "starting slurmd -N $n ($(node_addr "$n"))"
      (cd "$ROOT" && slurmd -N "$n") || die "slurmd $n did not start; see $ROOT/log/slurmd-$n.log"
    fi
  done
  # wait until every node is idle; a node left down or drained by an earlier run is resumed once
  local resumed=0
  for i in $(seq 1 300); do
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true)
    bad=$(awk '$2 !~ /^(idle|mixed|allocated|completing)$/' <<<"$states")
    [ -n "$states" ] && [ -z "$bad" ] && break
    if [ "$resumed" = 0 ] && [ "$i" -gt 10 ] && grep -qE 'drain|down|inval' <<<"$bad"; then
      for n in $(awk '$2 ~ /drain|down|inval/ {print $1}' <<<"$bad"); do
        scontrol update nodename="$n" state=resume 2>/dev/null || true
      done
      resumed=1
    fi
    sleep 0.2
  done
  if [ -z "$states" ] || [ -n "$bad" ]; then
    echo "$states" >&2; tail -n 15 "$ROOT"/log/slurmd-*.log "$ROOT/log/slurmctld.log" >&2
    die "nodes not idle after 60 s"
  fi
  log "ready: $(wc -l <<<"$states") nodes ($(tr '\n' ' ' <<<"$states")); logs in $ROOT/log"
}

down() {
  local jobs i
  if pid_alive "$ROOT/run/slurmctld.pid" slurmctld; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"
      scancel $jobs 2>/dev/null || true
      for i in $(seq 1 150); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  for f in "$ROOT"/run/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd; done
  stop_pidfile "$ROOT/run/slurmctld.pid" slurmctld
  [ -e "$ROOT/run/munged.pid" ] && stop_pidfile "$ROOT/run/munged.pid" munged
  if grep -qF "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
    local tmp; tmp=$(mktemp); grep -vF "$HOSTS_MARK" /etc/hosts > "$tmp" || true; cat "$tmp" > /etc/hosts; rm -f "$tmp"
  fi
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
