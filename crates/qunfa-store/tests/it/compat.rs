//! The WeChat-compatible API's rows: a draft is created with its
//! `compat_sends` row in one transaction, a duplicate key is held by one
//! send at a time (racing identical requests make one broadcast), a refused
//! draft gives its clientmsgid up, and a callback's outcome is recorded only
//! under the lease its claim holds.

use qunfa_audience::AudienceSpec;
use qunfa_store::{
    broadcasts::DispatchRules,
    compat::{CompatDraft, NewCompatSend},
};

use super::{run_until_idle, text_broadcast, ws, Fixture, NOW};
use qunfa_core::{workspace::WorkspaceKind, Policy};

fn send<'a>(dup: Option<(&'a str, i64)>, callback: bool) -> NewCompatSend<'a> {
    NewCompatSend { kind: "wecom", dup, sender: None, callback }
}

pub fn compat_sends_are_reserved_with_their_draft(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    let key = Some(("wecom:k", NOW - 1_000));
    let first = match f.store.create_compat_broadcast(w, 1, &text_broadcast("a", None), &send(key, false), "t", NOW) {
        Ok(CompatDraft::Created(b)) => b,
        other => panic!("{other:?}"),
    };
    assert!(f.store.compat_send(w, first.id).unwrap().is_some(), "the row is written with the draft");
    // Within the interval: the first send.
    match f.store.create_compat_broadcast(w, 1, &text_broadcast("a", None), &send(key, false), "t", NOW + 10) {
        Ok(CompatDraft::Duplicate(b)) => assert_eq!(b.id, first.id),
        other => panic!("{other:?}"),
    }
    // Racing identical requests: one draft.
    let store = &f.store;
    let later = Some(("wecom:race", NOW));
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(move || {
                    store.create_compat_broadcast(w, 1, &text_broadcast("b", None), &send(later, false), "t", NOW + 20)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    let created: Vec<i64> =
        outcomes.iter().filter_map(|o| if let CompatDraft::Created(b) = o { Some(b.id) } else { None }).collect();
    assert_eq!(created.len(), 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, CompatDraft::Created(b) | CompatDraft::Duplicate(b) if b.id == created[0])));
    // After the interval the key moves to a new send.
    let since = NOW + 5_000;
    match f.store.create_compat_broadcast(
        w,
        1,
        &text_broadcast("a", None),
        &send(Some(("wecom:k", since)), false),
        "t",
        NOW + 6_000,
    ) {
        Ok(CompatDraft::Created(b)) => assert_ne!(b.id, first.id),
        other => panic!("{other:?}"),
    }
    // A draft (never sent) gives its clientmsgid up to other content; the same content finds it.
    let held =
        match f.store.create_compat_broadcast(w, 1, &text_broadcast("c", Some("cid")), &send(None, false), "t", NOW) {
            Ok(CompatDraft::Created(b)) => b,
            other => panic!("{other:?}"),
        };
    match f.store.create_compat_broadcast(w, 1, &text_broadcast("c", Some("cid")), &send(None, false), "t", NOW) {
        Ok(CompatDraft::SameClientMsgId(b)) => assert_eq!(b.id, held.id),
        other => panic!("{other:?}"),
    }
    match f.store.create_compat_broadcast(w, 1, &text_broadcast("c2", Some("cid")), &send(None, false), "t", NOW) {
        Ok(CompatDraft::Created(b)) => assert_ne!(b.id, held.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.store.broadcast(w, held.id).unwrap().client_msg_id, None);
    // A /v1 draft keeps its client_msg_id: the compatible request is refused for it.
    let (v1, _) = f.store.create_broadcast(w, 1, &text_broadcast("v1", Some("v1-cid")), "t", NOW).unwrap();
    let taken =
        f.store.create_compat_broadcast(w, 1, &text_broadcast("c3", Some("v1-cid")), &send(None, false), "t", NOW);
    assert_eq!(super::rejected_code(taken), qunfa_core::Code::DuplicateClientMsgId);
    assert_eq!(f.store.broadcast(w, v1.id).unwrap().client_msg_id.as_deref(), Some("v1-cid"));
}

pub fn compat_callbacks_are_finished_under_their_lease(f: Fixture) {
    let w = ws(&f, WorkspaceKind::Enterprise);
    let tier = Policy::builtin().tiers.enterprise;
    f.store.import_contacts(w, &tier, &super::many(3, "x"), "t", NOW).unwrap();
    let b = match f.store.create_compat_broadcast(w, 1, &text_broadcast("a", None), &send(None, true), "t", NOW) {
        Ok(CompatDraft::Created(b)) => b,
        other => panic!("{other:?}"),
    };
    assert!(f.store.claim_compat_callbacks(NOW, 60_000, 8).unwrap().is_empty(), "not before it finished");
    let audience = f.store.resolve_audience(w, &AudienceSpec::All).unwrap();
    f.store.dispatch(w, b.id, &audience, DispatchRules::draft(), "t", NOW).unwrap();
    run_until_idle(&f.store);
    let t = NOW + 10_000;
    let first = f.store.claim_compat_callbacks(t, 60_000, 8).unwrap();
    assert_eq!(first.len(), 1);
    assert!(f.store.claim_compat_callbacks(t + 59_000, 60_000, 8).unwrap().is_empty(), "leased");
    // The lease ran out: another node takes it over; the first claim's outcome is not recorded.
    let second = f.store.claim_compat_callbacks(t + 61_000, 60_000, 8).unwrap();
    assert_eq!(second.len(), 1);
    assert!(!f.store.finish_compat_callback(&first[0], "done", t + 62_000, None).unwrap());
    assert_eq!(f.store.compat_callback_state(b.id).unwrap(), Some(("pending".to_owned(), 0)));
    assert!(f.store.finish_compat_callback(&second[0], "done", t + 62_000, None).unwrap());
    assert_eq!(f.store.compat_callback_state(b.id).unwrap(), Some(("done".to_owned(), 1)));
    assert!(f.store.claim_compat_callbacks(t + 999_000, 60_000, 8).unwrap().is_empty());
}
