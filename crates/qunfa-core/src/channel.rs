//! Per-workspace settings of the external channels (email, webhook, SMS,
//! WeCom): parsed and checked once when an admin stores them, kept as JSON in
//! the database, parsed again (infallibly in practice) when a batch is sent.
//!
//! Secrets (SMTP password, webhook signing secret, SMS API key, WeCom corp
//! secret) are part of the stored JSON because the sender needs them in the
//! clear; [`ChannelSettings::public_json`] masks them for every API answer.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    contact::{Channel, EmailAddress, HttpUrl},
    Code,
};

/// Why settings were refused: always `QF-CHANNEL-SETTINGS`, with the field and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub field: String,
    pub message: String,
}

impl SettingsError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_owned(), message: message.into() }
    }
    pub fn code(&self) -> Code {
        Code::ChannelSettings
    }
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain text (only sensible on loopback or inside a trusted network).
    None,
    /// Plain connect, then `STARTTLS` (required: no silent downgrade).
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

impl SmtpSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::StartTls => "starttls",
            Self::Tls => "tls",
        }
    }
}

/// Email over SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `a@b.c` or `Name <a@b.c>`.
    pub from: String,
    pub reply_to: Option<String>,
    /// Longest wait for the server per command.
    pub timeout_ms: u64,
    /// SMTP connections kept open and used at once.
    pub pool_size: u32,
    /// Allow a server on loopback, private or other non-public addresses
    /// (off: refused, so a workspace cannot reach the server's own network).
    pub allow_private_networks: bool,
}

/// Signed JSON POSTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Where messages go for contacts without their own webhook address.
    pub endpoint: Option<String>,
    /// Signs every request (`X-Qunfa-Signature`).
    pub secret: String,
    /// Allow endpoints on loopback, private, link-local and other
    /// non-public addresses (off: such URLs are refused, SSRF protection).
    pub allow_private_networks: bool,
    pub timeout_ms: u64,
    /// Requests in flight at once per batch.
    pub concurrency: u32,
    /// Requests in flight at once per host.
    pub per_host_concurrency: u32,
    /// Consecutive failures of a host that open its circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker stays open before one probe is let through.
    pub breaker_cooldown_ms: u64,
    /// Messages per POST to the workspace endpoint (1: one message per request;
    /// more: `{"messages": […]}`, coalesced).
    pub coalesce: u32,
}

/// An HTTP SMS provider (shaped like the common SMS APIs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsSettings {
    pub base_url: String,
    pub api_key: String,
    pub sign_name: String,
    pub template_id: String,
    /// Phone numbers per request.
    pub batch_size: u32,
    pub timeout_ms: u64,
    /// Allow a server on loopback, private or other non-public addresses
    /// (off: refused, so a workspace cannot reach the server's own network).
    pub allow_private_networks: bool,
}

/// WeCom (企业微信) upstream through its official `message/send` API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WecomSettings {
    pub base_url: String,
    pub corp_id: String,
    pub corp_secret: String,
    pub agent_id: i64,
    /// `touser` entries per request (≤1,000, WeCom's limit).
    pub batch_size: u32,
    /// Seconds WeCom drops a repeated identical message (`duplicate_check_interval`, ≤4 h).
    pub duplicate_check_interval: u32,
    pub timeout_ms: u64,
    /// Allow a server on loopback, private or other non-public addresses
    /// (off: refused, so a workspace cannot reach the server's own network).
    pub allow_private_networks: bool,
}

/// The settings of one external channel of one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSettings {
    /// Messages per minute for this workspace on this channel (none: only the
    /// server-wide limits apply).
    pub per_minute: Option<u32>,
    pub kind: SettingsKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsKind {
    Email(EmailSettings),
    Webhook(WebhookSettings),
    Sms(SmsSettings),
    Wecom(WecomSettings),
}

