//! Signatures of outgoing requests: HMAC-SHA256 (RFC 2104) over
//! `timestamp.body`, sent as `X-Qunfa-Signature: sha256=<hex>` with
//! `X-Qunfa-Timestamp: <unix seconds>`.
//!
//! A receiver verifies by computing the same HMAC with the shared secret over
//! the timestamp header, a dot and the raw body, comparing in constant time,
//! and refusing timestamps older than a few minutes (replays).

use sha2::{Digest, Sha256};

const BLOCK: usize = 64;

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The `X-Qunfa-Signature` value for a request body sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut message = Vec::with_capacity(body.len() + 21);
    message.extend_from_slice(timestamp.to_string().as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    format!("sha256={}", hex::encode(hmac_sha256(secret, &message)))
}

/// Checks a signature header in constant time.
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], header: &str) -> bool {
    let expected = signature(secret, timestamp, body);
    expected.len() == header.len() && expected.bytes().zip(header.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// A token that proves a link was made by this server for `purpose` (e.g.
/// `unsubscribe:7:42:email`): 128 bits of HMAC-SHA256 under the server's link
/// key, in hex. Links carry it so they work without login and cannot be forged.
pub fn link_token(key: &[u8], purpose: &str) -> String {
    hex::encode(&hmac_sha256(key, purpose.as_bytes())[..16])
}

/// Checks a link token in constant time.
pub fn verify_link_token(key: &[u8], purpose: &str, token: &str) -> bool {
    let expected = link_token(key, purpose);
    expected.len() == token.len() && expected.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// What the open pixel of one delivery proves (docs/measurement.md).
pub fn open_purpose(workspace_id: i64, broadcast_id: i64, contact_idx: u32, channel: &str) -> String {
    format!("open:{workspace_id}:{broadcast_id}:{contact_idx}:{channel}")
}

/// What a recipient's click token on tracked link `short` proves.
pub fn click_purpose(short: &str, contact_idx: u32, channel: &str) -> String {
    format!("click:{short}:{contact_idx}:{channel}")
}

/// The tracked URL of link `short` for one recipient on a channel:
/// `{public_url}/l/{short}?r={idx}.{channel}.{token}` (docs/measurement.md).
pub fn recipient_link(public_url: &str, key: &[u8], short: &str, contact_idx: u32, channel: &str) -> String {
    let token = link_token(key, &click_purpose(short, contact_idx, channel));
    format!("{}/l/{short}?r={contact_idx}.{channel}.{token}", public_url.trim_end_matches('/'))
}

/// Replaces each occurrence of a tracked URL in `text` by its replacement
/// (`links`: URL → replacement; the longest URL wins where two start at the
/// same place). An occurrence counts only where the URL starts and ends: not
/// inside another URL (`?u=https://…`), not where the text goes on with more
/// of a longer URL (`…/sale` in `…/sale2` or `…/sale/x`), while trailing
/// punctuation (`…/sale.` `…/sale)`) or an HTML entity (`&nbsp;`) ends it.
/// In HTML a URL's `&` is written `&amp;`: that form is replaced too.
pub fn rewrite_links<'a>(text: &'a str, links: &[(String, String)]) -> std::borrow::Cow<'a, str> {
    let continues = |rest: &str| {
        let mut chars = rest.chars();
        match chars.next() {
            None => false,
            // `&amp;` goes on (an escaped query separator); another entity ends it.
            Some('&') => rest.starts_with("&amp;") || !is_entity(rest),
            Some(c) if c.is_ascii_alphanumeric() || "/?#=%+-_~@$*".contains(c) => true,
            // A dot or comma inside a URL is followed by more of it.
            Some(c) if ".,:;!'()".contains(c) => chars.next().is_some_and(|d| d.is_ascii_alphanumeric() || d == '/'),
            Some(_) => false,
        }
    };
    let starts = |before: &str| {
        before.chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || "/?=&%.-_~+#@".contains(c)))
    };
    let escaped: Vec<(String, String)> = links
        .iter()
        .filter(|(url, _)| url.contains('&'))
        .map(|(url, to)| (url.replace('&', "&amp;"), to.replace('&', "&amp;")))
        .collect();
    let mut order: Vec<&(String, String)> = links.iter().chain(&escaped).filter(|(url, _)| !url.is_empty()).collect();
    order.sort_by_key(|(url, _)| std::cmp::Reverse(url.len()));
    let mut out = String::new();
    let (mut copied, mut i) = (0, 0);
    while i < text.len() {
        let rest = &text[i..];
        let found = order
            .iter()
            .find(|(url, _)| rest.starts_with(url.as_str()) && !continues(&rest[url.len()..]) && starts(&text[..i]));
        match found {
            Some((url, replacement)) => {
                out.push_str(&text[copied..i]);
                out.push_str(replacement);
                i += url.len();
                copied = i;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Whether `s` starts with an HTML character reference (`&name;`, `&#123;`, `&#x1F;`).
fn is_entity(s: &str) -> bool {
    let Some(body) = s.strip_prefix('&') else { return false };
    let end = body.find(';').unwrap_or(0);
    let name = &body[..end];
    end > 0
        && end <= 32
        && (name.bytes().all(|b| b.is_ascii_alphanumeric())
            || name.strip_prefix('#').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric())))
}

/// What an unsubscribe link of a contact on a channel proves.
pub fn unsubscribe_purpose(workspace_id: i64, contact_idx: u32, channel: &str) -> String {
    format!("unsubscribe:{workspace_id}:{contact_idx}:{channel}")
}

/// What the SMS receipt callback URL of a workspace proves.
pub fn receipts_purpose(workspace_id: i64, channel: &str) -> String {
    format!("receipts:{workspace_id}:{channel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_links_replace_whole_urls_only() {
        let links = vec![
            ("https://shop.example/sale".to_owned(), "[A]".to_owned()),
            ("https://shop.example/sale/vip".to_owned(), "[B]".to_owned()),
            ("https://shop.example/q?a=1&b=2".to_owned(), "[Q]".to_owned()),
        ];
        let cases = [
            ("看 https://shop.example/sale 吧", "看 [A] 吧"),
            ("https://shop.example/sale。", "[A]。"),
            ("(https://shop.example/sale), end.", "([A]), end."),
            ("https://shop.example/sale.", "[A]."),
            ("两次 https://shop.example/sale https://shop.example/sale", "两次 [A] [A]"),
            ("longest: https://shop.example/sale/vip!", "longest: [B]!"),
            (
                "not this: https://shop.example/sale2 https://shop.example/sale/other",
                "not this: https://shop.example/sale2 https://shop.example/sale/other",
            ),
            (
                "nor https://shop.example/sale.html or https://shop.example/sale?x=1",
                "nor https://shop.example/sale.html or https://shop.example/sale?x=1",
            ),
            ("<a href=\"https://shop.example/sale\">买</a>", "<a href=\"[A]\">买</a>"),
            ("https://shop.example/sale&nbsp;去看", "[A]&nbsp;去看"),
            ("https://shop.example/sale&amp;x=1", "https://shop.example/sale&amp;x=1"),
            (
                "inside: https://r.example/?u=https://shop.example/sale",
                "inside: https://r.example/?u=https://shop.example/sale",
            ),
            ("详情见:https://shop.example/sale", "详情见:[A]"),
            ("&nbsp;https://shop.example/sale", "&nbsp;[A]"),
            ("x.https://shop.example/sale", "x.https://shop.example/sale"),
            ("<a href=\"https://shop.example/q?a=1&amp;b=2\">", "<a href=\"[Q]\">"),
            ("plain https://shop.example/q?a=1&b=2 .", "plain [Q] ."),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(rewrite_links(text, &links), want, "{text}");
        }
        assert!(matches!(rewrite_links("没有链接", &links), std::borrow::Cow::Borrowed(_)));
        let url = recipient_link("https://q.example/", b"k", "Ab3", 7, "email");
        assert!(url.starts_with("https://q.example/l/Ab3?r=7.email."), "{url}");
        assert!(verify_link_token(b"k", &click_purpose("Ab3", 7, "email"), url.rsplit('.').next().unwrap()));
    }

    #[test]
    fn rfc_4231_vectors() {
        // Test case 1 and 2 of RFC 4231, and a key longer than a block (case 6).
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signatures_verify_and_detect_changes() {
        let sig = signature(b"s3cret", 1_795_000_000, br#"{"a":1}"#);
        assert!(sig.starts_with("sha256=") && sig.len() == 71);
        assert!(verify(b"s3cret", 1_795_000_000, br#"{"a":1}"#, &sig));
        assert!(!verify(b"s3cret", 1_795_000_001, br#"{"a":1}"#, &sig));
        assert!(!verify(b"other", 1_795_000_000, br#"{"a":1}"#, &sig));
        assert!(!verify(b"s3cret", 1_795_000_000, br#"{"a":2}"#, &sig));
    }

    #[test]
    fn link_tokens_bind_their_purpose() {
        let key = b"link-key";
        let t = link_token(key, &unsubscribe_purpose(7, 42, "email"));
        assert_eq!(t.len(), 32);
        assert!(verify_link_token(key, &unsubscribe_purpose(7, 42, "email"), &t));
        assert!(!verify_link_token(key, &unsubscribe_purpose(7, 43, "email"), &t));
        assert!(!verify_link_token(key, &unsubscribe_purpose(7, 42, "sms"), &t));
        assert!(!verify_link_token(b"other-key", &unsubscribe_purpose(7, 42, "email"), &t));
        assert!(!verify_link_token(key, &receipts_purpose(7, "sms"), &t));
    }
}
