//! The email channel against a real SMTP server on loopback
//! (`qunfa_testkit::smtp::SmtpSink`): what arrives (envelope, headers, both
//! bodies, parsed as MIME), and the outcome of each way a server can refuse.

use std::{sync::Arc, time::Duration};

use qunfa_core::{
    channel::{ChannelSettings, EmailSettings, SettingsKind, SmtpSecurity},
    contact::Channel,
    Code,
};
use qunfa_engine::email::EmailSender;
use qunfa_store::queue::{ExternalBatch, Outgoing, SendOutcome};
use qunfa_testkit::smtp::{RcptRejection, Refusal, SmtpSink};

const BROADCAST: i64 = 7;
const WAIT: Duration = Duration::from_secs(10);

fn settings(port: u16, pool_size: u32) -> EmailSettings {
    EmailSettings {
        allow_private_networks: true,
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        username: None,
        password: None,
        from: "群发通知 <notice@qunfa.example>".into(),
        reply_to: Some("support@qunfa.example".into()),
        timeout_ms: 2_000,
        pool_size,
    }
}

fn item(idx: u32, address: Option<&str>, name: &str, text: &str) -> Outgoing {
    let mut o = Outgoing::new(BROADCAST, Channel::Email, idx, address.map(str::to_owned), Some(text.to_owned()));
    o.name = name.to_owned();
    o
}

fn batch(content: serde_json::Value, settings: &EmailSettings, items: Vec<Outgoing>) -> ExternalBatch {
    let channel_settings = ChannelSettings { per_minute: None, kind: SettingsKind::Email(settings.clone()) };
    ExternalBatch::synthetic(BROADCAST, 1, Channel::Email, content.to_string(), Some(Arc::new(channel_settings)), items)
}

fn text_batch(settings: &EmailSettings, items: Vec<Outgoing>) -> ExternalBatch {
    batch(serde_json::json!({"type": "text", "text": "{{name}}，您好"}), settings, items)
}

/// `n` recipients `u{i}@example.com`, contact indexes 1..=n.
fn recipients(n: u32) -> Vec<Outgoing> {
    (1..=n).map(|i| item(i, Some(&format!("u{i}@example.com")), &format!("用户{i}"), &format!("第{i}条消息"))).collect()
}

async fn send(sender: &EmailSender, b: &ExternalBatch, s: &EmailSettings) -> Vec<(u32, SendOutcome)> {
    tokio::time::timeout(Duration::from_secs(30), sender.send(b, s)).await.expect("the send finished")
}

fn outcome(outcomes: &[(u32, SendOutcome)], idx: u32) -> &SendOutcome {
    &outcomes.iter().find(|(i, _)| *i == idx).expect("an outcome for every message").1
}

fn assert_all_delivered(outcomes: &[(u32, SendOutcome)]) {
    for (idx, o) in outcomes {
        assert_eq!(o, &SendOutcome::Delivered, "contact {idx}");
    }
}