const MASK: &str = "********";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    host: String,
    port: Option<u16>,
    security: Option<String>,
    username: Option<String>,
    password: Option<String>,
    from: String,
    reply_to: Option<String>,
    timeout_ms: Option<u64>,
    pool_size: Option<u32>,
    allow_private_networks: Option<bool>,
    per_minute: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    endpoint: Option<String>,
    secret: Option<String>,
    allow_private_networks: Option<bool>,
    timeout_ms: Option<u64>,
    concurrency: Option<u32>,
    per_host_concurrency: Option<u32>,
    breaker_failures: Option<u32>,
    breaker_cooldown_ms: Option<u64>,
    coalesce: Option<u32>,
    per_minute: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSms {
    base_url: String,
    api_key: Option<String>,
    sign_name: String,
    template_id: String,
    batch_size: Option<u32>,
    timeout_ms: Option<u64>,
    allow_private_networks: Option<bool>,
    per_minute: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWecom {
    base_url: Option<String>,
    corp_id: String,
    corp_secret: Option<String>,
    agent_id: i64,
    batch_size: Option<u32>,
    duplicate_check_interval: Option<u32>,
    timeout_ms: Option<u64>,
    allow_private_networks: Option<bool>,
    per_minute: Option<u32>,
}

fn decode<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, SettingsError> {
    T::deserialize(value).map_err(|e| {
        let msg = e.to_string();
        let field = msg.split('`').nth(1).unwrap_or("settings").to_owned();
        SettingsError { field, message: msg }
    })
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(field: &str, v: T, lo: T, hi: T) -> Result<T, SettingsError> {
    if v < lo || v > hi {
        Err(SettingsError::new(field, format!("must be between {lo} and {hi}, got {v}")))
    } else {
        Ok(v)
    }
}

fn url(field: &str, s: &str) -> Result<String, SettingsError> {
    HttpUrl::parse(s)
        .map(HttpUrl::into_string)
        .map(|u| u.trim_end_matches('/').to_owned())
        .map_err(|_| SettingsError::new(field, "must be an absolute http:// or https:// URL"))
}

fn text(field: &str, s: &str, max: usize) -> Result<String, SettingsError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        Err(SettingsError::new(field, format!("must be 1 to {max} printable characters")))
    } else {
        Ok(t.to_owned())
    }
}

/// Whether two base URLs name the same place (a stored credential is kept
/// only for the provider it was given for).
fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/').eq_ignore_ascii_case(b.trim().trim_end_matches('/'))
}

/// The address inside `a@b.c` or `Name <a@b.c>`.
pub fn mailbox_address(s: &str) -> Option<&str> {
    let s = s.trim();
    match (s.rfind('<'), s.ends_with('>')) {
        (Some(i), true) => Some(s[i + 1..s.len() - 1].trim()),
        (None, false) => Some(s),
        _ => None,
    }
}

fn mailbox(field: &str, s: &str) -> Result<String, SettingsError> {
    let ok = mailbox_address(s).is_some_and(|a| EmailAddress::parse(a).is_ok()) && !s.chars().any(char::is_control);
    if ok {
        Ok(s.trim().to_owned())
    } else {
        Err(SettingsError::new(field, "must be an email address, optionally as `Name <address>`"))
    }
}

/// A secret from the request, or the stored one when the request leaves it out
/// (or sends the mask back unchanged).
fn secret(
    field: &str,
    given: Option<String>,
    stored: Option<&str>,
    required: bool,
) -> Result<Option<String>, SettingsError> {
    match given.filter(|s| s != MASK) {
        Some(s) if s.is_empty() => {
            if required {
                Err(SettingsError::new(field, "must not be empty"))
            } else {
                Ok(None)
            }
        }
        Some(s) => Ok(Some(s)),
        None => match stored {
            Some(s) => Ok(Some(s.to_owned())),
            None if required => Err(SettingsError::new(field, "is required")),
            None => Ok(None),
        },
    }
}

