//! The webhook sender against a loopback receiver: signatures (checked with
//! an independent HMAC), addresses, timeouts, redirects, SSRF refusals, the
//! per-host circuit breaker and queue, coalescing; and an ignored throughput
//! benchmark against a bare reqwest loop.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use hmac::{Hmac, Mac};
use qunfa_core::{channel::WebhookSettings, contact::Channel, Code};
use qunfa_engine::webhook::WebhookSender;
use qunfa_store::queue::{ExternalBatch, Outgoing, SendOutcome};
use qunfa_testkit::http::{Behaviour, HttpReceiver, Recorded};
use sha2::Sha256;

const SECRET: &str = "a-webhook-secret-of-32-bytes-xyz";
const CONTENT: &str = r#"{"type":"text","text":"{{name}}，您好"}"#;

fn settings(endpoint: Option<String>) -> WebhookSettings {
    WebhookSettings {
        endpoint,
        secret: SECRET.into(),
        allow_private_networks: true,
        timeout_ms: 2_000,
        concurrency: 16,
        per_host_concurrency: 8,
        breaker_failures: 5,
        breaker_cooldown_ms: 30_000,
        coalesce: 1,
    }
}

/// Contacts `0..n`, each with the address `address(idx)`.
fn items(n: u32, address: impl Fn(u32) -> Option<String>) -> Vec<Outgoing> {
    (0..n).map(|i| Outgoing::new(42, Channel::Webhook, i, address(i), Some(format!("Contact {i}，您好")))).collect()
}

fn batch(items: Vec<Outgoing>) -> ExternalBatch {
    ExternalBatch::synthetic(42, 7, Channel::Webhook, CONTENT.into(), None, items)
}

/// Checks `X-Qunfa-Signature` with the `hmac` crate (not `qunfa_core::sign`):
/// HMAC-SHA256 under the secret over `<X-Qunfa-Timestamp>.<raw body>`.
fn signature_ok(secret: &str, request: &Recorded) -> bool {
    let (Some(ts), Some(sig)) = (request.header("x-qunfa-timestamp"), request.header("x-qunfa-signature")) else {
        return false;
    };
    let Some(hex_mac) = sig.strip_prefix("sha256=") else { return false };
    let Ok(expected) = hex::decode(hex_mac) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    mac.verify_slice(&expected).is_ok()
}

fn by_idx(outcomes: Vec<(u32, SendOutcome)>) -> HashMap<u32, SendOutcome> {
    let n = outcomes.len();
    let map: HashMap<_, _> = outcomes.into_iter().collect();
    assert_eq!(map.len(), n, "one outcome per message");
    map
}

fn only_outcome(outcomes: Vec<(u32, SendOutcome)>) -> SendOutcome {
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    outcomes.into_iter().next().unwrap().1
}

/// The reason of an outcome that leaves the message queued: a retry, or a
/// deferral while the host's circuit is open (which uses no attempt).
fn retry_text(outcome: &SendOutcome) -> &str {
    match outcome {
        SendOutcome::Retry(why) => why,
        SendOutcome::Deferred { reason, until } => {
            assert!(reason.starts_with("circuit open"), "{reason}");
            assert!(*until > qunfa_store::now_millis() - 5_000, "deferred until the cooldown ends: {until}");
            reason
        }
        other => panic!("expected Retry or Deferred, got {other:?}"),
    }
}

