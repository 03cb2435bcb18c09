# shellcheck shell=bash
# Set-up helpers shared by scripts/test.sh and scripts/run.sh.
#
# Source this file; it defines functions only and leaves shell options alone, so it can
# also be sourced from an interactive shell. Every ensure_* function is idempotent: it
# reuses what is already installed or running and starts only what is missing.
#
# Services started here are detached (they outlive the calling script), bind 127.0.0.1
# only, and keep their pid, port and log under DEIS_STATE_DIR.
#
# Settings (all optional):
#   DEIS_STACK_IMAGE        stack build image name (default deis-builder/stack:bookworm)
#   DEIS_STACK_RUN_IMAGE    stack run image name (default deis-builder/stack-run:bookworm)
#   DEIS_RUNNER_IMAGE       slug runner image name (default deis-builder/slugrunner:latest)
#   DEIS_DEBIAN_MIRROR      mirror for debootstrap (default: the one apt uses)
#   DEIS_STATE_DIR          pids, ports, logs (default ~/.cache/deis-builder/services)
#   DEIS_DOCKER_STORAGE_DRIVER  force a storage driver for a dockerd we start
#   DEIS_DOCKER_START_TIMEOUT   seconds to wait for a dockerd we start (default 90)

if [[ -z ${HOME:-} ]]; then
    HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
    export HOME
fi

DEIS_STACK_IMAGE=${DEIS_STACK_IMAGE:-deis-builder/stack:bookworm}
DEIS_STACK_RUN_IMAGE=${DEIS_STACK_RUN_IMAGE:-deis-builder/stack-run:bookworm}
DEIS_STATE_DIR=${DEIS_STATE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deis-builder/services}
# moto lives in its own venv when it is not already on PATH (Debian's python refuses
# system-wide pip installs, PEP 668).
DEIS_TOOLS_VENV=${DEIS_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/deis-builder/venv}
# Programs installed from crates.io for the benchmarks only (s3s-fs).
DEIS_TOOLS_DIR=${DEIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deis-builder/tools}
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

# ----------------------------------------------------------------------- stack image

