# shellcheck shell=bash
# lab.d/selftest.sh: the shell phase of `./lab test`. Each check drives
# ./lab itself as a learner types it and prints one line; the first that
# fails stops the run with what it saw. It restarts Redis and the app tier,
# so it runs from `./lab test`, never beside another suite.
# Sourced by ./lab.

check() { printf '  \033[32mok\033[0m  %s\n' "$*" >&2; }
fail() { die "self-test: $*"; }

# Runs ./lab as the learner does, quietly unless it fails.
lab_cmd() {
    local out
    out=$("$ROOT/lab" "$@" 2>&1) || {
        printf '%s\n' "$out" >&2
        return 1
    }
}

# An HTTP status from curl ("000" when no answer came at all).
http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" || true; }

selftest() {
    local t0=$SECONDS
    selftest_haproxy_template
    selftest_nginx_template
    selftest_names
    selftest_live
    selftest_redis_persists
    selftest_recovery_loop

    # The slow-header check waits for HAProxy's timeout: it runs beside
    # the next ones (HAProxy stays up while the clones change) and is
    # collected at the end.
    local slow_result slow_pid
    slow_result=$(mktemp)
    selftest_slow_headers >"$slow_result" 2>&1 &
    slow_pid=$!

    selftest_switch_part
    selftest_edge_413

    wait "$slow_pid" || {
        cat "$slow_result" >&2
        rm -f "$slow_result"
        fail "HAProxy did not cut a client that trickles its headers"
    }
    cat "$slow_result" >&2
    rm -f "$slow_result"
    check "self-test done in $((SECONDS - t0))s"
}

selftest_haproxy_template() {
    diff -u "$ROOT/compose/haproxy.cfg" <(render_haproxy compose) >&2 ||
        fail "compose/haproxy.cfg differs from lab.d/haproxy.cfg.in's rendering: ./lab haproxy-cfg compose > compose/haproxy.cfg"
    check "compose/haproxy.cfg is the rendering of lab.d/haproxy.cfg.in"
    local f
    f=$(mktemp)
    render_haproxy lab >"$f"
    haproxy -c -q -f "$f" || fail "HAProxy refuses the lab's rendering: $f"
    rm -f "$f"
    check "HAProxy accepts the rendered config"
}

selftest_nginx_template() {
    diff -u "$ROOT/compose/nginx/default.conf" <(render_nginx_site compose) >&2 ||
        fail "compose/nginx/default.conf differs from lab.d/nginx-site.conf.in's rendering: ./lab nginx-cfg compose > compose/nginx/default.conf"
    check "compose/nginx/default.conf is the rendering of lab.d/nginx-site.conf.in"
    local d mode
    d=$(mktemp -d)
    mkdir -p "$d/nginx/tmp" "$d/logs"
    for mode in baked proxy; do
        (
            DATA=$d LOGS=$d/logs
            nginx_conf "$mode" >"$d/nginx.conf"
            nginx -t -q -p "$d/nginx" -c "$d/nginx.conf"
        ) || fail "nginx refuses the lab's rendering ($mode): $d/nginx.conf"
    done
    [[ $(render_nginx_site lab proxy) != *X-Baked* ]] || fail "./lab nginx-cfg lab proxy still has the baked pages' locations"
    rm -rf "$d"
    check "nginx accepts the rendered config (part 4: baked pages, fallthrough to HAProxy; other parts: HAProxy only)"
}

