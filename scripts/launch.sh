#!/usr/bin/env bash
# Starts one process per device for a data-parallel job, with torchrun's environment:
#
#   scripts/launch.sh --nproc-per-node 4 [--nnodes 2 --node-rank 0 --master-addr HOST
#                     --master-port 29500] [--log-dir DIR] -- COMMAND [ARGS...]
#
# Each process gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT
# (rank = node_rank * nproc_per_node + local_rank). Its output is prefixed with `[rank K] `, or
# written to DIR/rank_K.log with --log-dir. SIGINT and SIGTERM are forwarded to every process.
# When a process fails, the others are stopped (SIGTERM, then SIGKILL after 10 s) and the
# launcher exits with the failed process's exit code; it exits 0 when all succeed.
#
# The same job under torchrun:  torchrun --nproc-per-node 4 --no-python COMMAND [ARGS...]
# and under Slurm (one task per GPU): srun --ntasks-per-node 4 COMMAND [ARGS...]
# (the trainers read torchrun's variables, or Slurm's when those are the ones set).
set -uo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "launch.sh: $*" >&2; exit 2; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

nproc=1 nnodes=1 node_rank=0 master_addr=127.0.0.1 master_port=29500 log_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc-per-node|--nproc_per_node) nproc="${2-}"; shift 2 ;;
    --nnodes) nnodes="${2-}"; shift 2 ;;
    --node-rank|--node_rank) node_rank="${2-}"; shift 2 ;;
    --master-addr|--master_addr) master_addr="${2-}"; shift 2 ;;
    --master-port|--master_port) master_port="${2-}"; shift 2 ;;
    --log-dir) log_dir="${2-}"; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || die "no command given (see --help)"
for pair in nproc:--nproc-per-node nnodes:--nnodes node_rank:--node-rank master_port:--master-port; do
  v="${pair%%:*}"; flag="${pair#*:}"
  is_uint "${!v}" || die "$flag must be a non-negative integer, got '${!v}'"
done
[ "$nproc" -ge 1 ] && [ "$nnodes" -ge 1 ] || die "--nproc-per-node and --nnodes must be at least 1"
[ "$node_rank" -lt "$nnodes" ] || die "--node-rank $node_rank is outside --nnodes $nnodes"
[ "$master_port" -le 65534 ] || die "--master-port $master_port leaves no port for the id (port + 1)"
[ -z "$log_dir" ] || mkdir -p "$log_dir" || die "cannot create --log-dir $log_dir"

world=$((nnodes * nproc))
pids=()
for ((local = 0; local < nproc; local++)); do
  rank=$((node_rank * nproc + local))
  if [ -n "$log_dir" ]; then
    RANK=$rank LOCAL_RANK=$local WORLD_SIZE=$world LOCAL_WORLD_SIZE=$nproc MASTER_ADDR=$master_addr MASTER_PORT=$master_port \
      "$@" > "$log_dir/rank_$rank.log" 2>&1 &
  else
    RANK=$rank LOCAL_RANK=$local WORLD_SIZE=$world LOCAL_WORLD_SIZE=$nproc MASTER_ADDR=$master_addr MASTER_PORT=$master_port \
      "$@" > >(sed -u "s/^/[rank $rank] /") 2> >(sed -u "s/^/[rank $rank] /" >&2) &
  fi
  pids+=($!)
done

stop_all() {
  local sig="$1"
  for p in "${pids[@]}"; do kill -s "$sig" "$p" 2>/dev/null; done
}
stop_rest() {
  stop_all TERM
  for _ in $(seq 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return
    sleep 0.1
  done
  stop_all KILL
}
on_signal() {
  local sig="$1" code="$2"
  echo "launch.sh: $sig received, forwarding to ${#pids[@]} processes" >&2
  stop_all "$sig"
  wait 2>/dev/null
  exit "$code"
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

live=("${pids[@]}")
while [ "${#live[@]}" -gt 0 ]; do
  finished=""
  wait -n -p finished "${live[@]}"
  code=$?
  [ -n "$finished" ] || continue
  next=()
  for p in "${live[@]}"; do [ "$p" = "$finished" ] || next+=("$p"); done
  live=("${next[@]}")
  if [ "$code" -ne 0 ]; then
    for i in "${!pids[@]}"; do [ "${pids[$i]}" = "$finished" ] && failed_rank=$((node_rank * nproc + i)); done
    echo "launch.sh: rank ${failed_rank:-?} exited with code $code; stopping the others" >&2
    stop_rest
    wait 2>/dev/null
    exit "$code"
  fi
done
exit 0
