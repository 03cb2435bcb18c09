#!/usr/bin/env bash
# The project's test command: installs and starts what the tests need (Docker engine,
# stack image, S3 server, registry; all on loopback), then runs fmt, clippy and the
# whole test suite.
#
#   scripts/test.sh                    everything
#   scripts/test.sh push               only tests whose name contains "push"
#   scripts/test.sh push -- --nocapture
#
# Arguments before a `--` go to `cargo test`, arguments after it to the test binaries.
# The integration tests (#[ignore]d for plain `cargo test`) run with `--include-ignored`.
# DEIS_TEST_THREADS (default 2) sets --test-threads.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"

section() { printf '\n==== %s ====\n' "$*"; }

section "set-up"
ensure_packages
ensure_docker
ensure_stack_image
ensure_s3
ensure_registry
ensure_runner_image
ensure_cnb_driver
ensure_cnb_fixtures

export DEIS_IT=1
export DEIS_IT_STACK_IMAGE=$DEIS_STACK_IMAGE
export DEIS_IT_S3_ENDPOINT DEIS_IT_REGISTRY
export DEIS_IT_RUNNER_IMAGE=$DEIS_RUNNER_IMAGE
export DEIS_IT_CNB_DRIVER=$DEIS_CNB_DRIVER
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
export AWS_REGION=${AWS_REGION:-us-east-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/deis-builder/target}

cat <<EOF
DOCKER_HOST=${DOCKER_HOST:-unix://$DEIS_DEFAULT_DOCKER_SOCKET}
DEIS_IT_STACK_IMAGE=$DEIS_IT_STACK_IMAGE
DEIS_IT_S3_ENDPOINT=$DEIS_IT_S3_ENDPOINT
DEIS_IT_REGISTRY=$DEIS_IT_REGISTRY
DEIS_IT_RUNNER_IMAGE=$DEIS_IT_RUNNER_IMAGE
DEIS_IT_CNB_DRIVER=$DEIS_IT_CNB_DRIVER
DEIS_IT_LIBCNB_BUILDPACK=$DEIS_IT_LIBCNB_BUILDPACK
CARGO_TARGET_DIR=$CARGO_TARGET_DIR
EOF

cargo_args=()
test_binary_args=()
while (($#)); do
    if [[ $1 == -- ]]; then
        shift
        test_binary_args=("$@")
        break
    fi
    cargo_args+=("$1")
    shift
done

cd "$repo_root"

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo test"
# Everything (bench targets included, as a smoke run) unless arguments pick targets.
full_run=$((${#cargo_args[@]} == 0))
((full_run)) && cargo_args=(--workspace --all-targets)
# Integration tests are #[ignore]d so a plain `cargo test` does not count them as passed;
# here the services are up, so they run too (libtest refuses it next to `--ignored`).
# Bench targets ignore test-harness flags.
include_ignored=(--include-ignored)
for arg in "${test_binary_args[@]}"; do
    [[ $arg == --ignored ]] && include_ignored=()
done
cargo test "${cargo_args[@]}" -- \
    "${include_ignored[@]}" --test-threads="${DEIS_TEST_THREADS:-2}" "${test_binary_args[@]}"

# Parsers of untrusted input (slug unpacking, SSH commands, names and refs, Procfiles,
# .slugignore, controller replies) get a short libFuzzer run each: DEIS_FUZZ_SECONDS
# (default 60) split across the targets. Only on full runs (no test filter);
# DEIS_FUZZ_SECONDS=0 skips it. Longer runs: scripts/fuzz.sh [seconds-per-target].
fuzz_seconds=${DEIS_FUZZ_SECONDS:-60}
if ((fuzz_seconds > 0 && full_run)); then
    fuzz_targets=$("$repo_root/scripts/fuzz.sh" --list | wc -l)
    ((fuzz_targets > 0)) || die "no fuzz targets in fuzz/Cargo.toml"
    per_target=$((fuzz_seconds / fuzz_targets))
    ((per_target > 0)) || per_target=1
    section "fuzzing (${per_target}s per target)"
    fuzz_scratch=$(mktemp -d "${TMPDIR:-/tmp}/deis-fuzz.XXXXXX")
    fuzz_status=0
    DEIS_FUZZ_WORK=$fuzz_scratch "$repo_root/scripts/fuzz.sh" "$per_target" || fuzz_status=$?
    if ((fuzz_status != 0)); then
        echo "fuzzing found a problem; inputs kept in $fuzz_scratch/artifacts" >&2
        exit "$fuzz_status"
    fi
    rm -rf "$fuzz_scratch"
fi

section "all checks passed"
