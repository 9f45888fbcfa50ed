#!/usr/bin/env bash
# A private, single-node SLURM cluster for testing the fedglioma SLURM profile.
#
#   tests/slurm/cluster.sh start    install if missing, write configs, start the daemons
#   tests/slurm/cluster.sh stop     stop exactly the daemons this script started (pid files)
#   tests/slurm/cluster.sh status   show which daemons run; exit 0 if all run, 3 if none, 1 if some
#   tests/slurm/cluster.sh env      print the exports that point SLURM commands at this cluster
#                                   (use: eval "$(tests/slurm/cluster.sh env)")
#
# Everything lives in $FEDGLIOMA_SLURM_DIR (default /tmp/fedglioma-slurm): configs, munge key and
# socket, the MariaDB data directory, spool, logs and pid files. No system file is changed apart
# from installing Debian packages. The daemons listen on 127.0.0.1 only, on private ports
# ($FEDGLIOMA_SLURM_PORT_BASE + 6..9, default 17816..17819), so they do not clash with a
# system MariaDB/SLURM. Client commands (sbatch, sacct, ...) find the cluster through SLURM_CONF.
#
# Cluster: name "fedglioma", one node (real CPU count and memory, address 127.0.0.1), partitions
# main (default), siteA, siteB, coord; accounts acct_a, acct_b, coord (user root belongs to all;
# its default account stays "root"). Accounting via slurmdbd + MariaDB, so sacct works and unknown
# accounts are refused at submission (AccountingStorageEnforce=associations).
#
# Needs root (daemons run as root, munged as the munge user, MariaDB as the mysql user).
# Start and stop are serialised with a lock file and are safe to repeat.
set -euo pipefail

STATE=${FEDGLIOMA_SLURM_DIR:-/tmp/fedglioma-slurm}
PORT_BASE=${FEDGLIOMA_SLURM_PORT_BASE:-17810}
CLUSTER=fedglioma
NODE=fgnode1
PARTITIONS=(main siteA siteB coord)   # the first is the default
ACCOUNTS=(acct_a acct_b coord)
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
WAIT_S=${FEDGLIOMA_SLURM_WAIT_S:-60}

DB_PORT=$((PORT_BASE + 6))
CTLD_PORT=$((PORT_BASE + 7))
SLURMD_PORT=$((PORT_BASE + 8))
DBD_PORT=$((PORT_BASE + 9))

ETC=$STATE/etc
LOG=$STATE/log
RUN=$STATE/run
MUNGE_DIR=$STATE/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
DB_DIR=$STATE/mysql
DB_SOCKET=$DB_DIR/mysqld.sock
export SLURM_CONF=$ETC/slurm.conf

# daemon name -> pid file, executable name (as in /proc/PID/comm)
declare -A PIDFILE=(
  [munged]=$MUNGE_DIR/munged.pid
  [mariadbd]=$DB_DIR/mysqld.pid
  [slurmdbd]=$RUN/slurmdbd.pid
  [slurmctld]=$RUN/slurmctld.pid
  [slurmd]=$RUN/slurmd.pid
)
ORDER=(munged mariadbd slurmdbd slurmctld slurmd)

say() { echo "cluster.sh: $*"; }
die() { echo "cluster.sh: ERROR: $*" >&2; exit 1; }

show_log() {  # show_log FILE: the last lines of a log, to stderr
  if [[ -s $1 ]]; then
    echo "---- last lines of $1 ----" >&2
    tail -n 25 "$1" >&2
    echo "----" >&2
  fi
}