#[tokio::test]
async fn personal_messages_arrive_with_headers_and_both_bodies() {
    let sink = SmtpSink::start().await;
    let s = settings(sink.port(), 2);
    let mut items = vec![
        item(1, Some("zhang@example.com"), "张三", "张三，您好！\n本周六 <上午> 10 点开会 & 聚餐。\n\n请准时参加。"),
        item(2, Some("li@example.com"), "李四", "李四，您好！\n本周六 <上午> 10 点开会 & 聚餐。\n\n请准时参加。"),
        item(3, Some("wang@example.com"), "", "Hello Wang"),
    ];
    items[0].unsubscribe_url = Some("https://qunfa.example/u/1/1/email/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0BBQkNERUZHSElKS0xNTk9Q".into());
    items[1].unsubscribe_url = Some("https://qunfa.example/u/1/2/email/tok2".into());
    let b = text_batch(&s, items);
    let sender = EmailSender::new();
    let outcomes = send(&sender, &b, &s).await;
    assert_eq!(outcomes.len(), 3);
    assert_all_delivered(&outcomes);

    let mut received = sink.wait_for(3, WAIT).await;
    received.sort_by(|a, b| a.rcpt_to.cmp(&b.rcpt_to));
    let rcpts: Vec<_> = received.iter().map(|r| r.rcpt_to.clone()).collect();
    assert_eq!(rcpts, [vec!["li@example.com"], vec!["wang@example.com"], vec!["zhang@example.com"]]);
    assert!(received.iter().all(|r| r.mail_from == "notice@qunfa.example" && r.auth.is_none()));
    assert!(sink.connections() <= 2, "{} connections for a pool of 2", sink.connections());

    let zhang = &received[2];
    // Headers are 7-bit on the wire: the Chinese subject and names are RFC 2047 words.
    let raw_subject = zhang.raw_header("Subject").expect("a subject");
    assert!(raw_subject.is_ascii() && raw_subject.contains("=?utf-8?"), "{raw_subject}");
    let mail = zhang.parse();
    assert_eq!(mail.subject(), Some("张三，您好！"));
    let from = mail.from().and_then(|a| a.first()).expect("From");
    assert_eq!((from.name(), from.address()), (Some("群发通知"), Some("notice@qunfa.example")));
    let to = mail.to().and_then(|a| a.first()).expect("To");
    assert_eq!((to.name(), to.address()), (Some("张三"), Some("zhang@example.com")));
    let reply_to = mail.reply_to().and_then(|a| a.first()).and_then(|a| a.address());
    assert_eq!(reply_to, Some("support@qunfa.example"));
    assert_eq!(mail.message_id(), Some("qf-7-1-email@qunfa.example"));
    assert_eq!(zhang.raw_header("X-Qunfa-Idempotency-Key").as_deref(), Some("qf-7-1-email"));
    assert_eq!(zhang.raw_header("List-Unsubscribe").as_deref(), Some("<https://qunfa.example/u/1/1/email/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0BBQkNERUZHSElKS0xNTk9Q>"));
    assert_eq!(zhang.raw_header("List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"));
    let content_type = zhang.raw_header("Content-Type").unwrap_or_default();
    assert!(content_type.starts_with("multipart/alternative"), "{content_type}");

    let text = mail.body_text(0).expect("a text part").replace("\r\n", "\n");
    assert!(text.starts_with("张三，您好！\n本周六 <上午> 10 点开会 & 聚餐。\n\n请准时参加。"), "{text}");
    assert!(text.contains("退订 / Unsubscribe: https://qunfa.example/u/1/1/email/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0BBQkNERUZHSElKS0xNTk9Q"), "{text}");
    let html = mail.body_html(0).expect("an HTML part").replace("\r\n", "\n");
    assert!(
        html.contains("<p>张三，您好！<br>\n本周六 &lt;上午&gt; 10 点开会 &amp; 聚餐。</p>\n<p>请准时参加。</p>"),
        "{html}"
    );
    assert!(html.contains("<a href=\"https://qunfa.example/u/1/1/email/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0BBQkNERUZHSElKS0xNTk9Q\">退订 / Unsubscribe</a>"), "{html}");

    // Each recipient gets their own text and key; no unsubscribe link, no list headers.
    let li = received[0].parse();
    assert_eq!(li.subject(), Some("李四，您好！"));
    assert_eq!(li.message_id(), Some("qf-7-2-email@qunfa.example"));
    assert!(li.body_text(0).is_some_and(|t| t.starts_with("李四，您好！")));
    let wang = &received[1];
    let wang_mail = wang.parse();
    assert_eq!(wang_mail.to().and_then(|a| a.first()).and_then(|a| a.name()), None);
    assert_eq!(wang_mail.subject(), Some("Hello Wang"));
    assert_eq!(wang.raw_header("List-Unsubscribe"), None);
    assert_eq!(wang.raw_header("List-Unsubscribe-Post"), None);
}