fn rejected(outcome: &SendOutcome) -> (Code, &str) {
    match outcome {
        SendOutcome::Rejected(code, why) => (*code, why),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn posts_are_signed_and_verify_with_an_independent_hmac() {
    let receiver = HttpReceiver::start().await;
    let sender = WebhookSender::new().unwrap();
    let url = receiver.url("/hook");
    let outcomes = sender.send(&batch(items(3, |_| Some(url.clone()))), &settings(None)).await;
    assert!(outcomes.iter().all(|(_, o)| *o == SendOutcome::Delivered), "{outcomes:?}");

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(signature_ok(SECRET, r), "signature of {}", r.body_text());
        assert!(!signature_ok("another-secret-of-32-bytes-xxxxx", r));
        let ts: i64 = r.header("x-qunfa-timestamp").unwrap().parse().unwrap();
        assert!((now - ts).abs() <= 5, "timestamp {ts} vs now {now}");

        let body = r.json();
        let idx: u32 = body["external_id"].as_str().unwrap().trim_start_matches('c').parse().unwrap();
        assert_eq!(body["id"], format!("qf-42-{idx}-webhook"));
        assert_eq!(r.header("idempotency-key"), body["id"].as_str());
        assert_eq!(body["broadcast_id"], "42");
        assert_eq!(body["contact_id"], ((7_i64 << 32) | i64::from(idx)).to_string());
        assert_eq!(body["name"], format!("Contact {idx}"));
        assert_eq!(body["priority"], "broadcast");
        assert_eq!(body["content"]["type"], "text");
        assert_eq!(body["text"], format!("Contact {idx}，您好"));

        // A changed body no longer verifies.
        let mut tampered = r.clone();
        tampered.body = r.body_text().replace("Contact", "Kontakt").into_bytes();
        assert!(!signature_ok(SECRET, &tampered));
    }
}

#[tokio::test]
async fn the_contact_address_wins_over_the_workspace_endpoint() {
    let receiver = HttpReceiver::start().await;
    let sender = WebhookSender::new().unwrap();
    let own = receiver.url("/own");
    let items = items(6, |i| (i % 2 == 0).then(|| own.clone()));

    let outcomes = by_idx(sender.send(&batch(items.clone()), &settings(Some(receiver.url("/workspace")))).await);
    assert!(outcomes.values().all(|o| *o == SendOutcome::Delivered), "{outcomes:?}");
    let own_ids: Vec<String> =
        receiver.requests_to("/own").iter().map(|r| r.json()["id"].as_str().unwrap().to_owned()).collect();
    let ws_ids: Vec<String> =
        receiver.requests_to("/workspace").iter().map(|r| r.json()["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(own_ids.len(), 3);
    assert_eq!(ws_ids.len(), 3);
    assert!(own_ids.iter().all(|id| ["qf-42-0-webhook", "qf-42-2-webhook", "qf-42-4-webhook"].contains(&id.as_str())));
    assert!(ws_ids.iter().all(|id| ["qf-42-1-webhook", "qf-42-3-webhook", "qf-42-5-webhook"].contains(&id.as_str())));

    // Without a workspace endpoint, contacts without an address have nowhere to go.
    receiver.clear();
    let outcomes = by_idx(sender.send(&batch(items), &settings(None)).await);
    assert_eq!(outcomes[&0], SendOutcome::Delivered);
    assert_eq!(rejected(&outcomes[&1]).0, Code::ChannelNoAddress);
    assert_eq!(receiver.count(), 3);
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_rejected() {
    let receiver = HttpReceiver::start().await;
    receiver.set_path_behaviour("/500", Behaviour::Status(500));
    receiver.set_path_behaviour("/503", Behaviour::Status(503));
    receiver.set_path_behaviour("/404", Behaviour::Status(404));
    receiver.set_path_behaviour("/410", Behaviour::Status(410));
    let sender = WebhookSender::new().unwrap();
    let paths = ["/500", "/503", "/404", "/410"];
    let outcomes =
        by_idx(sender.send(&batch(items(4, |i| Some(receiver.url(paths[i as usize])))), &settings(None)).await);
    assert_eq!(retry_text(&outcomes[&0]), "HTTP 500");
    assert_eq!(retry_text(&outcomes[&1]), "HTTP 503");
    // A refusal keeps the start of the receiver's answer.
    assert_eq!(outcomes[&2], SendOutcome::Rejected(Code::DeliveryRejected, "HTTP 404: Not Found".into()));
    assert_eq!(outcomes[&3], SendOutcome::Rejected(Code::DeliveryRejected, "HTTP 410: Gone".into()));

    // FailFirst: 500 twice, then 200.
    receiver.set_path_behaviour("/flaky", Behaviour::FailFirst(2));
    let one_at_a_time = WebhookSettings { concurrency: 1, ..settings(None) };
    let outcomes = sender.send(&batch(items(4, |_| Some(receiver.url("/flaky")))), &one_at_a_time).await;
    let delivered = outcomes.iter().filter(|(_, o)| *o == SendOutcome::Delivered).count();
    assert_eq!(delivered, 2, "{outcomes:?}");
}

#[tokio::test]
async fn a_refused_connection_is_retried_without_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sender = WebhookSender::new().unwrap();
    let url = format!("http://127.0.0.1:{port}/hook?token=s3cret");
    let outcome = only_outcome(sender.send(&batch(items(1, |_| Some(url.clone()))), &settings(None)).await);
    let why = retry_text(&outcome);
    assert!(why.starts_with("could not connect: "), "{why}");
    assert!(!why.contains("s3cret") && why.chars().count() <= 200, "{why}");
}

#[tokio::test]
async fn a_hanging_endpoint_times_out() {
    let receiver = HttpReceiver::start().await;
    receiver.set_behaviour(Behaviour::Hang);
    let sender = WebhookSender::new().unwrap();
    let settings = WebhookSettings { timeout_ms: 300, ..settings(None) };
    let started = Instant::now();
    let outcome = only_outcome(sender.send(&batch(items(1, |_| Some(receiver.url("/slow")))), &settings).await);
    assert_eq!(retry_text(&outcome), "timed out after 300 ms");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(receiver.count(), 1);
}

#[tokio::test]
async fn an_answer_later_than_the_timeout_is_retried() {
    let receiver = HttpReceiver::start().await;
    receiver.set_behaviour(Behaviour::DelayThenOk(Duration::from_secs(2)));
    let sender = WebhookSender::new().unwrap();
    let settings = WebhookSettings { timeout_ms: 300, ..settings(None) };
    let started = Instant::now();
    let outcome = only_outcome(sender.send(&batch(items(1, |_| Some(receiver.url("/late")))), &settings).await);
    assert_eq!(retry_text(&outcome), "timed out after 300 ms");
    assert!(started.elapsed() < Duration::from_millis(1_500), "{:?}", started.elapsed());
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let receiver = HttpReceiver::start().await;
    let elsewhere = HttpReceiver::start().await;
    let target = elsewhere.url("/landing");
    receiver.set_behaviour(Behaviour::Redirect(target.clone()));
    let sender = WebhookSender::new().unwrap();
    let outcome = only_outcome(sender.send(&batch(items(1, |_| Some(receiver.url("/moved")))), &settings(None)).await);
    assert_eq!(outcome, SendOutcome::Rejected(Code::DeliveryRedirect, format!("HTTP 302 to {target}")));
    assert_eq!(receiver.count(), 1);
    assert_eq!(elsewhere.count(), 0, "the redirect target got nothing");
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let receiver = HttpReceiver::start().await;
    let sender = WebhookSender::new().unwrap();
    let port = receiver.port();
    let urls = [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://2130706433:{port}/hook"),
        "http://10.0.0.5/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://192.168.1.10:8080/".to_owned(),
        "http://100.64.1.1/".to_owned(),
    ];
    let strict = WebhookSettings { allow_private_networks: false, ..settings(None) };
    let outcomes =
        by_idx(sender.send(&batch(items(urls.len() as u32, |i| Some(urls[i as usize].clone()))), &strict).await);
    for (i, url) in urls.iter().enumerate() {
        let (code, why) = rejected(&outcomes[&(i as u32)]);
        assert_eq!(code, Code::AddressPrivate, "{url}: {why}");
        assert!(why.chars().count() <= 200);
    }
    assert!(rejected(&outcomes[&0]).1.contains("127.0.0.1 is a loopback address"), "{outcomes:?}");
    assert!(rejected(&outcomes[&1]).1.contains("localhost is a loopback name"), "{outcomes:?}");
    assert!(rejected(&outcomes[&5]).1.contains("10.0.0.5 is a private address"), "{outcomes:?}");
    assert!(rejected(&outcomes[&6]).1.contains("169.254.169.254 is a link-local address"), "{outcomes:?}");
    assert_eq!(receiver.count(), 0, "no request was sent");

    // A workspace endpoint on loopback is refused the same way.
    let endpoint = WebhookSettings { endpoint: Some(receiver.url("/ws")), ..strict.clone() };
    let outcome = only_outcome(sender.send(&batch(items(1, |_| None)), &endpoint).await);
    assert_eq!(rejected(&outcome).0, Code::AddressPrivate);
    assert_eq!(receiver.count(), 0);

    // Allowed: the loopback ones are delivered.
    let allowed = urls[..5].to_vec();
    let outcomes = sender.send(&batch(items(5, |i| Some(allowed[i as usize].clone()))), &settings(None)).await;
    for (idx, outcome) in &outcomes {
        // IPv6 may not reach the receiver (it binds 127.0.0.1): a retry then, not a refusal.
        if allowed[*idx as usize].contains('[') {
            assert!(!matches!(outcome, SendOutcome::Rejected(..)), "{outcome:?}");
        } else {
            assert_eq!(*outcome, SendOutcome::Delivered, "{}", allowed[*idx as usize]);
        }
    }
    assert!(receiver.count() >= 3);
}

#[tokio::test]
async fn names_that_resolve_to_private_addresses_are_refused_at_connect() {
    let receiver = HttpReceiver::start().await;
    let port = receiver.port();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let hosts = HashMap::from([
        ("hooks.example".to_owned(), vec![ip("10.0.0.5")]),
        ("metadata.example".to_owned(), vec![ip("169.254.169.254")]),
        ("mixed.example".to_owned(), vec![ip("93.184.216.34"), ip("127.0.0.1")]),
        ("rebound.example".to_owned(), vec![ip("127.0.0.1")]),
    ]);
    let sender = WebhookSender::with_static_hosts(hosts).unwrap();
    let urls = [
        "https://hooks.example/in".to_owned(),
        "http://metadata.example/latest".to_owned(),
        format!("http://mixed.example:{port}/in"),
        format!("http://rebound.example:{port}/in"),
    ];
    let strict = WebhookSettings { allow_private_networks: false, ..settings(None) };
    let outcomes = by_idx(sender.send(&batch(items(4, |i| Some(urls[i as usize].clone()))), &strict).await);
    let why = |i: u32| {
        let (code, why) = rejected(&outcomes[&i]);
        assert_eq!(code, Code::AddressPrivate, "{why}");
        why.to_owned()
    };
    assert!(why(0).contains("hooks.example resolves to 10.0.0.5, a private address"), "{}", why(0));
    assert!(why(1).contains("resolves to 169.254.169.254, a link-local address"), "{}", why(1));
    assert!(why(2).contains("resolves to 127.0.0.1, a loopback address"), "{}", why(2));
    assert!(why(3).contains("rebound.example resolves to 127.0.0.1"), "{}", why(3));
    assert_eq!(receiver.count(), 0);

    // Allowed, the same name reaches the receiver.
    let outcome = only_outcome(sender.send(&batch(items(1, |_| Some(urls[3].clone()))), &settings(None)).await);
    assert_eq!(outcome, SendOutcome::Delivered);
    assert_eq!(receiver.count(), 1);
    // And a strict workspace still cannot use the connection the permissive one made.
    let outcome = only_outcome(sender.send(&batch(items(1, |_| Some(urls[3].clone()))), &strict).await);
    assert_eq!(rejected(&outcome).0, Code::AddressPrivate);
    assert_eq!(receiver.count(), 1);
}

#[tokio::test]
async fn the_per_host_queue_caps_requests_in_flight() {
    let receiver = HttpReceiver::start().await;
    receiver.set_behaviour(Behaviour::Hang);
    let sender = WebhookSender::new().unwrap();
    let capped = WebhookSettings { timeout_ms: 400, concurrency: 64, per_host_concurrency: 4, ..settings(None) };
    let url = receiver.url("/hook");
    let b = batch(items(12, |_| Some(url.clone())));
    let (outcomes, in_flight) = tokio::join!(sender.send(&b, &capped), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        receiver.count()
    });
    assert_eq!(in_flight, 4, "at most per_host_concurrency requests at once");
    assert_eq!(outcomes.len(), 12);
    assert!(outcomes.iter().all(|(_, o)| matches!(o, SendOutcome::Retry(_) | SendOutcome::Deferred { .. })));
}

#[tokio::test]
async fn an_open_breaker_stops_the_avalanche() {
    let receiver = HttpReceiver::start().await;
    receiver.set_behaviour(Behaviour::Status(500));
    let sender = WebhookSender::new().unwrap();
    let breaker = WebhookSettings { concurrency: 64, per_host_concurrency: 8, breaker_failures: 3, ..settings(None) };
    let url = receiver.url("/down");
    let outcomes = sender.send(&batch(items(200, |_| Some(url.clone()))), &breaker).await;
    assert_eq!(outcomes.len(), 200);
    let received = receiver.count();
    assert!(received <= 3 + 8, "{received} requests reached a failing host");
    let open =
        outcomes.iter().filter(|(_, o)| retry_text(o).starts_with("circuit open for host http://127.0.0.1:")).count();
    assert_eq!(open, 200 - received, "every message not sent says why");
    let (_, sample) = outcomes.iter().find(|(_, o)| retry_text(o).starts_with("circuit open")).unwrap();
    assert!(retry_text(sample).contains(" until 20"), "{sample:?}");
    assert!(retry_text(sample).chars().count() <= 200);

    // Other batches (other workspaces) to the same host: nothing is sent.
    let other =
        ExternalBatch::synthetic(43, 8, Channel::Webhook, CONTENT.into(), None, items(20, |_| Some(url.clone())));
    let outcomes = sender.send(&other, &breaker).await;
    assert!(outcomes.iter().all(|(_, o)| retry_text(o).starts_with("circuit open")));
    assert_eq!(receiver.count(), received);

    // Another host is not affected.
    let healthy = HttpReceiver::start().await;
    let outcomes = sender.send(&batch(items(5, |_| Some(healthy.url("/ok")))), &breaker).await;
    assert!(outcomes.iter().all(|(_, o)| *o == SendOutcome::Delivered));
}

#[tokio::test]
async fn after_the_cooldown_one_probe_decides() {
    let receiver = HttpReceiver::start().await;
    receiver.set_behaviour(Behaviour::Status(500));
    let sender = WebhookSender::new().unwrap();
    let breaker =
        WebhookSettings { per_host_concurrency: 4, breaker_failures: 3, breaker_cooldown_ms: 300, ..settings(None) };
    let url = receiver.url("/hook");
    let send = |n: u32| {
        let b = batch(items(n, |_| Some(url.clone())));
        let breaker = &breaker;
        let sender = &sender;
        async move { sender.send(&b, breaker).await }
    };

    send(20).await;
    let opened_after = receiver.count();
    assert!(opened_after <= 3 + 4, "{opened_after}");

    // Cooldown over, the host still fails: exactly one probe, the rest wait for it and stay queued.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let outcomes = send(20).await;
    assert_eq!(receiver.count(), opened_after + 1, "one probe");
    assert!(outcomes.iter().all(|(_, o)| matches!(o, SendOutcome::Retry(_) | SendOutcome::Deferred { .. })));
    assert_eq!(outcomes.iter().filter(|(_, o)| retry_text(o).starts_with("circuit open")).count(), 19);

    // The failed probe doubled the cooldown (600 ms): still open after 350 ms.
    tokio::time::sleep(Duration::from_millis(350)).await;
    send(5).await;
    assert_eq!(receiver.count(), opened_after + 1, "still open");

    // The host recovers (answers slowly): the probe goes alone, the others
    // wait for its answer and then go too; the breaker is closed again.
    receiver.set_behaviour(Behaviour::DelayThenOk(Duration::from_millis(200)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    receiver.clear();
    let outcomes = send(10).await;
    assert!(outcomes.iter().all(|(_, o)| *o == SendOutcome::Delivered), "{outcomes:?}");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 10);
    let gap = requests[1].received_at - requests[0].received_at;
    assert!(gap >= Duration::from_millis(150), "the probe went alone ({gap:?} before the next)");

    receiver.set_behaviour(Behaviour::Status(200));
    let outcomes = send(30).await;
    assert!(outcomes.iter().all(|(_, o)| *o == SendOutcome::Delivered));
}

#[tokio::test]
async fn a_429_with_retry_after_opens_the_breaker_that_long() {
    let receiver = HttpReceiver::start().await;
    receiver.set_behaviour(Behaviour::StatusWithHeaders(429, vec![("Retry-After".into(), "1".into())]));
    let sender = WebhookSender::new().unwrap();
    let patient = WebhookSettings { breaker_failures: 100, breaker_cooldown_ms: 100, ..settings(None) };
    let url = receiver.url("/busy");
    let one = || batch(items(1, |_| Some(url.clone())));

    let outcome = only_outcome(sender.send(&one(), &patient).await);
    assert!(retry_text(&outcome).starts_with("HTTP 429 (Retry-After 1 s)"), "{outcome:?}");
    let outcome = only_outcome(sender.send(&one(), &patient).await);
    assert!(retry_text(&outcome).starts_with("circuit open"), "{outcome:?}");
    assert_eq!(receiver.count(), 1);

    receiver.set_behaviour(Behaviour::Status(200));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(only_outcome(sender.send(&one(), &patient).await), SendOutcome::Delivered);
}

#[tokio::test]
async fn coalescing_sends_several_messages_per_signed_post() {
    let receiver = HttpReceiver::start().await;
    let sender = WebhookSender::new().unwrap();
    let own = receiver.url("/own");
    let coalesced = WebhookSettings { coalesce: 10, ..settings(Some(receiver.url("/ws"))) };
    // 25 messages to the workspace endpoint, 2 to their own address (never coalesced).
    let mut all = items(25, |_| None);
    all.extend(items(27, |_| Some(own.clone())).into_iter().skip(25));
    let outcomes = by_idx(sender.send(&batch(all), &coalesced).await);
    assert_eq!(outcomes.len(), 27);
    assert!(outcomes.values().all(|o| *o == SendOutcome::Delivered));

    assert_eq!(receiver.requests_to("/own").len(), 2);
    let posts = receiver.requests_to("/ws");
    assert_eq!(posts.len(), 3);
    let mut sizes: Vec<usize> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for post in &posts {
        assert!(signature_ok(SECRET, post));
        let body = post.json();
        let messages = body["messages"].as_array().unwrap();
        sizes.push(messages.len());
        let ids: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(post.header("idempotency-key").unwrap(), ids.join(","));
        assert!(messages.iter().all(|m| m["broadcast_id"] == "42" && m["content"]["type"] == "text"));
        seen.extend(ids.iter().map(|s| (*s).to_owned()));
    }
    sizes.sort_unstable();
    assert_eq!(sizes, [5, 10, 10]);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25);

    // A failed coalesced POST is every one of its messages' outcome.
    receiver.set_path_behaviour("/ws", Behaviour::Status(503));
    receiver.clear();
    let outcomes = sender.send(&batch(items(25, |_| None)), &coalesced).await;
    assert_eq!(outcomes.len(), 25);
    assert!(outcomes.iter().all(|(_, o)| retry_text(o).starts_with("HTTP 503")));
    assert_eq!(receiver.count(), 3);
}

/// 20,000 messages to the loopback receiver, 64 in flight, against a bare
/// reqwest loop posting the same bodies (no signing, breaker or checks), in
/// alternating rounds (the best of each is reported; the machine is shared).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: cargo test --release -p qunfa-engine --test webhook -- --ignored --nocapture"]
async fn webhook_throughput() {
    const N: u32 = 20_000;
    const ROUNDS: usize = 3;
    let receiver = HttpReceiver::start().await;
    let url = receiver.url("/bench");
    let sender = WebhookSender::new().unwrap();
    let fast = WebhookSettings { concurrency: 64, per_host_concurrency: 64, timeout_ms: 10_000, ..settings(None) };
    let b = batch(items(N, |_| Some(url.clone())));

    // Warm-up (connections, allocator), and the bodies for the bare loop.
    sender.send(&b, &fast).await;
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(receiver.requests().into_iter().map(|r| r.body).collect());
    assert_eq!(bodies.len(), N as usize);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let bare = || {
        let posts = (0..bodies.len()).map(|i| {
            let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
            async move {
                let r =
                    client.post(url).header("Content-Type", "application/json").body(bodies[i].clone()).send().await;
                r.map(|r| r.status().is_success()).unwrap_or(false)
            }
        });
        futures::stream::iter(posts).buffer_unordered(64).filter(|ok| futures::future::ready(*ok)).count()
    };
    assert_eq!(bare().await, N as usize);

    let (mut sender_secs, mut bare_secs) = (f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        receiver.clear();
        let started = Instant::now();
        let outcomes = sender.send(&b, &fast).await;
        sender_secs = sender_secs.min(started.elapsed().as_secs_f64());
        assert!(outcomes.iter().all(|(_, o)| *o == SendOutcome::Delivered));
        assert_eq!(receiver.count(), N as usize);

        receiver.clear();
        let started = Instant::now();
        assert_eq!(bare().await, N as usize);
        bare_secs = bare_secs.min(started.elapsed().as_secs_f64());
    }

    let coalesced = WebhookSettings { coalesce: 10, endpoint: Some(url.clone()), ..fast.clone() };
    receiver.clear();
    let started = Instant::now();
    let outcomes = sender.send(&batch(items(N, |_| None)), &coalesced).await;
    let coalesced_secs = started.elapsed().as_secs_f64();
    assert!(outcomes.iter().all(|(_, o)| *o == SendOutcome::Delivered));

    let rate = |secs: f64| f64::from(N) / secs;
    println!("webhook sender:   {N} messages in {sender_secs:.2} s = {:.0} messages/s", rate(sender_secs));
    println!("bare reqwest:     {N} messages in {bare_secs:.2} s = {:.0} messages/s", rate(bare_secs));
    println!("sender / bare:    {:.2}", bare_secs / sender_secs);
    println!(
        "coalesce=10:      {N} messages in {coalesced_secs:.2} s = {:.0} messages/s ({} POSTs)",
        rate(coalesced_secs),
        receiver.count()
    );
}