# pid of a running daemon started by us, or nothing
daemon_pid() {
  local name=$1 f=${PIDFILE[$1]} pid comm
  [[ -r $f ]] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [[ -n $pid ]] && alive "$pid" || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  [[ $comm == "$name" ]] || return 1   # a stale pid file whose pid now belongs to someone else
  echo "$pid"
}
running() { daemon_pid "$1" >/dev/null; }
# a process that exists and is not a zombie waiting to be reaped
alive() { [[ -d /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION LOGFILE COMMAND...
  local secs=$1 what=$2 logf=$3 out
  shift 3
  local end=$((SECONDS + secs))
  until out=$("$@" 2>&1); do
    if ((SECONDS >= end)); then
      show_log "$logf"
      [[ -n $out ]] && echo "last try of '$*' said: $out" >&2
      die "timed out after ${secs}s waiting for $what"
    fi
    sleep 0.5
  done
}

# launch LOGFILE COMMAND...: start a daemon detached from our stdio and from the lock (fd 9)
launch() {
  local logf=$1
  shift
  touch "$logf"
  "$@" </dev/null >>"$logf" 2>&1 9>&-
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (starts munged, MariaDB and SLURM daemons)"; }

# ---------------------------------------------------------------------------------------------
install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and apt-get is not available"
  say "installing ${missing[*]} (apt-get)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
      >"$STATE/apt.log" 2>&1; then
    say "apt-get install failed; running apt-get update and retrying"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$STATE/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
      >>"$STATE/apt.log" 2>&1 || { show_log "$STATE/apt.log"; die "apt-get install ${missing[*]} failed"; }
  fi
}

node_line() {
  # real topology and memory as slurmd sees them (slurmd -C), under our node name and address
  local c
  c=$(slurmd -C | head -n1) || die "slurmd -C failed"
  c=${c#NodeName=* }
  echo "NodeName=$NODE NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$SLURMD_PORT $c State=UNKNOWN"
}

write_configs() {
  local host db_pw
  host=$(hostname -s)
  mkdir -p "$ETC" "$LOG" "$RUN" "$STATE/spool/ctld" "$STATE/spool/d" "$DB_DIR"
  chmod 755 "$STATE" "$ETC" "$LOG" "$RUN"

  if [[ ! -s $ETC/db.password ]]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/db.password")
  fi
  db_pw=$(cat "$ETC/db.password")

  cat >"$ETC/slurm.conf" <<EOF
# written by tests/slurm/cluster.sh -- a private single-node test cluster
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# a job without a memory request must not take the whole node (the plugin always sends --mem)
DefMemPerCPU=1000
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the munge socket for talking to slurmdbd (AuthInfo covers the rest)
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=5
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
$(node_line)
EOF
  local p default=YES
  for p in "${PARTITIONS[@]}"; do  # the first one is the default partition
    echo "PartitionName=$p Nodes=$NODE Default=$default MaxTime=INFINITE State=UP" >>"$ETC/slurm.conf"
    default=NO
  done

  (umask 077; cat >"$ETC/slurmdbd.conf" <<EOF
# written by tests/slurm/cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=${PIDFILE[slurmdbd]}
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$db_pw
StorageLoc=slurm_acct_db
EOF
  )
  chmod 600 "$ETC/slurmdbd.conf"
  # empty so that slurmd does not read the system's /etc/slurm/cgroup.conf
  : >"$ETC/cgroup.conf"
  # snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable, SLURM_CONF included,
  # before its nested `srun` inside a job (plugin issue #164); on this cluster, whose config is
  # only found through SLURM_CONF, that srun would fail. Put this srun first on PATH (env_lines).
  mkdir -p "$STATE/bin"
  cat >"$STATE/bin/srun" <<EOF
#!/bin/sh
# written by tests/slurm/cluster.sh: srun that finds the private test cluster without SLURM_CONF
SLURM_CONF="\${SLURM_CONF:-$SLURM_CONF}" exec $(real_srun) "\$@"
EOF
  chmod 755 "$STATE/bin/srun"
  env_lines >"$STATE/env"
}

real_srun() {  # the installed srun, never our own wrapper
  local d
  local IFS=:
  for d in $PATH /usr/bin; do
    [[ $d == "$STATE/bin" ]] && continue
    [[ -x $d/srun ]] && { echo "$d/srun"; return 0; }
  done
  die "srun not found"
}

env_lines() {
  echo "export SLURM_CONF=$SLURM_CONF"
  echo "export PATH=$STATE/bin:\$PATH"
}

# ---------------------------------------------------------------------------------------------
start_munged() {
  if running munged; then return 0; fi
  mkdir -p "$MUNGE_DIR"
  chown munge:munge "$MUNGE_DIR"
  chmod 755 "$MUNGE_DIR"
  if [[ ! -s $MUNGE_DIR/munge.key ]]; then
    head -c 1024 /dev/urandom >"$MUNGE_DIR/munge.key"
  fi
  chown munge:munge "$MUNGE_DIR/munge.key"
  chmod 400 "$MUNGE_DIR/munge.key"
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  touch "$LOG/munged.log"
  chown munge:munge "$LOG/munged.log"
  launch "$LOG/munged.log" runuser -u munge -- munged --key-file="$MUNGE_DIR/munge.key" \
    --socket="$MUNGE_SOCKET" --pid-file="${PIDFILE[munged]}" --log-file="$LOG/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" || { show_log "$LOG/munged.log"; die "munged failed to start"; }
  wait_for 15 "munged" "$LOG/munged.log" bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"
  say "munged running (pid $(daemon_pid munged))"
}

db_sql() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot -e "$1"; }

start_mariadb() {
  if running mariadbd; then return 0; fi
  local fresh=0
  if [[ ! -d $DB_DIR/data/mysql ]]; then
    fresh=1
    rm -rf "$DB_DIR/data"
    mkdir -p "$DB_DIR/data"
    chown -R mysql:mysql "$DB_DIR"
    mariadb-install-db --no-defaults --datadir="$DB_DIR/data" --user=mysql \
      --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
      >"$LOG/mariadb-install.log" 2>&1 || { show_log "$LOG/mariadb-install.log"; die "mariadb-install-db failed"; }
  fi
  chown -R mysql:mysql "$DB_DIR"
  rm -f "$DB_SOCKET"
  launch "$LOG/mariadb.log" setsid -f mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" --socket="$DB_SOCKET" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="${PIDFILE[mariadbd]}" \
    --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
    --skip-log-bin --max-connections=50 || { show_log "$LOG/mariadb.log"; die "mariadbd failed to start"; }
  wait_for "$WAIT_S" "MariaDB" "$LOG/mariadb.log" \
    mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping
  if ((fresh)) || ! db_sql "SELECT 1 FROM mysql.user WHERE user='slurm'" | grep -q 1; then
    local pw
    pw=$(cat "$ETC/db.password")
    db_sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
            FLUSH PRIVILEGES;" || die "could not create the MariaDB user for slurmdbd"
  fi
  # the password may have been rewritten (fresh state folder): keep MariaDB in step
  db_sql "ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$ETC/db.password")'" \
    || die "could not set the MariaDB password for slurmdbd"
  say "MariaDB running on 127.0.0.1:$DB_PORT (pid $(daemon_pid mariadbd))"
}

start_slurmdbd() {
  if running slurmdbd; then return 0; fi
  launch "$LOG/slurmdbd.log" slurmdbd || { show_log "$LOG/slurmdbd.log"; die "slurmdbd failed to start"; }
  wait_for "$WAIT_S" "slurmdbd (sacctmgr list cluster)" "$LOG/slurmdbd.log" sacctmgr -n list cluster
  say "slurmdbd running on 127.0.0.1:$DBD_PORT (pid $(daemon_pid slurmdbd))"
}

setup_accounting() {
  # cluster, accounts and root's associations; each step is a no-op when already done
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
  fi
  local a have
  have=$(sacctmgr -n -P list account format=account)
  for a in "${ACCOUNTS[@]}"; do
    grep -qx "$a" <<<"$have" || sacctmgr -i add account "$a" cluster="$CLUSTER" \
      description="fedglioma test account $a" organization=fedglioma >/dev/null \
      || die "sacctmgr add account $a failed"
  done
  have=$(sacctmgr -n -P list assoc user=root cluster="$CLUSTER" format=account)
  for a in "${ACCOUNTS[@]}"; do
    grep -qx "$a" <<<"$have" || sacctmgr -i add user root account="$a" cluster="$CLUSTER" >/dev/null \
      || die "sacctmgr add user root account=$a failed"
  done
}

start_slurmctld() {
  if running slurmctld; then return 0; fi
  # a cold start forgets the jobs of earlier runs (-c): their processes are gone
  local opts=()
  running slurmd || opts=(-c)
  launch "$LOG/slurmctld.log" slurmctld "${opts[@]}" || { show_log "$LOG/slurmctld.log"; die "slurmctld failed to start"; }
  wait_for "$WAIT_S" "slurmctld (scontrol ping)" "$LOG/slurmctld.log" bash -c "scontrol ping | grep -q UP"
  say "slurmctld running on 127.0.0.1:$CTLD_PORT (pid $(daemon_pid slurmctld))"
}

start_slurmd() {
  if ! running slurmd; then
    launch "$LOG/slurmd.log" slurmd -N "$NODE" || { show_log "$LOG/slurmd.log"; die "slurmd failed to start"; }
  fi
  node_ready() { sinfo -h -n "$NODE" -o %T | grep -Eq '^(idle|mixed|allocated)'; }
  local end=$((SECONDS + WAIT_S))
  until node_ready 2>/dev/null; do
    if ((SECONDS >= end)); then
      sinfo -N -l >&2 || true
      show_log "$LOG/slurmd.log"
      die "node $NODE did not become idle within ${WAIT_S}s"
    fi
    # a node left DOWN/DRAINED by an earlier run: bring it back
    if sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -Eq 'down|drain'; then
      scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    fi
    sleep 0.5
  done
  say "slurmd running, node $NODE $(sinfo -h -n "$NODE" -o '%T, %c CPUs, %m MB')"
}

# ---------------------------------------------------------------------------------------------
stop_daemon() {  # stop_daemon NAME: SIGTERM, wait, then SIGKILL; only the pid in our pid file
  local name=$1 pid i
  pid=$(daemon_pid "$name") || { rm -f "${PIDFILE[$name]}"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    alive "$pid" || break
    sleep 0.2
  done
  if alive "$pid"; then
    say "$name (pid $pid) ignored SIGTERM for 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "${PIDFILE[$name]}"
  say "stopped $name (pid $pid)"
}

cancel_jobs_and_steps() {
  # cancel every job of this cluster, then end any slurmstepd of our slurmd that outlives it
  if running slurmctld; then
    local ids
    ids=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n $ids ]]; then
      say "cancelling jobs: ${ids//$'\n'/ }"
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null || true
      local i
      for ((i = 0; i < 30; i++)); do
        [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.5
      done
    fi
  fi
}

tree_of() {  # tree_of PID: PID and all its descendants, children last
  local pid=$1 child
  echo "$pid"
  for child in $(pgrep -P "$pid" 2>/dev/null); do tree_of "$child"; done
}

kill_our_stepds() {
  # job step daemons (slurmstepd) of our slurmd that outlived it, with their job processes;
  # they are ours when one of their open files is in our state folder (e.g. the slurmd log)
  local p fd pids=()
  for p in /proc/[0-9]*; do
    [[ $(cat "$p/comm" 2>/dev/null) == slurmstepd ]] || continue
    for fd in "$p"/fd/*; do
      if [[ $(readlink "$fd" 2>/dev/null) == "$STATE/"* ]]; then
        mapfile -t -O "${#pids[@]}" pids < <(tree_of "${p#/proc/}")
        break
      fi
    done
  done
  ((${#pids[@]})) || return 0
  say "ending leftover job steps and their processes (pids ${pids[*]})"
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

cmd_stop() {
  local n
  cancel_jobs_and_steps
  for ((n = ${#ORDER[@]} - 1; n >= 0; n--)); do
    stop_daemon "${ORDER[n]}"
  done
  kill_our_stepds
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  say "stopped (state kept in $STATE; remove it for a fresh cluster)"
}

cmd_status() {
  local n=0 name pid
  for name in "${ORDER[@]}"; do
    if pid=$(daemon_pid "$name"); then
      echo "$name: running (pid $pid)"
      n=$((n + 1))
    else
      echo "$name: stopped"
    fi
  done
  if running slurmctld; then
    sinfo -o '%P %a %D %T %c %m' 2>/dev/null || true
  fi
  echo "SLURM_CONF=$SLURM_CONF"
  ((n == ${#ORDER[@]})) && return 0
  ((n == 0)) && return 3
  return 1
}

cmd_start() {
  need_root
  local t0=$SECONDS
  mkdir -p "$STATE"
  install_packages
  local tool
  for tool in munged munge mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacctmgr sacct; do
    command -v "$tool" >/dev/null || die "$tool not found after installing ${PACKAGES[*]}"
  done
  local u
  for u in munge mysql; do
    runuser -u "$u" -- test -x "$STATE" 2>/dev/null \
      || die "user $u cannot enter $STATE; set FEDGLIOMA_SLURM_DIR to a folder every user can traverse (e.g. under /tmp)"
  done
  if cmd_status >/dev/null 2>&1; then
    say "already running ($SLURM_CONF)"
    return 0
  fi
  # (re)write configs only while the SLURM daemons are down; munged and MariaDB keep theirs
  if ! running slurmctld && ! running slurmd && ! running slurmdbd; then
    write_configs
  fi
  start_munged
  start_mariadb
  start_slurmdbd
  setup_accounting
  start_slurmctld
  start_slurmd
  say "cluster $CLUSTER up in $((SECONDS - t0))s; partitions: $(sinfo -h -o %P | tr '\n' ' ')"
  say "use it with: eval \"\$($0 env)\""
}

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

[[ $# -eq 1 ]] || usage
case $1 in
  start | stop)
    need_root
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 300 9 || die "another cluster.sh holds $STATE/.lock"
    if [[ $1 == start ]]; then
      # do not leave half a cluster behind when a step fails
      trap 'rc=$?; if ((rc != 0)); then echo "cluster.sh: start failed; stopping what was started" >&2; cmd_stop >&2 || true; fi' EXIT
      cmd_start
      trap - EXIT
    else
      cmd_stop
    fi
    ;;
  status) cmd_status ;;
  env) env_lines ;;
  *) usage ;;
esac
