#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (munge + slurmctld + slurmd, one partition
# `main` holding this host), for running deploy/slurm/ for real: the Slurm integration test
# starts it when `sinfo` does not answer. Needs root and `apt-get install slurm-wlm munge`
# (`setup.sh --slurm`). Idempotent: `start` leaves running daemons alone.
#   scripts/local-slurm.sh start|stop|status
# State lives where Debian's packages keep it: /etc/slurm/slurm.conf, /etc/munge/munge.key,
# /var/spool/slurm{ctld,d}, logs in /var/log/slurm.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MUNGE_PID=/run/munge/munged.pid
# slurm.conf's defaults for SlurmctldPidFile and SlurmdPidFile.
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

die() {
    echo "local-slurm: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start|stop|status" >&2
    exit 2
}

# A live process from a pid file (not just a stale file).
running() {
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Whether the controller answers and the node can take jobs.
answers() {
    timeout 5 sinfo -h -o '%a %t' 2>/dev/null | grep -Eq '^up (idle|mix|alloc|comp)'
}

require() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root and munge)"
    local missing=()
    for b in munged slurmctld slurmd sinfo scontrol; do
        command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || missing+=("$b")
    done
    [ ${#missing[@]} -eq 0 ] ||
        die "not installed: ${missing[*]} (apt-get install -y slurm-wlm munge, or scripts/setup.sh --slurm)"
}

start_munge() {
    if running "$MUNGE_PID"; then
        return 0
    fi
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    # A key of our own; an existing one (a real installation's) is kept.
    [ -f /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 400 /etc/munge/munge.key
    # --force: a stale socket left by a killed munged would otherwise stop it.
    runuser -u munge -- /usr/sbin/munged --force
}

write_conf() {
    local host cpus mem_mb real_mb
    host=$(hostname -s)
    cpus=$(nproc)
    # slurmd drains a node that has less memory than configured: leave 10 % (at least
    # 512 MB) for the system and rounding.
    mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    real_mb=$((mem_mb - (mem_mb / 10 > 512 ? mem_mb / 10 : 512)))
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat >"$CONF" <<CONF
# Written by scripts/local-slurm.sh: a one-node cluster for tests.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
    require
    if answers; then
        echo "local-slurm: already running"
        sinfo
        return 0
    fi
    start_munge
    # The config is rewritten only when no daemon is using it.
    if ! running "$CTLD_PID" && ! running "$SLURMD_PID"; then
        write_conf
    fi
    running "$CTLD_PID" || { /usr/sbin/slurmctld && sleep 2; }
    running "$SLURMD_PID" || /usr/sbin/slurmd
    # The node registers within a few seconds; a node left DOWN by an earlier run is
    # returned to service (ReturnToService=2) once it does.
    for _ in $(seq 60); do
        if answers; then
            echo "local-slurm: up ($(hostname -s), $(nproc) CPUs)"
            sinfo
            return 0
        fi
        sleep 1
    done
    sinfo >&2 || true
    die "slurm did not come up within 60 s; see /var/log/slurm/slurmctld.log and slurmd.log"
}

stop() {
    require
    if running "$CTLD_PID"; then
        # Stops slurmctld and every slurmd; jobs still running are killed.
        scontrol shutdown || true
    fi
    for _ in $(seq 30); do
        running "$CTLD_PID" || running "$SLURMD_PID" || break
        sleep 1
    done
    # A slurmd whose controller was already gone does not hear the shutdown.
    if running "$SLURMD_PID"; then
        kill "$(cat "$SLURMD_PID")" 2>/dev/null || true
    fi
    if running "$MUNGE_PID"; then
        kill "$(cat "$MUNGE_PID")"
    fi
    echo "local-slurm: stopped"
}

status() {
    local rc=0
    for d in munged:$MUNGE_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
        if running "${d#*:}"; then
            echo "${d%%:*}: running (pid $(cat "${d#*:}"))"
        else
            echo "${d%%:*}: not running"
            rc=3
        fi
    done
    if answers; then
        sinfo
    else
        echo "sinfo: no answer"
        rc=3
    fi
    return $rc
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*) usage ;;
esac
