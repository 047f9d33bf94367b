//! `qunfa evidence` end to end: a real server process, a delivered send, the
//! bundle downloaded by the client command and verified offline, then changed.

mod common;

use common::{run, serve, text};

const ADMIN: &str = "qfa_cli_evidence_token";

#[test]
fn export_and_verify_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_server, url) = serve(
        d,
        ADMIN,
        "[safety]\nreview_sample_base = 0.0\nreview_sample_per_risk = 0.0\n[tiers.personal]\nnew_account_days = 0\n",
    );
    let o = run(
        d,
        &["workspace", "create", "--name", "证据", "--kind", "personal", "--server", &url, "--admin-token", ADMIN],
    );
    assert!(o.status.success(), "{}", text(&o));
    let key = text(&o).split_whitespace().find(|w| w.starts_with("qf_")).expect("a key").to_owned();
    let c = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &url, "--api-key", &key]);
        run(d, &all)
    };
    std::fs::write(d.join("c.csv"), "external_id,name,tags\na,甲,同事\nb,乙,同事\n").unwrap();
    assert!(c(&["contacts", "import", "c.csv"]).status.success());
    let o = c(&["send", "--text", "周五下午三点开会", "--tag", "同事", "--wait"]);
    assert!(o.status.success() && text(&o).contains("delivered 2"), "{}", text(&o));
    let id = text(&o).split_whitespace().nth(1).unwrap().trim_end_matches(':').to_owned();

    // Download (the owner may): written under the default name, checked at once.
    let o = c(&["evidence", &id]);
    assert!(o.status.success(), "{}", text(&o));
    let file = format!("qunfa-evidence-{id}.json");
    assert!(text(&o).contains(&format!("wrote {file}")), "{}", text(&o));
    assert!(text(&o).contains("2 recipients") && text(&o).contains("2 records"), "{}", text(&o));
    let o = c(&["evidence", &id, "--out", "copy.json"]);
    assert!(o.status.success() && d.join("copy.json").exists(), "{}", text(&o));

    // Offline: no server, no key.
    let o = run(d, &["evidence", "verify", &file]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).starts_with(&format!("OK {file}")) && text(&o).contains("every hash and link verified"),
        "{}",
        text(&o)
    );
    let bundle = std::fs::read_to_string(d.join(&file)).unwrap();
    std::fs::write(d.join("changed.json"), bundle.replace("周五下午三点开会", "周六下午三点开会")).unwrap();
    let o = run(d, &["evidence", "verify", "changed.json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAILED changed.json: the content was changed"), "{}", text(&o));
    let o = run(d, &["evidence", "verify", "missing.json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot read missing.json"), "{}", text(&o));
    // A key of another workspace finds nothing.
    let o = c(&["evidence", "999999"]);
    assert!(!o.status.success() && text(&o).contains("QF-NOT-FOUND"), "{}", text(&o));
}
