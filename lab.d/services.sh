# shellcheck shell=bash
# lab.d/services.sh: each server's configuration and how it starts. Every
# server binds 127.0.0.1 on a port of its own and keeps its data under
# .lab/data/NAME. Sourced by ./lab.

start_service() {
    local name=$1
    case $name in
    redis) start_redis ;;
    memcached) start_memcached ;;
    mariadb-*) start_mariadb "$name" ;;
    rabbitmq) start_rabbitmq ;;
    mongo) start_mongo ;;
    nginx) start_nginx ;;
    haproxy) start_haproxy ;;
    clone*) start_clone "$name" ;;
    worker*) start_worker "$name" ;;
    baker) start_baker ;;
    redis-exporter | mysqld-exporter-* | blackbox-exporter | prometheus) start_monitor "$name" ;;
    esac
}

# Redis holds sessions and avatars: user data, not a cache. The append-only
# file, fsynced once a second, keeps them across a restart; what a crash or
# a SIGKILL can cost is the last second of writes. (A clean stop, as
# `./lab stop redis` does, loses nothing.) No RDB snapshots on top: one
# persistence mechanism to explain.
start_redis() {
    local d=$DATA/redis
    mkdir -p "$d/data"
    cat >"$d/redis.conf" <<EOF
bind 127.0.0.1
port $(port_of redis)
dir $d/data
save ""
appendonly yes
appendfsync everysec
daemonize no
protected-mode yes
EOF
    spawn redis redis-server "$d/redis.conf"
}

start_memcached() {
    spawn memcached memcached -u root -l 127.0.0.1 -p "$(port_of memcached)" -U 0 -m 64 -c 1024
}

# utf8mb4 end to end: the server's default (so every database a test creates
# gets it), the lab database (below), and the mariadb client. MariaDB's
# "utf8" is utf8mb3: three bytes at most, no emoji.
MARIADB_CHARSET=utf8mb4
MARIADB_COLLATION=utf8mb4_unicode_ci

mariadb_cnf() { # name server-id extra...
    local name=$1 id=$2 d=$DATA/$1
    shift 2
    mkdir -p "$d/data" "$d/tmp"
    {
        cat <<EOF
[client]
socket=$d/mysqld.sock
user=root
default-character-set=$MARIADB_CHARSET

[mariadbd]
user=root
datadir=$d/data
tmpdir=$d/tmp
socket=$d/mysqld.sock
pid-file=$d/mysqld.pid
log-error=$d/error.log
port=$(port_of "$name")
bind-address=127.0.0.1
skip-name-resolve
server-id=$id
log-bin=binlog
binlog-format=ROW
# Binary logs rotate at 64 MB and go after an hour (at each rotation and
# start): a test run writes gigabytes of row events, and the replica reads
# them within milliseconds. A replica stopped for longer than that while
# writes go on cannot catch up (error 1236): ./lab reset.
max-binlog-size=64M
binlog-expire-logs-seconds=3600
gtid-strict-mode=1
gtid-domain-id=$id
innodb-buffer-pool-size=128M
performance-schema=OFF
max-connections=500
character-set-server=$MARIADB_CHARSET
collation-server=$MARIADB_COLLATION
EOF
        local line
        for line in "$@"; do echo "$line"; done
    } >"$d/my.cnf"
}

sql() { # name statements
    mariadb --defaults-file="$DATA/$1/my.cnf" -N -B -e "$2"
}

# What the app and the tests may do: no SUPER, no READ ONLY ADMIN, so the
# replica's read_only applies to them. labadmin is for drills (STOP SLAVE).
LAB_GRANTS="SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, REFERENCES, TRIGGER, PROCESS, BINLOG MONITOR, SLAVE MONITOR"
mariadb_users_sql() {
    cat <<EOF
CREATE USER IF NOT EXISTS 'lab'@'127.0.0.1' IDENTIFIED BY 'lab';
GRANT $LAB_GRANTS ON *.* TO 'lab'@'127.0.0.1';
CREATE USER IF NOT EXISTS 'labadmin'@'127.0.0.1' IDENTIFIED BY 'labadmin';
GRANT ALL PRIVILEGES ON *.* TO 'labadmin'@'127.0.0.1' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS lab CHARACTER SET $MARIADB_CHARSET COLLATE $MARIADB_COLLATION;
EOF
}

