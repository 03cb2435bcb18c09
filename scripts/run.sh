#!/usr/bin/env bash
# The project's main command: one machine, one command. Installs and starts the Docker
# engine, builds the stack image if missing, builds deis-builder and serves with the
# embedded defaults (standalone controller, objects in the data dir, images kept in the
# local engine). Extra arguments are passed to `deis-builder serve`.
#
# Settings: DEIS_DATA_DIR, DEIS_SSH_ADDR (0.0.0.0:2222), DEIS_HTTP_ADDR (127.0.0.1:8092),
# DEIS_STACK_IMAGE, CARGO_TARGET_DIR; the builder's own DEIS_BUILDER_* variables (e.g.
# DEIS_BUILDER_BUILD_NETWORK, DEIS_BUILDER_BUILD_CA_FILE) win over what this script picks.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"

ensure_packages
ensure_docker
ensure_stack_image

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/deis-builder/target}
log "cargo build --release"
(cd "$repo_root" && cargo build --release)
# Cloud Native Buildpacks builds copy this static driver into the build container.
ensure_cnb_driver
export DEIS_BUILDER_CNB_DRIVER=${DEIS_BUILDER_CNB_DRIVER:-$DEIS_CNB_DRIVER}

data_dir=${DEIS_DATA_DIR:-$HOME/.local/share/deis-builder}
ssh_addr=${DEIS_SSH_ADDR:-0.0.0.0:2222}
http_addr=${DEIS_HTTP_ADDR:-127.0.0.1:8092}
mkdir -p "$data_dir"

# Builds need a network to install dependencies (pip, npm, Go modules). A stock engine has
# the `bridge` network; ours runs with --bridge=none (no private-range addresses), so builds
# share the host's network instead. Builds then trust the host's CA bundle as well as the
# stack's own: hosts that reach package registries through an intercepting proxy have its
# CA there.
build_args=()
if [[ -z ${DEIS_BUILDER_BUILD_NETWORK:-} ]]; then
    if docker network inspect bridge >/dev/null 2>&1; then
        build_network=bridge
    else
        build_network=host
    fi
    build_args+=(--build-network "$build_network")
fi
host_ca_bundle=/etc/ssl/certs/ca-certificates.crt
if [[ -z ${DEIS_BUILDER_BUILD_CA_FILE:-} && -s $host_ca_bundle ]]; then
    build_args+=(--build-ca-file "$host_ca_bundle")
fi

cat <<EOF

deis-builder
  data dir:   $data_dir
  ssh:        $ssh_addr
  http:       $http_addr
  stack:      $DEIS_STACK_IMAGE
  builds:     ${build_args[*]:-network and CA from DEIS_BUILDER_* variables}

Allow a key to push (the key's comment becomes the user name):
  cat ~/.ssh/id_ed25519.pub >> $data_dir/authorized_keys

Then push an app:
  git remote add deis ssh://git@localhost:2222/myapp.git
  git push deis master

EOF

exec "$CARGO_TARGET_DIR/release/deis-builder" serve \
    --data-dir "$data_dir" \
    --ssh-addr "$ssh_addr" \
    --http-addr "$http_addr" \
    --stack-image "$DEIS_STACK_IMAGE" \
    "${build_args[@]}" \
    "$@"
