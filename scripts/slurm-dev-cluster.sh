#!/usr/bin/env bash
# A one-host Slurm cluster for tests and demos: munged, slurmctld and two slurmd nodes (n1, n2)
# on 127.0.0.1, all state under one directory; no systemd, no cgroups, no database
# (facts behind the configuration: Debian 12's Slurm 22.05 as measured in SLURM.md).
#
#   scripts/slurm-dev-cluster.sh up       # install the packages when missing, start, wait idle
#   scripts/slurm-dev-cluster.sh down     # stop the daemons it started, by their pid files
#   scripts/slurm-dev-cluster.sh status   # what runs; exit 0 when both nodes answer, else 3
#   scripts/slurm-dev-cluster.sh env      # prints `export SLURM_CONF=...` for eval
#
# Every command is idempotent: `up` on a running cluster only checks it, `down` on a stopped
# one says so. Clients find the cluster through SLURM_CONF (printed by `up` and `env`).
#
# Environment: AUTOMON_SLURM_DIR (default /tmp/automon-slurm-dev), AUTOMON_SLURM_PORT (the
# controller's port, default 16817; the nodes take the next two), AUTOMON_SLURM_UP_TIMEOUT
# (seconds to wait for both nodes idle, default 120). Must run as root (it installs packages,
# runs munged as user munge and the Slurm daemons as root).
set -euo pipefail

DIR=${AUTOMON_SLURM_DIR:-/tmp/automon-slurm-dev}
PORT=${AUTOMON_SLURM_PORT:-16817}
UP_TIMEOUT=${AUTOMON_SLURM_UP_TIMEOUT:-120}
CONF="$DIR/slurm.conf"
NODES=(n1 n2)
MUNGE_PID=/run/munge/munged.pid
# munged is started by us only when it was not running; this file says so (down stops it then).
MUNGE_OURS="$DIR/munged.ours"

say() { printf 'slurm-dev-cluster: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

alive() { # alive PIDFILE: the pid recorded there runs
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [[ $(id -u) == 0 ]] || die "the Slurm packages are missing and installing them needs root"
    say "installing slurm-wlm slurm-client munge (apt-get update first)"
    local started=$SECONDS
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm slurm-client munge >/dev/null
    say "installed in $((SECONDS - started)) s: $(slurmctld -V)"
}

start_munge() {
    if alive "$MUNGE_PID"; then
        say "munged already runs (pid $(cat "$MUNGE_PID"))"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then mungekey --create --force; else create-munge-key -f; fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- munged 9>&-
    touch "$MUNGE_OURS"
    local deadline=$((SECONDS + 30))
    until alive "$MUNGE_PID" && munge -n >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "munged did not start within 30 s (see /var/log/munge/munged.log)"
        sleep 0.2
    done
    say "started munged (pid $(cat "$MUNGE_PID"))"
}

write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    local cpus tmp
    cpus=2
    tmp=$(mktemp "$DIR/slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
# Written by scripts/slurm-dev-cluster.sh: a one-host dev cluster (see SLURM.md facts there).
ClusterName=automon-dev
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=10
MpiDefault=none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmdTimeout=60
SlurmctldTimeout=60
InactiveLimit=0
EOF
    local i=0 node
    for node in "${NODES[@]}"; do
        i=$((i + 1))
        echo "NodeName=$node NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$cpus State=UNKNOWN" >>"$tmp"
    done
    echo "PartitionName=debug Nodes=n[1-${#NODES[@]}] Default=YES MaxTime=INFINITE State=UP" >>"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONF"
}

nodes_idle() { # every node listed idle (or mixed/allocated: it answers) by sinfo
    local listed
    listed=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
    local node state
    for node in "${NODES[@]}"; do
        state=$(awk -v n="$node" '$1 == n {print $2}' <<<"$listed" | head -n1)
        case "$state" in idle | mix | alloc | comp) ;; *) return 1 ;; esac
    done
}

up() {
    install_packages
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock 9
    start_munge
    if alive "$DIR/run/slurmctld.pid"; then
        say "slurmctld already runs (pid $(cat "$DIR/run/slurmctld.pid"))"
    else
        write_conf
        # Never -c: saved state (jobs, node states) survives a controller restart.
        slurmctld -f "$CONF" 9>&-
        say "started slurmctld on 127.0.0.1:$PORT"
    fi
    local node
    for node in "${NODES[@]}"; do
        if alive "$DIR/run/slurmd-$node.pid"; then
            say "slurmd $node already runs (pid $(cat "$DIR/run/slurmd-$node.pid"))"
        else
            mkdir -p "$DIR/spool/$node"
            slurmd -f "$CONF" -N "$node" 9>&-
            say "started slurmd $node"
        fi
    done
    local started=$SECONDS deadline=$((SECONDS + UP_TIMEOUT))
    until nodes_idle; do
        if ((SECONDS >= deadline)); then
            say "nodes not idle within ${UP_TIMEOUT} s; sinfo says:"
            SLURM_CONF=$CONF sinfo -N >&2 || true
            tail -n 20 "$DIR/log/slurmctld.log" >&2 || true
            exit 1
        fi
        sleep 0.3
    done
    say "cluster up in $((SECONDS - started)) s after start: $(SLURM_CONF=$CONF sinfo -h -N -o '%N=%t' | tr '\n' ' ')"
    echo "export SLURM_CONF=$CONF"
}

down() {
    [[ -d "$DIR" ]] || { say "nothing to stop: $DIR does not exist"; return; }
    exec 9>"$DIR/.lock"
    flock 9
    local pidfile stopped=0
    for pidfile in "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid"; do
        [[ -e "$pidfile" ]] || continue
        if alive "$pidfile"; then
            local pid
            pid=$(cat "$pidfile")
            kill -TERM "$pid"
            local deadline=$((SECONDS + 30))
            while kill -0 "$pid" 2>/dev/null; do
                if ((SECONDS >= deadline)); then kill -KILL "$pid" 2>/dev/null || true; break; fi
                sleep 0.2
            done
            say "stopped $(basename "$pidfile" .pid) (pid $pid)"
            stopped=$((stopped + 1))
        fi
        rm -f "$pidfile"
    done
    if [[ -e "$MUNGE_OURS" ]]; then
        if alive "$MUNGE_PID"; then
            local pid
            pid=$(cat "$MUNGE_PID")
            kill -TERM "$pid"
            local deadline=$((SECONDS + 30))
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
            say "stopped munged (pid $pid)"
            stopped=$((stopped + 1))
        fi
        rm -f "$MUNGE_OURS"
    fi
    ((stopped > 0)) || say "nothing was running"
}

status() {
    local rc=0 node
    if alive "$MUNGE_PID"; then say "munged: running (pid $(cat "$MUNGE_PID"))"; else say "munged: not running"; rc=3; fi
    if alive "$DIR/run/slurmctld.pid"; then
        say "slurmctld: running (pid $(cat "$DIR/run/slurmctld.pid"))"
    else
        say "slurmctld: not running"; rc=3
    fi
    for node in "${NODES[@]}"; do
        if alive "$DIR/run/slurmd-$node.pid"; then
            say "slurmd $node: running (pid $(cat "$DIR/run/slurmd-$node.pid"))"
        else
            say "slurmd $node: not running"; rc=3
        fi
    done
    if ((rc == 0)); then
        if nodes_idle; then
            SLURM_CONF=$CONF sinfo -N >&2
        else
            say "the nodes do not answer as idle"; rc=3
        fi
    fi
    return "$rc"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) say "usage: $0 up|down|status|env"; exit 2 ;;
esac