start_mariadb() {
    local name=$1 id extra=()
    case $name in
    mariadb-primary) id=1 ;;
    mariadb-replica) id=2 extra=(read-only=1 log-slave-updates relay-log=relay) ;;
    mariadb-shard0) id=10 ;;
    mariadb-shard1) id=11 ;;
    esac
    local d=$DATA/$name
    mariadb_cnf "$name" "$id" "${extra[@]}"
    if [[ ! -f $d/.initialised ]]; then
        rm -rf "$d/data" && mkdir -p "$d/data"
        mariadb-install-db --defaults-file="$d/my.cnf" --user=root --skip-test-db >"$LOGS/$name-install.log" 2>&1 ||
            {
                tail -n 20 "$LOGS/$name-install.log" >&2
                die "mariadb-install-db failed for $name"
            }
    fi
    spawn "$name" mariadbd --defaults-file="$d/my.cnf"
}

init_mariadb() { # after the port is open: users, databases, replication (once)
    local name=$1 d=$DATA/$1
    if [[ -f $d/.initialised ]]; then
        upgrade_charset "$name"
        return 0
    fi
    case $name in
    mariadb-replica)
        # Users and the lab database arrive by replication from the primary.
        sql "$name" "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$(port_of mariadb-primary),
            MASTER_USER='repl', MASTER_PASSWORD='repl', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos;
            START SLAVE;"
        local i
        for ((i = 0; i < DEADLINE * 10; i++)); do
            sql "$name" "SELECT 1 FROM mysql.user WHERE user='lab'" 2>/dev/null | grep -q 1 && break
            sleep 0.1
        done
        sql "$name" "SELECT 1 FROM mysql.user WHERE user='lab'" | grep -q 1 ||
            die "the replica did not catch up with the primary in ${DEADLINE}s: see './lab logs mariadb-replica' (a new replica replays the primary's binary logs from the start, which go after an hour: with an older primary, './lab reset' starts both afresh)"
        ;;
    mariadb-primary)
        sql "$name" "$(mariadb_users_sql)
            CREATE USER IF NOT EXISTS 'repl'@'127.0.0.1' IDENTIFIED BY 'repl';
            GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';"
        ;;
    *) sql "$name" "$(mariadb_users_sql)" ;;
    esac
    touch "$d/.initialised"
}

# A datadir made before the lab set utf8mb4 has a latin1 `lab` database:
# convert it and its tables once. The replica gets it by replication.
upgrade_charset() {
    local name=$1 t
    [[ $name != mariadb-replica ]] || return 0
    [[ $(sql "$name" "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='lab'") == latin1 ]] || return 0
    say "$name: converting the lab database to $MARIADB_CHARSET"
    sql "$name" "ALTER DATABASE lab CHARACTER SET $MARIADB_CHARSET COLLATE $MARIADB_COLLATION"
    for t in $(sql "$name" "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='lab' AND TABLE_TYPE='BASE TABLE' AND TABLE_COLLATION LIKE 'latin1%'"); do
        sql "$name" "ALTER TABLE lab.\`$t\` CONVERT TO CHARACTER SET $MARIADB_CHARSET COLLATE $MARIADB_COLLATION"
    done
}