impl ChannelSettings {
    /// Parses settings given for `channel`. `stored` (the settings in force,
    /// if any) supplies secrets the request leaves out. `generate_secret` is
    /// called when a webhook has no secret yet.
    ///
    /// # Errors
    /// Unknown or malformed fields, values out of range, the inbox (it has no settings).
    pub fn parse(
        channel: Channel,
        value: &Value,
        stored: Option<&ChannelSettings>,
        generate_secret: &mut dyn FnMut() -> String,
    ) -> Result<Self, SettingsError> {
        let stored_kind = stored.map(|s| &s.kind);
        match channel {
            Channel::Inbox => Err(SettingsError::new("channel", "the inbox has no settings")),
            Channel::Email => {
                let r: RawEmail = decode(value)?;
                let security = match r.security.as_deref().unwrap_or("starttls") {
                    "none" => SmtpSecurity::None,
                    "starttls" => SmtpSecurity::StartTls,
                    "tls" => SmtpSecurity::Tls,
                    other => {
                        return Err(SettingsError::new(
                            "security",
                            format!("must be none, starttls or tls, got {other:?}"),
                        ))
                    }
                };
                let default_port = match security {
                    SmtpSecurity::None => 25,
                    SmtpSecurity::StartTls => 587,
                    SmtpSecurity::Tls => 465,
                };
                // A stored password goes only to the server it was given for.
                let old = match stored_kind {
                    Some(SettingsKind::Email(e)) if e.host.eq_ignore_ascii_case(r.host.trim()) => e.password.as_deref(),
                    _ => None,
                };
                let username = r.username.map(|u| text("username", &u, 256)).transpose()?;
                let password = secret("password", r.password, old, false)?;
                match (&username, &password) {
                    (None, Some(_)) => return Err(SettingsError::new("username", "is required with a password")),
                    (Some(_), None) => {
                        return Err(SettingsError::new(
                            "password",
                            "is required with a username (again when the host changes: a stored password goes only to its own server)",
                        ))
                    }
                    _ => {}
                }
                Ok(Self {
                    per_minute: r.per_minute.map(|v| range("per_minute", v, 1, 10_000_000)).transpose()?,
                    kind: SettingsKind::Email(EmailSettings {
                        host: text("host", &r.host, 253)?,
                        port: range("port", r.port.unwrap_or(default_port), 1, u16::MAX)?,
                        security,
                        username,
                        password,
                        from: mailbox("from", &r.from)?,
                        reply_to: r.reply_to.map(|s| mailbox("reply_to", &s)).transpose()?,
                        timeout_ms: range("timeout_ms", r.timeout_ms.unwrap_or(10_000), 100, 120_000)?,
                        pool_size: range("pool_size", r.pool_size.unwrap_or(4), 1, 32)?,
                        allow_private_networks: r.allow_private_networks.unwrap_or(false),
                    }),
                })
            }
            Channel::Webhook => {
                let r: RawWebhook = decode(value)?;
                let old = match stored_kind {
                    Some(SettingsKind::Webhook(w)) => Some(w.secret.as_str()),
                    _ => None,
                };
                let secret = match secret("secret", r.secret, old, false)? {
                    Some(s) if s.len() < 16 => return Err(SettingsError::new("secret", "must be at least 16 bytes")),
                    Some(s) => s,
                    None => generate_secret(),
                };
                Ok(Self {
                    per_minute: r.per_minute.map(|v| range("per_minute", v, 1, 10_000_000)).transpose()?,
                    kind: SettingsKind::Webhook(WebhookSettings {
                        endpoint: r.endpoint.map(|u| url("endpoint", &u)).transpose()?,
                        secret,
                        allow_private_networks: r.allow_private_networks.unwrap_or(false),
                        timeout_ms: range("timeout_ms", r.timeout_ms.unwrap_or(5_000), 100, 30_000)?,
                        concurrency: range("concurrency", r.concurrency.unwrap_or(64), 1, 512)?,
                        per_host_concurrency: range(
                            "per_host_concurrency",
                            r.per_host_concurrency.unwrap_or(16),
                            1,
                            512,
                        )?,
                        breaker_failures: range("breaker_failures", r.breaker_failures.unwrap_or(5), 1, 1_000)?,
                        breaker_cooldown_ms: range(
                            "breaker_cooldown_ms",
                            r.breaker_cooldown_ms.unwrap_or(30_000),
                            100,
                            3_600_000,
                        )?,
                        coalesce: range("coalesce", r.coalesce.unwrap_or(1), 1, 100)?,
                    }),
                })
            }
            Channel::Sms => {
                let r: RawSms = decode(value)?;
                let old = match stored_kind {
                    Some(SettingsKind::Sms(s)) if same_url(&s.base_url, &r.base_url) => Some(s.api_key.as_str()),
                    _ => None,
                };
                Ok(Self {
                    per_minute: r.per_minute.map(|v| range("per_minute", v, 1, 10_000_000)).transpose()?,
                    kind: SettingsKind::Sms(SmsSettings {
                        base_url: url("base_url", &r.base_url)?,
                        api_key: secret("api_key", r.api_key, old, true)?.unwrap_or_default(),
                        sign_name: text("sign_name", &r.sign_name, 64)?,
                        template_id: text("template_id", &r.template_id, 64)?,
                        batch_size: range("batch_size", r.batch_size.unwrap_or(100), 1, 1_000)?,
                        timeout_ms: range("timeout_ms", r.timeout_ms.unwrap_or(10_000), 100, 120_000)?,
                        allow_private_networks: r.allow_private_networks.unwrap_or(false),
                    }),
                })
            }
            Channel::Wecom => {
                let r: RawWecom = decode(value)?;
                let base = r.base_url.as_deref().unwrap_or("https://qyapi.weixin.qq.com");
                let old = match stored_kind {
                    Some(SettingsKind::Wecom(w)) if same_url(&w.base_url, base) && w.corp_id == r.corp_id.trim() => {
                        Some(w.corp_secret.as_str())
                    }
                    _ => None,
                };
                Ok(Self {
                    per_minute: r.per_minute.map(|v| range("per_minute", v, 1, 10_000_000)).transpose()?,
                    kind: SettingsKind::Wecom(WecomSettings {
                        base_url: url("base_url", r.base_url.as_deref().unwrap_or("https://qyapi.weixin.qq.com"))?,
                        corp_id: text("corp_id", &r.corp_id, 64)?,
                        corp_secret: secret("corp_secret", r.corp_secret, old, true)?.unwrap_or_default(),
                        agent_id: range("agent_id", r.agent_id, 0, i64::from(u32::MAX))?,
                        batch_size: range("batch_size", r.batch_size.unwrap_or(1_000), 1, 1_000)?,
                        duplicate_check_interval: range(
                            "duplicate_check_interval",
                            r.duplicate_check_interval.unwrap_or(1_800),
                            1,
                            14_400,
                        )?,
                        timeout_ms: range("timeout_ms", r.timeout_ms.unwrap_or(10_000), 100, 120_000)?,
                        allow_private_networks: r.allow_private_networks.unwrap_or(false),
                    }),
                })
            }
        }
    }

