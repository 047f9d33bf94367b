//! The store's side of the external channels: fallback steps wait for the
//! channel before them and send only where their condition holds; consent is
//! checked per batch; provider receipts and bounces move records and counts
//! exactly once.

use qunfa_audience::AudienceSpec;
use qunfa_core::{
    broadcast::{check_fallback, BroadcastState},
    channel::ChannelSettings,
    contact::Channel,
    Code, Policy,
};
use qunfa_store::{
    broadcasts::{DispatchCache, DispatchRules, NewBroadcast},
    channels::{BounceTarget, Receipt},
    queue::{ExternalBatch, SendOutcome},
};

use super::{contacts, step, text_broadcast, ws, Fixture, NOW};

/// Creates `new` and dispatches it to every contact at `NOW`.
fn send_to_all(f: &Fixture, w: i64, new: &NewBroadcast) -> qunfa_store::broadcasts::BroadcastRecord {
    let (b, _) = f.store.create_broadcast(w, 1, new, "t", NOW).unwrap();
    let audience = f.store.resolve_audience(w, &AudienceSpec::All).unwrap();
    let rules = DispatchRules::draft();
    f.store.dispatch(w, b.id, &audience, rules, "t", NOW).unwrap();
    b
}

fn send_all(batch: &ExternalBatch, outcome: impl Fn(u32) -> SendOutcome) -> Vec<(u32, SendOutcome)> {
    batch.items.iter().map(|i| (i.contact_idx, outcome(i.contact_idx))).collect()
}

