//! Sealed datagrams: small messages between agents of one site over plain UDP, encrypted and
//! authenticated with a key every agent of the fabric holds (`swim.key`, written beside the CA
//! by `pki::init_ca`), as Serf seals its gossip.
//!
//! SWIM sends two small messages per probe. Over QUIC each one is a stream with its own
//! acknowledgement packet and timers on a connection to every member of the site; over a sealed
//! datagram a probe is exactly two packets, and a site of any size needs no connection per pair.
//!
//! A datagram is `version (1) | sender node id (8, big-endian) | nonce (12) | ciphertext + tag`;
//! the version and sender are the associated data, so a datagram names its sender only if it was
//! sealed with the key. Nonces are random (96 bits).
//!
//! Invariant: `open` returns a sender and a body only for a datagram sealed with the same key.
//! Does not: guard against replay. The protocol on top must tolerate a replayed message (SWIM
//! does: acks carry the probe's sequence number, and old incarnations lose to new ones).

use std::fmt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + NONCE_LEN;
const KEY_LEN: usize = 32;

/// The largest datagram `seal` produces (an IPv4 UDP payload's limit).
pub const MAX_DATAGRAM: usize = 65_507;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("datagram of {0} bytes is too short")]
    Short(usize),
    #[error("datagram version {0} is not {VERSION}")]
    Version(u8),
    #[error("datagram does not open with this fabric's key")]
    Forged,
    #[error("message of {0} bytes does not fit in a datagram")]
    TooLarge(usize),
    #[error("the system's random source failed; no nonce to seal with")]
    NoRandomness,
}

/// The fabric's datagram key.
pub struct SealKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// Reads a key file: 64 hex digits (surrounding whitespace allowed).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| KeyError::Malformed {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex = text.trim();
        if hex.len() != KEY_LEN * 2 {
            return Err(format!(
                "a datagram key is {} hex digits, this has {}",
                KEY_LEN * 2,
                hex.len()
            ));
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("not a hex digit pair at offset {}", 2 * i))?;
        }
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| "unusable key".to_string())?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// A fresh random key, as the text a key file holds.
    pub fn generate() -> Result<String, String> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "no randomness for a datagram key".to_string())?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Seals `body` from node `from`.
    pub fn seal(&self, from: u64, body: &[u8]) -> Result<Vec<u8>, SealError> {
        let len = HEADER + body.len() + CHACHA20_POLY1305.tag_len();
        if len > MAX_DATAGRAM {
            return Err(SealError::TooLarge(body.len()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        // A failing system RNG would leave the nonce zero; refuse rather than reuse it.
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SealError::NoRandomness)?;
        let mut out = Vec::with_capacity(len);
        out.push(VERSION);
        out.extend_from_slice(&from.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = body.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..9]),
                &mut sealed,
            )
            .map_err(|_| SealError::TooLarge(body.len()))?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a datagram: its sender and body.
    pub fn open(&self, datagram: &[u8]) -> Result<(u64, Vec<u8>), SealError> {
        if datagram.len() < HEADER + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Short(datagram.len()));
        }
        if datagram[0] != VERSION {
            return Err(SealError::Version(datagram[0]));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&datagram[1..9]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&datagram[9..HEADER]);
        let mut body = datagram[HEADER..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&datagram[..9]),
                &mut body,
            )
            .map_err(|_| SealError::Forged)?;
        let n = plain.len();
        body.truncate(n);
        Ok((u64::from_be_bytes(id), body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealKey {
        SealKey::parse(&SealKey::generate().expect("rng")).expect("key")
    }

    #[test]
    fn a_sealed_datagram_opens_with_its_key_and_names_its_sender() {
        let k = key();
        let d = k.seal(42, b"ping").expect("seal");
        assert_eq!(k.open(&d), Ok((42, b"ping".to_vec())));
        assert_ne!(&d[HEADER..HEADER + 4], b"ping", "the body is encrypted");
    }

    #[test]
    fn another_key_a_changed_sender_or_a_flipped_bit_does_not_open() {
        let (k, other) = (key(), key());
        let d = k.seal(42, b"ping").expect("seal");
        assert_eq!(other.open(&d), Err(SealError::Forged));
        let mut renamed = d.clone();
        renamed[8] ^= 1;
        assert_eq!(k.open(&renamed), Err(SealError::Forged));
        let mut flipped = d.clone();
        *flipped.last_mut().expect("bytes") ^= 1;
        assert_eq!(k.open(&flipped), Err(SealError::Forged));
        assert_eq!(k.open(&d[..10]), Err(SealError::Short(10)));
        let mut v2 = d;
        v2[0] = 2;
        assert_eq!(k.open(&v2), Err(SealError::Version(2)));
    }

    #[test]
    fn key_text_must_be_64_hex_digits() {
        assert!(
            SealKey::parse("abcd")
                .expect_err("short")
                .contains("64 hex digits")
        );
        let bad = "zz".repeat(32);
        assert!(
            SealKey::parse(&bad)
                .expect_err("not hex")
                .contains("hex digit")
        );
        let good = format!("  {}\n", "0f".repeat(32));
        assert!(SealKey::parse(&good).is_ok());
    }
}
