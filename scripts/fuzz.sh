#!/usr/bin/env bash
# Runs the libFuzzer targets in fuzz/ (cargo-fuzz; libFuzzer's nightly flags are unlocked
# on the stable toolchain with RUSTC_BOOTSTRAP=1).
#
#   scripts/fuzz.sh                      every target, 300 s each
#   scripts/fuzz.sh 60                   every target, 60 s each
#   scripts/fuzz.sh 600 procfile names   only these targets
#   scripts/fuzz.sh --list               the target names, one a line (fuzz/Cargo.toml)
#
# Targets: unpack (slug/tar unpacking), ssh_command (SSH exec command), names (app names,
# commit ids, image references, pushed ref updates), procfile (Procfile and release
# YAML), slugignore (.slugignore/.dockerignore matching), controller_reply (Deis
# controller replies). Each starts from its seeds in fuzz/seeds/<target>/.
#
# DEIS_FUZZ_WORK (default fuzz/) holds corpus/<target>/ (grows across runs) and
# artifacts/<target>/ (crashing inputs). The first target that finds a crash stops the run
# with a non-zero exit; rerun one input with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> <artifact>
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"

# The targets are the [[bin]] entries of fuzz/Cargo.toml, in their order there.
list_targets() {
    awk '
        /^[ \t]*\[/ { in_bin = ($0 ~ /^[ \t]*\[\[[ \t]*bin[ \t]*\]\][ \t]*(#.*)?$/) }
        in_bin && /^[ \t]*name[ \t]*=/ {
            value = substr($0, index($0, "=") + 1)
            gsub(/^[ \t]*"|"[ \t]*(#.*)?$/, "", value)
            print value
        }
    ' "$repo_root/fuzz/Cargo.toml"
}

# cargo-fuzz for the libFuzzer targets. It needs nightly flags, which RUSTC_BOOTSTRAP=1
# unlocks on the stable toolchain.
ensure_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        log "cargo-fuzz: $(cargo fuzz --version)"
        return 0
    fi
    log "cargo install cargo-fuzz"
    cargo install --locked cargo-fuzz </dev/null >&2 || die "cargo install cargo-fuzz failed"
}

if [[ ${1:-} == --list ]]; then
    list_targets
    exit
fi

mapfile -t all_targets < <(list_targets)
((${#all_targets[@]})) || die "no fuzz targets ([[bin]] entries) in fuzz/Cargo.toml"
seconds=${1:-300}
shift || true
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
    die "usage: scripts/fuzz.sh [seconds-per-target] [target...]"
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/deis-builder/target}
work=${DEIS_FUZZ_WORK:-$repo_root/fuzz}
ensure_cargo_fuzz

# One build for all targets, so the first target's time limit does not include compiling.
RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir "$repo_root/fuzz" \
    --target-dir "$CARGO_TARGET_DIR/fuzz" >&2

for target in "${targets[@]}"; do
    corpus=$work/corpus/$target
    artifacts=$work/artifacts/$target
    seeds=$repo_root/fuzz/seeds/$target
    mkdir -p "$corpus" "$artifacts"
    [[ -d $seeds ]] || seeds=
    log "fuzzing $target for ${seconds}s (corpus $corpus)"
    status=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir "$repo_root/fuzz" \
        --target-dir "$CARGO_TARGET_DIR/fuzz" "$target" "$corpus" ${seeds:+"$seeds"} -- \
        -max_total_time="$seconds" -artifact_prefix="$artifacts/" \
        -print_final_stats=1 || status=$?
    if ((status != 0)); then
        echo "fuzzing $target found a problem; the input is in $artifacts" >&2
        exit "$status"
    fi
done
