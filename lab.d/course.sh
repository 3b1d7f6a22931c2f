# shellcheck shell=bash
# lab.d/course.sh: what the course runs on the stack. A part's app tier
# (`up partN`, `roll`, its variant and build), the tour of the demos, the
# test suite and the benches. Sourced by ./lab.
#
# The app tier's state lives in .lab/run: app.part, app.bin, app.clones,
# app.workers (part 4), app.build, app.env (the variant: SESSIONS=...,
# READS=...), and one NAME.info per clone, worker and baker saying what it
# was started as. `./lab down` removes them all.

# ---------------------------------------------------------------- app tier

# crate of each part with an app tier
part_crate() {
    case $1 in
    part1) echo part1-clones ;;
    part2) echo part2-database ;;
    part3) echo part3-cache ;;
    part4) echo part4-async ;;
    *) die "unknown part '$1': use part1, part2, part3 or part4" ;;
    esac
}

cargo_profile_flag() { [[ $PROFILE == debug ]] || echo --release; }

PART_BIN="" LOAD_BIN=""
app_binary() { # part -> builds the workspace's bins, sets PART_BIN and LOAD_BIN
    local part=$1 crate
    crate=$(part_crate "$part")
    # One build for every part and the tour: `cargo build -p <crate>`
    # resolves each crate's own feature set, so going from part 1 to part 4
    # (or to `./lab tour`) compiled every dependency again. The first `up`
    # builds everything; every later one finds it built. `./lab test` has
    # built every target already (its own features) and says so.
    if [[ ${LAB_PREBUILT:-} != 1 ]]; then
        say "building the workspace's binaries ($PROFILE; once for every part and the tour)"
        # shellcheck disable=SC2046 # the flag is one word or none
        (cd "$ROOT" && cargo build -q $(cargo_profile_flag) --workspace --bins) || die "building the workspace's binaries failed"
    fi
    PART_BIN=$ROOT/target/$PROFILE/$part-server
    local loader=$part load_crate=$crate
    # Parts 3 and 4 serve part 2's dataset: part2-load loads it, as for part 2.
    if [[ $part == part3 || $part == part4 ]]; then
        loader=part2 load_crate=part2-database
    fi
    LOAD_BIN=$ROOT/target/$PROFILE/$loader-load
    [[ -x $LOAD_BIN ]] ||
        die "$loader-load ($load_crate) is missing from target/$PROFILE: it loads $part's dataset before the clones start. Build it with: cargo build $(cargo_profile_flag) --workspace --bins"
    # Part 4's other processes come from the same build as its server.
    local bin
    for bin in $(part_extra_bins "$part"); do
        [[ -x $ROOT/target/$PROFILE/$bin ]] ||
            die "$bin is missing from target/$PROFILE: ./lab up $part runs it beside the clones (see $crate's src/bin; build: cargo build $(cargo_profile_flag) --workspace --bins)"
    done
}
part_extra_bins() { [[ $1 != part4 ]] || echo part4-worker part4-bake; }

# Part 4's baked pages: the directory part4-bake and the workers write and
# nginx serves (its root). Absolute: the processes do not run from ROOT.
bake_dir() { echo "$DATA/nginx/html"; }

# Loads the part's dataset (idempotent: a no-op when that scale is loaded).
run_load() { # part
    local loader
    loader=$(basename "$LOAD_BIN")
    say "$loader: $1's dataset (LOAD_DATASET=${LOAD_DATASET:-default})"
    (cd "$ROOT" && "$LOAD_BIN") || die "$loader failed (its output is above)"
}

