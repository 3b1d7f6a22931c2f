# shellcheck shell=bash
# lab.d/supervise.sh: processes. Settings, ports, starting a server in its
# own session with its pid recorded, waiting for its port, stopping it; and
# the service commands built on that (up, down, reset, status, start, stop,
# logs). Sourced by ./lab, which sets ROOT.

# ---------------------------------------------------------------- settings

# The variables that make an app tier's variant (what a clone was started
# with). Read before .env, so a value typed on the command line is told
# apart from one that .env or a default gives (see remember_variant).
VARIANT_VARS=(SESSIONS READS SHAPE CACHE SERVICE_TIME_MS MAX_CONCURRENCY PIN_WINDOW_MS
    REPLICA_MAX_LAG_MS DB_ACQUIRE_TIMEOUT_MS SESSION_IDLE_SECS SESSION_ABSOLUTE_SECS MAX_AVATAR_BYTES
    CACHE_BACKEND STAMPEDE CACHE_TTL_SECS CACHE_JITTER QUERY_FLUSH_ON_WRITE CACHE_TIMEOUT_MS CACHE_MAX_VALUE_BYTES
    QUEUE JOBS QUEUE_NAME MAX_DELIVERIES PREFETCH CONSUMER_TTL_MS JOB_MIN_MS SHUTDOWN_GRACE_MS STALE_QUEUED_SECS MAX_QUEUE_DEPTH
    CHANGES_MAX_WAITING ANSWER DEPTH_CHECK_MS RETRY_AFTER_SECS QUEUE_TIMEOUT_MS EVENTS_POLL_MS EVENTS_MAX_SECS DRILL_JOBS
    CHANGES BAKE_INTERVAL_SECS TIMELINE_CAP FANOUT_MAX_FRIENDS)
# (A ./lab run by ./lab inherits what its parent took from .env: those
# names are in LAB_FROM_DOTENV and do not count as typed.)
declare -A EXPLICIT=()
for _v in "${VARIANT_VARS[@]}"; do
    if [[ -v $_v && " ${LAB_FROM_DOTENV:-} " != *" $_v "* ]]; then EXPLICIT[$_v]=${!_v}; fi
done
unset _v

# ./.env, if present, with dotenv's rule: a variable the environment sets
# already wins. Parsed, not sourced: a line is KEY=VALUE (optionally
# `export KEY=VALUE`, optionally quoted); anything else is ignored. The
# binaries read the same file through common's dotenv loading.
load_dotenv() {
    local f=$1 line key value
    LAB_FROM_DOTENV=${LAB_FROM_DOTENV:-}
    [[ -f $f ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
        if [[ ! -v $key ]]; then
            export "$key=$value"
            LAB_FROM_DOTENV+=" $key"
        fi
    done <"$f"
    export LAB_FROM_DOTENV
}
load_dotenv "$ROOT/.env"

# LAB_DIR exists for the lab's own CI only: two stacks on one machine
# would fight over the pinned ports below.
LAB=${LAB_DIR:-$ROOT/.lab}
DATA=$LAB/data
LOGS=$LAB/log
RUN=$LAB/run
TOOLS=$LAB/tools
CLONES=${LAB_CLONES:-3}
WORKERS=${LAB_WORKERS:-2} # part 4's workers (worker1..N)
DEADLINE=${LAB_DEADLINE:-30} # seconds any one wait may take
# The build the app tier runs: release for figures worth quoting; `./lab
# test` uses debug, the build cargo test makes anyway.
PROFILE=${LAB_PROFILE:-release}
[[ $PROFILE == release || $PROFILE == debug ]] || {
    printf 'lab: LAB_PROFILE must be release or debug, not %s\n' "$PROFILE" >&2
    exit 1
}

INFRA=(redis memcached mariadb-primary mariadb-replica mariadb-shard0 mariadb-shard1 rabbitmq mongo nginx)
# The live view (issue 10): Prometheus and the exporters, started by `up`
# after the servers they watch. Each one whose Debian package is missing
# is left out (monitor_services), never an error.
MONITOR=(redis-exporter mysqld-exporter-primary mysqld-exporter-replica mysqld-exporter-shard0
    mysqld-exporter-shard1 blackbox-exporter prometheus)

port_of() {
    case $1 in
    redis) echo 16379 ;;
    memcached) echo 11311 ;;
    mariadb-primary) echo 13306 ;;
    mariadb-replica) echo 13307 ;;
    mariadb-shard0) echo 13316 ;;
    mariadb-shard1) echo 13317 ;;
    rabbitmq) echo 15673 ;;
    mongo) echo 27018 ;;
    nginx) echo 18090 ;;
    haproxy) echo 18080 ;;
    # clone1..9 and worker1..9 only (is_app_process): clone10 would be nginx's
    # port, and worker0 or worker01 names no process of the tier.
    clone[1-9]) echo $((18080 + ${1#clone})) ;;
    # Part 4's workers and baker listen only for GET /health (./lab waits
    # for it, and status shows it).
    worker[1-9]) echo $((18180 + ${1#worker})) ;;
    baker) echo 18190 ;;
    # The live view: the page (served by nginx), Prometheus, the exporters.
    live) echo 18099 ;;
    prometheus) echo 19090 ;;
    redis-exporter) echo 19121 ;;
    mysqld-exporter-primary) echo 19104 ;;
    mysqld-exporter-replica) echo 19105 ;;
    mysqld-exporter-shard0) echo 19106 ;;
    mysqld-exporter-shard1) echo 19107 ;;
    blackbox-exporter) echo 19115 ;;
    # Served by the servers themselves: RabbitMQ's rabbitmq_prometheus
    # plugin, HAProxy's /metrics in its stats listener.
    rabbitmq-metrics) echo 15693 ;;
    haproxy-stats) echo "$HAPROXY_STATS_PORT" ;;
    *) return 1 ;;
    esac
}
RABBIT_DIST_PORT=25673
EPMD_PORT=14369
HAPROXY_STATS_PORT=18404

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() {
    printf 'lab: %s\n' "$*" >&2
    exit 1
}
# The app tier's own processes (what `./lab up partN` starts from the part's
# build, each with a NAME.info saying what it runs): clone1..clone9,
# worker1..worker9 (LAB_CLONES and LAB_WORKERS are 1 to 9), the baker.
# Nothing else: not worker0, not worker01 (a second name for worker1).
is_app_process() { [[ $1 =~ ^(clone[1-9]|worker[1-9]|baker)$ ]]; }
is_service() {
    [[ " ${INFRA[*]} ${MONITOR[*]} haproxy " == *" $1 "* ]] || is_app_process "$1"
}

