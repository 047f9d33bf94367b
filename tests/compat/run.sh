#!/usr/bin/env bash
# The WeChat-compatible API (/cgi-bin/) driven by the unmodified wechatpy SDK
# from PyPI against a real `qunfa serve` on loopback (SQLite in a temporary
# folder). The SDK lives in a virtual environment outside the clone
# ($QUNFA_VENV, default ~/.cache/qunfa-venv), created and filled with the
# pinned versions of requirements.txt: PyPI is the only network this needs,
# and only while a pinned version is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${QUNFA_VENV:-$HOME/.cache/qunfa-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# Pinned versions already installed are not fetched again (no network then).
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt
cargo build -q -p qunfa-cli
BIN="${CARGO_TARGET_DIR:-target}/debug/qunfa"
DIR=$(mktemp -d)
PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# WeCom recalls within 24 hours and the Official Account deletes mass sends:
# the test server's policy allows recall in both tiers the tests use.
cat > "$DIR/policy.toml" <<'POLICY'
[tiers.enterprise]
recall_seconds = 86400
[tiers.api]
recall_seconds = 86400
POLICY
TOKEN=qfa_compat_test_admin_token
QUNFA_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DIR/data" --admin-token "$TOKEN" \
  --policy "$DIR/policy.toml" >"$DIR/serve.log" 2>&1 &
PID=$!
cleanup() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/healthz', timeout=1)" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$PID" 2>/dev/null; then cat "$DIR/serve.log" >&2; exit 1; fi
  sleep 0.2
done
if ! QUNFA_URL="http://127.0.0.1:$PORT" QUNFA_ADMIN_TOKEN="$TOKEN" "$VENV/bin/python" tests/compat/test_wechatpy.py; then
  echo "--- qunfa serve log ---" >&2
  tail -50 "$DIR/serve.log" >&2
  exit 1
fi
