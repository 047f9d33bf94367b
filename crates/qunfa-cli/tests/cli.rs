//! The `qunfa` binary end to end: a real server process on a free port, driven
//! by the client commands, stopped with SIGTERM, then audited offline.

mod common;

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{free_port, qunfa, run, text, Server};

const ADMIN: &str = "qfa_cli_test_token";

/// The id of a contact in Shanghai, from the sample `audience count` prints.
fn first_contact(c: &dyn Fn(&[&str]) -> Output) -> String {
    let o = c(&["audience", "count", "city = 上海"]);
    let out = text(&o);
    out.split_whitespace().find(|w| w.chars().all(|ch| ch.is_ascii_digit()) && w.len() > 6).expect("an id").to_owned()
}

#[test]
fn serve_import_send_explain_audit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    // Random human review is off: the sends below must not be held by chance.
    // A recall window of a day: the recall below must not depend on timing.
    std::fs::write(
        d.join("policy.toml"),
        "[safety]\nreview_sample_base = 0.0\nreview_sample_per_risk = 0.0\n[tiers.personal]\nnew_account_days = 0\nrecall_seconds = 86400\n",
    )
    .unwrap();
    let mut server = Server(
        qunfa(
            d,
            &["serve", "--listen", &listen, "--data-dir", "data", "--admin-token", ADMIN, "--policy", "policy.toml"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let o = run(
        d,
        &[
            "workspace",
            "create",
            "--name",
            "测试个人号",
            "--kind",
            "personal",
            "--server",
            &url,
            "--admin-token",
            ADMIN,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let key = out.split_whitespace().find(|w| w.starts_with("qf_")).expect("a key is printed").to_owned();
    let c = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &url, "--api-key", &key]);
        run(d, &all)
    };

    // A file with a broken line imports nothing and names the line.
    std::fs::write(d.join("bad.csv"), "external_id,name,tags,city\na,甲,同事,上海\nb,乙,同事,北京,extra\n").unwrap();
    let o = c(&["contacts", "import", "bad.csv"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("line 3"), "{}", text(&o));
    std::fs::write(d.join("ok.csv"), "external_id,name,tags,city\na,甲,同事,上海\nb,乙,同事,北京\nc,丙,家人,广州\n")
        .unwrap();
    let o = c(&["contacts", "import", "ok.csv", "--chunk", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("imported 3 new contacts"), "{}", text(&o));

    // Dry run: preflight only.
    let o = c(&["send", "--text", "{{name}}，周末聚餐", "--tag", "同事", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 recipients") && text(&o).contains("may be sent"), "{}", text(&o));
    // Combining tags is refused for a personal account, with every reason.
    let o = c(&["send", "--text", "hi", "--tag", "同事", "--tag", "家人", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("QF-AUDIENCE-COMBINATION") && text(&o).contains("fix:"), "{}", text(&o));
    let o = c(&["send", "--text", "hi", "--tag", "同事", "--tag", "家人"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("was not sent"), "{}", text(&o));

    // Audience expressions: a count, and an error shown under the expression.
    let o = c(&["audience", "count", "tag:同事 & city = 上海"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).starts_with("1 contacts"), "{}", text(&o));
    let o = c(&["audience", "count", "tag:同 & city = 上海"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("QF-AUDIENCE-UNKNOWN-TAG") && text(&o).contains("\"同事\""), "{}", text(&o));
    assert!(text(&o).contains("\n      ^"), "a caret under the tag name: {}", text(&o));
    let o = c(&["send", "--text", "hi", "--expr", "tag:同事 & city = 上海", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("QF-AUDIENCE-COMBINATION"), "{}", text(&o));
    // Segments, bulk tagging and the tag report.
    let o = c(&["audience", "save", "上海同事", "tag:同事 & city = 上海"]);
    assert!(o.status.success() && text(&o).contains("1 contacts now"), "{}", text(&o));
    let o = c(&["audience", "segments"]);
    assert!(text(&o).contains("上海同事") && text(&o).contains("tag:同事 & city = 上海"), "{}", text(&o));
    let o = c(&["audience", "tag", "家人", "city = 北京"]);
    assert!(o.status.success() && text(&o).contains("1 contacts added to 家人"), "{}", text(&o));
    let o = c(&["audience", "tag", "家人", "city = 北京", "--remove"]);
    assert!(o.status.success() && text(&o).contains("1 contacts removed from 家人"), "{}", text(&o));
    let o = c(&["audience", "report"]);
    assert!(o.status.success() && text(&o).contains("同事") && text(&o).contains("0 dormant"), "{}", text(&o));

    // A real send, waited for, then explained.
    let o = c(&["send", "--text", "{{name}}，周末聚餐", "--all", "--wait"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("completed — delivered 3"), "{}", text(&o));
    let id = text(&o).split_whitespace().nth(1).unwrap().trim_end_matches(':').to_owned();
    let o = c(&["explain", &id]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("completed") && text(&o).contains("delivered 3"), "{}", text(&o));
    // Broadcast controls: nothing failed, so nothing to re-drive; a completed one cannot pause.
    let o = c(&["broadcast", "retry-failed", &id]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("QF-STATE-CONFLICT") && text(&o).contains("no failed deliveries"), "{}", text(&o));
    let o = c(&["broadcast", "pause", &id]);
    assert!(text(&o).contains("only a sending broadcast can be paused; it is completed"), "{}", text(&o));
    let o = c(&["broadcast", "watch", &id]);
    assert!(o.status.success() && text(&o).contains("completed — delivered 3"), "{}", text(&o));
    // A correction notice to the same recipients, then a recall (once).
    let o = c(&["broadcast", "correct", &id, "--text", "更正：改到周日聚餐", "--wait"]);
    assert!(o.status.success() && text(&o).contains(&format!("of broadcast {id}")), "{}", text(&o));
    assert!(text(&o).contains("3 recipients") && text(&o).contains("completed — delivered 3"), "{}", text(&o));
    let o = c(&["broadcast", "recall", &id]);
    assert!(o.status.success() && text(&o).contains("3 inbox message(s) now show as recalled"), "{}", text(&o));
    let o = c(&["broadcast", "recall", &id]);
    assert!(!o.status.success() && text(&o).contains("QF-STATE-CONFLICT"), "{}", text(&o));
    // Speed levels.
    let o = c(&["speed"]);
    assert!(o.status.success() && text(&o).contains("unthrottled"), "{}", text(&o));
    let o = c(&["speed", "2"]);
    assert!(o.status.success() && text(&o).contains("speed level 2: 450000 recipients per minute"), "{}", text(&o));
    let o = c(&["speed", "9"]);
    assert!(!o.status.success() && text(&o).contains("QF-BAD-REQUEST"), "{}", text(&o));
    let o = c(&["speed", "off"]);
    assert!(o.status.success() && text(&o).contains("unthrottled"), "{}", text(&o));
    // An urgent flash message.
    let o = c(&[
        "send",
        "--text",
        "验证码 1234",
        "--contact",
        &first_contact(&c),
        "--priority",
        "transactional",
        "--ttl",
        "60",
        "--wait",
    ]);
    assert!(o.status.success() && text(&o).contains("completed — delivered 1"), "{}", text(&o));

    // Content safety: the check names the word and its place; a blocked
    // text exits with 3; a held send shows up in the review queue.
    let o = c(&["safety", "check", "招聘兼职刷*單，日结"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("block") && text(&o).contains("刷单") && text(&o).contains("刷*單"), "{}", text(&o));
    let o = c(&["safety", "info"]);
    assert!(o.status.success() && text(&o).contains("fraud"), "{}", text(&o));
    let o = c(&["safety", "reviews"]);
    assert!(o.status.success() && text(&o).contains("no pending reviews"), "{}", text(&o));
    let o = run(d, &["safety", "reload", "--server", &url, "--admin-token", ADMIN]);
    assert!(o.status.success() && text(&o).contains("reloaded"), "{}", text(&o));

    // SIGTERM stops the server cleanly.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.0.wait().unwrap();
    assert!(status.success(), "server exit: {status:?}");

    // The audit chain verifies offline, and detects a changed entry.
    let o = run(d, &["audit", "verify", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("chains verified"), "{}", text(&o));
    let db = rusqlite::Connection::open(d.join("data/qunfa.db")).unwrap();
    db.execute("UPDATE audit_log SET details = '{\"imported\":999}' WHERE action = 'contacts.imported'", []).unwrap();
    drop(db);
    let o = run(d, &["audit", "verify", "--data-dir", "data"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("BROKEN"), "{}", text(&o));
}

#[test]
fn bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("qunfa.toml"), "listn = \"x\"\n").unwrap();
    let o = run(dir.path(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("invalid configuration"), "{}", text(&o));
}

#[test]
fn safety_lint_and_train_offline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("words")).unwrap();
    std::fs::write(d.join("words/spam.txt"), "出\n新闻\n刷单返利\n").unwrap();
    std::fs::write(d.join("reference.txt"), "今日新闻\n新闻联播\n普通的一句话\n").unwrap();
    let o = run(d, &["safety", "lint", "--lexicon", "words", "--reference", "reference.txt", "--apply"]);
    assert!(o.status.success(), "{}", text(&o));
    let lint = std::fs::read_to_string(d.join("words/lint.tsv")).unwrap();
    assert!(lint.contains("出\tdrop\t") && lint.contains("新闻\tdrop\t") && !lint.contains("刷单返利"), "{lint}");
    let o = run(d, &["safety", "lint", "--lexicon", "nowhere", "--reference", "reference.txt"]);
    assert!(!o.status.success() && text(&o).contains("nowhere"), "{}", text(&o));

    // Training on the shipped examples prints the held-out evaluation and writes a model.
    let o = run(d, &["safety", "train", "--out", "model.qfrm"]);
    assert!(o.status.success() && text(&o).contains("held out: precision"), "{}", text(&o));
    assert!(std::fs::read(d.join("model.qfrm")).unwrap().starts_with(b"QFRM"));
    std::fs::write(d.join("bad.jsonl"), "{\"text\": \"x\", \"label\": \"maybe\"}\n").unwrap();
    let o = run(d, &["safety", "train", "--data", "bad.jsonl"]);
    assert!(!o.status.success() && text(&o).contains("line 1"), "{}", text(&o));
}
