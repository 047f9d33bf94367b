//! Contacts: external id, name, free profile attributes, per-channel addresses
//! and consent, all parsed into typed values.

use std::collections::BTreeMap;

use crate::Code;

/// Most profile attributes a contact may carry.
pub const MAX_ATTRIBUTES: usize = 64;

/// A channel a message can travel through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Inbox,
    Email,
    Webhook,
    Sms,
    Wecom,
}

impl Channel {
    pub const ALL: [Channel; 5] = [Channel::Inbox, Channel::Email, Channel::Webhook, Channel::Sms, Channel::Wecom];

    pub fn parse(s: &str) -> Result<Self, Code> {
        match s {
            "inbox" => Ok(Self::Inbox),
            "email" => Ok(Self::Email),
            "webhook" => Ok(Self::Webhook),
            "sms" => Ok(Self::Sms),
            "wecom" => Ok(Self::Wecom),
            _ => Err(Code::InvalidChannel),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbox => "inbox",
            Self::Email => "email",
            Self::Webhook => "webhook",
            Self::Sms => "sms",
            Self::Wecom => "wecom",
        }
    }
}

/// The value of a profile attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// `s` trimmed, reusing its buffer when there is nothing to trim.
fn trim_owned(s: String) -> String {
    let t = s.trim();
    if t.len() == s.len() {
        s
    } else {
        t.to_owned()
    }
}

/// External id: 1–128 printable characters, unique per workspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExternalId(String);

