//! The evidence bundle of a broadcast: export through the API, offline
//! verification, what tampering is found as, who may export.

use qunfa_store::evidence::{verify_bundle, AudienceCheck, ContentCheck, Problem, Verified};
use serde_json::{json, Value};

use crate::support::{spawn_app, Backend, TestApp};

both_backends!(evidence_bundle_proves_itself, evidence_of_drafts_and_purged_content);

/// Downloads a bundle; checks the answer's headers.
async fn export(app: &TestApp, key: &str, id: &str) -> Vec<u8> {
    let resp = app.http.get(format!("{}/v1/broadcasts/{id}/evidence", app.base)).bearer_auth(key).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| resp.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("content-disposition"), format!("attachment; filename=\"qunfa-evidence-{id}.json\""));
    let sha = header("x-qunfa-bundle-sha256");
    let bytes = resp.bytes().await.unwrap().to_vec();
    let verified = verify_bundle(&bytes).expect("a fresh export verifies");
    assert_eq!(verified.bundle_sha256, sha);
    bytes
}

/// Verifies `bundle` after `change`; the problem it is found as.
fn tampered(bundle: &Value, change: impl FnOnce(&mut Value)) -> Problem {
    let mut b = bundle.clone();
    change(&mut b);
    verify_bundle(&serde_json::to_vec(&b).unwrap()).expect_err("tampering is found")
}

fn entry_index(bundle: &Value, action: &str) -> usize {
    bundle["audit"]["entries"].as_array().unwrap().iter().position(|e| e["action"] == action).unwrap()
}

