# shellcheck shell=bash
# Machine set-up shared by the scripts in scripts/ (and stack/, slugrunner/, benches/):
# logging, locks, free ports, Debian packages, the Docker engine, the S3 server (moto) and
# the registry. It also loads stack/lib.sh, the stack's own functions (ensure_stack_image,
# ensure_runner_image); the benchmarks' extra tools are in scripts/bench-lib.sh.
#
# Source this file; it defines functions only and leaves shell options alone, so it can
# also be sourced from an interactive shell. Every ensure_* function is idempotent: it
# reuses what is already installed or running and starts only what is missing.
#
# Services started here are detached (they outlive the calling script), bind 127.0.0.1
# only, and keep their pid, port and log under DEIS_STATE_DIR.
#
# Settings (all optional; the stack's are listed in stack/lib.sh):
#   DEIS_STATE_DIR          pids, ports, logs (default ~/.cache/deis-builder/services)
#   DEIS_TOOLS_VENV         Python venv for moto (default ~/.cache/deis-builder/venv)
#   DEIS_DOCKER_STORAGE_DRIVER  force a storage driver for a dockerd we start
#   DEIS_DOCKER_START_TIMEOUT   seconds to wait for a dockerd we start (default 90)

if [[ -z ${HOME:-} ]]; then
    HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
    export HOME
fi

DEIS_STATE_DIR=${DEIS_STATE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deis-builder/services}
# moto lives in its own venv when it is not already on PATH (Debian's python refuses
# system-wide pip installs, PEP 668).
DEIS_TOOLS_VENV=${DEIS_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/deis-builder/venv}
DEIS_DEFAULT_DOCKER_SOCKET=/var/run/docker.sock

log() { printf '[setup] %s\n' "$*" >&2; }

die() {
    printf '[setup] ERROR: %s\n' "$*" >&2
    exit 1
}

# Print the last lines of a log file to stderr (for error messages).
show_log_tail() {
    local file=$1
    if [[ -f $file ]]; then
        printf '[setup] --- last lines of %s ---\n' "$file" >&2
        tail -n 40 "$file" >&2 || true
        printf '[setup] --- end of %s ---\n' "$file" >&2
    fi
}

ensure_state_dir() {
    mkdir -p "$DEIS_STATE_DIR"
}

# Serialise concurrent set-ups (two test runs at once) per resource. The lock fd is
# closed in every process we spawn, so a long-running service never holds it.
_deis_lock_fd=
acquire_lock() {
    ensure_state_dir
    exec {_deis_lock_fd}>"$DEIS_STATE_DIR/$1.lock"
    flock "$_deis_lock_fd"
}

release_lock() {
    if [[ -n $_deis_lock_fd ]]; then
        exec {_deis_lock_fd}>&-
        _deis_lock_fd=
    fi
}

# Start "$@" detached from this shell (own session, SIGHUP ignored, no stdin) with its
# output appended to LOG; prints its pid.
spawn_detached() {
    local logfile=$1
    shift
    # With job control on (interactive shell), a background job leads its own process
    # group and setsid would fork, making $! the wrong pid; keep it off in here.
    local -
    set +m
    if [[ -n $_deis_lock_fd ]]; then
        setsid nohup "$@" </dev/null >>"$logfile" 2>&1 {_deis_lock_fd}>&- &
    else
        setsid nohup "$@" </dev/null >>"$logfile" 2>&1 &
    fi
    echo "$!"
}

# A free TCP port on 127.0.0.1 (never 5000, which a registry usually claims).
free_port() {
    local port
    while :; do
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        [[ $port != 5000 ]] && break
    done
    echo "$port"
}

# http_probe URL NEEDLE: succeeds when URL answers 200 and NEEDLE occurs in the
# response headers or body; an empty NEEDLE accepts any HTTP answer (a server that wants
# signed requests answers 403). Bypasses any proxy settings: everything here is loopback.
http_probe() {
    python3 - "$1" "$2" <<'PY' >/dev/null 2>&1
import sys, urllib.error, urllib.request
url, needle = sys.argv[1], sys.argv[2]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(url, timeout=3) as response:
        text = str(response.headers) + response.read(65536).decode("utf-8", "replace")
        sys.exit(0 if response.status == 200 and needle in text else 1)
except urllib.error.HTTPError:
    sys.exit(0 if needle == "" else 1)
PY
}