/// inbox → email if unread after 1 h → SMS if the email failed after 10 min;
/// email and SMS need consent (the default policy's opt-in channels).
pub fn fallback_and_consent(f: Fixture) {
    let w = ws(&f, qunfa_core::workspace::WorkspaceKind::Enterprise);
    let lines: String = (0..6)
        .map(|i| {
            let consent = match i {
                0 => r#"{"email": true, "sms": true}"#,
                1 => r#"{"email": true, "sms": false}"#,
                2 => r#"{"email": false}"#,
                _ => r#"{"email": true, "sms": true}"#,
            };
            format!(
                "{{\"external_id\":\"c{i}\",\"channels\":{{\"email\":\"c{i}@example.com\",\"phone\":\"+8613800000{i:03}\"}},\"consent\":{consent}}}\n"
            )
        })
        .collect();
    f.store.import_contacts(w, &Policy::builtin().tiers.enterprise, &contacts(&lines), "t", NOW).unwrap();
    let steps = [("email".to_owned(), "unread".to_owned(), 3600), ("sms".to_owned(), "failed".to_owned(), 600)];
    let fallback = check_fallback(&[Channel::Inbox], &steps).unwrap();
    let new = NewBroadcast { fallback, ..text_broadcast("重要通知", None) };
    let b = send_to_all(&f, w, &new);
    let policy = Policy::builtin().delivery;
    let cache = DispatchCache::default();
    let claim = |now: i64| {
        f.store.claim_external("n", &[Channel::Email, Channel::Sms], &cache, &policy, 8, 10_000_000, now).unwrap()
    };

    // Nothing external before its time.
    assert!(claim(NOW + 1_000).is_empty());
    // The inbox goes now; contacts 0 and 3 read it.
    assert_eq!(step(&f.store, &DispatchCache::default(), 16, NOW).delivered, 6);
    for idx in [0, 3] {
        f.store.mark_read(w, idx, b.id, NOW + 10).unwrap();
    }
    // After an hour: email to the four who did not read, less the one who refused email.
    let email = claim(NOW + 3_600_000);
    assert_eq!(email.len(), 1);
    assert_eq!(email[0].channel, Channel::Email);
    let to: Vec<u32> = email[0].items.iter().map(|i| i.contact_idx).collect();
    assert_eq!(to, [1, 4, 5]);
    let s = f.store.broadcast(w, b.id).unwrap();
    assert_eq!((s.n_skipped, s.n_filtered), (2, 1), "readers skipped, the refusal filtered");
    let filtered = f.store.deliveries(b.id, Some(("email".into(), 1)), 1).unwrap();
    assert_eq!((filtered[0].contact_idx, filtered[0].state.as_str()), (2, "filtered"));
    assert_eq!(filtered[0].error_code.as_deref(), Some("QF-UNSUBSCRIBED"));
    // The SMS step is due 10 min later but waits while the email batch is out.
    assert!(claim(NOW + 4_200_000).is_empty());
    // Email: 1 bounces at once (550), 4 and 5 delivered.
    let outcomes = send_all(&email[0], |idx| match idx {
        1 => SendOutcome::Rejected(Code::AddressInvalid, "SMTP 550 user unknown".into()),
        _ => SendOutcome::Delivered,
    });
    let r = f.store.finish_external("n", &email[0], &outcomes, &policy, NOW + 3_600_100).unwrap();
    assert_eq!((r.delivered, r.failed, r.done), (2, 1, true));
    // A later bounce of 5 (by Message-ID) turns its delivery into a failure.
    let (bid, idx) = f
        .store
        .record_bounce(
            w,
            BounceTarget::MessageId(&format!("<qf-{}-5-email@example.com>", b.id)),
            true,
            "550 5.1.1",
            NOW + 3_700_000,
        )
        .unwrap();
    assert_eq!((bid, idx), (b.id, 5));
    assert!(f.store.record_bounce(w, BounceTarget::MessageId("<qf-999-5-email@x>"), true, "x", NOW).is_err());
    // The same bounce reported again (providers resend DSNs) changes nothing.
    f.store
        .record_bounce(
            w,
            BounceTarget::MessageId(&format!("<qf-{}-5-email@example.com>", b.id)),
            true,
            "again",
            NOW + 3_700_001,
        )
        .unwrap();
    let s = f.store.broadcast(w, b.id).unwrap();
    assert_eq!((s.n_delivered, s.n_failed), (6 + 1, 2), "6 inbox + contact 4; contacts 1 and 5 failed");
    // The SMS step (re-checked) goes to the email failures 1 and 5 and the
    // filtered 2 — of whom 1 refused SMS and 2 gave no SMS consent.
    let sms = claim(NOW + 4_300_000);
    assert_eq!(sms.len(), 1);
    let to: Vec<u32> = sms[0].items.iter().map(|i| i.contact_idx).collect();
    assert_eq!(to, [5]);
    let missing = f.store.deliveries(b.id, Some(("sms".into(), 1)), 2).unwrap();
    let codes: Vec<(u32, Option<&str>)> = missing.iter().map(|d| (d.contact_idx, d.error_code.as_deref())).collect();
    assert_eq!(codes, [(2, Some("QF-CONSENT-MISSING")), (3, None)]);
    // Accepted by the provider: `sent` until the receipt.
    let r = f
        .store
        .finish_external(
            "n",
            &sms[0],
            &send_all(&sms[0], |_| SendOutcome::Accepted("prov-5".into())),
            &policy,
            NOW + 4_300_100,
        )
        .unwrap();
    assert_eq!((r.sent, r.done, r.completed), (1, true, true));
    let s = f.store.broadcast(w, b.id).unwrap();
    assert_eq!(s.n_sent, 1);
    let receipt = |id: &str, ok: bool| Receipt { provider_id: id.into(), out_id: None, delivered: ok, error: None };
    let r = f
        .store
        .record_receipts(w, Channel::Sms, &[receipt("prov-5", true), receipt("unknown", true)], NOW + 4_400_000)
        .unwrap();
    assert_eq!((r.delivered, r.ignored), (1, 1));
    // A receipt can come before its batch was recorded: found by its key.
    // (Contact 4's email is `delivered` already: a stray SMS key for it is ignored.)
    let early = Receipt {
        provider_id: "prov-x".into(),
        out_id: Some(format!("qf-{}-4-sms", b.id)),
        delivered: true,
        error: None,
    };
    let r = f.store.record_receipts(w, Channel::Sms, &[early], NOW + 4_399_999).unwrap();
    assert_eq!(r.ignored, 1, "contact 4 has a skipped SMS record, not a queued one");
    // A repeated (or contradicting) receipt changes nothing.
    let r = f.store.record_receipts(w, Channel::Sms, &[receipt("prov-5", false)], NOW + 4_400_001).unwrap();
    assert_eq!((r.delivered, r.failed, r.ignored), (0, 0, 1));
    let s = f.store.broadcast(w, b.id).unwrap();
    assert_eq!((s.state, s.n_sent, s.n_delivered, s.n_failed), (BroadcastState::Completed, 0, 8, 2));
    // 6 recipients × 3 channels = 18 records, every one accounted for.
    assert_eq!(s.n_delivered + s.n_failed + s.n_filtered + s.n_skipped + s.n_sent, 18, "{s:?}");
    // The hard bounce opted 5 out of email.
    let opt = f.store.opt_outs_of(w, 5).unwrap();
    assert!(opt.iter().any(|(c, r)| *c == Channel::Email && r.as_str() == "bounced"), "{opt:?}");
}

