# shellcheck shell=bash
# Tools only the benchmarks need (scripts/bench.sh): a second S3 server (s3s-fs) and the
# awscli baseline. Source scripts/lib.sh first (logging, locks, services, the tools venv).
#
# Settings (all optional):
#   DEIS_TOOLS_DIR          programs installed from crates.io for the benchmarks (s3s-fs)
#                           (default ~/.cache/deis-builder/tools)

DEIS_TOOLS_DIR=${DEIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deis-builder/tools}

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
