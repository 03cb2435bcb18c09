#!/usr/bin/env bash
# Builds the two stack images from Debian bookworm, without pulling any image:
#
#   run image   (DEIS_STACK_RUN_IMAGE, default deis-builder/stack-run:bookworm)
#               minbase debootstrap + run-packages.txt: the runtimes slugs run on; the slug
#               runner image (slugrunner/Dockerfile) is built FROM it.
#   build image (DEIS_STACK_IMAGE, default deis-builder/stack:bookworm)
#               the run image's file system + build-packages.txt: package managers,
#               compilers and headers; build containers run the buildpacks in it.
#
# Both come from the mirror apt already uses (DEIS_DEBIAN_MIRROR overrides it), with
# bookworm-updates and, when reachable, bookworm-security (DEIS_DEBIAN_SECURITY_MIRROR,
# default: the mirror's URL with `-security` appended when it ends in /debian), and carry
#
#   io.deis.builder.stack=deis-bookworm      the stack name builds see as $STACK
#   io.deis.builder.stack.recipe=<hash>      DEIS_STACK_RECIPE: what ensure_stack_image
#                                            compares with the hash of this folder
#   io.deis.builder.stack.role=build|run
#
# Needs root (debootstrap, chroot), debootstrap and a Docker engine. Usually called by
# ensure_stack_image (scripts/lib.sh), which holds a lock and only calls it when the images
# are missing or were built from another recipe; run by hand it rebuilds both images.
# The log goes to DEIS_STATE_DIR/stack-build.log.
set -euo pipefail
# A strict caller umask would leave / or /app unreadable for uid 1000.
umask 022

stack_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
source "$stack_dir/../scripts/lib.sh"

STACK_NAME=deis-bookworm
build_image=$DEIS_STACK_IMAGE
run_image=$DEIS_STACK_RUN_IMAGE
recipe=${DEIS_STACK_RECIPE:-$(stack_recipe)}
mirror=${DEIS_DEBIAN_MIRROR:-$(debian_mirror)}
mirror=${mirror%/}

ensure_state_dir
logfile=$DEIS_STATE_DIR/stack-build.log
: >"$logfile"

[[ $(id -u) == 0 ]] || die "stack/build.sh needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is missing (ensure_packages installs it)"

# The package names of a list file, without comments and blank lines.
read_packages() {
    sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$1"
}