# The variant: a value given on this command line wins, then the one the
# tier was started with (app.env), then .env and the binary's default.
# Written back, so the next `start cloneN`, `up partN` or `roll` reuses it.
declare -A VARIANT=()
remember_variant() {
    local line v
    VARIANT=()
    if [[ -f $RUN/app.env ]]; then
        while IFS= read -r line; do
            [[ $line == *=* ]] && VARIANT[${line%%=*}]=${line#*=}
        done <"$RUN/app.env"
    fi
    for v in "${!EXPLICIT[@]}"; do VARIANT[$v]=${EXPLICIT[$v]}; done
    mkdir -p "$RUN"
    : >"$RUN/app.env"
    for v in "${VARIANT_VARS[@]}"; do
        [[ -v VARIANT[$v] ]] && echo "$v=${VARIANT[$v]}" >>"$RUN/app.env"
    done
    return 0
}
variant_words() { # "SESSIONS=memory READS=naive" or "default"
    local words
    words=$(paste -sd' ' "$RUN/app.env" 2>/dev/null)
    echo "${words:-default}"
}

app_build() { cat "$RUN/app.build" 2>/dev/null || echo "${LAB_BUILD:-dev}"; }

# Starts one process of the app tier (a clone, a worker, the baker) with
# the tier's variant, and writes NAME.info saying what it runs.
spawn_app() { # name extra-env... -- command...
    local name=$1 v env=()
    shift
    [[ -f $RUN/app.bin ]] || die "no app tier has been started: ./lab up part1 (or part2, part3, part4)"
    remember_variant
    for v in "${!VARIANT[@]}"; do env+=("$v=${VARIANT[$v]}"); done
    while [[ $1 != -- ]]; do
        env+=("$1")
        shift
    done
    shift
    spawn "$name" env "${env[@]}" PORT="$(port_of "$name")" LAB_BUILD="$(app_build)" BAKE_DIR="$(bake_dir)" "$@"
    {
        echo "part=$(cat "$RUN/app.part")"
        echo "variant=$(variant_words)"
        echo "build=$(app_build)"
        echo "profile=$(basename "$(dirname "$(cat "$RUN/app.bin")")")"
    } >"$RUN/$name.info"
}

# The same binary and configuration for every clone, as from one image;
# only the id and port differ.
start_clone() {
    local n
    n=$(cat "$RUN/app.clones" 2>/dev/null || echo 0)
    ((${1#clone} <= n)) || die "the tier runs $n clones (clone1..clone$n): LAB_CLONES=${1#clone} ./lab up $(cat "$RUN/app.part" 2>/dev/null || echo part1) for more"
    spawn_app "$1" CLONE_ID="$1" -- "$(cat "$RUN/app.bin")"
}

# A binary of the tier's build other than its server (part4-worker, part4-bake).
app_sibling() { echo "$(dirname "$(cat "$RUN/app.bin")")/$1"; }
part4_only() { # name
    [[ $(cat "$RUN/app.part" 2>/dev/null) == part4 ]] ||
        die "$1 belongs to part 4's app tier, and part 4 is not running: ./lab up part4"
}

# Part 4's workers: the same binary for each, named after the service
# (worker1, ...: the name in the jobs' rows and the logs).
start_worker() {
    part4_only "$1"
    local n
    n=$(cat "$RUN/app.workers" 2>/dev/null || echo 0)
    ((${1#worker} <= n)) || die "part 4 runs $n workers (worker1..worker$n): LAB_WORKERS=${1#worker} ./lab up part4 for more"
    spawn_app "$1" WORKER_NAME="$1" -- "$(app_sibling part4-worker)"
}

# Part 4's baker: re-bakes every page every BAKE_INTERVAL_SECS (what the
# workers' re-bakes on events miss).
bake_interval() {
    local s=${VARIANT[BAKE_INTERVAL_SECS]:-${BAKE_INTERVAL_SECS:-300}}
    [[ $s =~ ^[0-9]+$ ]] && ((s > 0)) ||
        die "BAKE_INTERVAL_SECS must be a whole number of seconds above 0 for the lab's baker (0 means bake once and exit), not '$s'"
    echo "$s"
}
start_baker() {
    local interval
    part4_only baker
    remember_variant
    interval=$(bake_interval) || exit 1
    # bake_once baked the tree just before: the first full re-bake waits one interval.
    spawn_app baker -- "$(app_sibling part4-bake)" --interval-secs "$interval" --first-bake-after-secs "$interval"
}

# Every page baked once, before the clones serve part 4: nginx has the
# tree from the start. Skipped when the baker runs already (it keeps the
# tree baked).
bake_once() {
    local t0 v env=()
    clone_current baker && return 0
    t0=$(now_us)
    say "part4-bake --once: every article and author page into $(bake_dir)"
    remember_variant
    for v in "${!VARIANT[@]}"; do env+=("$v=${VARIANT[$v]}"); done
    (cd "$ROOT" && env "${env[@]}" BAKE_DIR="$(bake_dir)" "$(app_sibling part4-bake)" --once) ||
        die "part4-bake --once failed (its output is above)"
    say "baked in $(since "$t0")s"
}

clone_field() { # clone field
    sed -n "s/^$2=//p" "$RUN/$1.info" 2>/dev/null
}
clone_info() { # for ./lab status
    [[ -f $RUN/$1.info ]] || return 0
    printf '%s  %s  (%s build)' "$(clone_field "$1" part)" "$(clone_field "$1" variant)" "$(clone_field "$1" profile)"
}

app_services() {
    local n i
    n=$(cat "$RUN/app.clones" 2>/dev/null || echo 0)
    [[ -f $RUN/app.part ]] || return 0
    for ((i = 1; i <= n; i++)); do echo "clone$i"; done
    n=$(cat "$RUN/app.workers" 2>/dev/null || echo 0)
    for ((i = 1; i <= n; i++)); do echo "worker$i"; done
    ((n == 0)) || echo baker
    echo haproxy
}

# HAProxy's own view of a clone, from its stats page (CSV): UP once a
# health check passed, so it routes to it.
haproxy_sees_up() { # clone
    (
        exec 3<>"/dev/tcp/127.0.0.1/$HAPROXY_STATS_PORT" || exit 1
        printf 'GET /;csv HTTP/1.0\r\nHost: lab\r\n\r\n' >&3
        timeout 2 cat <&3
    ) 2>/dev/null | awk -F, -v s="$1" '$1 == "clones" && $2 == s { found = ($18 == "UP") } END { exit !found }'
}

# Restarts one clone as the tier now is (binary, variant, build) and waits
# until HAProxy routes to it again, so the next one can go: the tier never
# has more than one clone down, and sessions (in Redis) survive.
replace_clone() { # clone
    local name=$1 i
    stop_one "$name"
    STARTED=()
    launch "$name"
    wait_service "$name"
    running haproxy || return 0
    for ((i = 0; i < DEADLINE * 10; i++)); do
        haproxy_sees_up "$name" && return 0
        sleep 0.1
    done
    die "HAProxy does not route to $name ${DEADLINE}s after it started: ./lab logs $name"
}

# Does the running clone (worker, baker) match the tier as it should now be?
clone_current() { # clone
    running "$1" &&
        [[ $(clone_field "$1" part) == "$(cat "$RUN/app.part")" ]] &&
        [[ $(clone_field "$1" variant) == "$(variant_words)" ]] &&
        [[ $(clone_field "$1" profile) == "$PROFILE" ]]
}

app_up() {
    local part=$1 i n old workers=0 old_workers
    # Part 2's first load takes about a minute at the default scale.
    [[ $part != part2 && $part != part3 && $part != part4 ]] || local DEADLINE=$((DEADLINE > 300 ? DEADLINE : 300))
    # clone1..9 on 18081..18089: 18090 is nginx's.
    [[ $CLONES =~ ^[1-9]$ ]] || die "LAB_CLONES must be 1 to 9 (clone<N> listens on 18080+N, nginx on 18090), not '$CLONES'"
    if [[ $part == part4 ]]; then
        # worker1..9 on 18181..18189: 18190 is the baker's.
        [[ $WORKERS =~ ^[1-9]$ ]] || die "LAB_WORKERS must be 1 to 9 (worker<N> answers /health on 18180+N, the baker on 18190), not '$WORKERS'"
        workers=$WORKERS
    fi
    app_binary "$part"
    run_load "$part"
    mkdir -p "$RUN"
    old=$(cat "$RUN/app.clones" 2>/dev/null || echo 0)
    old_workers=$(cat "$RUN/app.workers" 2>/dev/null || echo 0)
    echo "$PART_BIN" >"$RUN/app.bin"
    echo "$part" >"$RUN/app.part"
    echo "$CLONES" >"$RUN/app.clones"
    echo "$workers" >"$RUN/app.workers"
    remember_variant
    [[ $part != part4 ]] || bake_once
    # nginx serves the baked tree only to part 4's tier (render_nginx_site):
    # on now that it is baked, off as soon as another part takes over.
    refresh_nginx
    STARTED=()
    if ((old != CLONES)) && running haproxy; then
        # Another clone count: HAProxy's server list changes. Its master
        # (-W) re-reads the config on SIGUSR2 and hands over without
        # dropping connections.
        render_haproxy lab >"$DATA/haproxy/haproxy.cfg"
        haproxy -c -q -f "$DATA/haproxy/haproxy.cfg" || die "HAProxy refused its config: $DATA/haproxy/haproxy.cfg"
        kill -USR2 "$(pid_of haproxy)"
        say "HAProxy reloaded with $CLONES clones"
    fi
    if running haproxy; then
        # A tier is serving: replace what differs one clone at a time.
        for ((i = 1; i <= CLONES; i++)); do
            clone_current "clone$i" && continue
            replace_clone "clone$i"
            say "clone$i now runs $part ($(variant_words))"
        done
    else
        for ((i = 1; i <= CLONES; i++)); do
            if ! clone_current "clone$i"; then
                stop_one "clone$i"
                launch "clone$i"
            fi
        done
        launch haproxy
        for ((i = 1; i <= CLONES; i++)); do wait_service "clone$i"; done
        wait_service haproxy
    fi
    # Past the count: the old tier's, and any an earlier `up` that failed
    # half-way left running (its pid file says so).
    for ((i = CLONES + 1; i <= 9; i++)); do
        ((i <= old)) || [[ -e $(pidfile "clone$i") ]] || continue
        stop_one "clone$i"
        rm -f "$RUN/clone$i.info"
    done
    workers_up "$workers" "$old_workers"
    # HAProxy routes only once its first health checks pass.
    for ((i = 0; i < DEADLINE * 10; i++)); do
        if http_ok "$(port_of haproxy)" /health; then
            say "$part's app tier: $CLONES clones ($(variant_words), $PROFILE build) behind HAProxy :$(port_of haproxy)"
            return 0
        fi
        sleep 0.1
    done
    die "HAProxy never answered GET /health with 200: see ./lab logs haproxy and ./lab logs clone1"
}

# Part 4's workers and baker, as the tier now is: a worker or baker that
# runs something else (another part's build, variant or profile) is
# restarted (SIGTERM: a worker finishes or returns its job first); those
# past the count, or all of them for parts 1 to 3, are stopped.
workers_up() { # workers old_workers
    local n=$1 old=$2 i name started=()
    for ((i = 1; i <= n; i++)); do
        clone_current "worker$i" && continue
        stop_one "worker$i"
        launch "worker$i"
        started+=("worker$i")
    done
    if ((n > 0)) && ! clone_current baker; then
        stop_one baker
        launch baker
        started+=(baker)
    fi
    for name in "${started[@]}"; do wait_service "$name"; done
    ((${#started[@]} == 0)) || say "started ${started[*]} ($(variant_words), $PROFILE build)"
    for ((i = n + 1; i <= 9; i++)); do
        ((i <= old)) || [[ -e $(pidfile "worker$i") ]] || continue
        stop_one "worker$i"
        rm -f "$RUN/worker$i.info"
    done
    if ((n == 0)); then
        stop_one baker
        rm -f "$RUN/baker.info"
    fi
    return 0
}

cmd_roll() {
    [[ -f $RUN/app.part ]] || die "no app tier is running: start one with ./lab up part1"
    local part build n i
    part=$(cat "$RUN/app.part")
    n=$(cat "$RUN/app.clones")
    build=${1:-build-$(date +%Y%m%d-%H%M%S)}
    app_binary "$part"
    echo "$PART_BIN" >"$RUN/app.bin"
    echo "$build" >"$RUN/app.build"
    remember_variant
    for ((i = 1; i <= n; i++)); do
        # SIGTERM: the clone finishes its requests in flight; HAProxy retries
        # new ones on the others until the clone is back.
        replace_clone "clone$i"
        say "clone$i now runs $build ($(variant_words))"
    done
    # Part 4's workers and baker: one at a time too (the queue holds the
    # jobs meanwhile; a stopped worker finishes or returns its job).
    local name
    for name in $(app_services); do
        [[ $name == worker* || $name == baker ]] || continue
        stop_one "$name"
        launch "$name"
        wait_service "$name"
    done
    say "rolled $n clones to $build"
}

# ---------------------------------------------------------------- tour, test, bench

# What the results files record so a run can be reproduced.
export_provenance() {
    local rev
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [[ -z $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] || rev+=-dirty
    export LAB_GIT_REV=$rev LAB_PROFILE=$PROFILE
}

DEMOS=(part1-clones:part1-demo part2-database:part2-demo part3-cache:part3-demo part4-async:part4-demo)

mins() { echo "$(($1 / 60))m $(($1 % 60))s"; } # seconds -> "4m 5s"

cmd_tour() {
    local only="" repeat=${DEMO_REPEAT:-1} entry crate bin n t0=$SECONDS
    while (($#)); do
        case $1 in
        --repeat)
            repeat=${2:?usage: ./lab tour [partN] [--repeat N]}
            shift 2
            ;;
        --repeat=*)
            repeat=${1#--repeat=}
            shift
            ;;
        part[1-4])
            only=$1
            shift
            ;;
        *) die "usage: ./lab tour [partN] [--repeat N]" ;;
        esac
    done
    [[ $repeat =~ ^[1-9][0-9]*$ ]] && ((repeat <= 20)) || die "--repeat takes a whole number of runs from 1 to 20, not '$repeat'"
    export DEMO_REPEAT=$repeat
    export_provenance
    cmd_up
    local t_up=$SECONDS
    say "building the demos ($PROFILE)"
    # shellcheck disable=SC2046 # the flag is one word or none
    (cd "$ROOT" && cargo build -q $(cargo_profile_flag) --workspace --bins)
    local t_built=$SECONDS
    mkdir -p "$ROOT/target/lab/results"
    for entry in "${DEMOS[@]}"; do
        crate=${entry%%:*} bin=${entry##*:} n=${bin%%-*}
        [[ -z $only || $only == "$n" ]] || continue
        say "$crate (x$repeat)"
        rm -f "$ROOT/target/lab/results/$n.json"
        (cd "$ROOT" && "$ROOT/target/$PROFILE/$bin") || die "$bin failed (its output is above)"
    done
    (cd "$ROOT" && "$ROOT/target/$PROFILE/lab-report")
    # The build is the one-time cost `./lab up partN` shares (about 11
    # minutes clean on 2 cores, seconds once built): printed apart, so the
    # demos' own time (the 15-minute budget) reads the same either way.
    say "tour done in $(mins $((SECONDS - t0))): stack up $(mins $((t_up - t0))), build $(mins $((t_built - t_up))), demos and report $(mins $((SECONDS - t_built))) (revision $LAB_GIT_REV, $PROFILE, --repeat $repeat)"
}

cmd_test() {
    # Debug: the build cargo test makes anyway, so nothing is built twice.
    PROFILE=debug
    export LAB_PROFILE=debug
    cmd_up
    cd "$ROOT" || die "cannot cd to $ROOT"
    say "cargo fmt --check"
    cargo fmt --all -- --check
    say "cargo clippy"
    cargo clippy -q --workspace --all-targets -- -D warnings
    say "cargo doc"
    RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps --workspace
    say "shellcheck"
    # -x follows every `.`: each lab.d/*.sh is checked as it runs, sourced
    # by lab (alone, its variables would look unused).
    shellcheck -x lab
    # One build of every target (bins, tests, benches) resolves the same
    # features as `cargo test` below, so that reuses it whole; the parts the
    # self-test starts run these bins rather than building their own.
    say "cargo build (every target, debug)"
    cargo build -q --workspace --all-targets
    export LAB_PREBUILT=1
    say "shell self-test"
    selftest
    say "cargo test"
    cargo test --workspace --all-targets
    # The live page's browser test left its screenshot beside the report:
    # rebuild the report so it shows it (with whatever a tour recorded).
    "$ROOT/target/debug/lab-report"
    say "docker-compose config"
    local profile
    docker-compose -f docker-compose.yml config -q
    for profile in part1 part2 part3 part4; do
        docker-compose -f docker-compose.yml --profile "$profile" config -q
    done
    say "all checks passed"
}

cmd_bench() {
    local only=${1:-}
    export_provenance
    cmd_up
    cd "$ROOT" || die "cannot cd to $ROOT"
    if [[ -n $only ]]; then
        cargo bench -p benches --bench "$only"
    else
        cargo bench -p benches
    fi
}