# pid_matches PID WORD: PID is alive and its command line mentions WORD (guards against
# a recycled pid).
pid_matches() {
    local pid=$1 word=$2
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$word"* ]]
}

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

_deis_apt_updated=
apt_install() {
    (($#)) || return 0
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z $_deis_apt_updated ]]; then
        log "apt-get update"
        apt-get update -q </dev/null
        _deis_apt_updated=1
    fi
    # Keep package scripts from starting daemons during the install: Debian's docker.io
    # would start a dockerd with bridge networking and iptables rules, openssh-server a
    # public sshd on port 22.
    local policy=/usr/sbin/policy-rc.d added_policy=''
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    log "apt-get install $*"
    local status=0
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$@" </dev/null || status=$?
    if [[ -n $added_policy ]]; then
        rm -f "$policy"
    fi
    ((status == 0)) || die "apt-get install failed ($status)"
}

# Path of a working moto_server, or nothing. Only our own venv counts: moto 5.2.1 answers
# CompleteMultipartUpload with the wrong XML root, which the AWS SDK rejects, so the version
# is pinned rather than whatever a machine happens to have.
MOTO_REQUIREMENT='moto[server]>=5.2.5'
find_moto_server() {
    local venv_python=$DEIS_TOOLS_VENV/bin/python
    [[ -x $DEIS_TOOLS_VENV/bin/moto_server && -x $venv_python ]] || return 1
    "$venv_python" - <<'PY' >/dev/null 2>&1 || return 1
import sys
from importlib.metadata import version
major, minor, patch = (int(x) for x in version("moto").split(".")[:3])
sys.exit(0 if (major, minor, patch) >= (5, 2, 5) else 1)
PY
    echo "$DEIS_TOOLS_VENV/bin/moto_server"
}

ensure_packages() {
    local wanted=(docker.io debootstrap docker-registry apache2-utils busybox-static curl git openssh-client
        openssh-server ca-certificates debian-archive-keyring openssl)
    command -v python3 >/dev/null || wanted+=(python3)
    # A kernel with AppArmor on makes dockerd load a profile with apparmor_parser.
    if [[ -d /sys/kernel/security/apparmor ]]; then
        wanted+=(apparmor)
    fi
    if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
        wanted+=(python3-pip)
    fi
    if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        wanted+=(python3-venv)
    fi
    local missing=() package
    for package in "${wanted[@]}"; do
        is_installed "$package" || missing+=("$package")
    done
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    else
        log "Debian packages: all present"
    fi

    if DEIS_MOTO_SERVER=$(find_moto_server); then
        log "moto_server: $DEIS_MOTO_SERVER"
    else
        log "installing moto[server] into $DEIS_TOOLS_VENV"
        mkdir -p "$(dirname "$DEIS_TOOLS_VENV")"
        [[ -x $DEIS_TOOLS_VENV/bin/pip ]] || python3 -m venv "$DEIS_TOOLS_VENV"
        "$DEIS_TOOLS_VENV/bin/pip" install -q --disable-pip-version-check "$MOTO_REQUIREMENT" </dev/null
        DEIS_MOTO_SERVER=$(find_moto_server) || die "moto_server still missing after pip install"
    fi
    export DEIS_MOTO_SERVER
}

# ---------------------------------------------------------------------------- docker

docker_answers() {
    timeout 20 docker info >/dev/null 2>&1
}

