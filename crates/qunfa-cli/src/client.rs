//! A small HTTP client for the commands that talk to a running server.

use anyhow::{bail, Context};
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Self {
            http: reqwest::Client::builder().build().expect("a client with default settings builds"),
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends a request; a non-2xx answer becomes an error that shows the
    /// code, message and hint (and every verdict of a refused send).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.with_context(|| format!("cannot reach {}", self.base))?;
        decode(resp).await
    }

    /// Sends a request and returns any answer, error or not.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    pub async fn raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        decode(resp).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(reqwest::Method::GET, path, None).await?.1)
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        Ok(self.send(reqwest::Method::POST, path, Some(body)).await?.1)
    }

    /// A GET whose answer is a file: its bytes (an error answer is shown as usual).
    pub async fn download(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if !resp.status().is_success() {
            decode(resp).await?;
            bail!("unexpected answer");
        }
        Ok(resp.bytes().await.context("the download was cut short")?.to_vec())
    }
}

async fn decode(resp: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let value: Value =
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    if status >= 400 {
        bail!("{}", describe_error(status, &value));
    }
    Ok((status, value))
}

/// A readable rendering of an API error body.
pub fn describe_error(status: u16, body: &Value) -> String {
    let e = &body["error"];
    if e.is_null() {
        return format!("HTTP {status}: {body}");
    }
    let mut out = format!(
        "{} (HTTP {status}): {}\n  {}\n  hint: {}",
        e["code"].as_str().unwrap_or("?"),
        e["message"].as_str().unwrap_or(""),
        e["message_zh"].as_str().unwrap_or(""),
        e["hint"].as_str().unwrap_or("")
    );
    if let Some(details) = e["details"].as_array() {
        for d in details.iter().take(50) {
            if d.get("severity").is_some() {
                out.push('\n');
                out.push_str(&render_verdict(d));
            } else {
                out.push_str(&format!("\n  - {d}"));
            }
        }
    }
    out
}

/// One verdict as text.
pub fn render_verdict(v: &Value) -> String {
    let mut out = format!(
        "  [{}] {}: {}\n         {}\n         fix: {}",
        v["severity"].as_str().unwrap_or("?"),
        v["code"].as_str().unwrap_or("?"),
        v["message"].as_str().unwrap_or(""),
        v["message_zh"].as_str().unwrap_or(""),
        v["hint"].as_str().unwrap_or("")
    );
    if let Some(c) = v["clears_at"].as_str() {
        out.push_str(&format!("\n         clears at {c}"));
    }
    out
}
