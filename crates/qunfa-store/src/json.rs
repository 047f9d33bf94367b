//! How domain values are stored in JSON columns.

use std::collections::BTreeMap;

use qunfa_audience::AudienceSpec;
use qunfa_core::{
    broadcast::{FallbackStep, FallbackWhen},
    contact::{AttrValue, Channel},
    message::RawContent,
};
use serde_json::{json, Map, Value as Json};

use crate::StoreError;

/// Writes attributes as a JSON object directly (the import hot path: no
/// intermediate map).
pub fn attributes_to_json(attrs: &BTreeMap<String, AttrValue>) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(16 + attrs.len() * 24);
    out.push('{');
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, k);
        out.push(':');
        match v {
            AttrValue::Text(s) => push_json_string(&mut out, s),
            AttrValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            AttrValue::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                out.push_str(itoa::Buffer::new().format(*n as i64));
            }
            AttrValue::Number(n) => {
                let _ = write!(out, "{n}");
            }
        }
    }
    out.push('}');
    out
}

fn push_json_string(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&Json::String(s.to_owned()).to_string());
    }
}

pub fn attr_to_json(v: &AttrValue) -> Json {
    match v {
        AttrValue::Text(s) => Json::String(s.clone()),
        AttrValue::Number(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, |n| {
            // Whole numbers print without a fraction.
            if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
                Json::from(n.as_f64().unwrap_or_default() as i64)
            } else {
                Json::Number(n)
            }
        }),
        AttrValue::Bool(b) => Json::Bool(*b),
    }
}

pub fn consent_to_json(consent: &BTreeMap<Channel, bool>) -> String {
    let mut out = String::from("{");
    for (i, (channel, given)) in consent.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(channel.as_str());
        out.push_str(if *given { "\":true" } else { "\":false" });
    }
    out.push('}');
    out
}

pub fn parse_object(text: &str) -> Result<Map<String, Json>, StoreError> {
    match serde_json::from_str(text) {
        Ok(Json::Object(m)) => Ok(m),
        _ => Err(StoreError::Corrupt(format!("expected a JSON object, found {text:.40}"))),
    }
}

/// Renders an attribute for a template.
pub fn attr_display(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn content_to_json(raw: &RawContent) -> String {
    let mut map = Map::new();
    map.insert("type".into(), Json::String(raw.content_type.clone()));
    let fields = [
        ("text", &raw.text),
        ("media_id", &raw.media_id),
        ("caption", &raw.caption),
        ("url", &raw.url),
        ("title", &raw.title),
        ("description", &raw.description),
        ("appid", &raw.appid),
        ("pagepath", &raw.pagepath),
        ("thumb_media_id", &raw.thumb_media_id),
        ("filename", &raw.filename),
        ("html", &raw.html),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            map.insert(k.into(), Json::String(v.clone()));
        }
    }
    Json::Object(map).to_string()
}

pub fn content_from_json(text: &str) -> Result<RawContent, StoreError> {
    let m = parse_object(text)?;
    let get = |k: &str| m.get(k).and_then(Json::as_str).map(str::to_owned);
    Ok(RawContent {
        content_type: get("type").unwrap_or_default(),
        text: get("text"),
        media_id: get("media_id"),
        caption: get("caption"),
        url: get("url"),
        title: get("title"),
        description: get("description"),
        appid: get("appid"),
        pagepath: get("pagepath"),
        thumb_media_id: get("thumb_media_id"),
        filename: get("filename"),
        html: get("html"),
    })
}

pub fn audience_to_json(spec: &AudienceSpec) -> String {
    match spec {
        AudienceSpec::All => json!({"all": true}),
        AudienceSpec::Contacts(ids) => json!({"contact_idx": ids}),
        AudienceSpec::Tag(id) => json!({"tag": id}),
        AudienceSpec::Tags(ids) => json!({"tags": ids}),
        AudienceSpec::Department(id) => json!({"department": id}),
        AudienceSpec::Expression(src) => json!({"expr": src}),
        AudienceSpec::Frozen(id) => json!({"frozen_of": id}),
    }
    .to_string()
}

