#!/usr/bin/env bash
# Benchmark of the build cache: pushes an app whose buildpack (fixtures/buildpacks/slow-cache,
# served over HTTP from 127.0.0.1) does slow, cacheable dependency work, twice, through
# real git+ssh, and prints both push times and the speed-up. Not a test: numbers only.
#
# Settings: DEP_ROUNDS (work per package, default 16000000), CARGO_TARGET_DIR, PROFILE
# (release|debug, default release).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"
ensure_docker
ensure_stack_image

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/deis-builder/target}
profile=${PROFILE:-release}
rounds=${DEP_ROUNDS:-16000000}
if [ "$profile" = release ]; then
    (cd "$repo_root" && cargo build --release --quiet)
else
    (cd "$repo_root" && cargo build --quiet)
fi
exe="$CARGO_TARGET_DIR/$profile/deis-builder"

work=$(mktemp -d)
builder_pid="" server_pid=""
cleanup() {
    local status=$?
    for pid in "$builder_pid" "$server_pid"; do
        if [ -n "$pid" ]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

git_quiet() { git -c user.name=bench -c user.email=bench@example.com "$@" >/dev/null; }

# The buildpack, as a git repository served over git's dumb HTTP protocol.
mkdir -p "$work/www" "$work/bp"
cp -a "$repo_root/fixtures/buildpacks/slow-cache/." "$work/bp/"
git_quiet -C "$work/bp" init -q -b main
git_quiet -C "$work/bp" add -A
git_quiet -C "$work/bp" commit -q -m buildpack
git_quiet clone -q --bare "$work/bp" "$work/www/slow-cache.git"
git -C "$work/www/slow-cache.git" update-server-info
http_port=$(free_port)
python3 -m http.server --bind 127.0.0.1 "$http_port" --directory "$work/www" >/dev/null 2>&1 &
server_pid=$!

# The builder, with one authorised key and the app's config.
data="$work/data"
app=cachebench
mkdir -p "$data/apps/$app"
ssh-keygen -q -t ed25519 -N '' -C bench -f "$work/key"
cp "$work/key.pub" "$data/authorized_keys"
printf '{"BUILDPACK_URL": "http://127.0.0.1:%s/slow-cache.git", "DEP_ROUNDS": "%s"}\n' \
    "$http_port" "$rounds" > "$data/apps/$app/config.json"
ssh_port=$(free_port)
health_port=$(free_port)
"$exe" serve --data-dir "$data" --ssh-addr "127.0.0.1:$ssh_port" \
    --http-addr "127.0.0.1:$health_port" >"$work/builder.log" 2>&1 &
builder_pid=$!
for _ in $(seq 1 300); do
    http_probe "http://127.0.0.1:$health_port/healthz" "" && break
    sleep 0.1
done

mkdir -p "$work/app"
cp -a "$repo_root/fixtures/apps/cached-deps/." "$work/app/"
git_quiet -C "$work/app" init -q -b master
git_quiet -C "$work/app" add -A
git_quiet -C "$work/app" commit -q -m one
export GIT_SSH_COMMAND="ssh -p $ssh_port -i $work/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR"
remote="ssh://git@127.0.0.1:$ssh_port/$app.git"

timed_push() {
    local started ended
    started=$(date +%s.%N)
    if ! git -C "$work/app" push -q "$remote" master >"$work/push.log" 2>&1; then
        cat "$work/push.log" >&2
        die "push failed"
    fi
    ended=$(date +%s.%N)
    python3 -c "print(f'{$ended - $started:.3f}')"
}

first=$(timed_push)
grep -q "Building dependencies" "$work/push.log" || die "first push did not build dependencies"
echo "change" > "$work/app/CHANGE"
git_quiet -C "$work/app" add -A
git_quiet -C "$work/app" commit -q -m two
second=$(timed_push)
grep -q "Using cached dependencies" "$work/push.log" || die "second push did not use the cache"

printf 'cache benchmark (DEP_ROUNDS=%s, %s build)\n' "$rounds" "$profile"
printf 'first push (cold cache):  %6.2f s\n' "$first"
printf 'second push (warm cache): %6.2f s\n' "$second"
printf 'speed-up:                 %6.2fx\n' "$(python3 -c "print($first / $second)")"