rabbit_env() {
    local d=$DATA/rabbitmq
    export HOME=$d/home
    export RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf
    export RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
    export RABBITMQ_MNESIA_BASE=$d/mnesia
    export RABBITMQ_LOG_BASE=$LOGS/rabbitmq
    export RABBITMQ_PID_FILE=$d/rabbitmq.pid
    export RABBITMQ_NODENAME=lab@localhost
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_NODE_PORT=$(port_of rabbitmq)
    export RABBITMQ_NODE_PORT
    export RABBITMQ_DIST_PORT=$RABBIT_DIST_PORT
    export ERL_EPMD_PORT=$EPMD_PORT
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

start_rabbitmq() {
    local d=$DATA/rabbitmq
    mkdir -p "$d/home" "$d/mnesia" "$LOGS/rabbitmq"
    # Written at every start: the live view's rabbitmq_prometheus plugin
    # (issue 10) serves /metrics on 127.0.0.1 on a port of the lab's, not
    # its default 15692. A broker already running takes it at its next start.
    printf '%s\n' "log.console = false" \
        "prometheus.tcp.ip = 127.0.0.1" "prometheus.tcp.port = $(port_of rabbitmq-metrics)" >"$d/rabbitmq.conf"
    touch "$d/rabbitmq-env.conf"
    [[ -f $d/advanced.config ]] || echo "[]." >"$d/advanced.config"
    echo "[rabbitmq_prometheus]." >"$d/enabled_plugins"
    (
        rabbit_env
        # Our own epmd, on our own port and pid, so `down` can stop it.
        if ! alive epmd; then
            check_port_free epmd "$EPMD_PORT"
            spawn epmd epmd -address 127.0.0.1 -port "$EPMD_PORT"
        fi
        spawn rabbitmq "$RABBIT_SBIN/rabbitmq-server"
    )
}

start_mongo() {
    mkdir -p "$DATA/mongo"
    spawn mongo "$TOOLS/venv/bin/secantusd-py" --host 127.0.0.1 --port "$(port_of mongo)" \
        --storage-path "$DATA/mongo/data" --log-level WARNING
}

# nginx: the lab's http block around the site of lab.d/nginx-site.conf.in
# (the baked pages of part 4, everything else to HAProxy). The argument
# forces render_nginx_site's baked or proxy.
nginx_conf() { # [baked|proxy]
    local d=$DATA/nginx mode=${1:-}
    cat <<EOF
daemon off;
worker_processes 1;
pid $d/nginx.pid;
error_log $LOGS/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    types { text/html html; text/css css; application/javascript js; application/json json; }
    default_type application/octet-stream;
    sendfile on;
EOF
    render_nginx_site lab "$mode" | sed 's/^/    /; s/^ *$//'
    live_site | sed 's/^/    /; s/^ *$//'
    echo "}"
}

# The live view (issue 10): the page under live/, and its questions
# (/api/v1/query_range...) passed to Prometheus, so the page asks its own
# origin and works offline.
live_site() {
    cat <<EOF
# The live view: ./live (the page), /api/ to Prometheus.
server {
    listen 127.0.0.1:$(port_of live);
    root $ROOT/live;
    index index.html;
    add_header Cache-Control no-store;
    location /api/ {
        proxy_pass http://127.0.0.1:$(port_of prometheus);
        proxy_read_timeout 10s;
    }
}
EOF
}

# The site, from the one template: `lab` for the local nginx, `compose`
# for the file docker-compose mounts (committed as compose/nginx/default.conf).
# The baked pages' locations (between "begin baked" and "end baked") are
# kept for compose, and for the lab only while the app tier is part 4
# (nginx_baked): a baked tree left by part 4 is never served by another
# part's tier. A second argument, baked or proxy, forces the choice.
render_nginx_site() { # lab|compose [baked|proxy]
    local target=${1:-lab} mode=${2:-} tpl upstream listen root resolver app
    tpl=$(<"$ROOT/lab.d/nginx-site.conf.in")
    case $target in
    lab)
        # Keep-alive connections to HAProxy, reused across requests.
        upstream="upstream app {"$'\n'"    server 127.0.0.1:$(port_of haproxy);"$'\n'"    keepalive 16;"$'\n'"}"
        listen=127.0.0.1:$(port_of nginx) root=$(bake_dir) resolver="" app=http://app
        : "${mode:=$(nginx_baked)}"
        ;;
    compose)
        # HAProxy is the part profile's (network alias lb), absent without
        # one: its name is resolved per request (Docker's DNS), so nginx
        # starts without it and answers 502 until a part is up.
        upstream="" listen=80 root=/usr/share/nginx/html app='$app'
        resolver="    resolver 127.0.0.11 valid=10s;"$'\n''    set $app http://lb:8080;'$'\n'
        : "${mode:=baked}"
        ;;
    *) die "nginx-cfg: lab or compose, not '$target'" ;;
    esac
    case $mode in
    baked) ;;
    proxy) tpl=$(sed '/^ *# begin baked$/,/^ *# end baked$/d' <<<"$tpl") ;;
    *) die "nginx-cfg: baked or proxy, not '$mode'" ;;
    esac
    tpl=${tpl//@UPSTREAM@/"$upstream"}
    tpl=${tpl//@LISTEN@/"$listen"}
    tpl=${tpl//@ROOT@/"$root"}
    tpl=${tpl//@RESOLVER@/"$resolver"}
    tpl=${tpl//@APP@/"$app"}
    printf '%s\n' "$tpl"
}
# baked while the app tier is part 4 (app.part), proxy otherwise.
nginx_baked() {
    if [[ $(cat "$RUN/app.part" 2>/dev/null) == part4 ]]; then echo baked; else echo proxy; fi
}

start_nginx() {
    local d=$DATA/nginx
    mkdir -p "$d/logs" "$d/tmp" "$(bake_dir)"
    nginx_conf >"$d/nginx.conf"
    nginx -t -q -p "$d" -c "$d/nginx.conf" || die "nginx refused its config: $d/nginx.conf"
    spawn nginx nginx -p "$d" -c "$d/nginx.conf"
}

# A running nginx started with an older config (another tier: part 4's
# baked pages on or off; or another LAB_*) re-reads it: SIGHUP, and its
# workers are replaced without dropping a connection.
refresh_nginx() {
    local d=$DATA/nginx new
    running nginx || return 0
    new=$(nginx_conf)
    [[ $new != "$(cat "$d/nginx.conf" 2>/dev/null)" ]] || return 0
    mkdir -p "$(bake_dir)"
    printf '%s\n' "$new" >"$d/nginx.conf.new"
    nginx -t -q -p "$d" -c "$d/nginx.conf.new" || die "nginx refused its new config: $d/nginx.conf.new"
    mv -f "$d/nginx.conf.new" "$d/nginx.conf"
    kill -HUP "$(pid_of nginx)"
    if [[ $(nginx_baked) == baked ]]; then
        say "nginx reloaded its config (baked pages from $(bake_dir) for a browser, the rest to HAProxy)"
    else
        say "nginx reloaded its config (everything to HAProxy: no baked pages outside part 4)"
    fi
}

# HAProxy's config, from the one template lab.d/haproxy.cfg.in (also read by
# part1-clones/src/cluster.rs). `lab` renders the local stack's, `compose`
# the file docker-compose mounts (committed as compose/haproxy.cfg).
render_haproxy() { # lab|compose
    local target=${1:-lab} tpl servers="" i front stats
    tpl=$(<"$ROOT/lab.d/haproxy.cfg.in")
    case $target in
    lab)
        front=127.0.0.1:$(port_of haproxy) stats=127.0.0.1:$HAPROXY_STATS_PORT
        for ((i = 1; i <= CLONES; i++)); do
            servers+="    server clone$i 127.0.0.1:$(port_of "clone$i")"$'\n'
        done
        ;;
    compose)
        front=:8080 stats=:8404
        for i in 1 2 3; do servers+="    server clone$i clone$i:8080"$'\n'; done
        ;;
    *) die "haproxy-cfg: lab or compose, not '$target'" ;;
    esac
    # The edge's body limit is the biggest route's: the avatar's
    # (MAX_AVATAR_BYTES). A slow client's headers are cut after
    # LAB_HTTP_REQUEST_TIMEOUT. The committed compose file takes the defaults.
    local max_body=${MAX_AVATAR_BYTES:-262144} header_timeout=${LAB_HTTP_REQUEST_TIMEOUT:-10s}
    [[ $target == lab ]] || max_body=262144 header_timeout=10s
    tpl=${tpl//@FRONT_BIND@/"$front"}
    tpl=${tpl//@STATS_BIND@/"$stats"}
    tpl=${tpl//@CHECK_INTER@/"1000ms"}
    tpl=${tpl//@MAX_BODY_BYTES@/"$max_body"}
    tpl=${tpl//@HTTP_REQUEST_TIMEOUT@/"$header_timeout"}
    tpl=${tpl//@SERVERS@/"${servers%$'\n'}"}
    printf '%s\n' "$tpl"
}

start_haproxy() {
    mkdir -p "$DATA/haproxy"
    render_haproxy lab >"$DATA/haproxy/haproxy.cfg"
    haproxy -c -q -f "$DATA/haproxy/haproxy.cfg" || die "HAProxy refused its config: $DATA/haproxy/haproxy.cfg"
    spawn haproxy haproxy -W -db -f "$DATA/haproxy/haproxy.cfg"
}

# ---------------------------------------------------------------- the live view
# Issue 10: Prometheus (Debian's) and the exporters Debian ships, each a lab
# service on a port of its own, with the page of live/ served by nginx on
# port_of live. Debian's packages would run their own copies as system
# services on the default ports (9090, 9104, 9115, 9121) where an init
# system starts them: the lab neither uses nor disturbs those.

# What a monitor service runs: name -> the Debian binary.
monitor_binary() {
    case $1 in
    prometheus) echo prometheus ;;
    redis-exporter) echo prometheus-redis-exporter ;;
    mysqld-exporter-*) echo prometheus-mysqld-exporter ;;
    blackbox-exporter) echo prometheus-blackbox-exporter ;;
    esac
}

# The monitor services whose binary is installed (a Debian without one of
# the exporters runs the live view without it).
monitor_services() {
    local name
    for name in "${MONITOR[@]}"; do
        command -v "$(monitor_binary "$name")" >/dev/null && echo "$name"
    done
    return 0
}

start_monitor() {
    local name=$1 d=$DATA/$1
    mkdir -p "$d"
    case $name in
    redis-exporter)
        spawn "$name" prometheus-redis-exporter -redis.addr "redis://127.0.0.1:$(port_of redis)" \
            -web.listen-address "127.0.0.1:$(port_of "$name")"
        ;;
    mysqld-exporter-*)
        # The app's own user: SELECT, PROCESS and SLAVE MONITOR are what
        # SHOW GLOBAL STATUS and SHOW SLAVE STATUS need. Only those two
        # collectors: the live view reads nothing else, and every scrape
        # shares the 2 cores with what is being measured (the default
        # set adds SHOW GLOBAL VARIABLES and three information_schema
        # tables: about half of each scrape's samples).
        printf '[client]\nuser=lab\npassword=lab\nhost=127.0.0.1\nport=%s\n' \
            "$(port_of "mariadb-${name#mysqld-exporter-}")" >"$d/my.cnf"
        spawn "$name" prometheus-mysqld-exporter --config.my-cnf="$d/my.cnf" \
            --web.listen-address="127.0.0.1:$(port_of "$name")" \
            --no-collect.global_variables --no-collect.info_schema.innodb_cmp \
            --no-collect.info_schema.innodb_cmpmem --no-collect.info_schema.query_response_time
        ;;
    blackbox-exporter)
        cat >"$d/blackbox.yml" <<'EOF'
modules:
  tcp_connect:
    prober: tcp
    timeout: 1s
  http_health:
    prober: http
    timeout: 1s
    http:
      valid_status_codes: [200]
      no_follow_redirects: true
EOF
        spawn "$name" prometheus-blackbox-exporter --config.file="$d/blackbox.yml" \
            --web.listen-address="127.0.0.1:$(port_of "$name")"
        ;;
    prometheus)
        mkdir -p "$d/data" "$d/targets"
        write_app_targets
        render_prometheus >"$d/prometheus.yml"
        # Two days of 2 s samples is plenty for a course; the data stays
        # under .lab/data/prometheus like every server's.
        spawn "$name" prometheus --config.file="$d/prometheus.yml" --storage.tsdb.path="$d/data" \
            --storage.tsdb.retention.time=2d --web.listen-address="127.0.0.1:$(port_of "$name")"
        ;;
    esac
}