async fn evidence_bundle_proves_itself(app: TestApp) {
    let (ws, owner) = app.workspace("enterprise").await;
    let (_, sender) = app.member(&owner, "sender").await;
    let (_, reviewer) = app.member(&owner, "reviewer").await;
    let (_, auditor) = app.member(&owner, "auditor").await;
    let mut ids = app.contacts(&owner, 3, &["客户"]).await;
    ids.sort();
    // Held by the content check, approved from the review queue, delivered, reported.
    let id = app.draft(&sender, "新品上市，行业第一品牌，欢迎到店体验", json!({"tag": "客户"})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &sender, json!({})).await.expect(202);
    let queue = app.get("/v1/safety/reviews?state=pending", &reviewer).await.expect(200);
    let rid = queue["reviews"][0]["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/safety/reviews/{rid}/approve"), &reviewer, json!({"reason": "品牌方授权"}))
        .await
        .expect(200);
    app.wait_completed(&sender, &id).await;
    let token = app.post(&format!("/v1/contacts/{}/inbox-token", ids[0]), &owner, json!({})).await.expect(201);
    let token = token["token"].as_str().unwrap();
    app.post(&format!("/v1/inbox/{id}/report"), token, json!({"reason": "spam"})).await.expect(200);

    // Who may export: auditors, admins and owners; not senders or reviewers;
    // another workspace's broadcast is not found.
    let path = format!("/v1/broadcasts/{id}/evidence");
    app.get(&path, &sender).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    app.get(&path, &reviewer).await.expect_error(403, "QF-AUTH-FORBIDDEN");
    let (_, stranger) = app.workspace("enterprise").await;
    app.get(&path, &stranger).await.expect_error(404, "QF-NOT-FOUND");
    app.get("/v1/broadcasts/abc/evidence", &auditor).await.expect_error(404, "QF-NOT-FOUND");
    app.get("/v1/broadcasts/99999/evidence", &auditor).await.expect_error(404, "QF-NOT-FOUND");

    let bytes = export(&app, &auditor, &id).await;
    let v = verify_bundle(&bytes).unwrap();
    let bundle: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(matches!(v.content, ContentCheck::Matches { .. }), "{v:?}");
    assert!(matches!(v.audience, AudienceCheck::Matches { count: 3, .. }), "{v:?}");
    assert_eq!((v.n_deliveries, v.n_reviews, v.n_reports, v.n_approvals), (3, 1, 1, 1));
    assert_eq!(v.broadcast_id.to_string(), id);
    assert_eq!(v.workspace_id.to_string(), ws);
    // What is in it.
    assert_eq!(bundle["format"], "qunfa-evidence/1");
    assert_eq!(
        bundle["content"]["text"], "新品上市，行业第一品牌，欢迎到店体验\n\n来自enterprise ws",
        "with the enterprise signature"
    );
    assert_eq!(bundle["broadcast"]["state"], "completed");
    assert_eq!(bundle["broadcast"]["counts"]["delivered"], 3);
    assert_eq!(bundle["audience"]["contact_ids"], json!(ids));
    assert_eq!(bundle["audience"]["external_ids"], json!(["u0", "u1", "u2"]));
    assert_eq!(bundle["audience"]["count"], 3);
    assert!(bundle["verdicts"].as_array().is_some_and(|v| !v.is_empty()), "{}", bundle["verdicts"]);
    let review = &bundle["reviews"][0];
    assert_eq!((review["state"].as_str(), review["reason"].as_str()), (Some("approved"), Some("品牌方授权")));
    assert_eq!(
        (bundle["reports"][0]["reason"].as_str(), bundle["reports"][0]["contact_id"].as_str()),
        (Some("spam"), Some(ids[0].as_str()))
    );
    let rows = bundle["deliveries"]["rows"].as_array().unwrap();
    assert_eq!(bundle["deliveries"]["columns"], json!(qunfa_store::evidence::DELIVERY_COLUMNS));
    assert!(rows.iter().all(|r| r[0] == "inbox" && r[2] == "delivered" && r.as_array().unwrap().len() == 11));
    let entries = bundle["audit"]["entries"].as_array().unwrap();
    assert_eq!(entries[0]["action"], "broadcast.created");
    for action in ["broadcast.submitted", "broadcast.dispatched", "broadcast.completed", "broadcast.reported"] {
        assert!(entries.iter().any(|e| e["action"] == action), "{action} is in the range");
    }
    assert_eq!(entries.last().unwrap()["seq"], bundle["audit"]["head"]["seq"]);
    assert_eq!(v.head_seq, bundle["audit"]["head"]["seq"].as_i64().unwrap());
    // Reformatting and reordering keys change nothing.
    assert_eq!(verify_bundle(&serde_json::to_vec_pretty(&bundle).unwrap()), Ok(v.clone()));

    // The export is audited after its snapshot, with the bundle's hash; the
    // server's chain still has the head the bundle ends at.
    let audit = app.get("/v1/audit?limit=1000", &auditor).await.expect(200);
    let items = audit["items"].as_array().unwrap();
    let exported = items.last().unwrap();
    assert_eq!(exported["action"], "broadcast.evidence_exported");
    assert_eq!(exported["subject"], format!("broadcast:{id}"));
    assert_eq!(exported["details"]["bundle_sha256"], v.bundle_sha256.as_str());
    assert_eq!(exported["details"]["head_seq"], v.head_seq);
    assert_eq!(exported["seq"], v.head_seq + 1);
    let head = items.iter().find(|e| e["seq"] == v.head_seq).unwrap();
    assert_eq!(head["hash"], v.head_hash.as_str());
    // A second export (by the owner) holds the first one's entry.
    let again = verify_bundle(&export(&app, &owner, &id).await).unwrap();
    assert_eq!(again.head_seq, v.head_seq + 1);

    // Tampering, each found as what it is.
    let p = tampered(&bundle, |b| b["content"]["text"] = json!("改过的内容"));
    assert_eq!(p, Problem::ContentMismatch);
    let p = tampered(&bundle, |b| {
        let changed = b["content_json"].as_str().unwrap().replace("新品", "旧品");
        b["content_json"] = json!(changed);
        b["content"]["text"] = json!("旧品上市，行业第一品牌，欢迎到店体验");
    });
    assert!(matches!(p, Problem::ContentHash { seq, .. } if seq == v.first_seq), "{p}");
    assert!(p.to_string().contains("the content was changed"), "{p}");
    let dispatched = entry_index(&bundle, "broadcast.dispatched");
    let p = tampered(&bundle, |b| {
        let e = &mut b["audit"]["entries"][dispatched];
        e["details"] = json!(e["details"].as_str().unwrap().replace("\"n_recipients\":3", "\"n_recipients\":2"));
    });
    let seq = bundle["audit"]["entries"][dispatched]["seq"].as_i64().unwrap();
    assert_eq!(p, Problem::AuditEntryAltered { seq, action: "broadcast.dispatched".into() });
    // Recomputing the changed entry's hash breaks the next link instead.
    let p = tampered(&bundle, |b| {
        let e = &mut b["audit"]["entries"][dispatched];
        e["actor"] = json!("member:999/key:999");
        let fields = qunfa_core::audit::AuditFields {
            chain: e["chain"].as_i64().unwrap(),
            seq: e["seq"].as_i64().unwrap(),
            at: e["at"].as_i64().unwrap(),
            actor: e["actor"].as_str().unwrap(),
            action: e["action"].as_str().unwrap(),
            subject: e["subject"].as_str().unwrap(),
            details: e["details"].as_str().unwrap(),
        };
        let hash = qunfa_core::audit::entry_hash(e["prev_hash"].as_str().unwrap(), &fields);
        e["hash"] = json!(hash);
    });
    assert_eq!(p, Problem::AuditLinkBroken { seq: seq + 1 });
    let p = tampered(&bundle, |b| {
        b["audit"]["entries"].as_array_mut().unwrap().pop();
    });
    assert!(matches!(p, Problem::AuditHead { .. }), "{p}");
    let p = tampered(&bundle, |b| {
        b["audit"]["entries"].as_array_mut().unwrap().remove(1);
    });
    assert!(matches!(p, Problem::AuditGap { .. }), "{p}");
    // A contact dropped from the audience, with or without a new bitmap.
    let p = tampered(&bundle, |b| {
        let a = &mut b["audience"];
        a["contact_ids"].as_array_mut().unwrap().remove(1);
        a["external_ids"].as_array_mut().unwrap().remove(1);
        a["count"] = json!(2);
    });
    assert!(matches!(&p, Problem::AudienceList(m) if m.contains(&ids[2])), "{p}");
    let p = tampered(&bundle, |b| {
        let a = &mut b["audience"];
        let mut members = qunfa_audience::decode(&hex::decode(a["bitmap"].as_str().unwrap()).unwrap()).unwrap();
        members.remove(members.minimum().unwrap());
        let bitmap = qunfa_audience::encode(&members);
        a["bitmap"] = json!(hex::encode(&bitmap));
        a["sha256"] = json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bitmap)));
        a["contact_ids"].as_array_mut().unwrap().remove(0);
        a["external_ids"].as_array_mut().unwrap().remove(0);
        a["count"] = json!(2);
    });
    assert!(matches!(p, Problem::AudienceHash { .. }), "{p}");
    // What only the bundle's hash covers: the delivery log, reports, reviews.
    let p = tampered(&bundle, |b| b["deliveries"]["rows"][0][2] = json!("failed"));
    assert!(matches!(p, Problem::BundleHash { .. }), "{p}");
    let p = tampered(&bundle, |b| b["reports"] = json!([]));
    assert!(matches!(p, Problem::BundleHash { .. }), "{p}");
    let p = tampered(&bundle, |b| b["deliveries"]["rows"][0][1] = json!("1"));
    assert!(matches!(p, Problem::Deliveries(_)), "{p}");
    let p = tampered(&bundle, |b| b["format"] = json!("qunfa-evidence/9"));
    assert!(matches!(p, Problem::Format(_)), "{p}");
    assert!(matches!(verify_bundle(b"{\"format\": "), Err(Problem::Malformed(_))));
}