/// A workspace's per-channel limit paces its batches, on top of the server's.
pub fn workspace_channel_rate(f: Fixture) {
    let w = ws(&f, qunfa_core::workspace::WorkspaceKind::Enterprise);
    let lines: String = (0..3000)
        .map(|i| format!("{{\"external_id\":\"h{i}\",\"channels\":{{\"webhook\":\"http://127.0.0.1:9/h{i}\"}}}}\n"))
        .collect();
    f.store.import_contacts(w, &Policy::builtin().tiers.enterprise, &contacts(&lines), "t", NOW).unwrap();
    let settings = ChannelSettings::parse(
        Channel::Webhook,
        &serde_json::json!({"secret": "0123456789abcdef0123", "per_minute": 2000}),
        None,
        &mut String::new,
    )
    .unwrap();
    f.store.set_channel_settings(w, &settings, "t", NOW).unwrap();
    let new = NewBroadcast { channels: vec![Channel::Webhook], ..text_broadcast("你好", None) };
    send_to_all(&f, w, &new);
    let policy = Policy::builtin().delivery;
    let cache = DispatchCache::default();
    // A bucket holds one second of the rate, at least one batch: the first
    // batch of 2,000 goes, the second waits for tokens.
    let first = f.store.claim_external("n", &[Channel::Webhook], &cache, &policy, 8, 60_000, NOW).unwrap();
    assert_eq!(first.len(), 1);
    assert!(first[0].settings.is_some(), "the batch carries the workspace's settings");
    let later = f
        .store
        .claim_external("n", &[Channel::Webhook], &DispatchCache::default(), &policy, 8, 60_000, NOW + 1_000)
        .unwrap();
    assert!(later.is_empty(), "1,000 more need 30 s at 2,000/min");
    let later = f
        .store
        .claim_external("n", &[Channel::Webhook], &DispatchCache::default(), &policy, 8, 60_000, NOW + 31_000)
        .unwrap();
    assert_eq!(later.len(), 1);
    f.store
        .finish_external("n", &later[0], &send_all(&later[0], |_| SendOutcome::Delivered), &policy, NOW + 31_001)
        .unwrap();

    // The receiver is down (an open circuit): deferring, again and again,
    // uses no attempt — an outage does not make dead letters.
    let mut batch = first.into_iter().next().unwrap();
    for round in 0..(policy.max_attempts as i64 + 3) {
        let at = NOW + 40_000 + round * 120_000;
        let until = at + 60_000;
        let outcomes = send_all(&batch, |_| SendOutcome::Deferred { until, reason: "circuit open for host h".into() });
        let r = f.store.finish_external("n", &batch, &outcomes, &policy, at).unwrap();
        assert!(r.deferred && !r.dead && !r.done, "{r:?}");
        assert!(f
            .store
            .claim_external("n", &[Channel::Webhook], &DispatchCache::default(), &policy, 8, 60_000, until - 1)
            .unwrap()
            .is_empty());
        let again = f
            .store
            .claim_external("n", &[Channel::Webhook], &DispatchCache::default(), &policy, 8, 60_000, until)
            .unwrap();
        assert_eq!(again.len(), 1, "round {round}");
        assert_eq!(again[0].attempt, 1, "no attempt used");
        batch = again.into_iter().next().unwrap();
    }
    let r = f
        .store
        .finish_external("n", &batch, &send_all(&batch, |_| SendOutcome::Delivered), &policy, NOW + 2_000_000)
        .unwrap();
    assert_eq!((r.delivered, r.done, r.completed), (2000, true, true));
}

