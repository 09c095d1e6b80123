#!/usr/bin/env bash
# Builds every WebAssembly component of the repository (the bundled plugins in
# plugins/ and the test plugins in tests/plugins/) and copies them into a folder:
#
#     bash plugins/build.sh <out-dir>
#
# This is the one way they are built: by hand, by CI and by the host's
# tests/build.rs. It works from any directory and from inside another cargo
# build, whose environment it scrubs.
#
# Each package is built by its own cargo invocation. Building a workspace in one
# go would unify the features of shared dependencies across its plugins, and a
# plugin must be built exactly as a third party's would be, on its own.
#
# Environment:
#   WASM_TARGET_DIR  cargo target directory (default: <repo>/target/wasm)
set -euo pipefail

usage() {
    echo "usage: bash plugins/build.sh <out-dir>" >&2
    exit 2
}
[ "$#" -eq 1 ] && [ -n "$1" ] || usage

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
target_dir="${WASM_TARGET_DIR:-$repo/target/wasm}"
wasm_target="wasm32-wasip2"

# A build script inherits the enclosing build's configuration (its target, its
# flags, its wrappers, its target dir, its jobserver, the package it builds).
# None of it applies here. Keep only what locates the toolchain.
cargo_fallback="${CARGO:-}"
for var in $(compgen -e); do
    case "$var" in
        CARGO_HOME | RUSTUP_HOME | RUSTUP_TOOLCHAIN) ;;
        CARGO* | RUST* | __CARGO*) unset "$var" ;;
    esac
done
unset TARGET HOST OUT_DIR OPT_LEVEL PROFILE DEBUG NUM_JOBS
cargo=cargo
if ! command -v cargo >/dev/null 2>&1; then
    if [ -n "$cargo_fallback" ] && [ -x "$cargo_fallback" ]; then
        cargo="$cargo_fallback"
    else
        echo "plugins/build.sh: cargo is not on PATH" >&2
        exit 1
    fi
fi

fail() {
    echo "plugins/build.sh: $*" >&2
    exit 1
}

# (a) The wasm32-wasip2 standard library, installed only when missing.
libdir="$(rustc --print target-libdir --target "$wasm_target" 2>/dev/null || true)"
if [ -z "$libdir" ] || ! compgen -G "$libdir/libstd-*.rlib" >/dev/null; then
    command -v rustup >/dev/null 2>&1 ||
        fail "the $wasm_target target is not installed and rustup is not available to add it; install the $wasm_target standard library for $(rustc --version 2>/dev/null || echo 'your rustc')"
    echo "plugins/build.sh: installing the $wasm_target target" >&2
    rustup target add "$wasm_target" >&2 || fail "rustup target add $wasm_target failed"
fi

# The package names of a workspace's members, one per directory with a Cargo.toml.
packages() {
    local manifest
    for manifest in "$1"/*/Cargo.toml; do
        [ -f "$manifest" ] || continue
        sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -n 1
    done
}

# (b) One cargo invocation per package.
for workspace in "$repo/plugins" "$repo/tests/plugins"; do
    for package in $(packages "$workspace"); do
        if ! (cd "$workspace" && "$cargo" build -q --release --target "$wasm_target" \
            --target-dir "$target_dir" -p "$package"); then
            fail "building $package (in ${workspace#"$repo"/}) failed"
        fi
    done
done

# (c) Every component, into <out-dir>.
shopt -s nullglob
components=("$target_dir/$wasm_target/release/"*.wasm)
[ "${#components[@]}" -gt 0 ] || fail "no .wasm file in $target_dir/$wasm_target/release"
cp -f "${components[@]}" "$out/"