security_mirror() {
    if [[ -n ${DEIS_DEBIAN_SECURITY_MIRROR:-} ]]; then
        echo "${DEIS_DEBIAN_SECURITY_MIRROR%/}"
    elif [[ $mirror == http*://*/debian ]]; then
        echo "$mirror-security"
    fi
}

workdir=$(mktemp -d "${TMPDIR:-/tmp}/deis-stack.XXXXXX")
trap 'remove_rootfs_dir "$workdir"' EXIT
trap 'exit 130' INT TERM
run_root=$workdir/run
build_root=$workdir/build

# run_in ROOT COMMAND...: runs COMMAND chrooted in ROOT with /proc mounted and, for a
# file: mirror, the mirror bind-mounted at the same path; output to the log.
run_in() {
    local root=$1 status=0 mirror_path=''
    shift
    mount -t proc proc "$root/proc"
    if [[ $mirror == file:* ]]; then
        mirror_path=/${mirror#file:}
        mirror_path=/${mirror_path##/}
        mkdir -p "$root$mirror_path"
        mount --bind "$mirror_path" "$root$mirror_path"
    fi
    chroot "$root" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        "$@" >>"$logfile" 2>&1 </dev/null || status=$?
    [[ -z $mirror_path ]] || umount "$root$mirror_path"
    umount "$root/proc"
    return "$status"
}

apt_in() {
    local root=$1
    shift
    run_in "$root" apt-get -y -q -o Dpkg::Use-Pty=0 -o Acquire::Retries=3 \
        -o APT::Install-Recommends=false -o APT::Install-Suggests=false \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

fail_build() {
    show_log_tail "$logfile"
    die "$*"
}

# What a root file system needs before apt runs in it.
prepare_root() {
    local root=$1 security
    # No daemon starts during the build.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    # Documentation and manuals are not needed in a build or run container; licences stay.
    cat >"$root/etc/dpkg/dpkg.cfg.d/deis-stack-slim" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
EOF
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
    {
        echo "deb $mirror bookworm main"
        echo "deb $mirror bookworm-updates main"
    } >"$root/etc/apt/sources.list"
    security=$(security_mirror)
    if [[ -n $security ]] && curl -fsS -o /dev/null --max-time 20 \
        "$security/dists/bookworm-security/Release" 2>>"$logfile"; then
        echo "deb $security bookworm-security main" >>"$root/etc/apt/sources.list"
        log "stack image: security updates from $security"
    else
        log "stack image: no bookworm-security mirror reachable${security:+ at $security}; set DEIS_DEBIAN_SECURITY_MIRROR"
    fi
}

# What must not stay in an image: build host files, apt's downloads and lists, logs.
finish_root() {
    local root=$1
    rm -f "$root/usr/sbin/policy-rc.d"
    echo stack >"$root/etc/hostname"
    : >"$root/etc/resolv.conf"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
        "$root"/var/lib/apt/lists/* "$root"/var/log/apt/* "$root"/var/log/dpkg.log \
        "$root"/var/log/alternatives.log "$root"/var/cache/debconf/*-old \
        "$root"/var/lib/dpkg/*-old "$root"/tmp/* "$root"/root/.cache
}

# import_root ROOT IMAGE ROLE
import_root() {
    local root=$1 image=$2 role=$3
    tar --numeric-owner -C "$root" -c -f - . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change "LABEL io.deis.builder.stack=$STACK_NAME" \
            --change "LABEL io.deis.builder.stack.recipe=$recipe" \
            --change "LABEL io.deis.builder.stack.role=$role" \
            - "$image" >/dev/null
}

# Removes IMAGE_ID when no tag points at it any more (best effort: an image still used by
# a container or a child image stays).
drop_if_untagged() {
    local id=$1 tags
    [[ -n $id ]] || return 0
    tags=$(docker image inspect --format '{{len .RepoTags}}' "$id" 2>/dev/null) || return 0
    [[ $tags == 0 ]] && docker image rm "$id" >/dev/null 2>&1 || true
}

started=$SECONDS
old_build_id=$(docker image inspect --format '{{.Id}}' "$build_image" 2>/dev/null || true)
old_run_id=$(docker image inspect --format '{{.Id}}' "$run_image" 2>/dev/null || true)

log "stack image: debootstrap bookworm from $mirror (log $logfile)"
if ! debootstrap --variant=minbase bookworm "$run_root" "$mirror" >>"$logfile" 2>&1 </dev/null; then
    [[ -f $run_root/debootstrap/debootstrap.log ]] && show_log_tail "$run_root/debootstrap/debootstrap.log"
    fail_build "debootstrap failed"
fi
log "stack image: debootstrap done ($((SECONDS - started))s); installing the run packages"
prepare_root "$run_root"
mapfile -t run_packages < <(read_packages "$stack_dir/run-packages.txt")
apt_in "$run_root" update || fail_build "apt-get update failed in the run image"
apt_in "$run_root" dist-upgrade || fail_build "apt-get dist-upgrade failed in the run image"
apt_in "$run_root" install "${run_packages[@]}" || fail_build "apt-get install failed in the run image"

# The unprivileged user buildpacks and slugs run as, owner of /app.
grep -q '^slug:' "$run_root/etc/group" || echo 'slug:x:1000:' >>"$run_root/etc/group"
grep -q '^slug:' "$run_root/etc/gshadow" || echo 'slug:!::' >>"$run_root/etc/gshadow"
grep -q '^slug:' "$run_root/etc/passwd" ||
    echo 'slug:x:1000:1000:slug:/app:/bin/bash' >>"$run_root/etc/passwd"
grep -q '^slug:' "$run_root/etc/shadow" || echo 'slug:*:19000:0:99999:7:::' >>"$run_root/etc/shadow"
chmod 755 "$run_root"
mkdir -p "$run_root/app"
chown 1000:1000 "$run_root/app"

# The build image starts from the same file system (apt lists included).
cp -a "$run_root" "$build_root"
finish_root "$run_root"
log "stack image: importing $run_image ($((SECONDS - started))s); installing the build packages"
import_root "$run_root" "$run_image" run >>"$logfile" 2>&1 &
run_import=$!

echo "deb $mirror bookworm-backports main" >>"$build_root/etc/apt/sources.list"
mapfile -t build_packages < <(read_packages "$stack_dir/build-packages.txt")
build_status=0
apt_in "$build_root" update || build_status=$?
((build_status == 0)) && { apt_in "$build_root" install "${build_packages[@]}" || build_status=$?; }
# Debian names Yarn 1 `yarnpkg`; projects and docs say `yarn`.
if ((build_status == 0)) && [[ -x $build_root/usr/bin/yarnpkg && ! -e $build_root/usr/local/bin/yarn ]]; then
    ln -s /usr/bin/yarnpkg "$build_root/usr/local/bin/yarn"
fi
# The run image is done (or failed) either way: wait for it before reporting.
run_import_status=0
wait "$run_import" || run_import_status=$?
((build_status == 0)) || fail_build "apt-get failed in the build image"
((run_import_status == 0)) || fail_build "docker import of $run_image failed"
finish_root "$build_root"
log "stack image: importing $build_image ($((SECONDS - started))s)"
import_root "$build_root" "$build_image" build >>"$logfile" 2>&1 || fail_build "docker import of $build_image failed"

new_build_id=$(docker image inspect --format '{{.Id}}' "$build_image")
new_run_id=$(docker image inspect --format '{{.Id}}' "$run_image")
[[ $old_build_id == "$new_build_id" ]] || drop_if_untagged "$old_build_id"
[[ $old_run_id == "$new_run_id" ]] || drop_if_untagged "$old_run_id"
log "stack image: built $build_image and $run_image in $((SECONDS - started))s (recipe $recipe)"
