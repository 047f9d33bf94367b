//! Message content: the types a broadcast can carry, validated against the
//! workspace's tier.

use crate::{contact::HttpUrl, template::Template, Code};

/// The kind of a message, as the policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    Text,
    Image,
    Link,
    MiniProgram,
    File,
    RichText,
}

impl ContentType {
    pub fn parse(s: &str) -> Result<Self, Code> {
        match s {
            "text" => Ok(Self::Text),
            "image" => Ok(Self::Image),
            "link" => Ok(Self::Link),
            "miniprogram" => Ok(Self::MiniProgram),
            "file" => Ok(Self::File),
            "richtext" => Ok(Self::RichText),
            _ => Err(Code::InvalidContent),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::Link => "link",
            Self::MiniProgram => "miniprogram",
            Self::File => "file",
            Self::RichText => "richtext",
        }
    }
}

/// A content-addressed media reference: the lowercase hex SHA-256 of the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaId(String);

impl MediaId {
    pub fn parse(s: &str) -> Result<Self, Code> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Code::MediaNotFound)
        }
    }
    /// The id of some bytes.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(hex::encode(sha2::Sha256::digest(bytes)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A piece of message text with its placeholders parsed, no longer than the
/// limit it was parsed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText {
    raw: String,
    template: Template,
}

impl MessageText {
    /// # Errors
    /// `QF-CONTENT-EMPTY`, `QF-CONTENT-TOO-LONG` (more than `max_chars`
    /// characters, counted as Unicode scalar values like WeChat's counter), or
    /// `QF-TEMPLATE-SYNTAX`.
    pub fn parse(s: &str, max_chars: usize) -> Result<Self, Code> {
        if s.trim().is_empty() {
            return Err(Code::TextEmpty);
        }
        if s.chars().count() > max_chars {
            return Err(Code::TextTooLong);
        }
        if s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
            return Err(Code::InvalidContent);
        }
        let template = Template::parse(s)?;
        Ok(Self { raw: s.to_owned(), template })
    }
    pub fn as_str(&self) -> &str {
        &self.raw
    }
    pub fn template(&self) -> &Template {
        &self.template
    }
    pub fn n_chars(&self) -> usize {
        self.raw.chars().count()
    }
}

/// Short free text (titles, file names): non-empty, at most `max` characters.
fn short_text(s: &str, max: usize) -> Result<String, Code> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        Err(Code::InvalidContent)
    } else {
        Ok(t.to_owned())
    }
}

/// Validated message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text { text: MessageText },
    Image { media_id: MediaId, caption: Option<MessageText> },
    Link { url: HttpUrl, title: String, description: Option<MessageText> },
    MiniProgram { appid: String, pagepath: String, title: String, thumb_media_id: Option<MediaId> },
    File { media_id: MediaId, filename: String },
    RichText { html: MessageText },
}

/// Content as it arrives, before validation (every field optional).
#[derive(Debug, Clone, Default)]
pub struct RawContent {
    pub content_type: String,
    pub text: Option<String>,
    pub media_id: Option<String>,
    pub caption: Option<String>,
    pub url: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub appid: Option<String>,
    pub pagepath: Option<String>,
    pub thumb_media_id: Option<String>,
    pub filename: Option<String>,
    pub html: Option<String>,
}

/// Most characters of rich text.
pub const MAX_RICH_TEXT_CHARS: usize = 20_000;