async fn evidence_of_drafts_and_purged_content(app: TestApp) {
    let (_, owner) = app.workspace("enterprise").await;
    let mut ids = app.contacts(&owner, 2, &[]).await;
    ids.sort();
    // A draft: content and its chain entries, no audience.
    let draft = app.draft(&owner, "还没发出的草稿", json!({"all": true})).await;
    let v: Verified = verify_bundle(&export(&app, &owner, &draft).await).unwrap();
    assert_eq!((v.audience.clone(), v.n_deliveries), (AudienceCheck::NotDispatched, 0));
    assert!(matches!(v.content, ContentCheck::Matches { .. }));

    // Past retention the content is gone, its hash stays in the chain.
    let id = app.draft(&owner, "会过期的内容", json!({"all": true})).await;
    app.post(&format!("/v1/broadcasts/{id}/send"), &owner, json!({})).await.expect(202);
    app.wait_completed(&owner, &id).await;
    // A contact deleted since keeps its id in the bundle, not its external id.
    app.call(reqwest::Method::DELETE, &format!("/v1/contacts/{}", ids[1]), Some(&owner), None).await.expect(204);
    let store = app.store.clone();
    let purged = tokio::task::spawn_blocking(move || store.purge_content(0, qunfa_store::now_millis() + 1))
        .await
        .unwrap()
        .unwrap();
    assert!(purged >= 1);
    let bytes = export(&app, &owner, &id).await;
    let v = verify_bundle(&bytes).unwrap();
    assert!(matches!(v.content, ContentCheck::Purged { .. }), "{v:?}");
    assert!(matches!(v.audience, AudienceCheck::Matches { count: 2, .. }), "{v:?}");
    let bundle: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(bundle["content"], json!({"type": "purged"}));
    assert_eq!(bundle["audience"]["contact_ids"], json!(ids));
    assert_eq!(bundle["audience"]["external_ids"], json!(["u0", null]));
    // Purged content cannot be replaced by other content.
    let p = tampered(&bundle, |b| {
        b["content_json"] = json!(r#"{"type":"text","text":"别的"}"#);
        b["content"] = json!({"type": "text", "text": "别的"});
    });
    assert!(matches!(p, Problem::PurgedContent { .. }), "{p}");
}