# The scrape config, from lab.d/prometheus.yml.in: every @PORT_name@ is
# port_of name, @TARGETS@ the directory of the app tier's target file.
render_prometheus() {
    local tpl name
    tpl=$(<"$ROOT/lab.d/prometheus.yml.in")
    tpl=${tpl//@TARGETS@/"$DATA/prometheus/targets"}
    while [[ $tpl =~ @PORT_([a-z0-9-]+)@ ]]; do
        name=${BASH_REMATCH[1]}
        tpl=${tpl//"@PORT_${name}@"/"$(port_of "$name")"}
    done
    printf '%s\n' "$tpl"
}

# The app tier's targets as it runs now (clones, workers, baker), in
# Prometheus's file_sd format; Prometheus re-reads the file by itself. With
# no tier, the clones LAB_CLONES would start.
write_app_targets() {
    local d=$DATA/prometheus/targets name sep="" out="[" names i
    mkdir -p "$d"
    if [[ -f $RUN/app.part ]]; then
        names=$(app_services | grep -v '^haproxy$' || true)
    else
        names=$(for ((i = 1; i <= CLONES; i++)); do echo "clone$i"; done)
    fi
    for name in $names; do
        out+="$sep"$'\n'"  {\"targets\": [\"127.0.0.1:$(port_of "$name")\"], \"labels\": {\"service\": \"$name\", \"role\": \"${name%%[0-9]*}\"}}"
        sep=,
    done
    out+=$'\n'"]"
    # Written whole, then renamed: Prometheus never reads half a file.
    printf '%s\n' "$out" >"$d/app.json.tmp" && mv -f "$d/app.json.tmp" "$d/app.json"
}

# A running Prometheus started with an older scrape config re-reads it on
# SIGHUP (its samples stay).
refresh_prometheus() {
    local d=$DATA/prometheus new
    running prometheus || return 0
    write_app_targets
    new=$(render_prometheus)
    [[ $new != "$(cat "$d/prometheus.yml" 2>/dev/null)" ]] || return 0
    printf '%s\n' "$new" >"$d/prometheus.yml"
    kill -HUP "$(pid_of prometheus)"
    say "Prometheus reloaded its scrape config"
}

# HAProxy started before its /metrics existed gets that one line added to
# the config it runs (nothing else changes: not its clones, not its limits)
# and re-reads it: its master (-W) reloads on SIGUSR2 and hands over without
# dropping a connection, as `./lab up partN` does for a new clone count.
refresh_haproxy() {
    local f=$DATA/haproxy/haproxy.cfg
    running haproxy && [[ -f $f ]] || return 0
    ! grep -q prometheus-exporter "$f" || return 0
    sed '/^listen stats$/a\    http-request use-service prometheus-exporter if { path /metrics }' "$f" >"$f.new"
    haproxy -c -q -f "$f.new" || die "HAProxy refused its new config: $f.new"
    mv -f "$f.new" "$f"
    kill -USR2 "$(pid_of haproxy)"
    say "HAProxy reloaded its config (now with /metrics on port $HAPROXY_STATS_PORT)"
}