#[tokio::test]
async fn links_use_their_title_as_subject_and_long_texts_are_cut() {
    let sink = SmtpSink::start().await;
    let s = settings(sink.port(), 1);
    let sender = EmailSender::new();
    let link = serde_json::json!({
        "type": "link", "title": "秋季新品上市", "url": "https://shop.example/new?a=1&b=2", "description": "{{name}} 专享"
    });
    let b = batch(link.clone(), &s, vec![item(1, Some("a@example.com"), "A", "A 专享 8 折")]);
    assert_all_delivered(&send(&sender, &b, &s).await);
    let long = "很长的第一行".repeat(20);
    let b = text_batch(&s, vec![item(2, Some("b@example.com"), "B", &format!("{long}\n第二行"))]);
    assert_all_delivered(&send(&sender, &b, &s).await);

    let received = sink.wait_for(2, WAIT).await;
    let mail = received[0].parse();
    assert_eq!(mail.subject(), Some("秋季新品上市"));
    let text = mail.body_text(0).expect("text").replace("\r\n", "\n");
    assert!(text.starts_with("秋季新品上市\n\nA 专享 8 折\n\nhttps://shop.example/new?a=1&b=2"), "{text}");
    let html = mail.body_html(0).expect("html").replace("\r\n", "\n");
    assert!(html.contains("<a href=\"https://shop.example/new?a=1&amp;b=2\">秋季新品上市</a>"), "{html}");
    let subject = received[1].parse().subject().expect("subject").to_owned();
    assert_eq!(subject.chars().count(), 78);
    assert!(subject.ends_with('…') && long.starts_with(subject.trim_end_matches('…')), "{subject}");

    // A tracked link: the card's URL in both bodies is the recipient's tracked URL.
    let mut tracked = item(3, Some("c@example.com"), "C", "C 专享 8 折");
    tracked.tracked_urls =
        vec![("https://shop.example/new?a=1&b=2".to_owned(), "https://q.example/l/Ab3?r=3.email.f00d".to_owned())];
    assert_all_delivered(&send(&sender, &batch(link, &s, vec![tracked]), &s).await);
    let received = sink.wait_for(3, WAIT).await;
    let mail = received[2].parse();
    let text = mail.body_text(0).expect("text").replace("\r\n", "\n");
    assert!(text.ends_with("https://q.example/l/Ab3?r=3.email.f00d") && !text.contains("shop.example"), "{text}");
    let html = mail.body_html(0).expect("html").replace("\r\n", "\n");
    assert!(html.contains("<a href=\"https://q.example/l/Ab3?r=3.email.f00d\">秋季新品上市</a>"), "{html}");
    assert!(!html.contains("shop.example"), "{html}");
}

#[tokio::test]
async fn credentials_reach_the_sink_and_wrong_ones_are_an_auth_failure() {
    let sink = SmtpSink::start().await;
    sink.require_auth("mailer", "秘密-pass");
    let mut s = settings(sink.port(), 2);
    s.username = Some("mailer".into());
    s.password = Some("秘密-pass".into());
    let sender = EmailSender::new();
    let b = text_batch(&s, recipients(3));
    assert_all_delivered(&send(&sender, &b, &s).await);
    let received = sink.wait_for(3, WAIT).await;
    for r in &received {
        let auth = r.auth.as_ref().expect("authenticated");
        assert_eq!((auth.username.as_str(), auth.password.as_str()), ("mailer", "秘密-pass"));
    }
    assert!(sink.auth_attempts().iter().all(|c| c.username == "mailer" && c.password == "秘密-pass"));

    s.password = Some("wrong".into());
    let outcomes = send(&sender, &text_batch(&s, recipients(3)), &s).await;
    for (_, o) in &outcomes {
        match o {
            SendOutcome::Rejected(Code::ChannelAuth, why) => assert!(why.contains("535"), "{why}"),
            other => panic!("expected an auth failure, got {other:?}"),
        }
    }
    // No credentials at all: the server's 530 is an auth failure too.
    s.username = None;
    let outcomes = send(&sender, &text_batch(&s, recipients(1)), &s).await;
    assert!(matches!(outcome(&outcomes, 1), SendOutcome::Rejected(Code::ChannelAuth, why) if why.contains("530")));
    assert_eq!(sink.count(), 3);
}

