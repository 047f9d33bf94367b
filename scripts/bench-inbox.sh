#!/usr/bin/env bash
# Inbox read throughput under wrk on loopback, against a same-run baseline.
#
# Starts `qunfa serve` on SQLite in a fresh temporary directory, seeds it
# through the HTTP API (an enterprise workspace, CONTACTS contacts imported as
# NDJSON, BROADCASTS broadcasts to all of them — every other one with a
# `{{name}}` variable, so half the inbox items carry a rendered body — sent,
# approved by a reviewer and delivered by the engine), issues an inbox token
# for one contact, then runs wrk against GET /healthz (the baseline: a route
# that also leaves the async threads for a `SELECT 1`) and GET /v1/inbox with
# that token (20 messages, about 5 KB of JSON per answer with the defaults).
# Prints req/s, p50 and p99 for both and the ratio; stops the server and
# removes the directory at the end. Only 127.0.0.1 is used.
#
# Usage (from the repository root, after `cargo build --release`):
#   scripts/bench-inbox.sh
# Environment: PORT (18080), CONTACTS (100000), BROADCASTS (20),
#   THREADS (2), CONNECTIONS (32), DURATION (15s), RUNS (3), QUNFA_BIN.
# Each run measures healthz, then the inbox; the medians and the per-run
# throughput ratio close the output. server_cpu_us is the server's CPU time
# (user + system, all threads) per answered request.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${QUNFA_BIN:-target/release/qunfa}
PORT=${PORT:-18080}
CONTACTS=${CONTACTS:-100000}
BROADCASTS=${BROADCASTS:-20}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-15s}
RUNS=${RUNS:-3}
BASE="http://127.0.0.1:$PORT"

for tool in wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "bench-inbox: $tool is required (apt-get install -y $tool)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "bench-inbox: $BIN not found; run cargo build --release first" >&2; exit 1; }
if curl -s -o /dev/null "$BASE/healthz"; then
    echo "bench-inbox: something already listens on 127.0.0.1:$PORT (set PORT)" >&2
    exit 1
fi

DIR=$(mktemp -d /tmp/qunfa-bench-inbox.XXXXXX)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT

ADMIN_TOKEN=$(python3 -c 'import secrets; print("qfa_" + secrets.token_hex(24))')
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DIR/data" --admin-token "$ADMIN_TOKEN" >"$DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
    curl -s -o /dev/null "$BASE/healthz" && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
    sleep 0.1
done
curl -sf -o /dev/null "$BASE/healthz" || { echo "bench-inbox: the server did not start" >&2; cat "$DIR/server.log" >&2; exit 1; }

echo "seeding: $CONTACTS contacts, $BROADCASTS broadcasts to all of them"
# Prints the inbox token and the number of messages in its inbox.
read -r INBOX_TOKEN N_MESSAGES < <(BASE=$BASE ADMIN_TOKEN=$ADMIN_TOKEN CONTACTS=$CONTACTS BROADCASTS=$BROADCASTS python3 - <<'EOF'
import json, os, sys, time, urllib.request

base, admin = os.environ["BASE"], os.environ["ADMIN_TOKEN"]
n_contacts, n_broadcasts = int(os.environ["CONTACTS"]), int(os.environ["BROADCASTS"])

def call(method, path, key, body=None, content_type="application/json"):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + key)
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: {e.code} {e.read().decode()}")

owner = call("POST", "/v1/workspaces", admin, {"name": "inbox bench", "kind": "enterprise"})["api_key"]
reviewer = call("POST", "/v1/members", owner, {"name": "reviewer", "role": "reviewer"})["api_key"]
cities = ["上海", "北京", "广州", "深圳", "杭州"]
lines = "".join(
    json.dumps({"external_id": f"u{i}", "name": f"用户{i}", "attributes": {"city": cities[i % 5], "spend": i % 10000}},
               ensure_ascii=False) + "\n"
    for i in range(n_contacts))
