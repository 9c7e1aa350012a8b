#!/usr/bin/env bash
# A single-node Slurm 22.05 cluster on localhost for the tests: munge, MariaDB + slurmdbd (so that
# sacct works), slurmctld and slurmd with two fake GPUs. Debian 12 packages, no systemd.
#   cluster.sh install           install the Debian packages (root, apt)
#   cluster.sh start DIR         write configs under DIR, start the daemons, wait until idle
#   cluster.sh stop DIR          stop only the daemons this script started (PIDs in DIR/pids)
# After start, `export SLURM_CONF=DIR/slurm.conf` points sbatch/squeue/sacct at it.
set -euo pipefail

cmd=${1:?usage: cluster.sh install|start DIR|stop DIR}

if [[ $cmd == install ]]; then
    need=()
    for bin in slurmctld slurmd sbatch sacct slurmdbd munged mariadbd; do
        command -v "$bin" >/dev/null || need+=("$bin")
    done
    if ((${#need[@]})); then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q slurm-wlm slurm-client munge slurmdbd mariadb-server >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm slurm-client \
                munge slurmdbd mariadb-server >/dev/null; }
    fi
    exit 0
fi

dir=$(realpath -m "${2:?cluster.sh $cmd needs a folder}")

if [[ $cmd == stop ]]; then
    [[ -f $dir/pids ]] || exit 0
    # Reverse start order; each PID is one this script started.
    tac "$dir/pids" | while read -r name pid; do
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$dir/pids"
    if [[ -f $dir/etc-link && $(readlink /etc/slurm/slurm.conf) == "$(cat "$dir/etc-link")" ]]; then
        rm -f /etc/slurm/slurm.conf "$dir/etc-link"
    fi
    exit 0
fi

[[ $cmd == start ]] || { echo "unknown command $cmd" >&2; exit 2; }
mkdir -p "$dir"/{state,spool,log,db,run}
: >"$dir/pids"
started() { echo "$1 $2" >>"$dir/pids"; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "cluster.sh: $what did not come up in ${limit}s; logs in $dir/log" >&2
    return 1
}

# munge: the packaged key, our own socket and pid files.
munged --force --socket="$dir/run/munge.socket" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/run/munge.seed"
wait_for 5 munged test -s "$dir/run/munged.pid"
started munged "$(cat "$dir/run/munged.pid")"

# MariaDB for slurmdbd, on 127.0.0.1 only.
mariadb-install-db --user=root --datadir="$dir/db" --auth-root-authentication-method=normal \
    >"$dir/log/mariadb-install.log" 2>&1
mariadbd --user=root --datadir="$dir/db" --socket="$dir/run/mysql.sock" --port=16306 \
    --bind-address=127.0.0.1 --pid-file="$dir/run/mariadb.pid" \
    --log-error="$dir/log/mariadb.log" >/dev/null 2>&1 &
started mariadbd $!
wait_for 30 mariadb mariadb --socket="$dir/run/mysql.sock" -uroot -e "select 1"
mariadb --socket="$dir/run/mysql.sock" -uroot -e \
    "create database if not exists slurm_acct_db; create user if not exists 'slurm'@'127.0.0.1'; create user if not exists 'slurm'@'localhost'; grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1'; grant all on slurm_acct_db.* to 'slurm'@'localhost';"

node=$(slurmd -C | head -1)
cpus=$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$node")
mem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$node")
mem=$((mem * 3 / 4))
# Two fake GPUs: gres only needs character devices to hand out.
for i in 0 1; do [[ -e $dir/run/gpu$i ]] || mknod "$dir/run/gpu$i" c 1 3; done

cat >"$dir/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$dir/run/munge.socket
DbdHost=localhost
DbdPort=16819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=16306
StorageLoc=slurm_acct_db
StorageUser=slurm
LogFile=$dir/log/slurmdbd.log
PidFile=$dir/run/slurmdbd.pid
CONF
chmod 600 "$dir/slurmdbd.conf"

cat >"$dir/gres.conf" <<CONF
NodeName=localhost Name=gpu File=$dir/run/gpu0
NodeName=localhost Name=gpu File=$dir/run/gpu1
CONF

cat >"$dir/slurm.conf" <<CONF
ClusterName=robustcore
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
AuthInfo=socket=$dir/run/munge.socket
SlurmUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge=300
ReturnToService=2
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=16819
# The munge socket for the connection to slurmdbd (AuthInfo does not cover it).
AccountingStoragePass=$dir/run/munge.socket
AccountingStorageTRES=gres/gpu
# Keep the comment (Snakemake writes the rule name there) in the accounting database.
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=defer
NodeName=localhost CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=gpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
# slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF.
export SLURM_CONF=$dir/slurm.conf
# Snakemake's job-step plugin strips SLURM_* (SLURM_CONF too) before its nested srun, which then
# reads the default /etc/slurm/slurm.conf: link it there unless one exists (removed on stop).
if [[ ! -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    mkdir -p /etc/slurm
    ln -s "$dir/slurm.conf" /etc/slurm/slurm.conf
    echo "$dir/slurm.conf" >"$dir/etc-link"
fi

slurmdbd
wait_for 20 slurmdbd test -s "$dir/run/slurmdbd.pid"
started slurmdbd "$(cat "$dir/run/slurmdbd.pid")"
wait_for 20 "slurmdbd port" bash -c "exec 3<>/dev/tcp/127.0.0.1/16819"
sacctmgr -i add cluster robustcore >/dev/null 2>&1 || true
sacctmgr -i add account robustcore Cluster=robustcore >/dev/null 2>&1 || true
sacctmgr -i add user root Account=robustcore >/dev/null 2>&1 || true

slurmctld -f "$dir/slurm.conf"
wait_for 20 slurmctld test -s "$dir/run/slurmctld.pid"
started slurmctld "$(cat "$dir/run/slurmctld.pid")"
slurmd -N localhost -f "$dir/slurm.conf"
wait_for 20 slurmd test -s "$dir/run/slurmd.pid"
started slurmd "$(cat "$dir/run/slurmd.pid")"
wait_for 30 "node localhost idle" bash -c "sinfo -h -N -o %t | grep -q idle"
echo "cluster up: SLURM_CONF=$dir/slurm.conf"