# overlay2 when the kernel can mount overlayfs on the data root's filesystem; otherwise
# vfs (slow and disk-hungry, but works anywhere, e.g. inside an overlayfs container).
pick_storage_driver() {
    local data_root=$1
    if [[ -n ${DEIS_DOCKER_STORAGE_DRIVER:-} ]]; then
        echo "$DEIS_DOCKER_STORAGE_DRIVER"
        return
    fi
    mkdir -p "$data_root"
    local probe
    probe=$(mktemp -d "$data_root/.overlay-probe.XXXXXX")
    mkdir "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    local driver=vfs
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        driver=overlay2
    fi
    rm -rf "$probe"
    echo "$driver"
}

ensure_docker() {
    command -v docker >/dev/null || die "docker CLI missing (run ensure_packages first)"
    if docker_answers; then
        log "docker: reusing engine at ${DOCKER_HOST:-unix://$DEIS_DEFAULT_DOCKER_SOCKET}"
        return 0
    fi

    local socket
    case ${DOCKER_HOST:-} in
        '') socket=$DEIS_DEFAULT_DOCKER_SOCKET ;;
        unix://*) socket=${DOCKER_HOST#unix://} ;;
        *) die "DOCKER_HOST=$DOCKER_HOST does not answer and is not a local socket we can start" ;;
    esac

    acquire_lock dockerd
    # Someone may have started it while we waited for the lock.
    if docker_answers; then
        release_lock
        log "docker: reusing engine at unix://$socket"
        return 0
    fi

    # The default socket gets Docker's default directories; any other socket a private
    # set, so it can run beside a system engine.
    local pidfile data_root exec_root
    if [[ $socket == "$DEIS_DEFAULT_DOCKER_SOCKET" ]]; then
        pidfile=/var/run/docker.pid
        data_root=/var/lib/docker
        exec_root=/var/run/docker
    else
        pidfile=$DEIS_STATE_DIR/dockerd.pid
        data_root=$DEIS_STATE_DIR/docker-data
        # Unix socket paths are short (108 bytes): keep exec-root short.
        exec_root=/run/deis-builder-docker-$(printf '%s' "$socket" | md5sum | cut -c1-8)
    fi
    local logfile=$DEIS_STATE_DIR/dockerd.log
    local pid=''
    [[ -r $pidfile ]] && pid=$(<"$pidfile")
    if pid_matches "$pid" dockerd; then
        log "docker: dockerd (pid $pid) is already starting; waiting for it"
    else
        local driver
        driver=$(pick_storage_driver "$data_root")
        log "docker: starting dockerd on unix://$socket (storage driver $driver, log $logfile)"
        printf '\n==== %s dockerd start ====\n' "$(date -Is)" >>"$logfile"
        pid=$(spawn_detached "$logfile" dockerd \
            --host "unix://$socket" \
            --pidfile "$pidfile" \
            --data-root "$data_root" \
            --exec-root "$exec_root" \
            --storage-driver "$driver" \
            --bridge=none --iptables=false --ip6tables=false \
            --ip-forward=false --ip-masq=false)
    fi

    local timeout=${DEIS_DOCKER_START_TIMEOUT:-90} waited=0
    until DOCKER_HOST=unix://$socket docker_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail "$logfile"
            release_lock
            die "dockerd exited during start-up (log: $logfile)"
        fi
        if ((waited >= timeout)); then
            show_log_tail "$logfile"
            release_lock
            die "dockerd did not answer within ${timeout}s (pid $pid, log: $logfile)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    release_lock
    if [[ $socket != "$DEIS_DEFAULT_DOCKER_SOCKET" ]]; then
        export DOCKER_HOST=unix://$socket
    fi
    log "docker: engine up after ${waited}s (pid $pid)"
}

# -------------------------------------------------------------------------- services

# reuse_service NAME URL_PATH NEEDLE PROCESS_WORD: succeeds (printing the port) when a
# service we started earlier is alive and answering.
reuse_service() {
    local name=$1 path=$2 needle=$3 word=$4 pid='' port=''
    [[ -r $DEIS_STATE_DIR/$name.pid ]] && pid=$(<"$DEIS_STATE_DIR/$name.pid")
    [[ -r $DEIS_STATE_DIR/$name.port ]] && port=$(<"$DEIS_STATE_DIR/$name.port")
    [[ -n $port ]] && pid_matches "$pid" "$word" &&
        http_probe "http://127.0.0.1:$port$path" "$needle" || return 1
    echo "$port"
}