#[tokio::test]
async fn an_unknown_recipient_is_rejected_and_the_others_delivered() {
    let sink = SmtpSink::start().await;
    sink.reject_rcpt("u2@example.com", RcptRejection::UserUnknown);
    let s = settings(sink.port(), 1);
    let sender = EmailSender::new();
    let outcomes = send(&sender, &text_batch(&s, recipients(4)), &s).await;
    match outcome(&outcomes, 2) {
        SendOutcome::Rejected(Code::AddressInvalid, why) => {
            assert!(why.starts_with("SMTP 550") && why.contains("user unknown") && why.len() <= 200, "{why}")
        }
        other => panic!("expected AddressInvalid, got {other:?}"),
    }
    for idx in [1, 3, 4] {
        assert_eq!(outcome(&outcomes, idx), &SendOutcome::Delivered);
    }
    assert_eq!(sink.wait_for(3, WAIT).await.len(), 3);
    // The refusal cost an RSET, not the connection.
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn a_busy_mailbox_is_retried() {
    let sink = SmtpSink::start().await;
    sink.reject_rcpt("u1@example.com", RcptRejection::Busy);
    let s = settings(sink.port(), 2);
    let sender = EmailSender::new();
    let outcomes = send(&sender, &text_batch(&s, recipients(2)), &s).await;
    assert!(matches!(outcome(&outcomes, 1), SendOutcome::Retry(why) if why.starts_with("SMTP 450")), "{outcomes:?}");
    assert_eq!(outcome(&outcomes, 2), &SendOutcome::Delivered);

    sink.accept_all_rcpt();
    let outcomes = send(&sender, &text_batch(&s, recipients(1)), &s).await;
    assert_all_delivered(&outcomes);
}

#[tokio::test]
async fn a_server_refusing_at_the_greeting_makes_everyone_retry() {
    let sink = SmtpSink::start().await;
    let s = settings(sink.port(), 4);
    let sender = EmailSender::new();
    for refusal in [Refusal::NoService, Refusal::Unavailable] {
        sink.refuse_connections(Some(refusal));
        let outcomes = send(&sender, &text_batch(&s, recipients(20)), &s).await;
        assert_eq!(outcomes.len(), 20);
        for (idx, o) in &outcomes {
            assert!(matches!(o, SendOutcome::Retry(why) if why.contains("refused the connection")), "{idx}: {o:?}");
        }
    }
    // Nobody was hammered: each worker tried once per batch.
    assert!(sink.connections() <= 8, "{} connections", sink.connections());
    assert_eq!(sink.count(), 0);

    sink.refuse_connections(None);
    assert_all_delivered(&send(&sender, &text_batch(&s, recipients(3)), &s).await);
}

#[tokio::test]
async fn nothing_listening_is_a_retry() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let s = settings(port, 2);
    let outcomes = send(&EmailSender::new(), &text_batch(&s, recipients(3)), &s).await;
    for (_, o) in &outcomes {
        assert!(matches!(o, SendOutcome::Retry(why) if why.starts_with("cannot connect to 127.0.0.1")), "{o:?}");
    }
}