# The Debian mirror apt is configured with (for the bookworm suite), from one-line
# sources.list files or deb822 .sources files.
debian_mirror() {
    if [[ -n ${DEIS_DEBIAN_MIRROR:-} ]]; then
        echo "$DEIS_DEBIAN_MIRROR"
        return
    fi
    local mirror='' file
    local -a list_files=() deb822_files=()
    [[ -f /etc/apt/sources.list ]] && list_files+=(/etc/apt/sources.list)
    for file in /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] && list_files+=("$file")
    done
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] && deb822_files+=("$file")
    done
    if ((${#deb822_files[@]})); then
        mirror=$(awk '
            function flush() {
                if (uri != "" && enabled != "no" && types ~ /(^| )deb( |$)/ &&
                    suites ~ /(^| )bookworm( |$)/ && found == "") found = uri
                types = ""; suites = ""; uri = ""; enabled = ""
            }
            FNR == 1 { flush() }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[A-Za-z-]+:/ {
                key = tolower(substr($0, 1, index($0, ":") - 1))
                value = substr($0, index($0, ":") + 1)
                gsub(/^[ \t]+|[ \t]+$/, "", value)
                if (key == "types") types = value
                else if (key == "suites") suites = value
                else if (key == "enabled") enabled = tolower(value)
                else if (key == "uris") { split(value, parts, /[ \t]+/); uri = parts[1] }
            }
            END { flush(); print found }
        ' "${deb822_files[@]}")
    fi
    if [[ -z $mirror ]] && ((${#list_files[@]})); then
        mirror=$(awk '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == "bookworm") { print $i; exit }
            }
        ' "${list_files[@]}")
    fi
    case $mirror in
        http://* | https://* | file:/*) echo "${mirror%/}" ;;
        *) echo "http://deb.debian.org/debian" ;;
    esac
}

# Unmount anything left mounted under DIR (a failed debootstrap leaves proc/sys), then
# remove DIR without crossing into another filesystem.
remove_rootfs_dir() {
    local dir=$1 mountpoint
    [[ -d $dir ]] || return 0
    while read -r mountpoint; do
        umount -l "$mountpoint" 2>/dev/null || true
    done < <(awk -v root="$dir/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$dir"
}

# Hash of the stack recipe (the files of stack/ except documentation): the stack images
# carry it in the label io.deis.builder.stack.recipe, so a changed recipe rebuilds them.
stack_recipe() {
    local stack_dir
    stack_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../stack" && pwd) || return 1
    (cd "$stack_dir" && find . -type f ! -name '*.md' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
        sha256sum | cut -c1-16
}

# stack_images_current RECIPE: both stack images exist and were built from RECIPE.
stack_images_current() {
    local image label
    for image in "$DEIS_STACK_IMAGE" "$DEIS_STACK_RUN_IMAGE"; do
        label=$(docker image inspect --format \
            '{{index .Config.Labels "io.deis.builder.stack.recipe"}}' "$image" 2>/dev/null) ||
            return 1
        [[ $label == "$1" ]] || return 1
    done
}

# The build image ($DEIS_STACK_IMAGE) and the run image ($DEIS_STACK_RUN_IMAGE), built by
# stack/build.sh (debootstrap, no pulls) when either is missing or was built from another
# recipe than the current stack/ folder.
ensure_stack_image() {
    local recipe
    recipe=$(stack_recipe) || die "cannot hash the stack recipe (stack/)"
    export DEIS_STACK_RUN_IMAGE
    if stack_images_current "$recipe"; then
        log "stack images: $DEIS_STACK_IMAGE and $DEIS_STACK_RUN_IMAGE up to date (recipe $recipe)"
        return 0
    fi
    acquire_lock stack-image
    if stack_images_current "$recipe"; then
        release_lock
        log "stack images: $DEIS_STACK_IMAGE and $DEIS_STACK_RUN_IMAGE up to date (recipe $recipe)"
        return 0
    fi
    local mirror status=0
    mirror=$(debian_mirror)
    DEIS_STACK_RECIPE=$recipe DEIS_DEBIAN_MIRROR=$mirror \
        bash "$(dirname "${BASH_SOURCE[0]}")/../stack/build.sh" </dev/null || status=$?
    release_lock
    ((status == 0)) || die "stack image build failed"
}

# ---------------------------------------------------------------------- runner image

# The slug runner image: the stack's run image plus the slugrunner binary
# (slugrunner/Dockerfile).
DEIS_RUNNER_IMAGE=${DEIS_RUNNER_IMAGE:-deis-builder/slugrunner:latest}

# Builds slugrunner statically linked (glibc with crt-static) so it runs in any stack
# image; prints the binary's path. Uses its own --target so the flags never touch the
# host build of the builder.
build_runner_binary() {
    local repo_root target_dir triple
    repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    target_dir=${CARGO_TARGET_DIR:-$HOME/.cache/deis-builder/target}
    triple=$(rustc -vV | awk '$1 == "host:" { print $2 }')
    [[ -n $triple ]] || die "cannot tell rustc's host target"
    log "runner image: cargo build --release -p slugrunner --target $triple (static)"
    (
        cd "$repo_root"
        RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
            CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
            cargo build --release -p slugrunner --target "$triple" \
            --target-dir "$target_dir" </dev/null >&2
    ) || die "building slugrunner failed"
    local binary=$target_dir/$triple/release/slugrunner
    # A static(-pie) binary lists no shared libraries ("=>" lines).
    if ldd "$binary" 2>/dev/null | grep -q '=>'; then
        die "slugrunner is dynamically linked: $(ldd "$binary" | tr '\n' ' ')"
    fi
    echo "$binary"
}

# Builds $DEIS_RUNNER_IMAGE FROM $DEIS_STACK_RUN_IMAGE with the legacy builder (which never
# pulls an image that is present locally). Idempotent: labels record the binary's sha256
# and the run image id, and the image is rebuilt only when either changed.
ensure_runner_image() {
    local repo_root binary started=$SECONDS
    repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    binary=$(build_runner_binary) || die "building the slugrunner binary failed"
    local binary_sha stack_id wanted current
    binary_sha=$(sha256sum "$binary" | cut -d' ' -f1)
    stack_id=$(docker image inspect --format '{{.Id}}' "$DEIS_STACK_RUN_IMAGE") ||
        die "stack run image $DEIS_STACK_RUN_IMAGE missing (run ensure_stack_image first)"
    wanted="$binary_sha $stack_id"
    acquire_lock runner-image
    current=$(docker image inspect --format \
        '{{index .Config.Labels "io.deis.builder.slugrunner.sha256"}} {{index .Config.Labels "io.deis.builder.stack.id"}}' \
        "$DEIS_RUNNER_IMAGE" 2>/dev/null || true)
    if [[ $current == "$wanted" ]]; then
        release_lock
        log "runner image: $DEIS_RUNNER_IMAGE up to date ($((SECONDS - started))s)"
        export DEIS_RUNNER_IMAGE
        return 0
    fi
    local context previous_id previous_base
    previous_id=$(docker image inspect --format '{{.Id}}' "$DEIS_RUNNER_IMAGE" 2>/dev/null || true)
    previous_base=$(docker image inspect --format \
        '{{index .Config.Labels "io.deis.builder.stack.id"}}' "$DEIS_RUNNER_IMAGE" 2>/dev/null || true)
    context=$(mktemp -d "${TMPDIR:-/tmp}/deis-runner.XXXXXX")
    cp "$repo_root/slugrunner/Dockerfile" "$binary" "$context/"
    local status=0 build_started=$SECONDS output
    # The legacy builder's deprecation notice is noise; its output is shown on failure.
    output=$(DOCKER_BUILDKIT=0 docker build --quiet --pull=false \
        --build-arg "RUN_IMAGE=$DEIS_STACK_RUN_IMAGE" \
        --label "io.deis.builder.slugrunner.sha256=$binary_sha" \
        --label "io.deis.builder.stack.id=$stack_id" \
        --tag "$DEIS_RUNNER_IMAGE" "$context" 2>&1) || status=$?
    rm -rf "$context"
    release_lock
    if ((status != 0)); then
        printf '%s\n' "$output" >&2
        die "docker build of $DEIS_RUNNER_IMAGE failed ($status)"
    fi
    # The replaced image would linger untagged; one still used by a container stays. So
    # would the stack image it was built from once a rebuilt stack took its tag.
    if [[ -n $previous_id ]]; then
        docker image rm "$previous_id" >/dev/null 2>&1 || true
    fi
    if [[ -n $previous_base && $previous_base != "$stack_id" ]] &&
        [[ $(docker image inspect --format '{{len .RepoTags}}' "$previous_base" 2>/dev/null) == 0 ]]; then
        docker image rm "$previous_base" >/dev/null 2>&1 || true
    fi
    log "runner image: built $DEIS_RUNNER_IMAGE in $((SECONDS - build_started))s" \
        "(binary $(stat -c %s "$binary") bytes; $((SECONDS - started))s with cargo)"
    export DEIS_RUNNER_IMAGE
}

# cargo-fuzz for the unpacker's libFuzzer target (fuzz/). It needs nightly flags, which
# RUSTC_BOOTSTRAP=1 unlocks on the stable toolchain.
ensure_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        log "cargo-fuzz: $(cargo fuzz --version)"
        return 0
    fi
    log "cargo install cargo-fuzz"
    cargo install --locked cargo-fuzz </dev/null >&2 || die "cargo install cargo-fuzz failed"
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

# s3s-fs (crates.io), a second real S3 server for the upload benchmark: moto is one Python
# process and limits both contenders there. Installed with cargo into DEIS_TOOLS_DIR and
# started with the AWS_* test credentials (it refuses unsigned requests, so the probe looks
# for its AccessDenied answer). Exports DEIS_S3S_ENDPOINT and DEIS_S3S_PID.
DEIS_S3S_FS_VERSION=0.14.1
ensure_s3s_fs() {
    local bin=$DEIS_TOOLS_DIR/bin/s3s-fs port pid
    acquire_lock s3s-fs
    if ! [[ -x $bin ]] || [[ $("$bin" --version 2>/dev/null) != *"$DEIS_S3S_FS_VERSION"* ]]; then
        log "cargo install s3s-fs $DEIS_S3S_FS_VERSION into $DEIS_TOOLS_DIR"
        cargo install --locked --quiet --features binary --root "$DEIS_TOOLS_DIR" \
            "s3s-fs@$DEIS_S3S_FS_VERSION" </dev/null >&2 || {
            release_lock
            die "cargo install s3s-fs failed"
        }
    fi
    if port=$(reuse_service s3s-fs / '' s3s-fs); then
        log "s3s-fs: reusing 127.0.0.1:$port"
    else
        stop_stale_service s3s-fs s3s-fs
        port=$(free_port)
        local logfile=$DEIS_STATE_DIR/s3s-fs.log data=$DEIS_STATE_DIR/s3s-fs-data
        mkdir -p "$data"
        printf '\n==== %s s3s-fs start ====\n' "$(date -Is)" >>"$logfile"
        pid=$(spawn_detached "$logfile" "$bin" --host 127.0.0.1 --port "$port" \
            --access-key "${AWS_ACCESS_KEY_ID:-testing}" \
            --secret-key "${AWS_SECRET_ACCESS_KEY:-testing}" "$data")
        wait_for_service s3s-fs "$pid" "$port" / '' "$logfile"
        echo "$pid" >"$DEIS_STATE_DIR/s3s-fs.pid"
        echo "$port" >"$DEIS_STATE_DIR/s3s-fs.port"
        log "s3s-fs: started on 127.0.0.1:$port (pid $pid, log $logfile)"
    fi
    release_lock
    DEIS_S3S_PID=$(<"$DEIS_STATE_DIR/s3s-fs.pid")
    export DEIS_S3S_ENDPOINT=http://127.0.0.1:$port DEIS_S3S_PID
}

# awscli (PyPI) in the tools venv: the baseline of the upload benchmark (`aws s3 cp`).
# Exports DEIS_AWSCLI, the path of its `aws`.
ensure_awscli() {
    local aws=$DEIS_TOOLS_VENV/bin/aws
    acquire_lock awscli
    if [[ -x $aws ]] && "$aws" --version >/dev/null 2>&1; then
        log "awscli: $aws"
    else
        log "installing awscli into $DEIS_TOOLS_VENV"
        mkdir -p "$(dirname "$DEIS_TOOLS_VENV")"
        [[ -x $DEIS_TOOLS_VENV/bin/pip ]] || python3 -m venv "$DEIS_TOOLS_VENV"
        "$DEIS_TOOLS_VENV/bin/pip" install -q --disable-pip-version-check awscli </dev/null ||
            die "pip install awscli failed"
        "$aws" --version >/dev/null 2>&1 || die "awscli still missing after pip install"
    fi
    release_lock
    export DEIS_AWSCLI=$aws
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
