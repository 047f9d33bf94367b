//! `qunfa broadcast recall` and `qunfa broadcast correct`.

use std::{path::Path, process::ExitCode};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::client::Client;

/// Recalls a sent broadcast and says what could and could not be taken back.
pub async fn recall(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let r = client.post(&format!("/v1/broadcasts/{id}/recall"), json!({})).await?;
    println!(
        "broadcast {id} recalled: {} inbox message(s) now show as recalled, {} delivery(ies) stopped",
        r["inbox_hidden"], r["cancelled"]
    );
    let (sent, in_flight) = (r["external_sent"].as_u64().unwrap_or(0), r["external_in_flight"].as_u64().unwrap_or(0));
    if sent + in_flight > 0 {
        println!(
            "  {sent} message(s) already sent by email, webhook, SMS or WeCom cannot be taken back; {in_flight} were being sent and may still arrive"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends a correction notice of `id`; returns the new broadcast's id.
pub async fn correct(client: &Client, id: &str, text: Option<&str>, content: Option<&Path>) -> anyhow::Result<String> {
    let content: Value = match (text, content) {
        (Some(t), _) => json!({"type": "text", "text": t}),
        (None, Some(path)) => {
            serde_json::from_slice(&std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)?
        }
        (None, None) => bail!("give --text or --content"),
    };
    let b = client.post(&format!("/v1/broadcasts/{id}/correction"), json!({"content": content})).await?;
    let new_id = b["id"].as_str().unwrap_or("?").to_owned();
    println!(
        "correction notice {new_id} of broadcast {id}: {} — {} recipients (the original's)",
        b["state"].as_str().unwrap_or("?"),
        b["recipients"]
    );
    Ok(new_id)
}