/// A provider's receipt that beats the record of its own batch (a fast
/// provider, a long batch) is applied from `queued`, found by its key; the
/// batch's later record then changes nothing, and nothing is counted twice.
pub fn early_receipts(f: Fixture) {
    let w = ws(&f, qunfa_core::workspace::WorkspaceKind::Enterprise);
    let lines: String = (0..3)
        .map(|i| format!("{{\"external_id\":\"p{i}\",\"channels\":{{\"phone\":\"+861380000000{i}\"}},\"consent\":{{\"sms\":true}}}}\n"))
        .collect();
    f.store.import_contacts(w, &Policy::builtin().tiers.enterprise, &contacts(&lines), "t", NOW).unwrap();
    let new = NewBroadcast { channels: vec![Channel::Sms], ..text_broadcast("验证码 1234", None) };
    let b = send_to_all(&f, w, &new);
    let policy = Policy::builtin().delivery;
    let batch =
        f.store.claim_external("n", &[Channel::Sms], &DispatchCache::default(), &policy, 8, 60_000, NOW).unwrap();
    let batch = &batch[0];
    let key = |idx: u32| Some(format!("qf-{}-{idx}-sms", b.id));
    let receipts = [
        Receipt { provider_id: "m0".into(), out_id: key(0), delivered: true, error: None },
        Receipt { provider_id: "m1".into(), out_id: key(1), delivered: false, error: Some("UNDELIVERABLE".into()) },
        Receipt { provider_id: "m9".into(), out_id: Some("qf-999999-0-sms".into()), delivered: true, error: None },
    ];
    let r = f.store.record_receipts(w, Channel::Sms, &receipts, NOW + 5).unwrap();
    assert_eq!((r.delivered, r.failed, r.ignored), (1, 1, 1));
    // A slow send renews its lease; a stale claim cannot renew or finish as owner.
    let mut batch = batch.clone();
    assert_eq!(f.store.renew_lease("other", batch.job_id, batch.lease_until, NOW + 120_000).unwrap(), None);
    let renewed = f.store.renew_lease("n", batch.job_id, batch.lease_until, NOW + 120_000).unwrap();
    assert_eq!(renewed, Some(NOW + 120_000));
    assert!(f
        .store
        .claim_external("m", &[Channel::Sms], &DispatchCache::default(), &policy, 8, 60_000, NOW + 90_000)
        .unwrap()
        .is_empty());
    assert_eq!(f.store.renew_lease("n", batch.job_id, batch.lease_until, NOW + 130_000).unwrap(), None, "stale expiry");
    batch.lease_until = NOW + 120_000;
    let batch = &batch;
    let outcomes = send_all(batch, |idx| SendOutcome::Accepted(format!("m{idx}")));
    let r = f.store.finish_external("n", batch, &outcomes, &policy, NOW + 10).unwrap();
    assert_eq!((r.sent, r.done, r.completed), (1, true, true), "only contact 2 still awaits its receipt");
    let s = f.store.broadcast(w, b.id).unwrap();
    assert_eq!((s.n_delivered, s.n_failed, s.n_sent), (1, 1, 1));
    let r = f
        .store
        .record_receipts(
            w,
            Channel::Sms,
            &[Receipt { provider_id: "m2".into(), out_id: key(2), delivered: true, error: None }],
            NOW + 20,
        )
        .unwrap();
    assert_eq!(r.delivered, 1);
    let s = f.store.broadcast(w, b.id).unwrap();
    assert_eq!((s.n_delivered, s.n_failed, s.n_sent), (2, 1, 0));
}
