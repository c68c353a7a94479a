#!/usr/bin/env bash
# Submits a sharded picie run to Slurm: an array of N shard tasks (picie-shards.sbatch),
# then a driver job that starts once every task has succeeded and runs the pipeline once
# more without sharding. Everything is cached by then, so the driver computes nothing: it
# checks that the store holds the whole run, prints the run summary and writes the run
# record. If a task fails the driver is cancelled (--kill-on-invalid-dep).
#
#   deploy/slurm/submit.sh [--wait] [--logs DIR] PIPELINE STORE [N]
#
# PIPELINE  the pipeline file; STORE a folder every node mounts or s3://bucket/prefix
#           (then AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... are passed on to the jobs);
# N         the number of shards (default 4);
# --wait    wait for the driver, print its log and exit with its status;
# --logs    where the per-task and driver logs go (default: ./picie-logs);
# PICIE     the picie binary (default: picie on PATH).
# Prints both job ids. The jobs get this shell's environment; sbatch's own variables
# (SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...) apply to both jobs.
set -euo pipefail

usage() {
    echo "usage: $0 [--wait] [--logs DIR] PIPELINE STORE [N]" >&2
    exit 2
}

wait_driver=0
logs=${PICIE_LOGS:-$PWD/picie-logs}
positional=()
while [ $# -gt 0 ]; do
    case "$1" in
    --wait) wait_driver=1 ;;
    --logs)
        [ $# -ge 2 ] || usage
        logs=$2
        shift
        ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) positional+=("$1") ;;
    esac
    shift
done
if [ ${#positional[@]} -lt 2 ] || [ ${#positional[@]} -gt 3 ]; then usage; fi
n=${positional[2]:-4}
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "submit: N must be a positive number, not '$n'" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
# The jobs may start in another directory on another node: absolute paths only.
[ -f "${positional[0]}" ] || { echo "submit: no pipeline file ${positional[0]}" >&2; exit 2; }
PIPELINE=$(realpath "${positional[0]}")
STORE=${positional[1]}
[[ "$STORE" == *://* ]] || STORE=$(realpath -m "$STORE")
PICIE=${PICIE:-picie}
if [[ "$PICIE" == */* ]]; then
    PICIE=$(realpath "$PICIE")
else
    PICIE=$(command -v "$PICIE") || { echo "submit: $PICIE not on PATH; set PICIE" >&2; exit 2; }
fi
mkdir -p "$logs"
logs=$(realpath "$logs")
# sbatch passes the environment on, so picie-shards.sbatch reads these three.
export PIPELINE STORE PICIE

array=$(sbatch --parsable --array="0-$((n - 1))" --output="$logs/shards-%A_%a.log" \
    "$here/picie-shards.sbatch")
array=${array%%;*} # --parsable prints "id" or "id;cluster"
echo "submit: array job $array ($n shards), logs $logs/shards-${array}_*.log"

# The driver: the same run as one process (--shard off: no array variables are set here,
# but a driver started inside some other array must not become a shard).
driver_cmd=$(printf '%q ' "$PICIE" run "$PIPELINE" --store "$STORE" --shard off)
driver=$(sbatch --parsable --job-name=picie-driver --ntasks=1 --cpus-per-task=1 \
    --dependency="afterok:$array" --kill-on-invalid-dep=yes \
    --output="$logs/driver-%j.log" --wrap="exec $driver_cmd")
driver=${driver%%;*}
echo "submit: driver job $driver, log $logs/driver-$driver.log"

[ "$wait_driver" = 1 ] || exit 0

# Without accounting (sacct) a finished job is known to slurmctld for MinJobAge (300 s by
# default): poll often enough to see its final state.
state=""
while :; do
    info=$(scontrol show job -o "$driver" 2>/dev/null || true)
    state=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$info")
    case "$state" in
    PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | REQUEUED | RESIZING | "") ;;
    *) break ;;
    esac
    if [ -z "$info" ]; then
        echo "submit: slurmctld no longer knows job $driver; see $logs" >&2
        exit 1
    fi
    sleep 3
done
echo "submit: driver job $driver $state"
[ -f "$logs/driver-$driver.log" ] && cat "$logs/driver-$driver.log"
if [ "$state" = COMPLETED ]; then
    exit 0
fi
if [ "$state" = CANCELLED ]; then
    echo "submit: a shard task failed (the driver never ran); see $logs/shards-${array}_*.log" >&2
fi
code=$(sed -n 's/.*ExitCode=\([0-9]*\):.*/\1/p' <<<"$info")
[ -n "$code" ] && [ "$code" != 0 ] && exit "$code"
exit 1