# The names ./lab start/stop/logs take, and their ports (README's table).
selftest_names() {
    local name want
    for name in clone1:18081 clone3:18083 worker1:18181 worker2:18182 worker9:18189 baker:18190; do
        want=${name#*:} name=${name%%:*}
        is_service "$name" || fail "./lab does not know the service '$name'"
        [[ $(port_of "$name") == "$want" ]] || fail "$name should be on port $want, port_of says $(port_of "$name")"
    done
    for name in worker clone bakers worker1x worker0 worker01 worker10 clone0 clone01 clone10; do
        ! is_service "$name" || fail "./lab takes '$name' for a service"
    done
    check "clone<N>, worker<N> and baker resolve to their ports (18080+N, 18180+N, 18190)"
}

# The live view (issue 10): Prometheus accepts the rendered scrape config,
# and nginx serves the page and passes its /api/ to Prometheus.
selftest_live() {
    if ! command -v promtool >/dev/null; then
        check "live view not checked: Debian's prometheus is not installed"
        return 0
    fi
    local f live
    f=$(mktemp)
    render_prometheus >"$f"
    promtool check config "$f" >/dev/null 2>&1 || fail "promtool refuses the rendered scrape config: $f"
    rm -f "$f"
    live=http://127.0.0.1:$(port_of live)
    [[ $(http_status "$live/") == 200 ]] || fail "the live page is not served on $live/: ./lab up, ./lab logs nginx"
    [[ $(curl -s --max-time 10 "$live/api/v1/query?query=up") == *'"status":"success"'* ]] ||
        fail "the live page's $live/api/ does not reach Prometheus: ./lab status, ./lab logs prometheus"
    check "the live view: Prometheus takes its scrape config; $live/ serves the page and its /api/"
}

selftest_redis_persists() {
    local key value got
    key=lab:selftest:$RANDOM$RANDOM value=kept-$RANDOM
    redis-cli -p "$(port_of redis)" SET "$key" "$value" EX 600 >/dev/null || fail "redis SET failed: is Redis up? ./lab up"
    lab_cmd stop redis || fail "./lab stop redis failed"
    lab_cmd start redis || fail "./lab start redis failed"
    got=$(redis-cli -p "$(port_of redis)" GET "$key")
    redis-cli -p "$(port_of redis)" DEL "$key" >/dev/null
    [[ $got == "$value" ]] || fail "Redis lost a key across ./lab stop redis; ./lab start redis (got '$got')"
    check "Redis keeps its data across a restart (append-only file)"
}

# The kill drill's recovery step, which once failed one time in three.
selftest_recovery_loop() {
    local round pid
    lab_cmd up part1 || fail "./lab up part1 failed"
    for round in 1 2 3 4 5 6 7 8; do
        pid=$(pid_of clone2) || fail "no pid file for clone2 after ./lab up part1"
        kill -KILL "$pid"
        lab_cmd up part1 || fail "round $round: ./lab up part1 right after SIGKILL of clone2 failed"
        http_ok "$(port_of clone2)" /health || fail "round $round: clone2 does not answer /health after ./lab up part1"
    done
    check "8 rounds of SIGKILL clone2 + ./lab up part1 all recover"
}

selftest_switch_part() {
    local i status
    lab_cmd up part2 || fail "./lab up part2 after part1 failed"
    for ((i = 1; i <= CLONES; i++)); do
        [[ $(clone_field "clone$i" part) == part2 ]] || fail "clone$i still runs $(clone_field "clone$i" part) after ./lab up part2"
    done
    local table
    table=$("$ROOT/lab" status || true) # its exit code is about other services
    [[ $table =~ (^|$'\n')clone1\ [^$'\n']*\ part2\  ]] || fail "./lab status does not say clone1 runs part2: $table"
    # Every clone answers a part 2 route (round robin: as many tries as clones).
    for ((i = 1; i <= CLONES; i++)); do
        status=$(http_status "http://127.0.0.1:$(port_of haproxy)/users/user1")
        [[ $status == 200 ]] || fail "GET /users/user1 (a part 2 route) through HAProxy answered $status after ./lab up part2"
    done
    # nginx serves baked pages only to part 4's tier: a tree an earlier
    # part 4 left is not served to part 2's (a browser's request included).
    [[ $(curl -sI --max-time 10 -H 'Accept: text/html' "http://127.0.0.1:$(port_of nginx)/users/user1") != *X-Baked* ]] ||
        fail "nginx serves a baked page on part 2's tier: see $DATA/nginx/nginx.conf"
    check "./lab up part2 after part1 leaves only part 2 clones, status says so, and nginx serves no baked page"
}

selftest_edge_413() {
    local body status limit=${MAX_AVATAR_BYTES:-262144}
    body=$(mktemp)
    head -c $((limit * 4)) /dev/zero >"$body"
    # `Expect:` (empty) stops curl sending Expect: 100-continue, as many
    # clients do not.
    status=$(http_status -X PUT -H 'Expect:' -H 'Content-Type: image/png' --data-binary "@$body" \
        "http://127.0.0.1:$(port_of haproxy)/me/avatar")
    rm -f "$body"
    [[ $status == 413 ]] || fail "an oversized avatar through HAProxy answered $status, not 413"
    check "an oversized avatar without Expect: 100-continue gets its 413 through HAProxy"
}

# A client that sends part of its headers and then nothing: HAProxy's
# `timeout http-request` must close it (408).
selftest_slow_headers() {
    local deadline=$((SECONDS + 30)) line=""
    exec 4<>"/dev/tcp/127.0.0.1/$(port_of haproxy)" || fail "HAProxy is not listening"
    printf 'GET /health HTTP/1.1\r\nHost: lab\r\n' >&4
    local rc
    while ((SECONDS < deadline)); do
        # read -t: 0 with a line (HAProxy's 408), >128 on timeout (still
        # open), 1 at end of file (closed without a word).
        if IFS= read -r -t 1 line <&4; then break; else rc=$?; fi
        ((rc > 128)) || break
    done
    exec 4>&-
    ((SECONDS < deadline)) || fail "a connection with unfinished headers was still open after 30s"
    check "HAProxy cut a client with unfinished headers (${line:-closed})"
}