# ---------------------------------------------------------------- processes

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pidfile() { echo "$RUN/$1.pid"; }
pid_of() {
    local f
    f=$(pidfile "$1")
    [[ -s $f ]] && cat "$f"
}

# A killed process stays a zombie until its parent reaps it, and kill -0
# succeeds on a zombie. The clones' parent is whatever reaps orphans here,
# which may take a while: count a zombie as dead, or a clone SIGKILLed a
# moment ago looks "alive but still booting" and is never restarted.
pid_alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0 # no /proc: trust kill -0
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}
alive() {
    local pid
    pid=$(pid_of "$1") || return 1
    pid_alive "$pid"
}
running() { alive "$1" && port_open "$(port_of "$1")"; }

# Microseconds since the epoch, and a duration since one in seconds to 0.1 s.
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
since() { # start_us -> "1.3"
    local d=$(($(now_us) - $1))
    printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000))
}

wait_port() { # name port [check-alive]
    local name=$1 port=$2 t0 i why
    t0=$(now_us)
    for ((i = 0; i < DEADLINE * 10; i++)); do
        port_open "$port" && return 0
        if [[ -n ${3:-} ]] && ! alive "$name"; then
            # Once more: it may have opened the port and exited since.
            port_open "$port" && return 0
            why="exited after $(since "$t0")s without opening port $port"
            break
        fi
        sleep 0.1
    done
    : "${why:=port $port not open after $(since "$t0")s}"
    printf 'lab: %s did not start (%s). Tail of %s:\n' "$name" "$why" "$(logfile "$name")" >&2
    tail -n 25 "$(logfile "$name")" >&2 2>/dev/null || true
    exit 1
}

logfile() {
    case $1 in
    mariadb-*) echo "$DATA/$1/error.log" ;;
    rabbitmq) echo "$LOGS/rabbitmq/lab@localhost.log" ;;
    *) echo "$LOGS/$1.log" ;;
    esac
}

check_port_free() { # name port
    if port_open "$2"; then
        die "port $2 is taken by another process, so $1 cannot start there. Find it with 'ss -ltnp | grep :$2' and stop it, or stop the other lab with its own './lab down'."
    fi
}

spawn() { # name command... : start in its own session, record the pid
    local name=$1 f
    shift
    mkdir -p "$RUN" "$LOGS"
    f=$(pidfile "$name")
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    # Written whole, then renamed: a reader never sees an empty pid file.
    echo $! >"$f.tmp" && mv -f "$f.tmp" "$f"
}

