#!/usr/bin/env bash
# Create (idempotently) the venv used by the peer benchmarks and install the
# pinned requirements. Venv: <repo>/target/peers-venv. Override the base
# interpreter with PYTHON=/path/to/python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/../../target/peers-venv"
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$here/requirements.txt"
"$venv/bin/python" -c 'import mitogen; print("mitogen", ".".join(map(str, mitogen.__version__)), "ready in", __import__("sys").prefix)'