impl Content {
    /// Validates raw content; `max_text_chars` is the tier's text limit.
    ///
    /// # Errors
    /// The code of the first problem found. Whether the type is allowed for the
    /// tier is a policy question (see `preflight`), not checked here.
    pub fn parse(raw: &RawContent, max_text_chars: usize) -> Result<Self, Code> {
        fn need(v: &Option<String>) -> Result<&str, Code> {
            v.as_deref().ok_or(Code::InvalidContent)
        }
        let optional_text = |v: &Option<String>| match v.as_deref() {
            Some(s) if !s.trim().is_empty() => MessageText::parse(s, max_text_chars).map(Some),
            _ => Ok(None),
        };
        Ok(match ContentType::parse(&raw.content_type)? {
            ContentType::Text => {
                Content::Text { text: MessageText::parse(raw.text.as_deref().unwrap_or(""), max_text_chars)? }
            }
            ContentType::Image => Content::Image {
                media_id: MediaId::parse(need(&raw.media_id)?)?,
                caption: optional_text(&raw.caption)?,
            },
            ContentType::Link => Content::Link {
                url: HttpUrl::parse(need(&raw.url)?)?,
                title: short_text(need(&raw.title)?, 64)?,
                description: optional_text(&raw.description)?,
            },
            ContentType::MiniProgram => {
                let appid = need(&raw.appid)?;
                if appid.is_empty() || appid.len() > 32 || !appid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(Code::InvalidContent);
                }
                Content::MiniProgram {
                    appid: appid.to_owned(),
                    pagepath: short_text(need(&raw.pagepath)?, 256)?,
                    title: short_text(need(&raw.title)?, 64)?,
                    thumb_media_id: raw.thumb_media_id.as_deref().map(MediaId::parse).transpose()?,
                }
            }
            ContentType::File => Content::File {
                media_id: MediaId::parse(need(&raw.media_id)?)?,
                filename: short_text(need(&raw.filename)?, 128)?,
            },
            ContentType::RichText => {
                Content::RichText { html: MessageText::parse(raw.html.as_deref().unwrap_or(""), MAX_RICH_TEXT_CHARS)? }
            }
        })
    }

    pub fn content_type(&self) -> ContentType {
        match self {
            Content::Text { .. } => ContentType::Text,
            Content::Image { .. } => ContentType::Image,
            Content::Link { .. } => ContentType::Link,
            Content::MiniProgram { .. } => ContentType::MiniProgram,
            Content::File { .. } => ContentType::File,
            Content::RichText { .. } => ContentType::RichText,
        }
    }

    /// Every text of this content that is rendered per recipient.
    pub fn texts(&self) -> Vec<&MessageText> {
        match self {
            Content::Text { text } => vec![text],
            Content::Image { caption, .. } => caption.iter().collect(),
            Content::Link { description, .. } => description.iter().collect(),
            Content::RichText { html } => vec![html],
            Content::MiniProgram { .. } | Content::File { .. } => vec![],
        }
    }

    /// Media this content references.
    pub fn media(&self) -> Vec<&MediaId> {
        match self {
            Content::Image { media_id, .. } | Content::File { media_id, .. } => vec![media_id],
            Content::MiniProgram { thumb_media_id, .. } => thumb_media_id.iter().collect(),
            _ => vec![],
        }
    }

    /// Whether any text depends on the recipient.
    pub fn is_personalised(&self) -> bool {
        self.texts().iter().any(|t| t.template().has_variables())
    }

    /// The raw form, for storage.
    pub fn to_raw(&self) -> RawContent {
        let mut raw = RawContent { content_type: self.content_type().as_str().to_owned(), ..Default::default() };
        match self {
            Content::Text { text } => raw.text = Some(text.as_str().to_owned()),
            Content::Image { media_id, caption } => {
                raw.media_id = Some(media_id.as_str().to_owned());
                raw.caption = caption.as_ref().map(|c| c.as_str().to_owned());
            }
            Content::Link { url, title, description } => {
                raw.url = Some(url.as_str().to_owned());
                raw.title = Some(title.clone());
                raw.description = description.as_ref().map(|c| c.as_str().to_owned());
            }
            Content::MiniProgram { appid, pagepath, title, thumb_media_id } => {
                raw.appid = Some(appid.clone());
                raw.pagepath = Some(pagepath.clone());
                raw.title = Some(title.clone());
                raw.thumb_media_id = thumb_media_id.as_ref().map(|m| m.as_str().to_owned());
            }
            Content::File { media_id, filename } => {
                raw.media_id = Some(media_id.as_str().to_owned());
                raw.filename = Some(filename.clone());
            }
            Content::RichText { html } => raw.html = Some(html.as_str().to_owned()),
        }
        raw
    }

    /// The raw form with `signature` at the end of what recipients read:
    /// after the text (a blank line between), after an image's caption or a
    /// link's description (or as the caption or description when there is
    /// none), and as the last paragraph of rich text (HTML-escaped). A
    /// mini-program card and a file carry no text and are unchanged.
    /// The signature is literal: a `{{` in it is written as `{{{{`, so it is
    /// never a template variable. The result is not checked against a text
    /// limit: parse it again to know whether it still fits.
    pub fn signed(&self, signature: &str) -> RawContent {
        let literal = signature.replace("{{", "{{{{");
        let after = |text: Option<String>| match text {
            Some(t) => Some(format!("{t}\n\n{literal}")),
            None => Some(literal.clone()),
        };
        let mut raw = self.to_raw();
        match self {
            Content::Text { .. } => raw.text = after(raw.text.take()),
            Content::Image { .. } => raw.caption = after(raw.caption.take()),
            Content::Link { .. } => raw.description = after(raw.description.take()),
            Content::RichText { html } => {
                let escaped = literal.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
                raw.html = Some(format!("{}<p>{escaped}</p>", html.as_str()));
            }
            Content::MiniProgram { .. } | Content::File { .. } => {}
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> RawContent {
        RawContent { content_type: "text".into(), text: Some(s.into()), ..Default::default() }
    }

    #[test]
    fn text_limits_count_characters() {
        assert!(Content::parse(&text(&"群".repeat(2048)), 2048).is_ok());
        assert_eq!(Content::parse(&text(&"群".repeat(2049)), 2048), Err(Code::TextTooLong));
        assert_eq!(Content::parse(&text("   "), 2048), Err(Code::TextEmpty));
        assert_eq!(Content::parse(&text("a\u{0}b"), 2048), Err(Code::InvalidContent));
        assert!(Content::parse(&text("第一行\n第二行\t!"), 2048).is_ok());
    }

    #[test]
    fn other_types_need_their_fields() {
        let link = RawContent {
            content_type: "link".into(),
            url: Some("https://qunfa.example/a".into()),
            ..Default::default()
        };
        assert_eq!(Content::parse(&link, 2048), Err(Code::InvalidContent));
        let link = RawContent { title: Some("新品".into()), ..link };
        assert_eq!(Content::parse(&link, 2048).unwrap().content_type(), ContentType::Link);
        let image = RawContent { content_type: "image".into(), media_id: Some("abc".into()), ..Default::default() };
        assert_eq!(Content::parse(&image, 2048), Err(Code::MediaNotFound));
        let bogus = RawContent { content_type: "video".into(), ..Default::default() };
        assert_eq!(Content::parse(&bogus, 2048), Err(Code::InvalidContent));
    }

    #[test]
    fn signatures_end_what_recipients_read() {
        let signed = |raw: RawContent| Content::parse(&raw, 2048).unwrap().signed("来自{{华东}}<科技>");
        let t = signed(text("{{name}}，您好"));
        assert_eq!(t.text.as_deref(), Some("{{name}}，您好\n\n来自{{{{华东}}<科技>"));
        // The signature stays literal: only the recipient's variable is one.
        let parsed = Content::parse(&t, 2048).unwrap();
        assert_eq!(parsed.texts()[0].template().variables(), ["name"]);
        assert_eq!(parsed.texts()[0].template().render(&|_| Some("张三".into())), "张三，您好\n\n来自{{华东}}<科技>");
        let media = "a".repeat(64);
        let image = RawContent { content_type: "image".into(), media_id: Some(media.clone()), ..Default::default() };
        assert_eq!(signed(image).caption.as_deref(), Some("来自{{{{华东}}<科技>"));
        let rich =
            RawContent { content_type: "richtext".into(), html: Some("<b>通知</b>".into()), ..Default::default() };
        assert_eq!(signed(rich).html.as_deref(), Some("<b>通知</b><p>来自{{{{华东}}&lt;科技&gt;</p>"));
        let file = RawContent {
            content_type: "file".into(),
            media_id: Some(media),
            filename: Some("a.pdf".into()),
            ..Default::default()
        };
        assert_eq!(signed(file.clone()).filename, file.filename);
    }

    #[test]
    fn round_trips_through_raw() {
        let c = Content::parse(&text("{{name}} 你好"), 2048).unwrap();
        assert!(c.is_personalised());
        assert_eq!(Content::parse(&c.to_raw(), 2048).unwrap(), c);
    }
}