stop_pid() { # name pid
    local name=$1 pid=$2 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < DEADLINE * 10; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    say "$name did not stop in ${DEADLINE}s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

stop_one() {
    local name=$1 pid
    if pid=$(pid_of "$name") && pid_alive "$pid"; then
        stop_pid "$name" "$pid"
        say "stopped $name"
    fi
    rm -f "$(pidfile "$name")"
    if [[ $name == rabbitmq ]] && pid=$(pid_of epmd) && pid_alive "$pid"; then
        stop_pid epmd "$pid"
        rm -f "$(pidfile epmd)"
    fi
    # Memcached and friends keep the port a moment after exit: wait for it.
    local port i
    port=$(port_of "$name") || return 0 # a name with no port (epmd)
    for ((i = 0; i < DEADLINE * 10; i++)); do
        port_open "$port" || return 0
        sleep 0.1
    done
}

# Starts NAME unless it runs already; returns once it is starting (see
# wait_service).
launch() {
    local name=$1 i
    running "$name" && return 0
    # Alive but not listening: booting (another ./lab started it a moment
    # ago) or dying (killed a moment ago). Wait to see which; a dead one is
    # started afresh below.
    for ((i = 0; i < DEADLINE * 10; i++)); do
        alive "$name" || break
        port_open "$(port_of "$name")" && return 0
        sleep 0.1
    done
    rm -f "$(pidfile "$name")"
    check_port_free "$name" "$(port_of "$name")"
    start_service "$name"
    STARTED+=("$name")
}

wait_service() {
    local name=$1
    wait_port "$name" "$(port_of "$name")" check-alive
    case $name in
    mariadb-*) init_mariadb "$name" ;;
    redis) wait_redis_loaded ;;
    esac
}

