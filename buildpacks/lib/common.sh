# shellcheck shell=bash
# Helpers shared by the built-in buildpacks' bin/compile scripts (sourced, not run).
#
# Output conventions: `-----> ` headers, body lines indented 7 spaces, ` !     ` errors.

# Indents tool output as buildpack body text (blank lines stay blank), line by line so it
# still streams.
indent() {
    sed -u -e 's/^\(.\)/       \1/'
}

header() {
    echo "-----> $*"
}

info() {
    echo "       $*"
}

error() {
    echo " !     $*"
}

warn() {
    echo " !     Warning: $*"
}

# run_tool LOG COMMAND...: runs COMMAND with stdout and stderr indented to our stdout, and
# keeps a copy in LOG (to explain a failure afterwards); returns COMMAND's status.
run_tool() {
    local log=$1
    shift
    "$@" 2>&1 | tee "$log" | indent
    return "${PIPESTATUS[0]}"
}

# env_dir_vars ARRAY REGEX [EXCLUDE_REGEX]: sets the array named ARRAY to `NAME=value` for
# every ENV_DIR file whose name matches REGEX (and not EXCLUDE_REGEX), for `env "${ARRAY[@]}"
# tool …`. App config never replaces a variable the build environment already has: what
# the builder sets (proxies, CA bundles such as PIP_CERT) wins. Values are read like
# Heroku's buildpacks do, `$(cat file)`: trailing newlines dropped.
env_dir_vars() {
    local -n env_dir_vars_out=$1
    local include=$2 exclude=${3:-} file name
    env_dir_vars_out=()
    [ -n "${ENV_DIR:-}" ] && [ -d "$ENV_DIR" ] || return 0
    for file in "$ENV_DIR"/*; do
        [ -f "$file" ] || continue
        name=${file##*/}
        [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        [[ $name =~ $include ]] || continue
        if [ -n "$exclude" ] && [[ $name =~ $exclude ]]; then
            continue
        fi
        [ -n "${!name+set}" ] && continue
        env_dir_vars_out+=("$name=$(cat "$file")")
    done
}

# Variables app config must not set for build steps that see the whole config (Django's
# collectstatic, npm build scripts): they would break the tools or the stack.
readonly CONFIG_DENYLIST='^(PATH|HOME|PWD|SHELL|USER|IFS|GIT_DIR|CPATH|CPPATH|LD_PRELOAD|LD_LIBRARY_PATH|LIBRARY_PATH|PYTHONHOME|PYTHONPATH|BUILD_DIR|CACHE_DIR|ENV_DIR|BUILDPACKS_DIR|STACK|SSH_KEY|BASH_ENV|ENV)$'

# env_dir_value NAME: the value of config var NAME (empty when unset).
env_dir_value() {
    if [ -n "${ENV_DIR:-}" ] && [ -f "$ENV_DIR/$1" ]; then
        cat "$ENV_DIR/$1"
    fi
}

# env_dir_has NAME: config var NAME is set to something other than the empty string.
env_dir_has() {
    [ -n "$(env_dir_value "$1")" ]
}

# The builder runs builds without a network (`--build-network none`, DEIS_BUILD_NETWORK).
build_is_sealed() {
    [ "${DEIS_BUILD_NETWORK:-}" = none ]
}

# Size of a directory for humans (empty when it does not exist).
dir_size() {
    [ -d "$1" ] && du -sh "$1" 2>/dev/null | cut -f1
}