impl ExternalId {
    /// Like [`ExternalId::parse`], reusing the string.
    pub fn parse_owned(s: String) -> Result<Self, Code> {
        let s = trim_owned(s);
        let n = s.chars().count();
        if n == 0 || n > 128 || s.chars().any(char::is_control) {
            return Err(Code::InvalidExternalId);
        }
        Ok(Self(s))
    }
    /// The value, moved out.
    pub fn into_string(self) -> String {
        self.0
    }
    pub fn parse(s: &str) -> Result<Self, Code> {
        let s = s.trim();
        let n = s.chars().count();
        if n == 0 || n > 128 || s.chars().any(char::is_control) {
            return Err(Code::InvalidExternalId);
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for shape (local@domain.tld), not deliverability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// The value, moved out.
    pub fn into_string(self) -> String {
        self.0
    }
    pub fn parse(s: &str) -> Result<Self, Code> {
        Self::parse_owned(s.to_owned())
    }

    /// Like [`EmailAddress::parse`], reusing the string.
    pub fn parse_owned(s: String) -> Result<Self, Code> {
        let s = trim_owned(s);
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(Code::InvalidEmail);
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '.');
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.contains('@')
            && local.chars().all(|c| !c.is_whitespace() && !c.is_control() && !"<>()[]\\,;:\"".contains(c));
        if !domain_ok || !local_ok || s.len() > 254 {
            return Err(Code::InvalidEmail);
        }
        Ok(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number: optional `+`, then 6–20 digits (spaces and dashes removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// The value, moved out.
    pub fn into_string(self) -> String {
        self.0
    }
    pub fn parse(s: &str) -> Result<Self, Code> {
        let compact: String = s.trim().chars().filter(|c| *c != ' ' && *c != '-').collect();
        let digits = compact.strip_prefix('+').unwrap_or(&compact);
        if !(6..=20).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Code::InvalidPhone);
        }
        Ok(Self(compact))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// The value, moved out.
    pub fn into_string(self) -> String {
        self.0
    }
    pub fn parse(s: &str) -> Result<Self, Code> {
        let s = s.trim();
        let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
        match rest {
            Some(rest)
                if !rest.is_empty()
                    && !rest.starts_with('/')
                    && s.len() <= 2048
                    && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err(Code::InvalidUrl),
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated attribute key: 1–64 ASCII letters, digits or `_`, not starting
/// with a digit. Keys are the names templates and audience expressions use.
pub fn parse_attribute_key(key: &str) -> Result<&str, Code> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(key)
    } else {
        Err(Code::InvalidAttribute)
    }
}

/// Per-channel addresses of a contact.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelAddresses {
    pub email: Option<EmailAddress>,
    pub phone: Option<PhoneNumber>,
    pub webhook: Option<HttpUrl>,
    pub wecom_userid: Option<String>,
}

/// A contact as written by an import or the API, fully validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactInput {
    pub external_id: ExternalId,
    pub name: String,
    pub attributes: BTreeMap<String, AttrValue>,
    pub channels: ChannelAddresses,
    /// Explicit consent per channel; a channel not listed has no recorded consent.
    pub consent: BTreeMap<Channel, bool>,
    /// Tag paths to attach (created when missing).
    pub tags: Vec<crate::tag::TagPath>,
}

/// A contact in the shape it arrives in (JSON object, NDJSON line or CSV row),
/// before validation.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContact {
    pub external_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// In the order given; a key given twice keeps its last value.
    #[serde(default, deserialize_with = "attribute_pairs")]
    pub attributes: Vec<(String, serde_json::Value)>,
    #[serde(default)]
    pub channels: RawChannels,
    #[serde(default)]
    pub consent: BTreeMap<String, bool>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Reads a JSON object as key–value pairs without building a map: the
/// validated contact builds the only one.
fn attribute_pairs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, serde_json::Value)>, D::Error> {
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Vec<(String, serde_json::Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of attributes")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8).min(MAX_ATTRIBUTES));
            while let Some(pair) = map.next_entry()? {
                out.push(pair);
            }
            Ok(out)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(Pairs)
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannels {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub webhook: Option<String>,
    pub wecom_userid: Option<String>,
}

/// Why a raw contact was rejected: the code and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactError {
    pub code: Code,
    pub field: String,
}

impl ContactError {
    fn new(code: Code, field: impl Into<String>) -> Self {
        Self { code, field: field.into() }
    }
}

impl ContactInput {
    /// Validates a raw contact.
    ///
    /// # Errors
    /// The first invalid field, with its code.
    pub fn parse(raw: RawContact) -> Result<Self, ContactError> {
        let external_id = ExternalId::parse_owned(raw.external_id.unwrap_or_default())
            .map_err(|c| ContactError::new(c, "external_id"))?;
        let name = trim_owned(raw.name.unwrap_or_default());
        if name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(ContactError::new(Code::InvalidName, "name"));
        }
        let too_many = || ContactError::new(Code::InvalidAttribute, "attributes");
        if raw.attributes.len() > 4 * MAX_ATTRIBUTES {
            return Err(too_many());
        }
        let mut attributes = BTreeMap::new();
        for (key, value) in raw.attributes {
            let field = || format!("attributes.{key}");
            parse_attribute_key(&key).map_err(|c| ContactError::new(c, field()))?;
            let value = match value {
                serde_json::Value::String(s)
                    if s.chars().count() <= 1024 && !s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\t')) =>
                {
                    AttrValue::Text(s)
                }
                serde_json::Value::Number(n) => match n.as_f64() {
                    Some(f) if f.is_finite() => AttrValue::Number(f),
                    _ => return Err(ContactError::new(Code::InvalidAttribute, field())),
                },
                serde_json::Value::Bool(b) => AttrValue::Bool(b),
                serde_json::Value::Null => continue,
                _ => return Err(ContactError::new(Code::InvalidAttribute, field())),
            };
            attributes.insert(key, value);
        }
        if attributes.len() > MAX_ATTRIBUTES {
            return Err(too_many());
        }
        let c = raw.channels;
        let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        let channels = ChannelAddresses {
            email: non_empty(c.email)
                .map(EmailAddress::parse_owned)
                .transpose()
                .map_err(|code| ContactError::new(code, "channels.email"))?,
            phone: non_empty(c.phone)
                .map(|s| PhoneNumber::parse(&s))
                .transpose()
                .map_err(|code| ContactError::new(code, "channels.phone"))?,
            webhook: non_empty(c.webhook)
                .map(|s| HttpUrl::parse(&s))
                .transpose()
                .map_err(|code| ContactError::new(code, "channels.webhook"))?,
            wecom_userid: match non_empty(c.wecom_userid) {
                Some(s) if s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()) => Some(s),
                Some(_) => return Err(ContactError::new(Code::InvalidExternalId, "channels.wecom_userid")),
                None => None,
            },
        };
        let mut consent = BTreeMap::new();
        for (channel, given) in raw.consent {
            let channel = Channel::parse(&channel).map_err(|c| ContactError::new(c, format!("consent.{channel}")))?;
            consent.insert(channel, given);
        }
        let mut tags = Vec::new();
        for (i, tag) in raw.tags.iter().enumerate() {
            tags.push(crate::tag::TagPath::parse(tag).map_err(|c| ContactError::new(c, format!("tags[{i}]")))?);
        }
        tags.sort();
        tags.dedup();
        Ok(Self { external_id, name, attributes, channels, consent, tags })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> RawContact {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn valid_contact() {
        let c = ContactInput::parse(raw(
            r#"{"external_id":"u1","name":"张三","attributes":{"city":"上海","spend":5000,"vip":true},
                "channels":{"email":"zs@example.com","phone":"+86 138-0000-0000"},"consent":{"email":true},
                "tags":["客户等级/金牌","客户等级/金牌"]}"#,
        ))
        .unwrap();
        assert_eq!(c.attributes["spend"], AttrValue::Number(5000.0));
        assert_eq!(c.channels.phone.unwrap().as_str(), "+8613800000000");
        assert_eq!(c.tags.len(), 1);
    }

    #[test]
    fn invalid_fields_name_the_field() {
        let cases = [
            (r#"{"name":"x"}"#, Code::InvalidExternalId, "external_id"),
            (r#"{"external_id":"a","channels":{"email":"nope"}}"#, Code::InvalidEmail, "channels.email"),
            (r#"{"external_id":"a","channels":{"phone":"12ab"}}"#, Code::InvalidPhone, "channels.phone"),
            (r#"{"external_id":"a","attributes":{"9x":1}}"#, Code::InvalidAttribute, "attributes.9x"),
            (r#"{"external_id":"a","attributes":{"x":[1]}}"#, Code::InvalidAttribute, "attributes.x"),
            (r#"{"external_id":"a","attributes":{"x":"a\u0000b"}}"#, Code::InvalidAttribute, "attributes.x"),
            (r#"{"external_id":"a","tags":["a/b/c/d"]}"#, Code::TagTooDeep, "tags[0]"),
            (r#"{"external_id":"a","consent":{"fax":true}}"#, Code::InvalidChannel, "consent.fax"),
        ];
        for (json, code, field) in cases {
            let err = ContactInput::parse(raw(json)).unwrap_err();
            assert_eq!((err.code, err.field.as_str()), (code, field), "{json}");
        }
    }

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@sub.example.cn"] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a@b", "@b.co", "a@.co", "a b@c.co", "a@b..co"] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