#[tokio::test]
async fn a_connection_dropped_during_data_is_retried_with_the_same_message_id() {
    let sink = SmtpSink::start().await;
    let s = settings(sink.port(), 3);
    let sender = EmailSender::new();
    sink.drop_during_data(1);
    let b = text_batch(&s, recipients(10));
    let outcomes = send(&sender, &b, &s).await;
    let retried: Vec<u32> =
        outcomes.iter().filter(|(_, o)| matches!(o, SendOutcome::Retry(_))).map(|(i, _)| *i).collect();
    assert_eq!(retried.len(), 1, "{outcomes:?}");
    let lost = retried[0];
    let SendOutcome::Retry(why) = outcome(&outcomes, lost) else { unreachable!() };
    assert!(why.contains("lost while sending the message"), "{why}");
    assert_eq!(outcomes.iter().filter(|(_, o)| *o == SendOutcome::Delivered).count(), 9);
    assert_eq!(sink.dropped_data(), 1);
    assert_eq!(sink.wait_for(9, WAIT).await.len(), 9);

    // The engine sends the batch again with what is still queued: the lost message,
    // with the Message-ID it had the first time.
    let again: Vec<Outgoing> = b.items.iter().filter(|i| i.contact_idx == lost).cloned().collect();
    let retry = text_batch(&s, again);
    assert_all_delivered(&send(&sender, &retry, &s).await);
    let received = sink.wait_for(10, WAIT).await;
    let address = format!("u{lost}@example.com");
    let resent = received.iter().find(|r| r.rcpt_to == [address.clone()]).expect("the lost message arrived");
    let expected_id = format!("qf-7-{lost}-email@qunfa.example");
    assert_eq!(resent.parse().message_id(), Some(expected_id.as_str()));
    assert_eq!(resent.parse().subject(), Some(format!("第{lost}条消息").as_str()));
}

