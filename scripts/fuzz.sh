#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 5) over its committed
# corpus, failing on the first crash, hang or memory blow-up. Installs a nightly toolchain and
# cargo-fuzz if they are missing. New inputs go to a scratch directory: the committed corpora change
# only by hand (see ARCHITECTURE.md, "Tests and benchmarks").
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# No sanitizer (the targets look for panics, hangs and unbounded memory, not for undefined
# behaviour in safe code), overflow checks on; many codegen units, as a short run gains more from a
# quick build than from fast code.
build=(--sanitizer none --debug-assertions --codegen-units 16)
cargo +nightly fuzz build "${build[@]}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
    echo "fuzz: $target for ${secs}s"
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    if ! cargo +nightly fuzz run "${build[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/"
        exit 1
    fi
    grep -E '^Done|^stat::number_of_executed_units|^stat::peak_rss_mb' "$log" || true
done
