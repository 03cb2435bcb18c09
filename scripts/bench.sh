#!/usr/bin/env bash
# The benchmarks command: runs the benchmarks of BENCHMARKS.md side by side with their
# baselines on this machine, prints min/median/max and ratios, and a Markdown summary for
# BENCHMARKS.md. Installs and starts what it needs (Docker engine, stack image, moto S3,
# s3s-fs, OpenSSH server, awscli), all on loopback, reused when already there.
#
#   scripts/bench.sh                 everything (5 runs per timed figure, 1 GB for #6)
#   scripts/bench.sh --quick         3 runs, 256 MB for #6
#   scripts/bench.sh --only 1,4      some figures only
#
# Other arguments go to benches/bench.py (`--runs N`, `--keep`, ...). The summary is also
# written to $DEIS_BENCH_SUMMARY (default: target/bench-summary.md under CARGO_TARGET_DIR).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"
# shellcheck source=scripts/bench-lib.sh
source "$repo_root/scripts/bench-lib.sh"

ensure_packages
ensure_docker
ensure_stack_image
ensure_s3
ensure_registry

# awscli is the baseline of #3 (in the tools venv beside moto); s3s-fs is the second S3
# server #3 runs against.
ensure_awscli
ensure_s3s_fs
export PATH=$DEIS_TOOLS_VENV/bin:$PATH
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
export AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_DEFAULT_REGION=$AWS_REGION
export DEIS_IT_S3_ENDPOINT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/deis-builder/target}

log "cargo build --release"
(cd "$repo_root" && cargo build --release --quiet)
exe=$CARGO_TARGET_DIR/release/deis-builder

command_line="scripts/bench.sh${*:+ $*}"
quick=''
bench_args=()
only=1,2,3,4,5,6,7,8,9,10,11
while (($#)); do
    case $1 in
        --quick) quick=1 bench_args+=("$1") ;;
        --only) only=$2 bench_args+=("$1" "$2") && shift ;;
        --only=*) only=${1#--only=} bench_args+=("$1") ;;
        *) bench_args+=("$1") ;;
    esac
    shift
done

results_dir=$(mktemp -d "${TMPDIR:-/tmp}/deis-bench-results.XXXXXX")
trap 'rm -rf "$results_dir"' EXIT
external=()

# #2 (pack vs tar -cz) and #3 (upload vs aws s3 cp) are Rust bench targets (benches/pack.rs,
# benches/upload.rs); each prints one `bench ...` line that bench.py tabulates.
runs=5
[[ -n $quick ]] && runs=3
for arg in "${bench_args[@]}"; do
    [[ ${previous:-} == --runs ]] && runs=$arg
    previous=$arg
done
# #3 runs twice: against moto (the test suite's S3 server) and against s3s-fs.
moto_pid=$(cat "$DEIS_STATE_DIR/moto.pid" 2>/dev/null || true)
for figure in 2:pack:- 3:upload:moto 3:upload:s3s-fs; do
    IFS=: read -r number bench server <<<"$figure"
    [[ ,$only, == *,$number,* ]] || continue
    results=$results_dir/$bench-$server.txt
    endpoint=$DEIS_IT_S3_ENDPOINT server_pid=$moto_pid
    if [[ $server == s3s-fs ]]; then
        endpoint=$DEIS_S3S_ENDPOINT server_pid=$DEIS_S3S_PID
    fi
    against=''
    [[ $server == - ]] || against=" against $server"
    log "cargo bench --bench $bench ($runs runs$against)"
    if (cd "$repo_root" && DEIS_BENCH_RUNS=$runs DEIS_IT_S3_ENDPOINT=$endpoint \
        DEIS_BENCH_S3_NAME=$server DEIS_BENCH_S3_PID=$server_pid \
        cargo bench --quiet --bench "$bench" -- --bench) | tee "$results"; then
        external+=(--external "$results")
    else
        log "cargo bench --bench $bench failed"
    fi
done

summary=${DEIS_BENCH_SUMMARY:-$CARGO_TARGET_DIR/bench-summary.md}
python3 "$repo_root/benches/bench.py" --exe "$exe" \
    --s3-endpoint "$DEIS_IT_S3_ENDPOINT" --s3-python "$DEIS_TOOLS_VENV/bin/python" \
    --stack-image "$DEIS_STACK_IMAGE" --registry "$DEIS_IT_REGISTRY" --summary "$summary" \
    --command-line "$command_line" "${external[@]}" "${bench_args[@]}"
log "summary written to $summary"