    /// Parses stored settings (written by [`ChannelSettings::to_json`]).
    ///
    /// # Errors
    /// When the stored JSON no longer parses (hand-edited database).
    pub fn from_stored(channel: Channel, json: &str) -> Result<Self, SettingsError> {
        let value: Value = serde_json::from_str(json).map_err(|e| SettingsError::new("settings", e.to_string()))?;
        Self::parse(channel, &value, None, &mut || String::new())
    }

    pub fn channel(&self) -> Channel {
        match self.kind {
            SettingsKind::Email(_) => Channel::Email,
            SettingsKind::Webhook(_) => Channel::Webhook,
            SettingsKind::Sms(_) => Channel::Sms,
            SettingsKind::Wecom(_) => Channel::Wecom,
        }
    }

    /// Everything, secrets included: what the database stores.
    pub fn to_json(&self) -> Value {
        self.json(false)
    }

    /// What the API shows: secrets masked.
    pub fn public_json(&self) -> Value {
        self.json(true)
    }

    fn json(&self, mask: bool) -> Value {
        let hide = |s: &str| if mask { MASK.to_owned() } else { s.to_owned() };
        let mut v = match &self.kind {
            SettingsKind::Email(e) => json!({
                "host": e.host, "port": e.port, "security": e.security.as_str(),
                "username": e.username, "password": e.password.as_deref().map(hide),
                "from": e.from, "reply_to": e.reply_to, "timeout_ms": e.timeout_ms, "pool_size": e.pool_size,
                "allow_private_networks": e.allow_private_networks,
            }),
            SettingsKind::Webhook(w) => json!({
                "endpoint": w.endpoint, "secret": hide(&w.secret),
                "allow_private_networks": w.allow_private_networks, "timeout_ms": w.timeout_ms,
                "concurrency": w.concurrency, "per_host_concurrency": w.per_host_concurrency,
                "breaker_failures": w.breaker_failures, "breaker_cooldown_ms": w.breaker_cooldown_ms,
                "coalesce": w.coalesce,
            }),
            SettingsKind::Sms(s) => json!({
                "base_url": s.base_url, "api_key": hide(&s.api_key), "sign_name": s.sign_name,
                "template_id": s.template_id, "batch_size": s.batch_size, "timeout_ms": s.timeout_ms,
                "allow_private_networks": s.allow_private_networks,
            }),
            SettingsKind::Wecom(w) => json!({
                "base_url": w.base_url, "corp_id": w.corp_id, "corp_secret": hide(&w.corp_secret),
                "agent_id": w.agent_id, "batch_size": w.batch_size,
                "duplicate_check_interval": w.duplicate_check_interval, "timeout_ms": w.timeout_ms,
                "allow_private_networks": w.allow_private_networks,
            }),
        };
        if let (Some(n), Some(obj)) = (self.per_minute, v.as_object_mut()) {
            obj.insert("per_minute".into(), json!(n));
        }
        // Absent optionals are left out rather than shown as null.
        if let Some(obj) = v.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen() -> String {
        "generated-secret-0123456789".into()
    }

    #[test]
    fn email_defaults_and_masking() {
        let s = ChannelSettings::parse(
            Channel::Email,
            &json!({"host": "smtp.example.com", "from": "Shop <news@example.com>", "username": "u", "password": "p"}),
            None,
            &mut gen,
        )
        .unwrap();
        let SettingsKind::Email(e) = &s.kind else { panic!() };
        assert_eq!((e.port, e.security, e.pool_size), (587, SmtpSecurity::StartTls, 4));
        assert_eq!(s.public_json()["password"], "********");
        assert_eq!(s.to_json()["password"], "p");
        // Stored → parsed again is the same.
        assert_eq!(ChannelSettings::from_stored(Channel::Email, &s.to_json().to_string()).unwrap(), s);
        // The mask sent back keeps the stored password.
        let again = ChannelSettings::parse(Channel::Email, &s.public_json(), Some(&s), &mut gen).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let e = ChannelSettings::parse(Channel::Email, &json!({"host": "h", "from": "not an address"}), None, &mut gen)
            .unwrap_err();
        assert_eq!(e.field, "from");
        let e = ChannelSettings::parse(
            Channel::Email,
            &json!({"host": "h", "from": "a@b.co", "colour": 1}),
            None,
            &mut gen,
        )
        .unwrap_err();
        assert_eq!(e.field, "colour");
        let e = ChannelSettings::parse(Channel::Webhook, &json!({"timeout_ms": 60_000}), None, &mut gen).unwrap_err();
        assert_eq!(e.field, "timeout_ms");
        let e = ChannelSettings::parse(Channel::Webhook, &json!({"secret": "short"}), None, &mut gen).unwrap_err();
        assert_eq!(e.field, "secret");
        let e = ChannelSettings::parse(
            Channel::Sms,
            &json!({"base_url": "ftp://x", "api_key": "k", "sign_name": "s", "template_id": "t"}),
            None,
            &mut gen,
        )
        .unwrap_err();
        assert_eq!(e.field, "base_url");
        let e = ChannelSettings::parse(Channel::Wecom, &json!({"corp_id": "ww1", "agent_id": 1}), None, &mut gen)
            .unwrap_err();
        assert_eq!(e.field, "corp_secret");
        assert!(ChannelSettings::parse(Channel::Inbox, &json!({}), None, &mut gen).is_err());
    }

    #[test]
    fn a_stored_credential_stays_with_its_provider() {
        let s = ChannelSettings::parse(
            Channel::Sms,
            &json!({"base_url": "https://sms.example.com", "api_key": "k1", "sign_name": "s", "template_id": "t"}),
            None,
            &mut gen,
        )
        .unwrap();
        let same = json!({"base_url": "https://sms.example.com/", "sign_name": "s", "template_id": "t2"});
        assert!(ChannelSettings::parse(Channel::Sms, &same, Some(&s), &mut gen).is_ok());
        let elsewhere = json!({"base_url": "https://evil.example.net", "sign_name": "s", "template_id": "t"});
        let e = ChannelSettings::parse(Channel::Sms, &elsewhere, Some(&s), &mut gen).unwrap_err();
        assert_eq!(e.field, "api_key", "a new provider needs the key again");
    }

    #[test]
    fn webhook_secret_is_generated_once() {
        let s = ChannelSettings::parse(Channel::Webhook, &json!({}), None, &mut gen).unwrap();
        let SettingsKind::Webhook(w) = &s.kind else { panic!() };
        assert_eq!(w.secret, gen());
        let mut other = || "another-secret-that-is-long".to_owned();
        let again = ChannelSettings::parse(Channel::Webhook, &json!({"coalesce": 10}), Some(&s), &mut other).unwrap();
        let SettingsKind::Webhook(w2) = &again.kind else { panic!() };
        assert_eq!((w2.secret.as_str(), w2.coalesce), (gen().as_str(), 10));
    }

    #[test]
    fn mailbox_forms() {
        assert_eq!(mailbox_address("a@b.co"), Some("a@b.co"));
        assert_eq!(mailbox_address("店铺 <a@b.co>"), Some("a@b.co"));
        assert_eq!(mailbox_address("x <a@b.co"), None);
    }
}
