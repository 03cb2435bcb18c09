#!/usr/bin/env bash
# Builds the stack images only when they are stale: missing, or labelled with another
# recipe than the hash of this folder (see stack_recipe in lib.sh).
#
#   stack/ensure.sh            the build and run images (build.sh when stale)
#   stack/ensure.sh --runner   the same, then the slug runner image (cargo build of
#                              slugrunner; docker build when the binary or run image changed)
#   stack/ensure.sh --check    builds nothing: says whether the build and run images are
#                              current; exit 0 when they are, 1 when not, 2 without an engine
#
# scripts/test.sh, scripts/run.sh and scripts/bench.sh call the same functions
# (ensure_stack_image, ensure_runner_image) after their other set-up. Starts the Docker
# engine when it does not answer (not with --check); installs no packages (scripts/lib.sh's
# ensure_packages does: debootstrap, docker.io).
set -euo pipefail

stack_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
source "$stack_dir/../scripts/lib.sh"

usage() {
    echo "usage: stack/ensure.sh [--check | --runner]" >&2
    exit 2
}

mode=ensure
case ${1:-} in
    '') ;;
    --check) mode=check ;;
    --runner) mode=runner ;;
    *) usage ;;
esac
(($# <= 1)) || usage

if [[ $mode == check ]]; then
    docker_answers || {
        log "stack images: no Docker engine answers at ${DOCKER_HOST:-unix://$DEIS_DEFAULT_DOCKER_SOCKET}"
        exit 2
    }
    recipe=$(stack_recipe) || die "cannot hash the stack recipe (stack/)"
    status=0
    for image in "$DEIS_STACK_IMAGE" "$DEIS_STACK_RUN_IMAGE"; do
        if ! label=$(stack_image_recipe "$image"); then
            log "stack images: $image missing (recipe $recipe)"
            status=1
        elif [[ $label != "$recipe" ]]; then
            log "stack images: $image stale (built from recipe ${label:-unknown}, recipe now $recipe)"
            status=1
        else
            log "stack images: $image current (recipe $recipe)"
        fi
    done
    exit "$status"
fi

ensure_docker
ensure_stack_image
if [[ $mode == runner ]]; then
    ensure_runner_image
fi
