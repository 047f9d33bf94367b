//! Fault test of the delivery engine: real `qunfa serve` processes are killed
//! with SIGKILL at random points of a large broadcast and restarted on the same
//! data, on SQLite and on PostgreSQL with two nodes. Afterwards every recipient
//! has exactly one delivery record, none is lost, and the counters agree with
//! the records. A third test does the same to the webhook channel against a
//! slow receiver on loopback: every recipient is delivered once in the database
//! and the receiver sees every key, repeated only for batches a kill kept from
//! being recorded.
//!
//! The waits are random (a xorshift seeded from the clock; the seed is printed,
//! and `CRASH_TEST_SEED=…` replays the same waits). The first kill comes
//! within a few hundred milliseconds of the approval, while the engine sends at
//! full speed; for the later rounds the workspace runs at a throttled speed level,
//! so the broadcast is still running at each of them — the rate limit, not
//! the machine's speed, bounds what a round delivers. Nothing here asserts on
//! timing: every wait polls with a generous limit.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use qunfa_store::{params, DbLocation, Store};
use serde_json::{json, Value};

const ADMIN: &str = "qfa_crash_test_token";
/// Recipients of the broadcast: 100 batches. Large enough that the first
/// round, unthrottled, cannot finish it (a debug build delivered up to about
/// 350,000 a second here).
const N: u32 = 200_000;
const BATCH_SIZE: u32 = qunfa_audience::BATCH_SIZE as u32;
/// Speed levels in recipients per minute. Level 1 is 5,000 a second with a
/// bucket of one second (two batches), so a round of at most a second or two
/// delivers a small part of the broadcast.
// Random human review is off: these broadcasts must be held only by the approval they need.
/// One approver for any size (the approval levels have their own tests), no
/// sampling; the delivery table last, since a test appends to it.
const POLICY: &str = "[safety]\nreview_sample_base = 0.0\nreview_sample_per_risk = 0.0\n\n[[tiers.enterprise.approval]]\nabove = 500\napprovers = 1\n\n[delivery]\nspeed_levels_per_minute = [600000, 300000, 120000, 60000, 30000]\n";
const THROTTLED_LEVEL: u8 = 1;
/// The first kill comes this long (random, in milliseconds) after the approval.
const FIRST_KILL_MS: (u64, u64) = (20, 150);
/// Later kills come this long after the node is listening again.
const LATER_KILL_MS: (u64, u64) = (0, 800);
/// Generous: the machine is shared and the binary is a debug build.
const PATIENCE: Duration = Duration::from_secs(300);

/// A small xorshift: the waits of a run are reproducible from its seed.
struct XorShift(u64);

