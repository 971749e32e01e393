#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, unit and integration tests. Idempotent; run it on
# a fresh clone as root (later test labs need root for network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The SSH lab (real sshd hosts in network namespaces) needs root; as root it is started here and
# torn down on exit. Without root the SSH tests skip, except in CI, where they fail.
if [ "$(id -u)" = 0 ]; then
    bash tests/lab/lab.sh up
    trap 'bash tests/lab/lab.sh down' EXIT
fi

bash scripts/setup.sh  # the static default build's target and C toolchain, if missing
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet
# The reach tests serve an aarch64 build of themselves to the lab's (emulated) arm host.
bash scripts/build-agents.sh --test reach aarch64 >/dev/null
if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --locked --workspace --no-fail-fast
else
    # One test at a time: some lab tests look at which agents run on shared hosts.
    cargo test --locked --workspace --no-fail-fast -- --test-threads=1
fi
bash scripts/fuzz.sh 5  # each fuzz target for 5 s over its committed corpus (nightly, cargo-fuzz)
cargo test --locked --workspace --doc
