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

export DEIS_IT=1
export DEIS_IT_STACK_IMAGE=$DEIS_STACK_IMAGE
export DEIS_IT_S3_ENDPOINT DEIS_IT_REGISTRY
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
export AWS_REGION=${AWS_REGION:-us-east-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/deis-builder/target}

cat <<EOF
DOCKER_HOST=${DOCKER_HOST:-unix://$DEIS_DEFAULT_DOCKER_SOCKET}
DEIS_IT_STACK_IMAGE=$DEIS_IT_STACK_IMAGE
DEIS_IT_S3_ENDPOINT=$DEIS_IT_S3_ENDPOINT
DEIS_IT_REGISTRY=$DEIS_IT_REGISTRY
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
cargo clippy --all-targets -- -D warnings

section "cargo test"
cargo test --all-targets "${cargo_args[@]}" -- \
    --test-threads="${DEIS_TEST_THREADS:-2}" "${test_binary_args[@]}"

section "all checks passed"
