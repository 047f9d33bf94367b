//! `qunfa bench channels`: email and webhook broadcasts end to end through the
//! engine (claim with queued records → send with idempotency keys → record)
//! against loopback peers (the testkit's SMTP sink and HTTP receiver), each
//! compared in the same run with a bare client sending the same number of
//! messages to the same peer (no queue, no records, no signing).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use qunfa_audience::AudienceSpec;
use qunfa_core::{
    broadcast::{BroadcastState, Priority},
    channel::ChannelSettings,
    contact::Channel,
    import::{self, ImportFormat},
    workspace::{Name, WorkspaceKind},
    Policy,
};
use qunfa_store::{broadcasts::DispatchRules, now_millis, Store};
use qunfa_testkit::{http::HttpReceiver, smtp::SmtpSink};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn contacts(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 120);
    for i in 0..n {
        out.extend_from_slice(
            format!(
                "{{\"external_id\":\"u{i}\",\"name\":\"用户{i}\",\"channels\":{{\"email\":\"u{i}@example.com\"}},\"consent\":{{\"email\":true}}}}\n"
            )
            .as_bytes(),
        );
    }
    out
}

/// One broadcast on `channel` to every contact; seconds from dispatch to completion.
async fn broadcast(store: &Store, workspace: i64, channel: Channel, n: usize) -> anyhow::Result<f64> {
    let new = crate::bench::text_broadcast(
        "{{name}}，双十一大促：全场五折。",
        Priority::Broadcast,
        r#"{"all":true}"#.into(),
        channel,
    );
    let s = store.clone();
    let id = tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let (b, _) = s.create_broadcast(workspace, 1, &new, "bench", now_millis())?;
        let audience = s.resolve_audience(workspace, &AudienceSpec::All)?;
        let rules = DispatchRules::draft();
        s.dispatch(workspace, b.id, &audience, rules, "bench", now_millis())?;
        Ok(b.id)
    })
    .await??;
    let t = Instant::now();
    loop {
        let s = store.clone();
        let b = tokio::task::spawn_blocking(move || s.broadcast(workspace, id)).await??;
        if b.state == BroadcastState::Completed {
            anyhow::ensure!(
                b.n_delivered == n as u64,
                "{}: {} delivered, {} failed of {n}",
                channel.as_str(),
                b.n_delivered,
                b.n_failed
            );
            return Ok(t.elapsed().as_secs_f64());
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "{} broadcast did not complete", channel.as_str());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The bare SMTP baseline: `connections` plain connections, each speaking
/// EHLO once and then MAIL/RCPT/DATA per message.
async fn raw_smtp(port: u16, n: usize, connections: usize) -> anyhow::Result<f64> {
    async fn line(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> anyhow::Result<String> {
        // Multi-line replies end with "code SP".
        loop {
            let mut l = String::new();
            anyhow::ensure!(r.read_line(&mut l).await? > 0, "the sink closed the connection");
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(l);
            }
        }
    }
    let t = Instant::now();
    let per = n.div_ceil(connections);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let count = per.min(n.saturating_sub(c * per));
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            line(&mut r).await?;
            w.write_all(b"EHLO bench\r\n").await?;
            line(&mut r).await?;
            for i in 0..count {
                w.write_all(b"MAIL FROM:<news@shop.example>\r\n").await?;
                line(&mut r).await?;
                w.write_all(format!("RCPT TO:<u{c}-{i}@example.com>\r\n").as_bytes()).await?;
                line(&mut r).await?;
                w.write_all(b"DATA\r\n").await?;
                line(&mut r).await?;
                let body = format!(
                    "From: news@shop.example\r\nTo: u{c}-{i}@example.com\r\nSubject: bench\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n用户{i}，双十一大促：全场五折。\r\n.\r\n"
                );
                w.write_all(body.as_bytes()).await?;
                let reply = line(&mut r).await?;
                anyhow::ensure!(reply.starts_with("250"), "sink answered {reply}");
            }
            w.write_all(b"QUIT\r\n").await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The bare HTTP baseline: the same number of JSON POSTs, `concurrency` in flight.
async fn raw_http(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let t = Instant::now();
    let sends = (0..n).map(|i| {
        let body = serde_json::json!({"id": format!("raw-{i}"), "text": format!("用户{i}，双十一大促：全场五折。")})
            .to_string();
        let r = client.post(url).header("Content-Type", "application/json").body(body).send();
        async move { r.await.map(|r| r.status().is_success()) }
    });
    let results: Vec<_> = futures::stream::iter(sends).buffer_unordered(concurrency).collect().await;
    anyhow::ensure!(results.iter().all(|r| matches!(r, Ok(true))), "a baseline POST failed");
    Ok(t.elapsed().as_secs_f64())
}

pub fn channels(database_url: Option<&str>, n: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(database_url, n))
}

async fn run(database_url: Option<&str>, n: usize) -> anyhow::Result<()> {
    println!(
        "bench channels: {n}-recipient broadcasts through the engine to loopback peers (SMTP sink, HTTP receiver)"
    );
    let url = database_url.map(str::to_owned);
    let bench = tokio::task::spawn_blocking(move || crate::bench::open(url.as_deref())).await??;
    let store = bench.store.clone();
    let smtp = SmtpSink::start().await;
    let http = HttpReceiver::start().await;
    let (s, data) = (store.clone(), contacts(n));
    let (smtp_port, endpoint) = (smtp.port(), http.url("/hook"));
    let workspace = tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let policy = Policy::builtin();
        let (w, _) = s.create_workspace(&Name::parse("bench")?, WorkspaceKind::Enterprise, None, "bench", now_millis())?;
        let parsed = import::parse(ImportFormat::Ndjson, &data);
        s.import_contacts(w.id, &policy.tiers.enterprise, &parsed.contacts, "bench", now_millis())?;
        let email = serde_json::json!({"host": "127.0.0.1", "port": smtp_port, "security": "none", "from": "群发 <news@shop.example>", "pool_size": 8, "allow_private_networks": true});
        let webhook = serde_json::json!({"endpoint": endpoint, "secret": "bench-secret-0123456789", "allow_private_networks": true, "per_host_concurrency": 64});
        for (channel, value) in [(Channel::Email, email), (Channel::Webhook, webhook)] {
            let settings = ChannelSettings::parse(channel, &value, None, &mut String::new)
                .map_err(|e| anyhow::anyhow!("{} settings: {e}", channel.as_str()))?;
            s.set_channel_settings(w.id, &settings, "bench", now_millis())?;
        }
        Ok(w.id)
    })
    .await??;
    let transports = qunfa_engine::Transports::new().context("building the channel clients")?;
    let config = qunfa_engine::EngineConfig::default();
    let engine = qunfa_engine::Engine::start_with(store.clone(), config, transports);
    let engine = Arc::new(engine);

    let email = broadcast(&store, workspace, Channel::Email, n).await?;
    let received = smtp.count();
    let ids: std::collections::HashSet<String> =
        smtp.messages().iter().filter_map(|m| m.raw_header("Message-ID")).collect();
    smtp.clear();
    let email_raw = raw_smtp(smtp_port, n, 8).await?;
    println!(
        "  email:   {email:.3} s = {:.0} messages/s ({received} received by the sink, {} distinct Message-IDs); bare SMTP client, 8 connections: {email_raw:.3} s = {:.0}/s; engine/bare = {:.2}x",
        n as f64 / email,
        ids.len(),
        n as f64 / email_raw,
        email / email_raw
    );
    anyhow::ensure!(received == n && ids.len() == n, "the sink got {received} messages, {} distinct", ids.len());

    let webhook = broadcast(&store, workspace, Channel::Webhook, n).await?;
    let got = http.count();
    let keys: std::collections::HashSet<String> =
        http.requests().iter().filter_map(|r| r.header("idempotency-key").map(str::to_owned)).collect();
    http.clear();
    let webhook_raw = raw_http(&http.url("/raw"), n, 64).await?;
    println!(
        "  webhook: {webhook:.3} s = {:.0} messages/s ({got} requests received, {} distinct idempotency keys); bare reqwest, 64 in flight: {webhook_raw:.3} s = {:.0}/s; engine/bare = {:.2}x",
        n as f64 / webhook,
        keys.len(),
        n as f64 / webhook_raw,
        webhook / webhook_raw
    );
    anyhow::ensure!(got == n && keys.len() == n, "the receiver got {got} requests, {} distinct", keys.len());
    engine.shutdown().await;
    println!(
        "  ({:?}; each message has one delivery record, claimed, sent and recorded by the engine)",
        store.backend()
    );
    Ok(())
}