#[tokio::test]
async fn a_late_answer_times_out_and_the_next_batch_gets_a_fresh_connection() {
    let sink = SmtpSink::start().await;
    let mut s = settings(sink.port(), 1);
    s.timeout_ms = 200;
    let sender = EmailSender::new();
    sink.delay_data_reply(Some(Duration::from_millis(600)));
    let outcomes = send(&sender, &text_batch(&s, recipients(1)), &s).await;
    assert!(matches!(outcome(&outcomes, 1), SendOutcome::Retry(why) if why.contains("no answer within 200 ms")));

    sink.delay_data_reply(None);
    let outcomes = send(&sender, &text_batch(&s, recipients(2)), &s).await;
    assert_all_delivered(&outcomes);
    // The late message was accepted after all (the client had given up), then the two.
    let received = sink.wait_for(3, WAIT).await;
    assert_eq!(received.len(), 3);
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
async fn contacts_without_a_usable_address_are_rejected_without_connecting() {
    let sink = SmtpSink::start().await;
    let s = settings(sink.port(), 2);
    let items = vec![item(1, None, "无邮箱", "hi"), item(2, Some("not an address"), "乱填", "hi")];
    let outcomes = send(&EmailSender::new(), &text_batch(&s, items), &s).await;
    assert!(matches!(outcome(&outcomes, 1), SendOutcome::Rejected(Code::ChannelNoAddress, _)));
    assert!(
        matches!(outcome(&outcomes, 2), SendOutcome::Rejected(Code::AddressInvalid, why) if why.contains("not an address"))
    );
    assert_eq!(sink.connections(), 0);
}

#[tokio::test]
async fn changed_settings_use_the_new_server_and_pools_are_reused() {
    let (old, new) = (SmtpSink::start().await, SmtpSink::start().await);
    let sender = EmailSender::new();
    let s_old = settings(old.port(), 2);
    for _ in 0..3 {
        assert_all_delivered(&send(&sender, &text_batch(&s_old, recipients(10)), &s_old).await);
    }
    assert_eq!(old.wait_for(30, WAIT).await.len(), 30);
    assert!(old.connections() <= 2, "{} connections over 3 batches with a pool of 2", old.connections());

    let s_new = settings(new.port(), 2);
    assert_all_delivered(&send(&sender, &text_batch(&s_new, recipients(4)), &s_new).await);
    assert_eq!(new.wait_for(4, WAIT).await.len(), 4);
    assert_eq!(old.count(), 30);
}

/// 20,000 messages to the sink with a pool of 8, and a bare SMTP loop over
/// one connection as a baseline in the same run. Run with
/// `cargo test --release -p qunfa-engine --test email -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "throughput measurement; run explicitly"]
async fn email_throughput() {
    const N: u32 = 20_000;
    let sink = SmtpSink::start().await;
    let s = settings(sink.port(), 8);
    let sender = EmailSender::new();
    let items: Vec<Outgoing> = (0..N)
        .map(|i| {
            let mut o = item(
                i,
                Some(&format!("user{i}@example.com")),
                &format!("用户{i}"),
                &format!("用户{i}，您好！\n本周六上午 10 点开会。"),
            );
            o.unsubscribe_url = Some(format!("https://qunfa.example/u/1/{i}/email/token{i}"));
            o
        })
        .collect();
    // Batches of 2,000, as the engine claims them.
    let batches: Vec<ExternalBatch> = items.chunks(2_000).map(|c| text_batch(&s, c.to_vec())).collect();
    let started = std::time::Instant::now();
    let mut delivered = 0;
    for b in &batches {
        delivered += sender.send(b, &s).await.iter().filter(|(_, o)| *o == SendOutcome::Delivered).count();
    }
    let took = started.elapsed();
    let sink_count = sink.wait_for(N as usize, Duration::from_secs(60)).await.len();
    let qunfa_rate = f64::from(N) / took.as_secs_f64();
    assert_eq!(delivered, N as usize);
    assert_eq!(sink_count, N as usize);
    let bytes = sink.messages()[0].data.len();

    // Baseline: the same number of messages of the same size, hand-written SMTP,
    // one connection, one command at a time.
    let baseline_sink = SmtpSink::start().await;
    let line = format!("{}\r\n", "x".repeat(76));
    let body = line.repeat(bytes / line.len());
    let started = std::time::Instant::now();
    raw_smtp_loop(baseline_sink.port(), N, &body).await;
    let raw_took = started.elapsed();
    let raw_count = baseline_sink.wait_for(N as usize, Duration::from_secs(60)).await.len();
    let raw_rate = f64::from(N) / raw_took.as_secs_f64();

    println!("email_throughput: qunfa EmailSender, pool 8: {N} messages in {took:.2?} = {qunfa_rate:.0} msg/s; sink received {sink_count}; {bytes} bytes per message; {} connections", sink.connections());
    println!("email_throughput: bare SMTP loop, 1 connection: {N} messages in {raw_took:.2?} = {raw_rate:.0} msg/s; sink received {raw_count}");
    println!("email_throughput: ratio qunfa / bare loop = {:.2}", qunfa_rate / raw_rate);
}

async fn raw_smtp_loop(port: u16, n: u32, body: &str) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    async fn expect_reply(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, line: &mut String, code: &str) {
        loop {
            line.clear();
            read.read_line(line).await.expect("read");
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    }
    expect_reply(&mut read, &mut line, "220").await;
    write.write_all(b"EHLO bench\r\n").await.expect("write");
    expect_reply(&mut read, &mut line, "250").await;
    for i in 0..n {
        write.write_all(b"MAIL FROM:<notice@qunfa.example>\r\n").await.expect("write");
        expect_reply(&mut read, &mut line, "250").await;
        write.write_all(format!("RCPT TO:<user{i}@example.com>\r\n").as_bytes()).await.expect("write");
        expect_reply(&mut read, &mut line, "250").await;
        write.write_all(b"DATA\r\n").await.expect("write");
        expect_reply(&mut read, &mut line, "354").await;
        let message = format!("Subject: message {i}\r\nTo: <user{i}@example.com>\r\n\r\n{body}\r\n.\r\n");
        write.write_all(message.as_bytes()).await.expect("write");
        expect_reply(&mut read, &mut line, "250").await;
    }
    write.write_all(b"QUIT\r\n").await.expect("write");
    expect_reply(&mut read, &mut line, "221").await;
}