impl XorShift {
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("CRASH_TEST_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        println!("{test}: seed {seed} (CRASH_TEST_SEED={seed} replays the same waits)");
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn millis(&mut self, (lo, hi): (u64, u64)) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `qunfa serve` node: restarted on the same port, data dir and database.
struct Node {
    name: &'static str,
    dir: PathBuf,
    args: Vec<String>,
    listen: String,
    child: Option<Child>,
    /// Every process this node ran as: its jobs' lease owner is `node-<pid>`.
    pids: Vec<u32>,
}

impl Node {
    fn new(name: &'static str, dir: &Path, extra: &[&str]) -> Node {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = ["serve", "--listen", &listen, "--admin-token", ADMIN, "--policy", "policy.toml"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--data-dir".to_owned(), format!("data-{name}")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Node { name, dir: dir.to_owned(), args, listen, child: None, pids: Vec::new() }
    }

    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        let start = (start..log.len()).find(|i| log.is_char_boundary(*i)).unwrap_or(log.len());
        log[start..].to_owned()
    }

    /// Starts the process and waits until it listens.
    fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.name);
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_qunfa"));
        c.args(&self.args).current_dir(&self.dir).env("QUNFA_LOG", "info");
        for (k, _) in std::env::vars() {
            if k.starts_with("QUNFA_") && k != "QUNFA_LOG" {
                c.env_remove(k);
            }
        }
        let mut child = c.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log)).spawn().unwrap();
        self.pids.push(child.id());
        let start = Instant::now();
        while std::net::TcpStream::connect(&self.listen).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("node {} exited at start ({status}):\n{}", self.name, self.log_tail());
            }
            assert!(start.elapsed() < PATIENCE, "node {} did not start:\n{}", self.name, self.log_tail());
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child = Some(child);
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps the process.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("the node runs");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("node {} had died before the kill ({status}):\n{}", self.name, self.log_tail());
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Prints the warnings and errors the node logged (a failed step would show here).
    fn print_warnings(&self) {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        println!("node {}: {} warnings or errors logged", self.name, lines.len());
        for line in lines.iter().take(5) {
            println!("  {line}");
        }
    }

    fn owns(&self, lease_owner: &str) -> bool {
        self.pids.iter().any(|pid| lease_owner == format!("node-{pid}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A blocking façade over the async client (the workspace's reqwest has no
/// blocking feature). No pooled connections: the server behind a port dies.
struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Api {
    fn new() -> Api {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let http =
            reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(120)).build().unwrap();
        Api { rt, http }
    }

    fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        self.rt.block_on(async {
            let response = request.send().await.expect("the server answers");
            let status = response.status().as_u16();
            let text = response.text().await.expect("a body");
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }

    fn get(&self, url: &str, key: &str) -> (u16, Value) {
        self.send(self.http.get(url).bearer_auth(key))
    }

    fn post(&self, url: &str, key: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(url).bearer_auth(key).json(&body))
    }

    fn put(&self, url: &str, key: &str, body: Value) -> (u16, Value) {
        self.send(self.http.put(url).bearer_auth(key).json(&body))
    }
}

#[track_caller]
fn expect((status, body): (u16, Value), expected: u16) -> Value {
    assert_eq!(status, expected, "unexpected answer: {body}");
    body
}

/// A broadcast to every contact of a new enterprise workspace, held for approval.
struct Broadcast {
    workspace_id: i64,
    owner_key: String,
    reviewer_key: String,
    id: String,
}

impl Broadcast {
    fn id(&self) -> i64 {
        self.id.parse().unwrap()
    }
}

/// Creates the workspace and its N contacts through `a`, the reviewer and the
/// draft through `b` (another node, or the same), and submits the draft.
fn prepare_broadcast(api: &Api, a: &str, b: &str) -> Broadcast {
    let w =
        expect(api.post(&format!("{a}/v1/workspaces"), ADMIN, json!({"name": "故障演练", "kind": "enterprise"})), 201);
    let owner_key = w["api_key"].as_str().unwrap().to_owned();
    let workspace_id: i64 = w["id"].as_str().unwrap().parse().unwrap();
    let ndjson: String = (0..N).map(|i| format!("{{\"external_id\":\"u{i}\",\"name\":\"客户{i}\"}}\n")).collect();
    let t = Instant::now();
    let imported = expect(
        api.send(
            api.http
                .post(format!("{a}/v1/contacts/import"))
                .bearer_auth(&owner_key)
                .header("Content-Type", "application/x-ndjson")
                .body(ndjson),
        ),
        200,
    );
    assert_eq!(imported["imported"], N, "{imported}");
    println!("imported {N} contacts in {} ms", t.elapsed().as_millis());
    let reviewer =
        expect(api.post(&format!("{b}/v1/members"), &owner_key, json!({"name": "审批人", "role": "reviewer"})), 201);
    let reviewer_key = reviewer["api_key"].as_str().unwrap().to_owned();
    let draft = expect(
        api.post(
            &format!("{b}/v1/broadcasts"),
            &owner_key,
            json!({"content": {"type": "text", "text": "系统维护通知"}, "audience": {"all": true}}),
        ),
        201,
    );
    let id = draft["id"].as_str().unwrap().to_owned();
    let held = expect(api.post(&format!("{a}/v1/broadcasts/{id}/send"), &owner_key, json!({})), 202);
    assert_eq!(held["state"], "pending_approval", "more than 500 recipients need approval: {held}");
    Broadcast { workspace_id, owner_key, reviewer_key, id }
}

/// Approves the broadcast; returns when its batches are queued.
fn approve(api: &Api, url: &str, b: &Broadcast) -> Instant {
    let t = Instant::now();
    let approved = expect(api.post(&format!("{url}/v1/broadcasts/{}/approve", b.id), &b.reviewer_key, json!({})), 202);
    assert_eq!((approved["state"].as_str(), approved["recipients"].as_u64()), (Some("sending"), Some(u64::from(N))));
    println!("approved (audience frozen, batches queued) in {} ms", t.elapsed().as_millis());
    Instant::now()
}

fn set_speed(api: &Api, url: &str, b: &Broadcast, level: Option<u8>) {
    let speed = expect(api.put(&format!("{url}/v1/speed"), &b.owner_key, json!({"level": level})), 200);
    assert_eq!(speed["level"], json!(level), "{speed}");
}

/// The broadcast as the database holds it, read in one snapshot.
struct Progress {
    state: String,
    n_delivered: u64,
    n_batches_done: u64,
    records: u64,
    /// (batch_no, lease_owner) of every done job.
    done_jobs: Vec<(u32, String)>,
}

impl Progress {
    fn read(store: &Store, broadcast_id: i64) -> Progress {
        store
            .db
            .read(|c| {
                let b = c.query_one(
                    "SELECT state, n_delivered, n_batches_done FROM broadcasts WHERE id = ?",
                    params![broadcast_id],
                )?;
                let records =
                    c.query_one("SELECT COUNT(*) FROM deliveries WHERE broadcast_id = ?", params![broadcast_id])?;
                let jobs = c.query(
                    "SELECT batch_no, lease_owner FROM jobs WHERE broadcast_id = ? AND state = 'done' ORDER BY batch_no",
                    params![broadcast_id],
                )?;
                Ok(Progress {
                    state: b.string(0),
                    n_delivered: b.i64(1) as u64,
                    n_batches_done: b.i64(2) as u64,
                    records: records.i64(0) as u64,
                    done_jobs: jobs.iter().map(|r| (r.i64(0) as u32, r.opt_string(1).unwrap_or_default())).collect(),
                })
            })
            .expect("read the progress")
    }

    /// What a crash must never leave: records without their job done (or the
    /// reverse), or counters that disagree with the records.
    #[track_caller]
    fn check_consistent(&self) {
        let expected_records: u64 =
            self.done_jobs.iter().map(|(batch_no, _)| u64::from(BATCH_SIZE.min(N - batch_no * BATCH_SIZE))).sum();
        assert_eq!(self.records, expected_records, "records of exactly the done batches");
        assert_eq!(self.records, self.n_delivered, "n_delivered counts the records");
        assert_eq!(self.n_batches_done, self.done_jobs.len() as u64, "n_batches_done counts the done jobs");
    }

    /// Done batches whose lease owner is a process of `node`.
    fn batches_of(&self, node: &Node) -> usize {
        self.done_jobs.iter().filter(|(_, owner)| node.owns(owner)).count()
    }
}

/// One SIGKILL and what the database held right after it.
struct Kill {
    node: &'static str,
    /// Since the approval returned (its batches were queued).
    at: Duration,
    state: String,
    delivered: u64,
}

impl Kill {
    fn mid_broadcast(&self) -> bool {
        self.state == "sending" && self.delivered < u64::from(N)
    }
}

fn record_kill(kills: &mut Vec<Kill>, node: &Node, approved: Instant, p: &Progress) {
    let kill = Kill { node: node.name, at: approved.elapsed(), state: p.state.clone(), delivered: p.n_delivered };
    println!(
        "kill {} of node {} at {} ms after the approval: {} with {} of {N} delivered ({} batches done)",
        kills.len() + 1,
        kill.node,
        kill.at.as_millis(),
        kill.state,
        kill.delivered,
        p.done_jobs.len()
    );
    kills.push(kill);
}

#[track_caller]
fn check_kills_landed(kills: &[Kill]) {
    assert!(kills.len() >= 5, "at least 5 kills");
    let mid = kills.iter().filter(|k| k.mid_broadcast()).count();
    // The throttle bounds each later round to a small part of the broadcast.
    assert!(mid >= 5, "only {mid} of {} kills landed while the broadcast was sending", kills.len());
}

/// Polls the broadcast until it is completed.
fn wait_completed(api: &Api, url: &str, b: &Broadcast) -> Value {
    let start = Instant::now();
    loop {
        let got = expect(api.get(&format!("{url}/v1/broadcasts/{}", b.id), &b.owner_key), 200);
        if got["state"] == "completed" {
            return got;
        }
        assert!(start.elapsed() < PATIENCE, "the broadcast did not complete: {got}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Exactly once, none lost: through the API and in the database.
fn check_exactly_once(api: &Api, url: &str, b: &Broadcast, store: &Store) {
    let n = u64::from(N);
    let got = expect(api.get(&format!("{url}/v1/broadcasts/{}", b.id), &b.owner_key), 200);
    assert_eq!(got["state"], "completed", "{got}");
    assert_eq!(got["recipients"], n, "{got}");
    let counts = &got["counts"];
    assert_eq!(
        (&counts["total"], &counts["delivered"], &counts["failed"], &counts["queued"]),
        (&json!(n), &json!(n), &json!(0), &json!(0)),
        "{got}"
    );

    let (records, duplicated_pairs) = store.delivery_totals(b.id()).unwrap();
    assert_eq!((records, duplicated_pairs), (n, 0), "one record per recipient, no pair twice");
    let progress = Progress::read(store, b.id());
    progress.check_consistent();
    assert_eq!(progress.n_delivered, records, "the API's delivered count is the number of records");
    let (rows, contacts, jobs) = store
        .db
        .read(|c| {
            let rows = c.query(
                "SELECT channel, contact_idx, state FROM deliveries WHERE broadcast_id = ? ORDER BY channel, contact_idx",
                params![b.id()],
            )?;
            let contacts = c.query(
                "SELECT idx FROM contacts WHERE workspace_id = ? AND deleted_at IS NULL ORDER BY idx",
                params![b.workspace_id],
            )?;
            let jobs = c.query(
                "SELECT state, COUNT(*), MAX(attempts) FROM jobs WHERE broadcast_id = ? GROUP BY state",
                params![b.id()],
            )?;
            Ok((rows, contacts, jobs))
        })
        .unwrap();
    let jobs: Vec<(String, i64, i64)> = jobs.iter().map(|r| (r.string(0), r.i64(1), r.i64(2))).collect();
    println!("jobs by state (state, count, most attempts): {jobs:?}");
    assert_eq!(jobs.iter().map(|j| (j.0.as_str(), j.1)).collect::<Vec<_>>(), [("done", i64::from(N / BATCH_SIZE))]);
    assert!(rows.iter().all(|r| r.str(0) == "inbox" && r.str(2) == "delivered"), "every record a delivered inbox one");
    let delivered: Vec<u32> = rows.iter().map(|r| r.i64(1) as u32).collect();
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "no (channel, contact) pair twice");
    let contacts: Vec<u32> = contacts.iter().map(|r| r.i64(0) as u32).collect();
    assert_eq!(contacts.len(), N as usize);
    let lost: Vec<&u32> = contacts.iter().filter(|i| delivered.binary_search(i).is_err()).take(10).collect();
    let extra: Vec<&u32> = delivered.iter().filter(|i| contacts.binary_search(i).is_err()).take(10).collect();
    assert!(lost.is_empty() && extra.is_empty(), "lost recipients {lost:?}…, records of no contact {extra:?}…");

    // The delivery log of the API starts with the first contacts, once each
    // (paging through all of it costs more than the rest of the test).
    let page = expect(api.get(&format!("{url}/v1/broadcasts/{}/deliveries?limit=1000", b.id), &b.owner_key), 200);
    let items = page["items"].as_array().unwrap();
    assert!(items.iter().all(|d| d["channel"] == "inbox" && d["state"] == "delivered"), "{page}");
    let first: Vec<i64> = items.iter().map(|d| d["contact_id"].as_str().unwrap().parse().unwrap()).collect();
    let expected: Vec<i64> =
        contacts.iter().take(1000).map(|i| qunfa_store::contact_public_id(b.workspace_id, *i)).collect();
    assert!(first == expected && page["next_cursor"].is_string(), "the API's delivery log: {page}");
}

#[test]
fn sqlite_survives_sigkill_during_a_broadcast() {
    let test_start = Instant::now();
    let mut rng = XorShift::seeded("sqlite_survives_sigkill_during_a_broadcast");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let mut node = Node::new("sqlite", dir.path(), &[]);
    let location = DbLocation::Sqlite(dir.path().join("data-sqlite/qunfa.db"));
    node.start();
    let api = Api::new();
    let url = node.url();
    let b = prepare_broadcast(&api, &url, &url);
    // Opened while the server is down, as the restart will find the file.
    let read = |id: i64| {
        let store = Store::open(location.clone(), 2).expect("open the database after the kill");
        let p = Progress::read(&store, id);
        p.check_consistent();
        p
    };

    // The first kill: full speed, within a few hundred milliseconds. Then the
    // workspace is throttled, so the next rounds find the broadcast running.
    let mut kills = Vec::new();
    let approved = approve(&api, &url, &b);
    for round in 0..6 {
        if round == 0 {
            std::thread::sleep(rng.millis(FIRST_KILL_MS));
        } else {
            node.start();
            if round == 1 {
                set_speed(&api, &url, &b, Some(THROTTLED_LEVEL));
            }
            std::thread::sleep(rng.millis(LATER_KILL_MS));
        }
        node.kill();
        record_kill(&mut kills, &node, approved, &read(b.id()));
    }
    check_kills_landed(&kills);

    node.start();
    set_speed(&api, &url, &b, None);
    wait_completed(&api, &url, &b);
    println!("completed {} ms after the approval", approved.elapsed().as_millis());
    let store = Store::open(location, 2).unwrap();
    check_exactly_once(&api, &url, &b, &store);
    node.print_warnings();
    println!("test took {} ms", test_start.elapsed().as_millis());
}

#[test]
fn postgres_two_nodes_survive_sigkill() {
    let test_start = Instant::now();
    let mut rng = XorShift::seeded("postgres_two_nodes_survive_sigkill");
    let db = qunfa_store::test_support::postgres();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let mut nodes = [
        Node::new("a", dir.path(), &["--database-url", &db.url]),
        Node::new("b", dir.path(), &["--database-url", &db.url]),
    ];
    for node in &mut nodes {
        node.start();
    }
    let api = Api::new();
    let urls = [nodes[0].url(), nodes[1].url()];
    let b = prepare_broadcast(&api, &urls[0], &urls[1]);
    let store = Store::open(db.location.clone(), 2).unwrap();

    let mut kills = Vec::new();
    let approved = approve(&api, &urls[1], &b);
    // Kills alternate: a, b, a, b, a, b. The first comes at full speed.
    for round in 0..6 {
        let (victim, survivor) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        std::thread::sleep(rng.millis(if round == 0 { FIRST_KILL_MS } else { LATER_KILL_MS }));
        nodes[victim].kill();
        if round == 0 {
            set_speed(&api, &urls[survivor], &b, Some(THROTTLED_LEVEL));
        }
        let at_kill = Progress::read(&store, b.id());
        at_kill.check_consistent();
        record_kill(&mut kills, &nodes[victim], approved, &at_kill);
        // While the victim is down the survivor keeps delivering: wait for
        // one more batch of its own (a SIGKILLed step's locks are released
        // when PostgreSQL sees the connection close).
        let before = at_kill.batches_of(&nodes[survivor]);
        let down = Instant::now();
        loop {
            let p = Progress::read(&store, b.id());
            p.check_consistent();
            if p.batches_of(&nodes[survivor]) > before {
                println!(
                    "  node {} delivered while {} was down: {} after {} ms",
                    nodes[survivor].name,
                    nodes[victim].name,
                    p.n_delivered,
                    down.elapsed().as_millis()
                );
                break;
            }
            assert_ne!(p.state, "completed", "the broadcast ended before node {} took over", nodes[survivor].name);
            assert!(
                down.elapsed() < PATIENCE,
                "node {} delivered nothing while {} was down:\n{}",
                nodes[survivor].name,
                nodes[victim].name,
                nodes[survivor].log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(rng.millis((0, 200)));
        nodes[victim].start();
    }
    check_kills_landed(&kills);

    set_speed(&api, &urls[0], &b, None);
    wait_completed(&api, &urls[1], &b);
    println!("completed {} ms after the approval", approved.elapsed().as_millis());
    check_exactly_once(&api, &urls[0], &b, &store);

    // Both nodes delivered, and no batch was done by a process we did not start.
    let p = Progress::read(&store, b.id());
    let by_node: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.name, p.batches_of(n))).collect();
    println!("batches done by node: {by_node:?} (processes a: {:?}, b: {:?})", nodes[0].pids, nodes[1].pids);
    assert!(by_node.values().all(|n| *n > 0), "{by_node:?}");
    assert_eq!(by_node.values().sum::<usize>(), (N / BATCH_SIZE) as usize, "every batch done by one of our processes");
    // Evidence, not a check (statistics lag): transactions of the killed
    // nodes that PostgreSQL rolled back when their connection closed.
    let rolled_back = store
        .db
        .read(|c| {
            c.query_one("SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()", params![])
        })
        .unwrap()
        .i64(0);
    println!("transactions rolled back in the test database: {rolled_back}");
    for node in &nodes {
        node.print_warnings();
    }
    println!("test took {} ms", test_start.elapsed().as_millis());
}

/// A minimal HTTP/1.1 receiver on loopback standing in for a webhook
/// endpoint: answers 200 to every request after 20 ms and counts how often it
/// saw each `Idempotency-Key`. One thread per connection (the sender keeps them alive).
fn start_receiver() -> (String, std::sync::Arc<std::sync::Mutex<BTreeMap<String, u32>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let counts = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                loop {
                    let (mut key, mut length, mut line) = (String::new(), 0usize, String::new());
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = line.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            match name.to_ascii_lowercase().as_str() {
                                "idempotency-key" => key = value.trim().to_owned(),
                                "content-length" => length = value.trim().parse().unwrap_or(0),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    *counts.lock().unwrap().entry(key).or_insert(0) += 1;
                    // A slow endpoint: a batch of 2,000 takes about 0.6 s at 64 in flight,
                    // so kills land while batches are being sent.
                    std::thread::sleep(Duration::from_millis(20));
                    if out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// The webhook channel under SIGKILL: batches are claimed (records `queued`),
/// sent, then recorded; a kill between send and record leaves a leased batch
/// that the restarted node sends again after the lease (2 s here) with the
/// same idempotency keys. Every recipient ends delivered exactly once in the
/// database, and the receiver saw every key — a repeat only ever of a key whose
/// outcome a kill kept from being recorded.
#[test]
fn sqlite_webhook_survives_sigkill() {
    const HOOK_N: u32 = 20_000;
    let test_start = Instant::now();
    let mut rng = XorShift::seeded("sqlite_webhook_survives_sigkill");
    let (hook_url, seen) = start_receiver();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), format!("{POLICY}external_lease_seconds = 2\n")).unwrap();
    std::fs::write(
        dir.path().join("qunfa.toml"),
        "webhook_secret = \"whsec_crash_0123456789\"\nwebhook_allow_private_networks = true\n",
    )
    .unwrap();
    let mut node = Node::new("hook", dir.path(), &[]);
    let location = DbLocation::Sqlite(dir.path().join("data-hook/qunfa.db"));
    node.start();
    let (api, url) = (Api::new(), node.url());

    let w = expect(
        api.post(&format!("{url}/v1/workspaces"), ADMIN, json!({"name": "回调演练", "kind": "enterprise"})),
        201,
    );
    let key = w["api_key"].as_str().unwrap().to_owned();
    let ndjson: String = (0..HOOK_N)
        .map(|i| json!({"external_id": format!("h{i}"), "channels": {"webhook": hook_url}}).to_string() + "\n")
        .collect();
    let imported = expect(
        api.send(
            api.http
                .post(format!("{url}/v1/contacts/import"))
                .bearer_auth(&key)
                .header("Content-Type", "application/x-ndjson")
                .body(ndjson),
        ),
        200,
    );
    assert_eq!(imported["imported"], HOOK_N);
    let reviewer =
        expect(api.post(&format!("{url}/v1/members"), &key, json!({"name": "审批人", "role": "reviewer"})), 201);
    let draft =
        json!({"content": {"type": "text", "text": "回调通知"}, "audience": {"all": true}, "channels": ["webhook"]});
    let id = expect(api.post(&format!("{url}/v1/broadcasts"), &key, draft), 201)["id"].as_str().unwrap().to_owned();
    expect(api.post(&format!("{url}/v1/broadcasts/{id}/send"), &key, json!({})), 202);
    // Unthrottled: the slow endpoint makes the broadcast run for several seconds.
    let reviewer_key = reviewer["api_key"].as_str().unwrap();
    expect(api.post(&format!("{url}/v1/broadcasts/{id}/approve"), reviewer_key, json!({})), 202);

    let mut landed = 0;
    for round in 0..5 {
        if round > 0 {
            node.start();
        }
        std::thread::sleep(rng.millis((200, 1_200)));
        node.kill();
        let store = Store::open(location.clone(), 2).unwrap();
        let (state, delivered, queued) = store
            .db
            .read(|c| {
                let b = c.query_one(
                    "SELECT state, n_delivered FROM broadcasts WHERE id = ?",
                    params![id.parse::<i64>().unwrap()],
                )?;
                let q = c.query_one(
                    "SELECT COUNT(*) FROM deliveries WHERE broadcast_id = ? AND state = 'queued'",
                    params![id.parse::<i64>().unwrap()],
                )?;
                Ok((b.string(0), b.i64(1), q.i64(0)))
            })
            .unwrap();
        let received: u32 = seen.lock().unwrap().values().sum();
        println!("kill {}: {state}, {delivered} delivered, {queued} queued (claimed, not recorded), {received} requests received", round + 1);
        landed += usize::from(state == "sending");
    }
    assert!(landed >= 4, "most kills land while the broadcast runs ({landed} of 5)");
    node.start();
    let start = Instant::now();
    let done = loop {
        let b = expect(api.get(&format!("{url}/v1/broadcasts/{id}"), &key), 200);
        if b["state"] == "completed" {
            break b;
        }
        assert!(start.elapsed() < PATIENCE, "not completed: {b}\n{}", node.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (done["counts"]["delivered"].as_u64(), done["counts"]["failed"].as_u64()),
        (Some(u64::from(HOOK_N)), Some(0)),
        "{done}"
    );
    let store = Store::open(location, 2).unwrap();
    let b_id: i64 = id.parse().unwrap();
    assert_eq!(store.delivery_totals(b_id).unwrap(), (u64::from(HOOK_N), 0));
    let delivered = store
        .db
        .read(|c| {
            Ok(c.query_one("SELECT COUNT(*) FROM deliveries WHERE broadcast_id = ? AND channel = 'webhook' AND state = 'delivered'", params![b_id])?
                .i64(0))
        })
        .unwrap();
    assert_eq!(delivered, i64::from(HOOK_N));
    let seen = seen.lock().unwrap();
    let workspace_id: i64 = w["id"].as_str().unwrap().parse().unwrap();
    let _ = workspace_id;
    for idx in 0..HOOK_N {
        assert!(seen.contains_key(&format!("qf-{b_id}-{idx}-webhook")), "recipient {idx} never received");
    }
    assert_eq!(seen.len(), HOOK_N as usize, "no key outside the broadcast: {:?}", seen.keys().next());
    let repeats: u32 = seen.values().map(|n| n - 1).sum();
    println!("receiver: {HOOK_N} keys, {repeats} repeated sends (batches a kill kept from being recorded)");
    // At most the batches in flight at each kill (4 claimed batches of 2,000) are sent again.
    assert!(repeats <= 5 * 4 * BATCH_SIZE, "{repeats}");
    node.print_warnings();
    println!("test took {} ms", test_start.elapsed().as_millis());
}
