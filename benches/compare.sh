#!/usr/bin/env bash
# Measure hypha's local contexts and Mitogen's in one run on this machine, and print the figures
# side by side (medians). Extra arguments go to criterion, e.g. `benches/compare.sh --measurement-time 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench local -- "$@" >&2
benches/peers/setup.sh >&2
target/peers-venv/bin/python benches/peers/mitogen_local.py > target/peers-mitogen.jsonl
python3 benches/compare.py target/criterion target/peers-mitogen.jsonl
