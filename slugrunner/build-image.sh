#!/usr/bin/env bash
# Builds the slug runner image (default deis-builder/slugrunner:latest, DEIS_RUNNER_IMAGE)
# from the stack's local run image, without pulling anything. Idempotent: the image is
# rebuilt only when the runner binary or the run image changed.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"
ensure_docker
ensure_stack_image
ensure_runner_image
echo "$DEIS_RUNNER_IMAGE"
