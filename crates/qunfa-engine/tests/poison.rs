//! A job that always fails must not hold back the others, and must end as a
//! dead letter with failed delivery records. Runs on SQLite and PostgreSQL,
//! with an injected clock.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use qunfa_audience::AudienceSpec;
use qunfa_core::{
    broadcast::{BroadcastState, Priority},
    contact::Channel,
    import::{parse, ImportFormat},
    message::RawContent,
    workspace::{Name, WorkspaceKind},
    Code, Policy,
};
use qunfa_engine::{drain, EngineConfig, EngineMetrics};
use qunfa_store::{
    broadcasts::{DispatchCache, DispatchRules, NewBroadcast},
    json::content_to_json,
    test_support, Store, StoreError,
};

const NOW: i64 = 1_795_000_000_000;

fn broadcast(store: &Store, ws: i64, text: &str) -> i64 {
    let raw = RawContent { content_type: "text".into(), text: Some(text.into()), ..Default::default() };
    let new = NewBroadcast {
        content_json: content_to_json(&raw),
        audience_json: r#"{"all":true}"#.into(),
        channels: vec![Channel::Inbox],
        priority: Priority::Broadcast,
        client_msg_id: None,
        request_hash: text.into(),
        ttl_ms: None,
        fallback: Vec::new(),
    };
    let (b, _) = store.create_broadcast(ws, 1, &new, "t", NOW).unwrap();
    let audience = store.resolve_audience(ws, &AudienceSpec::All).unwrap();
    let rules = DispatchRules::draft();
    store.dispatch(ws, b.id, &audience, rules, "t", NOW).unwrap();
    b.id
}

fn poison_job_becomes_a_dead_letter(db: test_support::TestDb) {
    let store = Store::open(db.location.clone(), 2).unwrap();
    let ws = store
        .create_workspace(&Name::parse("poison").unwrap(), WorkspaceKind::Enterprise, None, "t", NOW)
        .unwrap()
        .0
        .id;
    let ndjson: String = (0..3000).map(|i| format!("{{\"external_id\":\"u{i}\"}}\n")).collect();
    let contacts = parse(ImportFormat::Ndjson, ndjson.as_bytes()).contacts;
    store.import_contacts(ws, &Policy::builtin().tiers.enterprise, &contacts, "t", NOW).unwrap();
    let poisoned = broadcast(&store, ws, "坏消息");
    let healthy = broadcast(&store, ws, "好消息");
    // The poisoned broadcast's stored content no longer decodes: every step that claims one of its jobs fails.
    store
        .db
        .write(|c| c.execute(r#"UPDATE broadcasts SET content = '{"type":"video"}' WHERE id = ?"#, &[poisoned.into()]))
        .unwrap();

    let now = AtomicI64::new(NOW);
    let clock = || now.load(Ordering::SeqCst);
    let mut config = EngineConfig::default();
    config.delivery.max_attempts = 3;
    let (metrics, stop, cache) = (EngineMetrics::default(), AtomicBool::new(false), DispatchCache::default());

    // First pass: the poisoned jobs are isolated and deferred; the healthy broadcast completes.
    assert!(drain(&store, &cache, &config, &metrics, &stop, &clock));
    let h = store.broadcast(ws, healthy).unwrap();
    assert_eq!((h.state, h.n_delivered), (BroadcastState::Completed, 3000));
    let p = store.broadcast(ws, poisoned).unwrap();
    assert_eq!((p.state, p.n_delivered, p.n_failed), (BroadcastState::Sending, 0, 0));

    // Later passes retry after the backoff; after 3 attempts the jobs are dead letters.
    for _ in 0..4 {
        now.fetch_add(3_600_000, Ordering::SeqCst);
        drain(&store, &cache, &config, &metrics, &stop, &clock);
    }
    let p = store.broadcast(ws, poisoned).unwrap();
    assert_eq!((p.state, p.n_delivered, p.n_failed), (BroadcastState::Completed, 0, 3000));
    assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 2);
    let records = store.deliveries(poisoned, None, 10).unwrap();
    assert!(records
        .iter()
        .all(|d| d.state == "failed" && d.error_code.as_deref() == Some("QF-DELIVERY-FAILED") && d.attempts == 3));
    assert_eq!(store.delivery_totals(poisoned).unwrap(), (3000, 0));
    let audit = store.audit_entries(ws, 0, 1000).unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "delivery.dead_letter").count(), 2);
    assert_eq!(metrics.failed.get(Priority::Broadcast, Channel::Inbox).load(Ordering::Relaxed), 3000);

    // Re-driving needs a completed broadcast with failures: the healthy one has none.
    let err = store.redrive_failed(ws, healthy, "t", clock()).unwrap_err();
    assert!(matches!(err, StoreError::Rejected { code: Code::Conflict, .. }), "{err:?}");
    // Once the cause is fixed, retry-failed sends exactly the failed ones again.
    store
        .db
        .write(|c| {
            c.execute(
                r#"UPDATE broadcasts SET content = '{"type":"text","text":"好消息"}' WHERE id = ?"#,
                &[poisoned.into()],
            )
        })
        .unwrap();
    assert_eq!(store.redrive_failed(ws, poisoned, "t", clock()).unwrap(), 3000);
    let p = store.broadcast(ws, poisoned).unwrap();
    assert_eq!((p.state, p.n_failed, p.n_redriven), (BroadcastState::Sending, 0, 3000));
    assert!(drain(&store, &cache, &config, &metrics, &stop, &clock));
    let p = store.broadcast(ws, poisoned).unwrap();
    assert_eq!((p.state, p.n_delivered, p.n_failed), (BroadcastState::Completed, 3000, 0));
    assert_eq!(store.delivery_totals(poisoned).unwrap(), (3000, 0));
    assert!(store.deliveries(poisoned, None, 3000).unwrap().iter().all(|d| d.state == "delivered"));
    let audit = store.audit_entries(ws, 0, 1000).unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "broadcast.redriven").count(), 1);
    assert!(store.audit_verify().unwrap().iter().all(|r| r.result.is_ok()));
}

#[test]
fn sqlite_poison_job_becomes_a_dead_letter() {
    poison_job_becomes_a_dead_letter(test_support::sqlite());
}

#[test]
fn postgres_poison_job_becomes_a_dead_letter() {
    poison_job_becomes_a_dead_letter(test_support::postgres());
}