imported = call("POST", "/v1/contacts/import", owner, lines.encode(), "application/x-ndjson")["imported"]
assert imported == n_contacts, imported
for b in range(n_broadcasts):
    text = f"{{{{name}}}}您好，第 {b} 期会员通讯" if b % 2 else f"第 {b} 期会员通讯：本周门店活动与新品推荐。"
    bid = call("POST", "/v1/broadcasts", owner, {"content": {"type": "text", "text": text}, "audience": {"all": True}})["id"]
    state = call("POST", f"/v1/broadcasts/{bid}/send", owner)["state"]
    if state == "pending_approval":
        call("POST", f"/v1/broadcasts/{bid}/approve", reviewer)
    while (b_ := call("GET", f"/v1/broadcasts/{bid}", owner))["state"] != "completed":
        time.sleep(0.1)
    assert b_["counts"]["delivered"] == n_contacts, b_["counts"]
contact = call("GET", "/v1/contacts?limit=1", owner)["items"][0]["id"]
token = call("POST", f"/v1/contacts/{contact}/inbox-token", owner)["token"]
items = call("GET", "/v1/inbox?limit=1000", token)["items"]
print(token, len(items))
EOF
) || true
[ -n "${N_MESSAGES:-}" ] || { echo "bench-inbox: seeding failed" >&2; tail -20 "$DIR/server.log" >&2; exit 1; }
if [ "$N_MESSAGES" != "$BROADCASTS" ]; then
    echo "bench-inbox: the inbox holds $N_MESSAGES messages, expected $BROADCASTS" >&2
    exit 1
fi
echo "inbox of one contact: $N_MESSAGES messages (GET /v1/inbox answers them all: the default page is 100)"

# One wrk run: prints "req/s p50_ms p99_ms non_2xx socket_errors requests".
# wrk prints percentiles in us, ms or s; they are converted to ms.
measure() {
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" | awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ { rps = $2 }
        / requests in / { n = $1 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx/ { bad = $NF }
        /Socket errors/ { gsub(",", ""); errors = $4 + $6 + $8 + $10 }
        END { printf "%.0f %.3f %.3f %d %d %d\n", rps, p50, p99, bad, errors, n }'
}

# CPU time (user + system) the server has used, in microseconds.
server_cpu_us() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", ($14 + $15) * 1000000 / hz }' "/proc/$SERVER_PID/stat"
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency URL   (inbox: -H 'Authorization: Bearer qfi_…')"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the runs"
# Warm up both routes (connections, statement caches, page cache, reader threads).
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$BASE/healthz" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $INBOX_TOKEN" "$BASE/v1/inbox" >/dev/null

printf '%-4s %-8s %10s %9s %9s %14s\n' run route req/s p50_ms p99_ms server_cpu_us
RESULTS="$DIR/results"
: >"$RESULTS"
for run in $(seq 1 "$RUNS"); do
    for route in healthz inbox; do
        cpu0=$(server_cpu_us)
        if [ "$route" = healthz ]; then
            read -r rps p50 p99 bad errors n < <(measure "$BASE/healthz")
        else
            read -r rps p50 p99 bad errors n < <(measure -H "Authorization: Bearer $INBOX_TOKEN" "$BASE/v1/inbox")
        fi
        cpu1=$(server_cpu_us)
        if [ "$bad" != 0 ] || [ "$errors" != 0 ]; then
            echo "bench-inbox: $route had $bad non-2xx answers and $errors socket errors" >&2
            exit 1
        fi
        per_request=$(( (cpu1 - cpu0) / (n > 0 ? n : 1) ))
        printf '%-4s %-8s %10s %9s %9s %14s\n' "$run" "$route" "$rps" "$p50" "$p99" "$per_request"
        echo "$route $rps $p50 $p99 $per_request" >>"$RESULTS"
    done
done

echo "median of $RUNS run(s):"
for route in healthz inbox; do
    for column in 2 3 4 5; do
        grep "^$route " "$RESULTS" | awk -v c=$column '{ print $c }' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
    done | paste -sd' ' | awk -v r="$route" '{ printf "     %-8s %10s %9s %9s %14s\n", r, $1, $2, $3, $4 }'
done
awk '$1 == "healthz" { h[++nh] = $2 } $1 == "inbox" { i[++ni] = $2 }
     END { for (k = 1; k <= ni; k++) printf "%s%.2f", (k > 1 ? ", " : "inbox/healthz throughput per run: "), i[k] / h[k]; print "" }' "$RESULTS"
echo "target: inbox >= 20000 req/s with p99 <= 10 ms (inbox of $N_MESSAGES messages, ~$(curl -s -o /dev/null -w '%{size_download}' -H "Authorization: Bearer $INBOX_TOKEN" "$BASE/v1/inbox") bytes per answer)"
