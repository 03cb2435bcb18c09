# shellcheck shell=bash
# The stack: what goes into the build image, the run image and the slug runner image, and
# when they are rebuilt. scripts/lib.sh sources this file (its logging, locks and state
# directory are used here), so every script that sources scripts/lib.sh can call
#
#   ensure_stack_image    the build and run images, built by build.sh when missing or stale
#   ensure_runner_image   the slug runner image, rebuilt when the runner binary or the run
#                         image changed
#   ensure_cnb_driver     the static CNB driver binary (exports DEIS_CNB_DRIVER)
#
# stack/ensure.sh is the same from the command line (and --check only reports).
#
# Settings (all optional):
#   DEIS_STACK_IMAGE        stack build image name (default deis-builder/stack:bookworm)
#   DEIS_STACK_RUN_IMAGE    stack run image name (default deis-builder/stack-run:bookworm)
#   DEIS_RUNNER_IMAGE       slug runner image name (default deis-builder/slugrunner:latest)
#   DEIS_DEBIAN_MIRROR      mirror for debootstrap (default: the one apt uses)

DEIS_STACK_IMAGE=${DEIS_STACK_IMAGE:-deis-builder/stack:bookworm}
DEIS_STACK_RUN_IMAGE=${DEIS_STACK_RUN_IMAGE:-deis-builder/stack-run:bookworm}
# The slug runner image: the stack's run image plus the slugrunner binary
# (slugrunner/Dockerfile).
DEIS_RUNNER_IMAGE=${DEIS_RUNNER_IMAGE:-deis-builder/slugrunner:latest}

_deis_stack_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

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

# Hash of the stack recipe: the files of stack/ except documentation (*.md) and the two
# files that decide when to build rather than what (lib.sh, ensure.sh). The stack images
# carry it in the label io.deis.builder.stack.recipe, so a changed recipe rebuilds them.
stack_recipe() {
    [[ -d $_deis_stack_dir ]] || return 1
    (cd "$_deis_stack_dir" &&
        find . -type f ! -name '*.md' ! -path ./lib.sh ! -path ./ensure.sh -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum) |
        sha256sum | cut -c1-16
}

# The recipe label of IMAGE; fails when the image is missing.
stack_image_recipe() {
    docker image inspect --format \
        '{{index .Config.Labels "io.deis.builder.stack.recipe"}}' "$1" 2>/dev/null
}

# stack_images_current RECIPE: both stack images exist and were built from RECIPE.
stack_images_current() {
    local image label
    for image in "$DEIS_STACK_IMAGE" "$DEIS_STACK_RUN_IMAGE"; do
        label=$(stack_image_recipe "$image") || return 1
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
        bash "$_deis_stack_dir/build.sh" </dev/null || status=$?
    release_lock
    ((status == 0)) || die "stack image build failed"
}

# ---------------------------------------------------------------------- runner image

# Builds slugrunner and the CNB driver (deis-cnb) statically linked (glibc with
# crt-static) so they run in any stack image, in one cargo run; prints the path of the
# package named by $1. Uses its own --target so the flags never touch the host build of
# the builder.
build_static_binary() {
    local package=$1 repo_root target_dir triple
    repo_root=$(dirname "$_deis_stack_dir")
    target_dir=${CARGO_TARGET_DIR:-$HOME/.cache/deis-builder/target}
    triple=$(rustc -vV | awk '$1 == "host:" { print $2 }')
    [[ -n $triple ]] || die "cannot tell rustc's host target"
    log "static binaries: cargo build --release -p slugrunner -p deis-cnb --target $triple"
    (
        cd "$repo_root"
        RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
            CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
            cargo build --release -p slugrunner -p deis-cnb --target "$triple" \
            --target-dir "$target_dir" </dev/null >&2
    ) || die "building $package failed"
    local binary=$target_dir/$triple/release/$package
    # A static(-pie) binary lists no shared libraries ("=>" lines).
    if ldd "$binary" 2>/dev/null | grep -q '=>'; then
        die "$package is dynamically linked: $(ldd "$binary" | tr '\n' ' ')"
    fi
    echo "$binary"
}

build_runner_binary() {
    build_static_binary slugrunner
}

# The Cloud Native Buildpacks driver the builder copies into CNB builds
# (--cnb-driver / DEIS_BUILDER_CNB_DRIVER): exports DEIS_CNB_DRIVER.
ensure_cnb_driver() {
    DEIS_CNB_DRIVER=$(build_static_binary deis-cnb) || die "building the CNB driver failed"
    export DEIS_CNB_DRIVER
}

# The test suite's Rust CNB (fixtures/cnb/libcnb-hello, written with Heroku's libcnb from
# crates.io), built statically in its own workspace and target dir; cargo makes a re-run a
# no-op. Exports DEIS_IT_LIBCNB_BUILDPACK (the binary).
ensure_cnb_fixtures() {
    local repo_root target_dir triple started=$SECONDS
    repo_root=$(dirname "$_deis_stack_dir")
    target_dir=${CARGO_TARGET_DIR:-$HOME/.cache/deis-builder/target}/libcnb-fixture
    triple=$(rustc -vV | awk '$1 == "host:" { print $2 }')
    [[ -n $triple ]] || die "cannot tell rustc's host target"
    (
        cd "$repo_root/fixtures/cnb/libcnb-hello"
        RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
            CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
            cargo build --release --locked --target "$triple" --target-dir "$target_dir" \
            </dev/null >&2
    ) || die "building the libcnb test buildpack failed"
    DEIS_IT_LIBCNB_BUILDPACK=$target_dir/$triple/release/libcnb-hello
    export DEIS_IT_LIBCNB_BUILDPACK
    log "libcnb test buildpack: $DEIS_IT_LIBCNB_BUILDPACK ($((SECONDS - started))s)"
}

# Builds $DEIS_RUNNER_IMAGE FROM $DEIS_STACK_RUN_IMAGE with the legacy builder (which never
# pulls an image that is present locally). Idempotent: labels record the binary's sha256
# and the run image id, and the image is rebuilt only when either changed.
ensure_runner_image() {
    local repo_root binary started=$SECONDS
    repo_root=$(dirname "$_deis_stack_dir")
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
