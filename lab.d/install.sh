# shellcheck shell=bash
# lab.d/install.sh: what the lab needs on the machine. Debian's packages
# (installed once, --no-install-recommends) and the MongoDB-wire server
# from PyPI, pinned; and the versions.json the results files quote.
# Sourced by ./lab.

# The MongoDB-wire server's version, pinned: the docs quote its figures.
SECANTUS_VERSION=0.7.0b3

SUDO=""
[[ $(id -u) == 0 ]] || SUDO=sudo
APT_UPDATED=""
apt_install() {
    if [[ -z $APT_UPDATED ]]; then
        say "apt-get update"
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    say "installing $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The live view's packages that could not be installed here, one a line:
# not tried again until `./lab reset` deletes the file.
MONITOR_SKIPPED=$RUN/monitor-skipped
monitor_skipped() { [[ -f $MONITOR_SKIPPED ]] && grep -qxF "$1" "$MONITOR_SKIPPED"; }
# For ./lab status: why a package is not installed.
monitor_skip_note() {
    if monitor_skipped "$1"; then echo "; could not be installed, ./lab reset tries again"; fi
}

RABBIT_SBIN=""
find_rabbit() {
    local d
    for d in /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin; do
        [[ -x $d/rabbitmq-server ]] && RABBIT_SBIN=$d
    done
    [[ -n $RABBIT_SBIN ]]
}

install() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v memcached >/dev/null || missing+=(memcached)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    command -v mariadb >/dev/null || missing+=(mariadb-client)
    find_rabbit || missing+=(rabbitmq-server)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v nginx >/dev/null || missing+=(nginx)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v python3 >/dev/null || missing+=(python3 python3-venv)
    # For `./lab test` (shellcheck) and the balancer measurement (wrk).
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    # Part 4's browser test drives Debian's chromium through its
    # chromedriver (/usr/bin/chromium, /usr/bin/chromedriver): no browser
    # is ever downloaded.
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
    # The live view (issue 10): Prometheus and the exporters Debian ships.
    # Optional: one this Debian lacks is skipped, and the live view goes
    # without it (Memcached has none in Debian: its numbers come from the
    # app). One that could not be installed is written to monitor-skipped
    # and not tried again (no apt-get update on every ./lab call) until
    # `./lab reset` deletes that file.
    local pkg monitor=()
    for pkg in prometheus prometheus-redis-exporter prometheus-mysqld-exporter prometheus-blackbox-exporter; do
        command -v "$pkg" >/dev/null || monitor_skipped "$pkg" || monitor+=("$pkg")
    done
    # All at once; if that fails (one of them is not in this Debian), each
    # on its own, so the others still come.
    if ((${#monitor[@]})) && ! apt_install "${monitor[@]}"; then
        mkdir -p "$RUN"
        for pkg in "${monitor[@]}"; do
            command -v "$pkg" >/dev/null && continue
            if ! apt_install "$pkg"; then
                echo "$pkg" >>"$MONITOR_SKIPPED"
                say "$pkg could not be installed: the live view goes without it (not tried again until ./lab reset)"
            fi
        done
    fi
    find_rabbit || die "rabbitmq-server is installed but its sbin directory was not found under /usr/lib/rabbitmq/lib"

    # Debian has no MongoDB server: SecantusDB speaks its wire protocol.
    if [[ $(secantus_version) != "$SECANTUS_VERSION" ]]; then
        say "installing SecantusDB $SECANTUS_VERSION (MongoDB-wire server) into $TOOLS/venv"
        mkdir -p "$TOOLS"
        if [[ ! -x $TOOLS/venv/bin/pip ]] && ! python3 -m venv "$TOOLS/venv" 2>/dev/null; then
            apt_install python3-venv
            python3 -m venv "$TOOLS/venv"
        fi
        "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "SecantusDB==$SECANTUS_VERSION"
    fi
}

secantus_version() {
    "$TOOLS/venv/bin/pip" show SecantusDB 2>/dev/null | awk '/^Version/{print $2}'
}

versions_json() {
    local rabbit=${RABBIT_SBIN%/sbin}
    rabbit=${rabbit##*rabbitmq_server-}
    printf '{\n'
    printf '  "redis": "%s",\n' "$(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')"
    printf '  "memcached": "%s",\n' "$(memcached -V | awk '{print $2}')"
    printf '  "mariadb": "%s",\n' "$(mariadbd --version | sed -n 's/.*Ver \([0-9.]*\)-MariaDB.*/\1/p')"
    printf '  "rabbitmq": "%s",\n' "$rabbit"
    printf '  "mongo-wire": "SecantusDB %s",\n' "$(secantus_version)"
    printf '  "haproxy": "%s",\n' "$(haproxy -v | awk 'NR==1{print $3}')"
    printf '  "nginx": "%s"\n' "$(nginx -v 2>&1 | sed 's|.*nginx/||')"
    printf '}\n'
}

version_of() {
    local key=$1
    case $key in
    mariadb-*) key=mariadb ;;
    mongo) key=mongo-wire ;;
    clone* | worker* | baker)
        clone_field "$key" build
        return
        ;;
    prometheus | *-exporter | mysqld-exporter-*)
        # The live view's: the Debian package's version (package = binary).
        dpkg-query -W -f='${Version}' "$(monitor_binary "$key")" 2>/dev/null | sed 's/+.*//'
        return
        ;;
    esac
    sed -n "s/^  \"$key\": \"\(.*\)\",\{0,1\}$/\1/p" "$LAB/versions.json" 2>/dev/null
}