# The live view's services, after the servers they watch. Not one of them
# is needed by the course's demos and tests: one that does not start is
# reported, and `up` goes on. But the live view is part of the stack:
# `./lab status` shows it down and exits 1 until it runs. Only one whose
# Debian package is not installed (install.sh) is left out of both.
monitor_up() {
    local name started=() missing=()
    for name in "${MONITOR[@]}"; do
        command -v "$(monitor_binary "$name")" >/dev/null || missing+=("$(monitor_binary "$name")")
    done
    if ((${#missing[@]})); then say "live view without $(printf '%s\n' "${missing[@]}" | sort -u | xargs): not installed"; fi
    for name in $(monitor_services); do
        running "$name" && continue
        rm -f "$(pidfile "$name")"
        if port_open "$(port_of "$name")"; then
            say "port $(port_of "$name") is taken by another process: $name not started (./lab status fails until it runs; ss -ltnp | grep :$(port_of "$name"))"
            continue
        fi
        start_service "$name"
        started+=("$name")
    done
    for name in "${started[@]}"; do
        if (wait_port "$name" "$(port_of "$name")" check-alive); then
            STARTED+=("$name")
        else
            say "$name did not start (the live view goes without it, and ./lab status fails until it runs): ./lab logs $name"
        fi
    done
}

# Redis listens before it has read its append-only file back, and answers
# LOADING until then: ready is when PING says PONG.
wait_redis_loaded() {
    local i
    for ((i = 0; i < DEADLINE * 10; i++)); do
        [[ $(redis-cli -p "$(port_of redis)" PING 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    die "Redis did not finish loading its data in ${DEADLINE}s: ./lab logs redis"
}

http_ok() { # port path: a 200 from 127.0.0.1, with bash alone
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: lab\r\n\r\n' "$2" >&3
        IFS= read -r -t 2 status <&3 && [[ $status == *" 200 "* ]]
    ) 2>/dev/null
}

# ---------------------------------------------------------------- commands

cmd_up() {
    local part=${1:-} t0=$SECONDS
    install
    mkdir -p "$DATA" "$LOGS" "$RUN"
    STARTED=()
    # The primary first: the replica's first start replicates from it.
    local name
    for name in "${INFRA[@]}"; do
        launch "$name"
        [[ $name == mariadb-primary ]] && wait_service mariadb-primary
    done
    for name in "${INFRA[@]}"; do wait_service "$name"; done
    refresh_nginx
    refresh_haproxy
    monitor_up
    versions_json >"$LAB/versions.json"
    if ((${#STARTED[@]})); then say "started: ${STARTED[*]}"; fi
    [[ -z $part ]] || app_up "$part"
    refresh_prometheus
    if running prometheus; then say "live view: http://127.0.0.1:$(port_of live)/ (Prometheus :$(port_of prometheus))"; fi
    say "stack up in $((SECONDS - t0))s (./lab status for the table)"
}

# Every process ./lab started and has not stopped yet: one pid file each
# under .lab/run. More than app_services names after an `up` that failed
# half-way (app.workers already says the new count while the old workers
# still run), or one an older ./lab started under a name it no longer takes.
started_names() {
    local f
    for f in "$RUN"/*.pid; do
        [[ -e $f ]] || continue
        f=${f##*/}
        echo "${f%.pid}"
    done
}

cmd_down() {
    local name
    # In parallel: RabbitMQ and MariaDB each take a few seconds to shut down
    # cleanly. The app tier's, the servers' and the live view's, and any
    # other process with a pid file (a leftover of a failed `up`).
    # (epmd is RabbitMQ's: stop_one rabbitmq stops it once RabbitMQ is down.)
    local names=()
    mapfile -t names < <({
        app_services
        printf '%s\n' "${INFRA[@]}" "${MONITOR[@]}"
        started_names
    } | awk '$0 != "epmd" && !seen[$0]++')
    for name in "${names[@]}"; do stop_one "$name" & done
    wait
    # Nothing of the app tier stays behind: part, variant, build label.
    rm -f "$RUN"/app.* "$RUN"/clone*.info "$RUN"/worker*.info "$RUN"/baker.info
}

cmd_reset() {
    cmd_down
    rm -rf "$DATA" "$LOGS" "$RUN" "$LAB/versions.json"
    say "all data under .lab/ deleted (tools in .lab/tools kept)"
}

# Exit 0 only if every service of the stack is up: the servers, the app
# tier, and the live view (Prometheus and the exporters) too. A live-view
# service whose Debian package is not installed is shown, not counted.
cmd_status() {
    local name ok=0 state pid listed
    printf '%-24s %-6s %-8s %-20s %s\n' SERVICE PORT PID VERSION STATE
    listed=" ${INFRA[*]} $(app_services | xargs) ${MONITOR[*]} "
    for name in "${INFRA[@]}" $(app_services) "${MONITOR[@]}"; do
        pid=$(pid_of "$name" 2>/dev/null || true)
        if [[ " ${MONITOR[*]} " == *" $name "* ]] && ! command -v "$(monitor_binary "$name")" >/dev/null; then
            # Its Debian package is missing here: not a failure.
            printf '%-24s %-6s %-8s %-20s %s\n' "$name" "$(port_of "$name")" - - "not installed ($(monitor_binary "$name")$(monitor_skip_note "$(monitor_binary "$name")"))"
            continue
        fi
        if running "$name"; then
            state=up
            if [[ $name == mariadb-replica ]] && ! mariadb --defaults-file="$DATA/$name/my.cnf" -e "SHOW SLAVE STATUS\G" 2>/dev/null | grep -q 'Slave_SQL_Running: Yes'; then
                state="up (replication stopped)"
            fi
        else
            state=down
            ok=1
        fi
        ! is_app_process "$name" || state="$state  $(clone_info "$name")"
        printf '%-24s %-6s %-8s %-20s %s\n' "$name" "$(port_of "$name")" "${pid:--}" "$(version_of "$name")" "$state"
    done
    # A process of the app tier that is not part of it (left by an `up`
    # that failed half-way): shown, so it is seen; `./lab down` stops it.
    for name in $(started_names); do
        [[ $listed != *" $name "* ]] && is_app_process "$name" && alive "$name" || continue
        printf '%-24s %-6s %-8s %-20s %s\n' "$name" "$(port_of "$name")" "$(pid_of "$name")" "$(version_of "$name")" \
            "left over, not part of the tier: ./lab stop $name"
    done
    return $ok
}

unknown_service() {
    die "unknown service '$1': one of ${INFRA[*]} ${MONITOR[*]} haproxy, clone1..clone9, worker1..worker9 (part 4), baker (part 4)"
}

cmd_start() {
    local name=${1:?usage: ./lab start NAME}
    is_service "$name" || unknown_service "$name"
    install
    STARTED=()
    launch "$name"
    wait_service "$name"
    say "$name is up on port $(port_of "$name")"
}

cmd_stop() {
    local name=${1:?usage: ./lab stop NAME}
    is_service "$name" || unknown_service "$name"
    stop_one "$name"
}

cmd_logs() {
    local name=${1:?usage: ./lab logs NAME}
    is_service "$name" || unknown_service "$name"
    tail -n "${LINES:-40}" "$(logfile "$name")"
}
