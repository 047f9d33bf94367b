//! WeChat's callback crypto: `msg_signature` (SHA-1 of the sorted token,
//! timestamp, nonce and `Encrypt`) and the AES-256-CBC `Encrypt` field
//! (key = base64 of the 43-character EncodingAESKey plus `=`, IV = the key's
//! first 16 bytes, PKCS#7 to 32-byte blocks; plaintext = 16 random bytes,
//! the message length as 4 big-endian bytes, the message, the receiver id).

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::{
    alphabet,
    engine::{general_purpose::STANDARD, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine,
};
use sha1::{Digest, Sha1};

/// Base64 as WeChat's keys are written: the last character may carry bits
/// a strict decoder refuses.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The key of an EncodingAESKey (43 characters of base64).
///
/// # Errors
/// When it is not 43 characters that decode to 32 bytes.
pub fn aes_key(encoding_aes_key: &str) -> Result<[u8; 32], String> {
    if encoding_aes_key.len() != 43 {
        return Err(format!("the EncodingAESKey has 43 characters, not {}", encoding_aes_key.len()));
    }
    let bytes =
        LENIENT.decode(format!("{encoding_aes_key}=")).map_err(|e| format!("the EncodingAESKey is not base64: {e}"))?;
    bytes.try_into().map_err(|_| "the EncodingAESKey does not decode to 32 bytes".to_owned())
}

/// `msg_signature`: SHA-1 (hex) of the four values sorted and concatenated.
pub fn signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    let mut parts = [token, timestamp, nonce, encrypt];
    parts.sort_unstable();
    hex::encode(Sha1::digest(parts.concat().as_bytes()))
}

/// The `Encrypt` field of `msg` for `receive_id` (corpid or appid).
pub fn encrypt(key: &[u8; 32], random: [u8; 16], msg: &str, receive_id: &str) -> String {
    let mut plain = Vec::with_capacity(20 + msg.len() + receive_id.len() + 32);
    plain.extend_from_slice(&random);
    plain.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    plain.extend_from_slice(msg.as_bytes());
    plain.extend_from_slice(receive_id.as_bytes());
    let pad = 32 - plain.len() % 32;
    plain.extend(std::iter::repeat_n(pad as u8, pad));
    let iv: [u8; 16] = key[..16].try_into().unwrap_or_default();
    let cipher = cbc::Encryptor::<aes::Aes256>::new(key.into(), &iv.into());
    STANDARD.encode(cipher.encrypt_padded_vec_mut::<NoPadding>(&plain))
}

/// Decrypts an `Encrypt` field: (message, receive id).
///
/// # Errors
/// When it is not base64, not whole blocks, or its padding or length is wrong.
pub fn decrypt(key: &[u8; 32], encrypted: &str) -> Result<(String, String), String> {
    let data = STANDARD.decode(encrypted.trim()).map_err(|e| format!("not base64: {e}"))?;
    let iv: [u8; 16] = key[..16].try_into().unwrap_or_default();
    let cipher = cbc::Decryptor::<aes::Aes256>::new(key.into(), &iv.into());
    let plain = cipher.decrypt_padded_vec_mut::<NoPadding>(&data).map_err(|_| "not whole AES blocks".to_owned())?;
    let pad = usize::from(*plain.last().ok_or("empty")?);
    if !(1..=32).contains(&pad) || pad > plain.len() {
        return Err("bad padding".into());
    }
    let plain = &plain[..plain.len() - pad];
    if plain.len() < 20 {
        return Err("too short".into());
    }
    let len = u32::from_be_bytes([plain[16], plain[17], plain[18], plain[19]]) as usize;
    let body = plain.get(20..20 + len).ok_or("bad length")?;
    let id = &plain[20 + len..];
    Ok((
        String::from_utf8(body.to_vec()).map_err(|_| "message is not UTF-8")?,
        String::from_utf8(id.to_vec()).map_err(|_| "receive id is not UTF-8")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published test vector of wechatpy's own suite
    /// (`tests/test_enterprise_crypto.py`, `CryptoTestCase`): its
    /// `check_signature` accepts this signature of this echo string, which
    /// decrypts to a message for the corp id.
    #[test]
    fn wechatpy_test_vector() {
        let (token, key, corp_id) = ("123456", "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR", "wx49f0ab532d5d035a");
        let echo = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
        assert_eq!(signature(token, "1411443780", "437374425", echo), "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96");
        // wechatpy's "should fail" case: another nonce.
        assert_ne!(signature(token, "1411443780", "437374424", echo), "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96");
        let key = aes_key(key).unwrap();
        let (msg, receive_id) = decrypt(&key, echo).unwrap();
        assert_eq!(receive_id, corp_id);
        assert!(!msg.is_empty());
        // The encryption vector of the same author's Rust port (wechat-rust,
        // `PrpCrypto::encrypt("test", "rust")` with the random "1234567890123456").
        assert_eq!(encrypt(&key, *b"1234567890123456", "test", "rust"), "9s4gMv99m88kKTh/H8IdkNiFGeG9pd7vNWl50fGRWXY=");
    }

    #[test]
    fn round_trip() {
        let key = aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        let enc = encrypt(&key, [7; 16], "<xml>消息</xml>", "wx123");
        assert_eq!(decrypt(&key, &enc).unwrap(), ("<xml>消息</xml>".to_owned(), "wx123".to_owned()));
        // Whole 32-byte blocks (16 bytes of AES each, padded to 32).
        assert_eq!(STANDARD.decode(&enc).unwrap().len() % 32, 0);
        assert!(aes_key("short").is_err());
    }
}
