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