# Stop a stale instance we started earlier (alive but not answering).
stop_stale_service() {
    local name=$1 word=$2 pid=''
    [[ -r $DEIS_STATE_DIR/$name.pid ]] && pid=$(<"$DEIS_STATE_DIR/$name.pid")
    if pid_matches "$pid" "$word"; then
        log "$name: stopping unresponsive pid $pid"
        kill "$pid" 2>/dev/null || true
        sleep 1
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DEIS_STATE_DIR/$name.pid" "$DEIS_STATE_DIR/$name.port"
}

# wait_for_service NAME PID PORT URL_PATH NEEDLE LOG
wait_for_service() {
    local name=$1 pid=$2 port=$3 path=$4 needle=$5 logfile=$6
    local deadline=$((SECONDS + 60))
    until http_probe "http://127.0.0.1:$port$path" "$needle"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail "$logfile"
            release_lock
            die "$name exited during start-up (log: $logfile)"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$logfile"
            release_lock
            die "$name did not answer on 127.0.0.1:$port within 60s (log: $logfile)"
        fi
        sleep 0.5
    done
}

ensure_s3() {
    local port
    acquire_lock moto
    if port=$(reuse_service moto / ListAllMyBucketsResult moto); then
        log "s3: reusing moto_server on 127.0.0.1:$port"
    else
        stop_stale_service moto moto
        [[ -n ${DEIS_MOTO_SERVER:-} ]] || DEIS_MOTO_SERVER=$(find_moto_server) ||
            die "moto_server missing (run ensure_packages first)"
        port=$(free_port)
        local logfile=$DEIS_STATE_DIR/moto.log pid
        printf '\n==== %s moto_server start ====\n' "$(date -Is)" >>"$logfile"
        pid=$(spawn_detached "$logfile" "$DEIS_MOTO_SERVER" -H 127.0.0.1 -p "$port")
        wait_for_service moto "$pid" "$port" / ListAllMyBucketsResult "$logfile"
        echo "$pid" >"$DEIS_STATE_DIR/moto.pid"
        echo "$port" >"$DEIS_STATE_DIR/moto.port"
        log "s3: started moto_server on 127.0.0.1:$port (pid $pid, log $logfile)"
    fi
    release_lock
    export DEIS_IT_S3_ENDPOINT=http://127.0.0.1:$port
}

ensure_registry() {
    local port
    acquire_lock registry
    if port=$(reuse_service registry /v2/ registry/2.0 docker-registry); then
        log "registry: reusing docker-registry on 127.0.0.1:$port"
    else
        stop_stale_service registry docker-registry
        command -v docker-registry >/dev/null || die "docker-registry missing (run ensure_packages first)"
        port=$(free_port)
        local config=$DEIS_STATE_DIR/registry.yml storage=$DEIS_STATE_DIR/registry-data
        local logfile=$DEIS_STATE_DIR/registry.log pid
        mkdir -p "$storage"
        cat >"$config" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
        printf '\n==== %s docker-registry start ====\n' "$(date -Is)" >>"$logfile"
        pid=$(spawn_detached "$logfile" docker-registry serve "$config")
        wait_for_service registry "$pid" "$port" /v2/ registry/2.0 "$logfile"
        echo "$pid" >"$DEIS_STATE_DIR/registry.pid"
        echo "$port" >"$DEIS_STATE_DIR/registry.port"
        log "registry: started docker-registry on 127.0.0.1:$port (pid $pid, log $logfile)"
    fi
    release_lock
    export DEIS_IT_REGISTRY=127.0.0.1:$port
}

# ----------------------------------------------------------------------------- stack

# The stack's functions (ensure_stack_image, ensure_runner_image and the helpers
# stack/build.sh uses), so every script that sources this file can ensure the images.
# shellcheck source=stack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../stack/lib.sh"
