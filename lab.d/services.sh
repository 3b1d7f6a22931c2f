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
            die "the replica did not catch up with the primary in ${DEADLINE}s: see './lab logs mariadb-replica'"
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
    [[ -f $d/rabbitmq.conf ]] || echo "log.console = false" >"$d/rabbitmq.conf"
    touch "$d/rabbitmq-env.conf"
    [[ -f $d/advanced.config ]] || echo "[]." >"$d/advanced.config"
    [[ -f $d/enabled_plugins ]] || echo "[]." >"$d/enabled_plugins"
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

start_nginx() {
    local d=$DATA/nginx
    mkdir -p "$d/html" "$d/logs" "$d/tmp"
    [[ -f $d/html/index.html ]] || echo "<p>lab nginx: part 4 writes its precomputed pages here.</p>" >"$d/html/index.html"
    cat >"$d/nginx.conf" <<EOF
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
    types { text/html html; text/css css; application/json json; }
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$(port_of nginx);
        root $d/html;
        location = /health { return 200 "ok\n"; }
    }
}
EOF
    spawn nginx nginx -p "$d" -c "$d/nginx.conf"
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
