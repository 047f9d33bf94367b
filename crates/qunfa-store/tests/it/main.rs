//! The storage test suite. Every test runs against SQLite and PostgreSQL.

use qunfa_audience::AudienceSpec;
use qunfa_core::{
    broadcast::{BroadcastState, Priority},
    contact::{Channel, ContactInput, RawContact},
    import::{parse, ImportFormat},
    message::{Content, RawContent},
    workspace::{Name, Role, WorkspaceKind},
    Code, Policy,
};
use qunfa_store::{
    broadcasts::{DispatchCache, DispatchRules, NewBroadcast},
    json::content_to_json,
    queue::StepLimits,
    test_support, Store, StoreError,
};

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(super::open(qunfa_store::test_support::sqlite())); } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(super::open(qunfa_store::test_support::postgres())); } )*
        }
    };
}

both_backends!(
    workspaces_and_keys,
    import_creates_and_updates,
    personal_tag_rules,
    audiences_follow_subtrees,
    client_msg_id_is_idempotent,
    dispatch_delivers_exactly_once,
    personalised_bodies_and_inbox,
    audit_chain_detects_tampering,
    racing_dispatches_send_once,
    racing_sends_respect_the_daily_quota,
    deleting_a_contact_erases_what_was_rendered_and_written,
    memberships_span_chunks,
    audience_index_sees_every_write_at_once,
    urgent_jobs_go_first_and_end_the_step,
    speed_levels_pace_broadcasts,
    pause_holds_batches_until_resumed,
    retention_purges_content_and_keeps_records,
    external_batches_are_leased_and_taken_over,
    fallback_and_consent,
    workspace_channel_rate,
    early_receipts,
    scheduled_runs_are_claimed_once,
    schedule_settings_round_trip,
    compat_sends_are_reserved_with_their_draft,
    compat_callbacks_are_finished_under_their_lease,
);

mod channels;
use channels::{early_receipts, fallback_and_consent, workspace_channel_rate};
mod schedule;
use schedule::{schedule_settings_round_trip, scheduled_runs_are_claimed_once};
mod compat;
use compat::{compat_callbacks_are_finished_under_their_lease, compat_sends_are_reserved_with_their_draft};

struct Fixture {
    store: Store,
    _db: test_support::TestDb,
}

fn open(db: test_support::TestDb) -> Fixture {
    let store = Store::open(db.location.clone(), 4).expect("open store");
    Fixture { store, _db: db }
}

const NOW: i64 = 1_795_000_000_000;

fn ws(f: &Fixture, kind: WorkspaceKind) -> i64 {
    f.store.create_workspace(&Name::parse("测试").unwrap(), kind, None, "test", NOW).unwrap().0.id
}

fn contacts(ndjson: &str) -> Vec<ContactInput> {
    let out = parse(ImportFormat::Ndjson, ndjson.as_bytes());
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    out.contacts
}

fn many(n: usize, tag: &str) -> Vec<ContactInput> {
    (0..n)
        .map(|i| {
            let raw: RawContact = serde_json::from_value(serde_json::json!({
                "external_id": format!("u{i}"), "name": format!("用户{i}"), "attributes": {"city": "上海", "n": i}, "tags": [tag]
            }))
            .unwrap();
            ContactInput::parse(raw).unwrap()
        })
        .collect()
}

