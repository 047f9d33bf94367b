#!/usr/bin/env bash
# The test command: starts a throwaway PostgreSQL on loopback (installing
# Debian's package if needed) so that every storage and API test runs on both
# SQLite and PostgreSQL, then runs the whole workspace's tests and the
# wechatpy suite of the WeChat-compatible API (tests/compat/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${QUNFA_TEST_POSTGRES_URL:-}" ]; then
  QUNFA_TEST_POSTGRES_URL=$(scripts/pg-start.sh)
  export QUNFA_TEST_POSTGRES_URL
fi
echo "PostgreSQL for tests: $QUNFA_TEST_POSTGRES_URL" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
# The WeChat-compatible API driven by the unmodified wechatpy SDK (PyPI, in a
# virtual environment outside the clone; QUNFA_SKIP_WECHATPY=1 skips it).
if [ -z "${QUNFA_SKIP_WECHATPY:-}" ]; then
  tests/compat/run.sh
fi
