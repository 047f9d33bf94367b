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
# A half-created environment (no pip) is made again.
if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/pip" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
fi
# Pinned versions already installed are not fetched again (no network then).
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt
cargo build -q -p qunfa-cli
BIN="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)/qunfa"
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
# The test server's whole configuration is here: an empty config file of
# its own, run in its own folder (no ./qunfa.toml) with no QUNFA_* variable
# of the caller's (QUNFA_DATABASE_URL, QUNFA_CONFIG, …), so it can never
# reach a real database.
: > "$DIR/qunfa.toml"
TOKEN=qfa_compat_test_admin_token
(cd "$DIR" && exec env -i PATH="$PATH" HOME="$DIR" QUNFA_LOG=warn "$BIN" serve --config "$DIR/qunfa.toml" \
  --listen "127.0.0.1:$PORT" --data-dir "$DIR/data" --admin-token "$TOKEN" \
  --policy "$DIR/policy.toml" >"$DIR/serve.log" 2>&1) &
PID=$!
cleanup() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
UP=
for _ in $(seq 1 100); do
  if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/healthz', timeout=1)" 2>/dev/null; then
    UP=1
    break
  fi
  if ! kill -0 "$PID" 2>/dev/null; then break; fi
  sleep 0.2
done
if [ -z "$UP" ]; then
  echo "tests/compat/run.sh: qunfa serve did not come up on 127.0.0.1:$PORT" >&2
  cat "$DIR/serve.log" >&2
  exit 1
fi
if ! QUNFA_URL="http://127.0.0.1:$PORT" QUNFA_ADMIN_TOKEN="$TOKEN" "$VENV/bin/python" tests/compat/test_wechatpy.py; then
  echo "--- qunfa serve log ---" >&2
  tail -50 "$DIR/serve.log" >&2
  exit 1
fi