fn rejected_code<T: std::fmt::Debug>(r: Result<T, StoreError>) -> Code {
    match r {
        Err(StoreError::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn workspaces_and_keys(f: Fixture) {
    let (w, key) =
        f.store.create_workspace(&Name::parse("华东").unwrap(), WorkspaceKind::Enterprise, None, "t", NOW).unwrap();
    let auth = f.store.authenticate(&key.secret).unwrap().expect("key works");
    assert_eq!((auth.workspace.id, auth.role), (w.id, Role::Owner));
    assert!(f.store.authenticate("qf_0000").unwrap().is_none());
    assert!(f.store.authenticate("bogus").unwrap().is_none());
    let (member, sender_key) =
        f.store.create_member(w.id, &Name::parse("小王").unwrap(), Role::Sender, NOW - 1000, "t", NOW).unwrap();
    let auth = f.store.authenticate(&sender_key.secret).unwrap().unwrap();
    assert_eq!((auth.member_id, auth.role), (member.id, Role::Sender));
    assert_eq!(f.store.members(w.id).unwrap().len(), 2);
}

fn import_creates_and_updates(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    let tier = Policy::builtin().tiers.enterprise;
    let first = contacts(
        r#"{"external_id":"a","name":"甲","attributes":{"city":"上海"},"tags":["客户等级/金牌/华东"]}
{"external_id":"b","name":"乙","channels":{"email":"b@example.com"}}"#,
    );
    let out = f.store.import_contacts(w, &tier, &first, "t", NOW).unwrap();
    assert_eq!((out.imported, out.updated, out.tags_created), (2, 0, 3));
    let second = contacts(
        r#"{"external_id":"b","attributes":{"vip":true},"tags":["新客"]}
{"external_id":"c","name":"丙"}"#,
    );
    let out = f.store.import_contacts(w, &tier, &second, "t", NOW).unwrap();
    assert_eq!((out.imported, out.updated), (1, 1));
    let list = f.store.contacts(w, None, 10).unwrap();
    let idxs: Vec<u32> = list.iter().map(|c| c.idx).collect();
    assert_eq!(idxs, [0, 1, 2], "dense ids in import order");
    let b = f.store.contact(w, 1).unwrap();
    assert_eq!(b.name, "乙", "an import without a name keeps the old one");
    assert_eq!(b.email.as_deref(), Some("b@example.com"));
    assert_eq!(b.attributes["vip"], serde_json::json!(true));
    assert_eq!(b.tags, ["新客"]);
    // Duplicate create is refused; delete erases personal data.
    let dup = f.store.create_contact(w, &tier, &contacts(r#"{"external_id":"a"}"#)[0], "t", NOW);
    assert_eq!(rejected_code(dup), Code::Duplicate);
    f.store.delete_contact(w, 0, "t", NOW).unwrap();
    assert!(matches!(f.store.contact(w, 0), Err(StoreError::NotFound)));
    assert_eq!(f.store.contacts(w, None, 10).unwrap().len(), 2);
    let keys = f.store.attribute_keys(w).unwrap();
    assert!(keys.contains("city") && keys.contains("vip"));
}

fn personal_tag_rules(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Personal);
    let tier = Policy::builtin().tiers.personal;
    let nested = contacts(r#"{"external_id":"a","tags":["客户等级/金牌"]}"#);
    assert_eq!(rejected_code(f.store.import_contacts(w, &tier, &nested, "t", NOW)), Code::TagNested);
    assert!(f.store.contacts(w, None, 10).unwrap().is_empty(), "a refused import writes nothing");
    // 501 contacts on one tag is over the 500 limit; 500 is fine.
    assert_eq!(rejected_code(f.store.import_contacts(w, &tier, &many(501, "好友"), "t", NOW)), Code::LimitTagMembers);
    assert!(f.store.contacts(w, None, 10).unwrap().is_empty());
    f.store.import_contacts(w, &tier, &many(500, "好友"), "t", NOW).unwrap();
    for i in 1..20 {
        f.store.create_tag(w, &tier, &qunfa_core::tag::TagPath::parse(&format!("t{i}")).unwrap(), "t", NOW).unwrap();
    }
    let over = f.store.create_tag(w, &tier, &qunfa_core::tag::TagPath::parse("t20").unwrap(), "t", NOW);
    assert_eq!(rejected_code(over), Code::LimitTags);
    assert_eq!(f.store.tags(w).unwrap().len(), 20);
}

fn audiences_follow_subtrees(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    let tier = Policy::builtin().tiers.enterprise;
    f.store
        .import_contacts(
            w,
            &tier,
            &contacts(
                r#"{"external_id":"a","tags":["等级/金牌/华东"]}
{"external_id":"b","tags":["等级/金牌"]}
{"external_id":"c","tags":["等级/银牌"]}
{"external_id":"d"}"#,
            ),
            "t",
            NOW,
        )
        .unwrap();
    let tag = |p: &str| f.store.tag_by_path(w, &qunfa_core::tag::TagPath::parse(p).unwrap()).unwrap();
    let members = |spec| f.store.resolve_audience(w, &spec).unwrap().iter().collect::<Vec<u32>>();
    assert_eq!(members(AudienceSpec::Tag(tag("等级"))), [0, 1, 2]);
    assert_eq!(members(AudienceSpec::Tag(tag("等级/金牌"))), [0, 1]);
    assert_eq!(members(AudienceSpec::Tags(vec![tag("等级/金牌/华东"), tag("等级/银牌")])), [0, 2]);
    assert_eq!(members(AudienceSpec::All), [0, 1, 2, 3]);
    assert_eq!(members(AudienceSpec::Contacts(vec![3, 99])), [3]);
    let root = f.store.create_department(w, &Name::parse("总部").unwrap(), None, "t", NOW).unwrap();
    let child = f.store.create_department(w, &Name::parse("华东区").unwrap(), Some(root.id), "t", NOW).unwrap();
    f.store.department_members(w, child.id, &[1, 3], "t", NOW).unwrap();
    assert_eq!(members(AudienceSpec::Department(root.id)), [1, 3]);
    assert!(matches!(f.store.resolve_audience(w, &AudienceSpec::Tag(999_999)), Err(StoreError::NotFound)));
    let missing = f.store.department_members(w, child.id, &[77], "t", NOW);
    assert_eq!(rejected_code(missing), Code::NotFound);
}

fn text_broadcast(text: &str, client_msg_id: Option<&str>) -> NewBroadcast {
    let raw = RawContent { content_type: "text".into(), text: Some(text.into()), ..Default::default() };
    Content::parse(&raw, 2048).unwrap();
    NewBroadcast {
        content_json: content_to_json(&raw),
        audience_json: r#"{"all":true}"#.into(),
        channels: vec![Channel::Inbox],
        priority: Priority::Broadcast,
        client_msg_id: client_msg_id.map(str::to_owned),
        request_hash: format!("hash-of-{text}"),
        ttl_ms: None,
        fallback: Vec::new(),
    }
}

fn client_msg_id_is_idempotent(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    let (first, created) = f.store.create_broadcast(w, 1, &text_broadcast("你好", Some("m-1")), "t", NOW).unwrap();
    assert!(created);
    let (again, created) = f.store.create_broadcast(w, 1, &text_broadcast("你好", Some("m-1")), "t", NOW).unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id);
    let reused = f.store.create_broadcast(w, 1, &text_broadcast("别的", Some("m-1")), "t", NOW);
    assert_eq!(rejected_code(reused), Code::DuplicateClientMsgId);
}

fn run_until_idle(store: &Store) -> u64 {
    let cache = DispatchCache::default();
    let mut delivered = 0;
    loop {
        let limits = StepLimits { max_jobs: 8, budget: std::time::Duration::from_secs(60) };
        let step = store.run_step("test", &cache, &Policy::builtin().delivery, limits, NOW + 1).unwrap();
        delivered += step.delivered;
        if step.jobs == 0 {
            return delivered;
        }
    }
}

fn dispatch_delivers_exactly_once(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    let tier = Policy::builtin().tiers.enterprise;
    f.store.import_contacts(w, &tier, &many(4_500, "全员"), "t", NOW).unwrap();
    let (b, _) = f.store.create_broadcast(w, 1, &text_broadcast("通知", None), "t", NOW).unwrap();
    let audience = f.store.resolve_audience(w, &AudienceSpec::All).unwrap();
    let rules = DispatchRules::draft();
    f.store.dispatch(w, b.id, &audience, rules, "t", NOW).unwrap();
    // A second dispatch of the same broadcast is a state conflict.
    assert_eq!(rejected_code(f.store.dispatch(w, b.id, &audience, rules, "t", NOW)), Code::Conflict);
    assert_eq!(run_until_idle(&f.store), 4_500);
    let b = f.store.broadcast(w, b.id).unwrap();
    assert_eq!(
        (b.state, b.n_recipients, b.n_delivered, b.n_batches, b.n_batches_done),
        (BroadcastState::Completed, 4_500, 4_500, 3, 3)
    );
    assert_eq!(f.store.delivery_totals(b.id).unwrap(), (4_500, 0));
    // Replaying the jobs (as after a crash between commit and ack) writes nothing twice.
    f.store.db.write(|c| c.execute("UPDATE jobs SET state = 'ready', lease_until = NULL", &[])).unwrap();
    assert_eq!(run_until_idle(&f.store), 0);
    assert_eq!(f.store.delivery_totals(b.id).unwrap(), (4_500, 0));
    let frozen = f.store.frozen_audience(w, b.id).unwrap();
    assert_eq!(qunfa_audience::FrozenAudience::deserialize(&frozen).unwrap().len(), 4_500);
    let page = f.store.deliveries(b.id, Some(("inbox".into(), 4_497)), 10).unwrap();
    assert_eq!(page.iter().map(|d| d.contact_idx).collect::<Vec<_>>(), [4_498, 4_499]);
}

fn personalised_bodies_and_inbox(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Personal);
    let tier = Policy::builtin().tiers.personal;
    f.store
        .import_contacts(
            w,
            &tier,
            &contacts(
                r#"{"external_id":"a","name":"张三","attributes":{"city":"上海"}}
{"external_id":"b","name":"李四"}"#,
            ),
            "t",
            NOW,
        )
        .unwrap();
    let (b, _) = f
        .store
        .create_broadcast(w, 1, &text_broadcast("{{name}}，{{city|您所在城市}}门店开业", None), "t", NOW)
        .unwrap();
    let audience = f.store.resolve_audience(w, &AudienceSpec::All).unwrap();
    let rules = DispatchRules {
        from: BroadcastState::Draft,
        daily_limit: Some((5, NOW - 1000)),
        approved_by: None,
        verdicts_json: "[]",
        fingerprint: None,
        link_domains: &[],
        review_reason: "",
        ..DispatchRules::draft()
    };
    f.store.dispatch(w, b.id, &audience, rules, "t", NOW).unwrap();
    run_until_idle(&f.store);
    let inbox = f.store.inbox(w, 0, None, 10).unwrap();
    assert_eq!(inbox[0].body.as_deref(), Some("张三，上海门店开业"));
    assert_eq!(f.store.inbox(w, 1, None, 10).unwrap()[0].body.as_deref(), Some("李四，您所在城市门店开业"));
    assert!(f.store.mark_read(w, 0, b.id, NOW + 5).unwrap());
    assert!(!f.store.mark_read(w, 0, b.id, NOW + 6).unwrap(), "only the first read counts");
    f.store.reply(w, 1, b.id, "收到", NOW + 7).unwrap();
    let b = f.store.broadcast(w, b.id).unwrap();
    assert_eq!((b.n_read, b.n_replied), (2, 1));
    assert!(matches!(f.store.mark_read(w, 0, b.id + 100, NOW), Err(StoreError::NotFound)));
    assert_eq!(f.store.sends_today(1, NOW - 1000).unwrap(), 1);
    let token = f.store.create_inbox_token(w, 1, "t", NOW).unwrap();
    assert_eq!(f.store.inbox_auth(&token).unwrap(), Some((w, 1)));
}

fn audit_chain_detects_tampering(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    let tier = Policy::builtin().tiers.enterprise;
    f.store.import_contacts(w, &tier, &many(3, "x"), "t", NOW).unwrap();
    let ok = |store: &Store| store.audit_verify().unwrap().iter().all(|r| r.result.is_ok());
    assert!(ok(&f.store));
    let entries = f.store.audit_entries(w, 0, 100).unwrap();
    assert!(entries.len() >= 3);
    f.store
        .db
        .write(|c| {
            c.execute("UPDATE audit_log SET details = '{\"imported\":999}' WHERE chain = ? AND seq = 3", &[w.into()])
        })
        .unwrap();
    assert!(!ok(&f.store), "a changed entry is detected");
    let report = f.store.audit_verify().unwrap();
    let broken = report.iter().find(|r| r.chain == w).unwrap();
    assert_eq!(broken.result, Err(qunfa_core::audit::ChainBreak::Altered { seq: 3 }));
}

/// With SQLite's own checkpoints off, committed pages reach the main database
/// file only through the background checkpointer.
#[test]
fn sqlite_background_checkpoints_reach_the_database_file() {
    let db = test_support::sqlite();
    let path = match &db.location {
        qunfa_store::DbLocation::Sqlite(p) => p.clone(),
        qunfa_store::DbLocation::Postgres(_) => unreachable!("a SQLite test database"),
    };
    let store = Store::open(db.location.clone(), 2).unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let w =
        store.create_workspace(&Name::parse("ckpt").unwrap(), WorkspaceKind::Enterprise, None, "t", NOW).unwrap().0.id;
    store.import_contacts(w, &Policy::builtin().tiers.enterprise, &many(20_000, "x"), "t", NOW).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let after = std::fs::metadata(&path).unwrap().len();
        eprintln!(
            "before {before} after {after} wal {:?}",
            std::fs::metadata(path.with_extension("db-wal")).map(|m| m.len())
        );
        if after > before + 1_000_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the WAL was not checkpointed: {before} -> {after} bytes");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn racing_dispatches_send_once(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    f.store.import_contacts(w, &Policy::builtin().tiers.enterprise, &many(100, "x"), "t", NOW).unwrap();
    let (b, _) = f.store.create_broadcast(w, 1, &text_broadcast("抢发", None), "t", NOW).unwrap();
    let audience = f.store.resolve_audience(w, &AudienceSpec::All).unwrap();
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let rules = DispatchRules::draft();
                    f.store.dispatch(w, b.id, &audience, rules, "t", NOW)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    for r in results.into_iter().filter(Result::is_err) {
        assert_eq!(rejected_code(r), Code::Conflict);
    }
    assert_eq!(run_until_idle(&f.store), 100);
}

fn racing_sends_respect_the_daily_quota(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Personal);
    f.store.import_contacts(w, &Policy::builtin().tiers.personal, &many(3, "x"), "t", NOW).unwrap();
    let audience = f.store.resolve_audience(w, &AudienceSpec::All).unwrap();
    let drafts: Vec<i64> = (0..8)
        .map(|i| f.store.create_broadcast(w, 1, &text_broadcast(&format!("第{i}条"), None), "t", NOW).unwrap().0.id)
        .collect();
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = drafts
            .iter()
            .map(|id| {
                let audience = &audience;
                let store = &f.store;
                s.spawn(move || {
                    let rules = DispatchRules {
                        from: BroadcastState::Draft,
                        daily_limit: Some((5, NOW - 1000)),
                        approved_by: None,
                        verdicts_json: "[]",
                        fingerprint: None,
                        link_domains: &[],
                        review_reason: "",
                        ..DispatchRules::draft()
                    };
                    store.dispatch(w, *id, audience, rules, "t", NOW)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5, "{results:?}");
    for r in results.into_iter().filter(Result::is_err) {
        assert_eq!(rejected_code(r), Code::LimitDailySends);
    }
    assert_eq!(f.store.sends_today(1, NOW - 1000).unwrap(), 5);
}

fn deleting_a_contact_erases_what_was_rendered_and_written(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Personal);
    let tier = Policy::builtin().tiers.personal;
    f.store.import_contacts(w, &tier, &contacts(r#"{"external_id":"a","name":"张三"}"#), "t", NOW).unwrap();
    let (b, _) = f.store.create_broadcast(w, 1, &text_broadcast("{{name}}您好", None), "t", NOW).unwrap();
    let audience = f.store.resolve_audience(w, &AudienceSpec::All).unwrap();
    let rules = DispatchRules::draft();
    f.store.dispatch(w, b.id, &audience, rules, "t", NOW).unwrap();
    run_until_idle(&f.store);
    f.store.reply(w, 0, b.id, "我的手机号是 13800000000", NOW).unwrap();
    f.store.delete_contact(w, 0, "t", NOW).unwrap();
    let left = f
        .store
        .db
        .read(|c| c.query_one("SELECT d.body, r.text FROM deliveries d JOIN replies r ON r.broadcast_id = d.broadcast_id WHERE d.broadcast_id = ?", &[b.id.into()]))
        .unwrap();
    assert_eq!((left.opt_str(0), left.str(1)), (None, ""));
    // A user-chosen external id can never collide with a deleted contact's tombstone.
    f.store.import_contacts(w, &tier, &contacts(r#"{"external_id":"~deleted~1"}"#), "t", NOW).unwrap();
    f.store.delete_contact(w, 1, "t", NOW).unwrap();
    assert!(ContactInput::parse(serde_json::from_str(r#"{"external_id":"\u0001deleted\u00011"}"#).unwrap()).is_err());
}

/// Memberships are stored per 65,536-id chunk: counts, audiences, changes and
/// deletions across a chunk boundary agree with a plain set.
fn memberships_span_chunks(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    let tier = Policy::builtin().tiers.enterprise;
    let n = 70_000u32;
    let people: Vec<ContactInput> = (0..n)
        .map(|i| {
            let tags: Vec<&str> = if i % 2 == 0 { vec!["偶数"] } else { vec![] };
            let raw: RawContact =
                serde_json::from_value(serde_json::json!({"external_id": format!("u{i}"), "tags": tags})).unwrap();
            ContactInput::parse(raw).unwrap()
        })
        .collect();
    f.store.import_contacts(w, &tier, &people, "t", NOW).unwrap();
    let even = f.store.tag_by_path(w, &qunfa_core::tag::TagPath::parse("偶数").unwrap()).unwrap();
    let mut model: std::collections::BTreeSet<u32> = (0..n).filter(|i| i % 2 == 0).collect();
    let check = |model: &std::collections::BTreeSet<u32>| {
        let got: Vec<u32> = f.store.resolve_audience(w, &AudienceSpec::Tag(even)).unwrap().iter().collect();
        assert_eq!(got, model.iter().copied().collect::<Vec<_>>());
        assert_eq!(f.store.tag(w, even).unwrap().n_contacts, model.len() as u64);
    };
    check(&model);
    // Add odd ids on both sides of the boundary, remove some even ones.
    let add = [65_533, 65_535, 65_537, 69_999];
    let changed =
        f.store.tag_members(w, &tier, even, qunfa_store::tags::MembershipChange::Add(&add), "t", NOW).unwrap();
    assert_eq!(changed, 4);
    model.extend(add);
    let remove = [0, 65_534, 65_536, 65_537, 3];
    let changed =
        f.store.tag_members(w, &tier, even, qunfa_store::tags::MembershipChange::Remove(&remove), "t", NOW).unwrap();
    assert_eq!(changed, 4, "3 is not a member; the other four are");
    for i in remove {
        model.remove(&i);
    }
    check(&model);
    // A deleted contact leaves every set; the detail of a member lists its tag.
    f.store.delete_contact(w, 65_538, "t", NOW).unwrap();
    model.remove(&65_538);
    check(&model);
    assert_eq!(f.store.contact(w, 65_540).unwrap().tags, ["偶数"]);
    assert!(f.store.contact(w, 65_541).unwrap().tags.is_empty());
}

/// A database made by schema version 1 (one row per membership) is moved to
/// bitmaps on open, and the old tables are gone.
#[test]
fn version_1_memberships_move_to_bitmaps() {
    let db = test_support::sqlite();
    let path = match &db.location {
        qunfa_store::DbLocation::Sqlite(p) => p.clone(),
        qunfa_store::DbLocation::Postgres(_) => unreachable!("a SQLite test database"),
    };
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(include_str!("../../migrations/sqlite/0001_init.sql")).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0);
             INSERT INTO workspaces (id, name, kind, created_at, next_contact_idx) VALUES (1, 'w', 'enterprise', 0, 3);
             INSERT INTO contacts (workspace_id, idx, external_id, name, attributes, consent, created_at, updated_at)
               VALUES (1, 0, 'a', '', '{}', '{}', 0, 0), (1, 1, 'b', '', '{}', '{}', 0, 0), (1, 2, 'c', '', '{}', '{}', 0, 0);
             INSERT INTO tags (id, workspace_id, path, created_at) VALUES (5, 1, 'x', 0);
             INSERT INTO contact_tags VALUES (1, 5, 0), (1, 5, 2);
             INSERT INTO departments (id, workspace_id, name, created_at) VALUES (7, 1, 'd', 0);
             INSERT INTO contact_departments VALUES (1, 7, 1);",
        )
        .unwrap();
    }
    let store = Store::open(db.location.clone(), 2).unwrap();
    assert_eq!(store.tag(1, 5).unwrap().n_contacts, 2);
    assert_eq!(store.resolve_audience(1, &AudienceSpec::Tag(5)).unwrap().iter().collect::<Vec<_>>(), [0, 2]);
    assert_eq!(store.resolve_audience(1, &AudienceSpec::Department(7)).unwrap().iter().collect::<Vec<_>>(), [1]);
    let left = store.db.conn().unwrap().query_opt("SELECT name FROM sqlite_master WHERE name = 'contact_tags'", &[]);
    assert!(left.unwrap().is_none());
}

/// The audience index sees every committed write on its next use, also when
/// another node (a second store on the same database) made it.
fn audience_index_sees_every_write_at_once(f: Fixture) {
    use qunfa_audience::expr::parse;
    let w = ws(&f, WorkspaceKind::Enterprise);
    let tier = Policy::builtin().tiers.enterprise;
    let other_node = Store::open(f._db.location.clone(), 2).unwrap();
    let count = |e: &str| f.store.with_audience(w, |i| i.count(&parse(e).unwrap(), NOW)).unwrap();
    f.store
        .import_contacts(
            w,
            &tier,
            &contacts(
                r#"{"external_id":"a","attributes":{"city":"上海","spend":100},"tags":["等级/金牌"]}
{"external_id":"b","attributes":{"city":"杭州","spend":9000},"tags":["等级/银牌"]}"#,
            ),
            "t",
            NOW,
        )
        .unwrap();
    assert_eq!(count("tag:等级 & spend > 50"), Ok(2));
    // Another node imports and tags: visible here at once.
    other_node
        .import_contacts(
            w,
            &tier,
            &contacts(r#"{"external_id":"c","attributes":{"city":"上海","spend":7000},"tags":["等级/金牌"]}"#),
            "t",
            NOW,
        )
        .unwrap();
    assert_eq!(count("tag:等级/金牌 & city = 上海"), Ok(2));
    let vip = other_node.create_tag(w, &tier, &qunfa_core::tag::TagPath::parse("VIP").unwrap(), "t", NOW).unwrap();
    assert_eq!(count("tag:VIP"), Ok(0), "a new tag is known at once");
    other_node.tag_members(w, &tier, vip.id, qunfa_store::tags::MembershipChange::Add(&[0, 2]), "t", NOW).unwrap();
    assert_eq!(count("tag:VIP & spend >= 100"), Ok(2));
    other_node.tag_members(w, &tier, vip.id, qunfa_store::tags::MembershipChange::Remove(&[0]), "t", NOW).unwrap();
    assert_eq!(count("tag:VIP"), Ok(1));
    // Attribute changes and deletions.
    let mut changed = f.store.contact(w, 1).unwrap();
    changed.attributes.insert("city".into(), serde_json::json!("上海"));
    let raw: RawContact =
        serde_json::from_value(serde_json::json!({"external_id": "b", "attributes": changed.attributes})).unwrap();
    other_node.update_contact(w, 1, &ContactInput::parse(raw).unwrap(), "t", NOW).unwrap();
    assert_eq!(count("city = 上海"), Ok(3));
    other_node.delete_contact(w, 2, "t", NOW).unwrap();
    assert_eq!(count("city = 上海 | tag:VIP"), Ok(2));
    let d = other_node.create_department(w, &Name::parse("华东").unwrap(), None, "t", NOW).unwrap();
    other_node.department_members(w, d.id, &[0], "t", NOW).unwrap();
    assert_eq!(count("dept:华东"), Ok(1));
    assert_eq!(count(&format!("dept:{}", d.id)), Ok(1));
}

/// A workspace with `n` contacts and a function that dispatches a text
/// broadcast of the given priority to all of them at `at`.
fn queue_fixture(f: &Fixture, n: usize) -> (i64, impl Fn(&str, Priority, i64) -> i64 + '_) {
    let w = ws(f, WorkspaceKind::Enterprise);
    f.store.import_contacts(w, &Policy::builtin().tiers.enterprise, &many(n, "全员"), "t", NOW).unwrap();
    let send = move |text: &str, priority: Priority, at: i64| {
        let new = NewBroadcast { priority, ..text_broadcast(text, None) };
        let (b, _) = f.store.create_broadcast(w, 1, &new, "t", at).unwrap();
        // Urgent messages go to one person; broadcasts to everyone.
        let spec = if priority == Priority::Broadcast { AudienceSpec::All } else { AudienceSpec::Contacts(vec![7]) };
        let audience = f.store.resolve_audience(w, &spec).unwrap();
        let rules = DispatchRules::draft();
        f.store.dispatch(w, b.id, &audience, rules, "t", at).unwrap();
        b.id
    };
    (w, send)
}

fn step(store: &Store, cache: &DispatchCache, max_jobs: usize, now: i64) -> qunfa_store::queue::StepReport {
    let limits = StepLimits { max_jobs, budget: std::time::Duration::from_secs(60) };
    store.run_step("test", cache, &Policy::builtin().delivery, limits, now).unwrap()
}

fn urgent_jobs_go_first_and_end_the_step(f: Fixture) {
    let (_, send) = queue_fixture(&f, 10_000);
    let bulk = send("大促", Priority::Broadcast, NOW);
    let chat = send("验证码 1234", Priority::Chat, NOW + 1);
    let payment = send("支付成功", Priority::Transactional, NOW + 2);
    let cache = DispatchCache::default();
    // Queued last, claimed first; a step ends right after an urgent batch.
    let r = step(&f.store, &cache, 16, NOW + 3);
    assert_eq!(r.batches.iter().map(|b| (b.broadcast_id, b.batch_no)).collect::<Vec<_>>(), [(payment, 0)]);
    let r = step(&f.store, &cache, 16, NOW + 3);
    assert_eq!(r.batches.iter().map(|b| (b.broadcast_id, b.batch_no)).collect::<Vec<_>>(), [(chat, 0)]);
    assert_eq!(r.batches[0].latency_ms, 2);
    // An urgent writer waiting makes a broadcast step commit after one batch.
    let guard = f.store.db.urgent();
    let r = step(&f.store, &cache, 16, NOW + 3);
    assert_eq!(r.batches.iter().map(|b| (b.broadcast_id, b.batch_no)).collect::<Vec<_>>(), [(bulk, 0)]);
    drop(guard);
    let r = step(&f.store, &cache, 16, NOW + 3);
    assert_eq!((r.jobs, r.delivered, r.completed_broadcasts), (4, 8_000, 1));
    assert_eq!(f.store.delivery_totals(bulk).unwrap(), (10_000, 0));
    for id in [chat, payment] {
        assert_eq!(f.store.delivery_totals(id).unwrap(), (1, 0));
    }
}

fn speed_levels_pace_broadcasts(f: Fixture) {
    let (w, send) = queue_fixture(&f, 10_000);
    // Level 4: 100,000 a minute — a batch of 2,000 every 1.2 s after the first.
    f.store.set_speed_level(w, Some(4), "t", NOW).unwrap();
    assert_eq!(f.store.speed_level(w).unwrap(), Some(4));
    let bulk = send("大促", Priority::Broadcast, NOW);
    let cache = DispatchCache::default();
    let r = step(&f.store, &cache, 16, NOW);
    assert_eq!((r.jobs, r.throttled), (1, 1), "one batch goes, the next waits for tokens");
    // The node skips the throttled workspace for a moment: no churn.
    let r = step(&f.store, &cache, 16, NOW + 10);
    assert_eq!((r.jobs, r.throttled), (0, 0));
    // Urgent traffic of the same workspace is not paced by the speed level.
    let otp = send("验证码", Priority::Transactional, NOW + 20);
    let r = step(&f.store, &cache, 16, NOW + 20);
    assert_eq!(r.batches.iter().map(|b| b.broadcast_id).collect::<Vec<_>>(), vec![otp; 1]);
    // 1.2 s later the next batch goes, and only one.
    let r = step(&f.store, &cache, 16, NOW + 1_200);
    assert_eq!(r.batches.iter().filter(|b| b.broadcast_id == bulk).count(), 1);
    assert_eq!(f.store.broadcast(w, bulk).unwrap().n_delivered, 4_000);
    // A faster level applies to the broadcast in flight at once.
    step(&f.store, &cache, 16, NOW + 1_300);
    f.store.set_speed_level(w, None, "t", NOW + 1_400).unwrap();
    let r = step(&f.store, &DispatchCache::default(), 16, NOW + 1_400);
    assert_eq!((r.jobs, r.completed_broadcasts), (3, 1));
    assert_eq!(f.store.delivery_totals(bulk).unwrap(), (10_000, 0));
}

fn pause_holds_batches_until_resumed(f: Fixture) {
    let (w, send) = queue_fixture(&f, 10_000);
    let bulk = send("大促", Priority::Broadcast, NOW);
    let cache = DispatchCache::default();
    assert_eq!(step(&f.store, &cache, 2, NOW).jobs, 2);
    f.store.pause_broadcast(w, bulk, "t", NOW + 1).unwrap();
    assert_eq!(rejected_code(f.store.pause_broadcast(w, bulk, "t", NOW + 1)), Code::Conflict);
    let b = f.store.broadcast(w, bulk).unwrap();
    assert_eq!((b.state, b.n_delivered, b.paused_at), (BroadcastState::Paused, 4_000, Some(NOW + 1)));
    assert_eq!(step(&f.store, &cache, 16, NOW + 2).jobs, 0, "a paused broadcast sends nothing");
    assert!(matches!(f.store.pause_broadcast(w + 1, bulk, "t", NOW), Err(StoreError::NotFound)));
    f.store.resume_broadcast(w, bulk, "t", NOW + 3).unwrap();
    assert_eq!(rejected_code(f.store.resume_broadcast(w, bulk, "t", NOW + 3)), Code::Conflict);
    let r = step(&f.store, &cache, 16, NOW + 4);
    assert_eq!((r.jobs, r.completed_broadcasts), (3, 1));
    assert_eq!(f.store.delivery_totals(bulk).unwrap(), (10_000, 0));
    let actions: Vec<String> = f.store.audit_entries(w, 0, 1000).unwrap().into_iter().map(|e| e.action).collect();
    assert!(actions.contains(&"broadcast.paused".to_owned()) && actions.contains(&"broadcast.resumed".to_owned()));
}

fn retention_purges_content_and_keeps_records(f: Fixture) {
    let (w, send) = queue_fixture(&f, 10);
    let kept = send("普通通知", Priority::Broadcast, NOW);
    let flash = {
        let new = NewBroadcast { ttl_ms: Some(60_000), ..text_broadcast("阅后即焚", None) };
        let (b, _) = f.store.create_broadcast(w, 1, &new, "t", NOW).unwrap();
        let audience = f.store.resolve_audience(w, &AudienceSpec::All).unwrap();
        let rules = DispatchRules::draft();
        f.store.dispatch(w, b.id, &audience, rules, "t", NOW).unwrap();
        b.id
    };
    assert_eq!(f.store.broadcast(w, flash).unwrap().expires_at, Some(NOW + 60_000));
    step(&f.store, &DispatchCache::default(), 16, NOW);
    f.store.reply(w, 3, kept, "收到", NOW + 5).unwrap();
    // The recipient sees the flash message as gone once its time is up (the
    // test's clock is in the past of the real one), before any purge.
    let inbox = f.store.inbox(w, 3, None, 10).unwrap();
    let seen: Vec<(i64, &str, Option<&str>)> =
        inbox.iter().map(|i| (i.broadcast_id, i.content.content_type.as_str(), i.content.text.as_deref())).collect();
    assert_eq!(seen, [(flash, "purged", None), (kept, "text", Some("普通通知"))]);
    let retention = 72 * 3_600_000;
    assert_eq!(f.store.purge_content(retention, NOW + 30_000).unwrap(), 0);
    // The flash message's content goes when its time is up; the other stays.
    assert_eq!(f.store.purge_content(retention, NOW + 60_000).unwrap(), 1);
    let b = f.store.broadcast(w, flash).unwrap();
    assert_eq!((b.content.content_type.as_str(), b.purged_at), ("purged", Some(NOW + 60_000)));
    assert_eq!(f.store.broadcast(w, kept).unwrap().content.text.as_deref(), Some("普通通知"));
    // After 72 hours the other one goes too; records, counts and the chain stay.
    assert_eq!(f.store.purge_content(retention, NOW + retention).unwrap(), 1);
    let b = f.store.broadcast(w, kept).unwrap();
    assert_eq!((b.content.content_type.as_str(), b.n_delivered, b.n_replied), ("purged", 10, 1));
    assert_eq!(f.store.delivery_totals(kept).unwrap(), (10, 0));
    assert!(f.store.replies(kept, None, 10).unwrap().iter().all(|r| r.text.is_empty()));
    assert!(f.store.audit_verify().unwrap().iter().all(|r| r.result.is_ok()));
    assert_eq!(f.store.purge_content(retention, NOW + 2 * retention).unwrap(), 0, "purged once");
}

fn external_batches_are_leased_and_taken_over(f: Fixture) {
    use qunfa_store::queue::SendOutcome;
    let w = ws(&f, WorkspaceKind::Enterprise);
    let lines: String = (0..3000)
        .map(|i| format!("{{\"external_id\":\"h{i}\",\"name\":\"n{i}\",\"channels\":{{\"webhook\":\"http://127.0.0.1:9/h{i}\"}}}}\n"))
        .collect();
    f.store.import_contacts(w, &Policy::builtin().tiers.enterprise, &contacts(&lines), "t", NOW).unwrap();
    let new = NewBroadcast { channels: vec![Channel::Webhook], ..text_broadcast("你好", None) };
    let (b, _) = f.store.create_broadcast(w, 1, &new, "t", NOW).unwrap();
    let audience = f.store.resolve_audience(w, &AudienceSpec::All).unwrap();
    let rules = DispatchRules::draft();
    f.store.dispatch(w, b.id, &audience, rules, "t", NOW).unwrap();
    let mut policy = Policy::builtin().delivery;
    policy.retry_base_ms = 10_000; // a retry comes 5–10 s later
    let (cache_a, cache_b) = (DispatchCache::default(), DispatchCache::default());
    let claim = |node: &str, cache: &DispatchCache, now: i64| {
        f.store.claim_external(node, &[Channel::Webhook], cache, &policy, 8, 1_000, now).unwrap()
    };
    // The inbox worker leaves external jobs alone.
    assert_eq!(step(&f.store, &DispatchCache::default(), 16, NOW).jobs, 0);
    // Node A claims both batches: every recipient has a queued record at once.
    let a = claim("a", &cache_a, NOW);
    assert_eq!(a.iter().map(|x| x.items.len()).collect::<Vec<_>>(), [2000, 1000]);
    assert_eq!(f.store.delivery_totals(b.id).unwrap(), (3000, 0));
    assert_eq!(a[0].items[5].idempotency_key, format!("qf-{}-5-webhook", b.id));
    assert_eq!(a[0].items[5].address.as_deref(), Some("http://127.0.0.1:9/h5"));
    assert_eq!(a[0].items[5].text.as_deref(), Some("你好"));
    // Leased: nobody else gets them until the lease runs out.
    assert!(claim("b", &cache_b, NOW + 999).is_empty());
    // A finishes the second batch: half delivered, one refused, the rest to retry.
    let outcomes: Vec<(u32, SendOutcome)> = a[1]
        .items
        .iter()
        .map(|i| {
            let o = match i.contact_idx {
                2000 => SendOutcome::Rejected(Code::DeliveryRejected, "HTTP 400: no".into()),
                x if x < 2500 => SendOutcome::Delivered,
                _ => SendOutcome::Retry("HTTP 503".into()),
            };
            (i.contact_idx, o)
        })
        .collect();
    let r = f.store.finish_external("a", &a[1], &outcomes, &policy, NOW + 10).unwrap();
    assert_eq!((r.delivered, r.failed, r.retrying, r.done, r.lease_lost), (499, 1, 500, false, false));
    // A dies before recording the first batch. After the lease B takes it
    // over with the same keys; the retried half of the second comes after its backoff.
    let b1 = claim("b", &cache_b, NOW + 1_001);
    assert_eq!(b1.len(), 1);
    assert_eq!((b1[0].job_id, b1[0].attempt), (a[0].job_id, 2));
    assert_eq!(b1[0].items[5].idempotency_key, a[0].items[5].idempotency_key);
    let all_ok = |batch: &qunfa_store::queue::ExternalBatch| {
        batch.items.iter().map(|i| (i.contact_idx, SendOutcome::Delivered)).collect::<Vec<_>>()
    };
    // A comes back late: what it sent is recorded, the job is B's.
    let late = f.store.finish_external("a", &a[0], &all_ok(&a[0]), &policy, NOW + 1_002).unwrap();
    assert_eq!((late.delivered, late.lease_lost), (2000, true));
    let r = f.store.finish_external("b", &b1[0], &all_ok(&b1[0]), &policy, NOW + 1_003).unwrap();
    assert_eq!((r.delivered, r.done), (0, true), "nothing counted twice");
    let retry = claim("b", &cache_b, NOW + 60_000);
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].items.len(), 500, "only the queued ones are sent again");
    let r = f.store.finish_external("b", &retry[0], &all_ok(&retry[0]), &policy, NOW + 60_001).unwrap();
    assert_eq!((r.delivered, r.done, r.completed), (500, true, true));
    let done = f.store.broadcast(w, b.id).unwrap();
    assert_eq!((done.state, done.n_delivered, done.n_failed), (BroadcastState::Completed, 2999, 1));
    assert_eq!(f.store.delivery_totals(b.id).unwrap(), (3000, 0));
    let failed = f.store.deliveries(b.id, Some(("webhook".into(), 1999)), 1).unwrap();
    assert_eq!((failed[0].state.as_str(), failed[0].error_code.as_deref()), ("failed", Some("QF-DELIVERY-REJECTED")));
}

/// The PostgreSQL server drops every connection (a restart, a failover): the
/// pool replaces the dead ones instead of handing them out forever.
#[test]
fn postgres_pool_recovers_when_connections_die() {
    let db = test_support::postgres();
    let f = open(db);
    let w = ws(&f, WorkspaceKind::Enterprise);
    // Fill the pool.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| f.store.broadcasts(w, None, 10).unwrap());
        }
    });
    let url = match &f._db.location {
        qunfa_store::DbLocation::Postgres(url) => url.clone(),
        _ => unreachable!(),
    };
    let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    assert!(!killed.is_empty());
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The first request meets a connection that died under it (a transient
    // error the engine backs off from); the pool then replaces them all.
    let first = f.store.broadcasts(w, None, 10).unwrap_err();
    assert!(first.is_transient(), "{first}");
    let results: Vec<bool> = (0..5).map(|_| f.store.broadcasts(w, None, 10).is_ok()).collect();
    assert_eq!(results, [true; 5]);
    f.store.create_broadcast(w, 1, &text_broadcast("恢复", None), "t", NOW).unwrap();
}