pub fn audience_from_json(text: &str) -> Result<AudienceSpec, StoreError> {
    let m = parse_object(text)?;
    let corrupt = || StoreError::Corrupt(format!("audience {text:.60}"));
    if m.contains_key("all") {
        return Ok(AudienceSpec::All);
    }
    if let Some(ids) = m.get("contact_idx").and_then(Json::as_array) {
        let ids = ids.iter().map(|v| v.as_u64().map(|v| v as u32)).collect::<Option<Vec<_>>>().ok_or_else(corrupt)?;
        return Ok(AudienceSpec::Contacts(ids));
    }
    if let Some(id) = m.get("tag").and_then(Json::as_i64) {
        return Ok(AudienceSpec::Tag(id));
    }
    if let Some(ids) = m.get("tags").and_then(Json::as_array) {
        return Ok(AudienceSpec::Tags(ids.iter().map(Json::as_i64).collect::<Option<Vec<_>>>().ok_or_else(corrupt)?));
    }
    if let Some(id) = m.get("department").and_then(Json::as_i64) {
        return Ok(AudienceSpec::Department(id));
    }
    if let Some(src) = m.get("expr").and_then(Json::as_str) {
        return Ok(AudienceSpec::Expression(src.to_owned()));
    }
    if let Some(id) = m.get("frozen_of").and_then(Json::as_i64) {
        return Ok(AudienceSpec::Frozen(id));
    }
    Err(corrupt())
}

pub fn channels_to_json(channels: &[Channel]) -> String {
    Json::Array(channels.iter().map(|c| Json::String(c.as_str().into())).collect()).to_string()
}

pub fn channels_from_json(text: &str) -> Result<Vec<Channel>, StoreError> {
    let list: Vec<String> = serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    list.iter().map(|s| Channel::parse(s).map_err(|_| StoreError::Corrupt(format!("channel {s}")))).collect()
}

/// A fallback order as stored: `[{"channel": "email", "when": "unread", "after_seconds": 3600}]`.
pub fn fallback_to_json(steps: &[FallbackStep]) -> String {
    Json::Array(
        steps
            .iter()
            .map(|s| serde_json::json!({"channel": s.channel.as_str(), "when": s.when.as_str(), "after_seconds": s.after_seconds}))
            .collect(),
    )
    .to_string()
}

pub fn fallback_from_json(text: &str) -> Result<Vec<FallbackStep>, StoreError> {
    let list: Vec<Json> = serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    list.iter()
        .map(|s| {
            let channel = Channel::parse(s["channel"].as_str().unwrap_or_default())
                .map_err(|_| StoreError::Corrupt(format!("fallback {s}")))?;
            let when = match s["when"].as_str() {
                Some("unread") => FallbackWhen::Unread,
                Some("failed") => FallbackWhen::Failed,
                _ => return Err(StoreError::Corrupt(format!("fallback {s}"))),
            };
            Ok(FallbackStep { channel, when, after_seconds: s["after_seconds"].as_u64().unwrap_or(0) as u32 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_through_serde() {
        let mut attrs = BTreeMap::new();
        attrs.insert("city".to_owned(), AttrValue::Text("上海 \"浦东\"\n".into()));
        attrs.insert("spend".to_owned(), AttrValue::Number(5000.0));
        attrs.insert("ratio".to_owned(), AttrValue::Number(0.25));
        attrs.insert("vip".to_owned(), AttrValue::Bool(true));
        let text = attributes_to_json(&attrs);
        let parsed: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, serde_json::json!({"city": "上海 \"浦东\"\n", "spend": 5000, "ratio": 0.25, "vip": true}));
        assert_eq!(attributes_to_json(&BTreeMap::new()), "{}");
    }
}
