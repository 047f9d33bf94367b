//! `qunfa channel …` (per-workspace channel settings), `qunfa events …`
//! (outgoing event webhooks) and `qunfa bounce` — thin clients of the API.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::Client;

#[derive(Subcommand)]
pub enum ChannelCommand {
    /// The workspace's channels and their settings (secrets masked).
    List,
    /// One channel's settings.
    Show { channel: String },
    /// Set a channel up or change it (admins): settings from a JSON file
    /// and/or KEY=VALUE pairs (values are JSON when they parse, else text),
    /// e.g. `qunfa channel set email --set host=smtp.example.com --set port=587
    /// --set from='店铺 <news@example.com>' --set username=news --set password=…`.
    /// Secrets left out keep their stored value.
    Set {
        /// email, webhook, sms or wecom.
        channel: String,
        /// A JSON object with the settings.
        #[arg(long)]
        file: Option<PathBuf>,
        /// KEY=VALUE, repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove a channel's settings.
    Remove { channel: String },
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Add an endpoint; prints its signing secret once.
    Add {
        url: String,
        /// Event types (repeatable; default all): broadcast.state_changed,
        /// delivery.failed, reply.received, report.received, contact.unsubscribed.
        #[arg(long = "event")]
        events: Vec<String>,
        /// The signing secret (default: made for you).
        #[arg(long)]
        secret: Option<String>,
        /// Allow an endpoint on loopback or a private network.
        #[arg(long)]
        allow_private_networks: bool,
    },
    /// The endpoints.
    List,
    /// Remove an endpoint.
    Remove { endpoint_id: String },
    /// An endpoint's delivery log, newest first.
    Log {
        endpoint_id: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Send a logged event again.
    Redeliver { delivery_id: String },
}

/// Settings from a file and KEY=VALUE pairs (the pairs win).
fn settings(file: Option<&PathBuf>, pairs: &[String]) -> anyhow::Result<Value> {
    let mut obj = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            match serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))? {
                Value::Object(m) => m,
                _ => bail!("{} must hold a JSON object", path.display()),
            }
        }
        None => Map::new(),
    };
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else { bail!("--set takes KEY=VALUE, got {pair:?}") };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        obj.insert(k.trim().to_owned(), value);
    }
    Ok(Value::Object(obj))
}

fn print_channel(c: &Value) {
    let settings = match &c["settings"] {
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    };
    println!("{:<8} {:<9} {settings}", c["channel"].as_str().unwrap_or("?"), c["source"].as_str().unwrap_or("?"));
}

pub async fn channel(client: &Client, cmd: ChannelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ChannelCommand::List => {
            for c in client.get("/v1/channels").await?.as_array().into_iter().flatten() {
                print_channel(c);
            }
        }
        ChannelCommand::Show { channel } => print_channel(&client.get(&format!("/v1/channels/{channel}")).await?),
        ChannelCommand::Set { channel, file, pairs } => {
            let body = settings(file.as_ref(), &pairs)?;
            let (_, c) = client.send(Method::PUT, &format!("/v1/channels/{channel}"), Some(body)).await?;
            print_channel(&c);
            if let Some(secret) = c["generated_secret"].as_str() {
                println!("signing secret (shown once; receivers verify X-Qunfa-Signature with it): {secret}");
            }
        }
        ChannelCommand::Remove { channel } => {
            client.send(Method::DELETE, &format!("/v1/channels/{channel}"), None).await?;
            println!("{channel}: removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn events(client: &Client, cmd: EventsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EventsCommand::Add { url, events, secret, allow_private_networks } => {
            let mut body = json!({"url": url, "allow_private_networks": allow_private_networks});
            if !events.is_empty() {
                body["events"] = json!(events);
            }
            if let Some(s) = secret {
                body["secret"] = json!(s);
            }
            let e = client.post("/v1/event-endpoints", body).await?;
            println!(
                "endpoint {} → {} ({})",
                e["id"].as_str().unwrap_or("?"),
                e["url"].as_str().unwrap_or("?"),
                e["events"]
            );
            println!("signing secret (shown once): {}", e["secret"].as_str().unwrap_or("?"));
        }
        EventsCommand::List => {
            for e in client.get("/v1/event-endpoints").await?.as_array().into_iter().flatten() {
                println!("{:<6} {} {}", e["id"].as_str().unwrap_or("?"), e["url"].as_str().unwrap_or("?"), e["events"]);
            }
        }
        EventsCommand::Remove { endpoint_id } => {
            client.send(Method::DELETE, &format!("/v1/event-endpoints/{endpoint_id}"), None).await?;
            println!("endpoint {endpoint_id}: removed");
        }
        EventsCommand::Log { endpoint_id, limit } => {
            let page = client.get(&format!("/v1/event-endpoints/{endpoint_id}/deliveries?limit={limit}")).await?;
            for d in page["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<8} {:<24} {:<9} attempts={} status={} {}",
                    d["id"].as_str().unwrap_or("?"),
                    d["type"].as_str().unwrap_or("?"),
                    d["state"].as_str().unwrap_or("?"),
                    d["attempts"],
                    d["last_status"],
                    d["last_error"].as_str().unwrap_or("")
                );
            }
        }
        EventsCommand::Redeliver { delivery_id } => {
            let d = client.post(&format!("/v1/event-deliveries/{delivery_id}/redeliver"), json!({})).await?;
            println!("queued again as delivery {}", d["id"].as_str().unwrap_or("?"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `qunfa bounce`: record a bounce by Message-ID.
pub async fn bounce(
    client: &Client,
    message_id: String,
    hard: bool,
    diagnostic: Option<String>,
) -> anyhow::Result<ExitCode> {
    let body = json!({"message_id": message_id, "type": if hard { "hard" } else { "soft" }, "diagnostic": diagnostic});
    let r = client.post("/v1/bounces", body).await?;
    println!(
        "broadcast {} contact {}: failed with QF-EMAIL-BOUNCED{}",
        r["broadcast_id"].as_str().unwrap_or("?"),
        r["contact_id"].as_str().unwrap_or("?"),
        if hard { "; the address no longer gets email" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::settings;

    #[test]
    fn pairs_are_json_when_they_parse() {
        let v =
            settings(None, &["port=2525".into(), "host=smtp.example.com".into(), "from=店铺 <a@b.co>".into()]).unwrap();
        assert_eq!(v["port"], 2525);
        assert_eq!(v["host"], "smtp.example.com");
        assert_eq!(v["from"], "店铺 <a@b.co>");
        assert!(settings(None, &["novalue".into()]).is_err());
    }
}
