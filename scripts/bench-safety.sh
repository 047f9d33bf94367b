#!/usr/bin/env bash
# qunfa bench safety with its Python peer: installs pyahocorasick in a virtual
# environment (outside the repository), then runs the benchmark against the
# shared corpus and lexicon (../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QUNFA_BENCH_VENV:-$HOME/.cache/qunfa-bench-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c "import ahocorasick" 2>/dev/null || "$venv/bin/pip" install --quiet pyahocorasick
cargo build --release --quiet --bin qunfa
exec target/release/qunfa bench safety --python "$venv/bin/python" "$@"
