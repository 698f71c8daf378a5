//! Challenge-response authentication (`hmac-sha256`): the proofs both sides compute, in one
//! place so lockd and pklock.so cannot drift apart. docs/PROTOCOL.md ("Authentication")
//! is the byte-exact contract.
//!
//! The key never crosses the wire: the server sends a fresh random nonce in `hello`, the
//! client answers with its own nonce and `HMAC-SHA256(key, "pklock-auth-v1\n" + server
//! nonce + "\n" + client nonce)`, and the server proves it knows the key too with the same
//! HMAC under the label `pklock-server-v1`. A captured exchange is useless later: the server
//! never issues the same nonce twice and takes each one back after a single `auth`.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The `method` of the challenge in `hello`'s result.
pub const METHOD: &str = "hmac-sha256";

/// Random bytes in a nonce; on the wire it is twice as many lowercase hex digits.
pub const NONCE_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the auth key is empty")]
    EmptyKey,
    #[error("a nonce must be {} lowercase hex digits", NONCE_BYTES * 2)]
    BadNonce,
    #[error("the operating system gave no random bytes: {0}")]
    Random(getrandom::Error),
}

/// The shared secret. Its `Debug` shows nothing, so a logged config never leaks it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AuthKey(Vec<u8>);

impl AuthKey {
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self, AuthError> {
        let key = key.into();
        if key.is_empty() {
            return Err(AuthError::EmptyKey);
        }
        Ok(AuthKey(key))
    }
}

impl AuthKey {
    /// The key's bytes, for the compatibility protocols that sign with it their own way
    /// (MediaWiki's LockServerDaemon). Never log them.
    pub fn secret_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(hidden)")
    }
}

/// A nonce as it travels: 64 lowercase hex digits (the proofs hash this text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce(String);

impl Nonce {
    /// A fresh nonce from the operating system's random source.
    pub fn random() -> Result<Self, AuthError> {
        let mut bytes = [0u8; NONCE_BYTES];
        getrandom::fill(&mut bytes).map_err(AuthError::Random)?;
        Ok(Nonce(hex(&bytes)))
    }

    /// A nonce received from the peer; anything but exactly 64 lowercase hex digits is
    /// refused, so both sides hash the same text.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let well_formed = text.len() == NONCE_BYTES * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(AuthError::BadNonce);
        }
        Ok(Nonce(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which side proves it knows the key; each has its own label, so one side's proof can
/// never be reflected back as the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Sent by the client in `auth`.
    Client,
    /// Sent by the server in `auth`'s result.
    Server,
}

impl Proof {
    fn label(self) -> &'static [u8] {
        match self {
            Proof::Client => b"pklock-auth-v1\n",
            Proof::Server => b"pklock-server-v1\n",
        }
    }

    fn mac(self, key: &AuthKey, server_nonce: &Nonce, client_nonce: &Nonce) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes a key of any length");
        mac.update(self.label());
        mac.update(server_nonce.0.as_bytes());
        mac.update(b"\n");
        mac.update(client_nonce.0.as_bytes());
        mac
    }

    /// The proof as sent: 64 lowercase hex digits.
    pub fn compute(self, key: &AuthKey, server_nonce: &Nonce, client_nonce: &Nonce) -> String {
        hex(&self.mac(key, server_nonce, client_nonce).finalize().into_bytes())
    }

    /// Whether `proof` (as received) is right; compared in constant time.
    pub fn verify(self, key: &AuthKey, server_nonce: &Nonce, client_nonce: &Nonce, proof: &str) -> bool {
        let Some(tag) = unhex(proof) else {
            return false;
        };
        self.mac(key, server_nonce, client_nonce).verify_slice(&tag).is_ok()
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(digit: char) -> Nonce {
        Nonce::parse(&digit.to_string().repeat(NONCE_BYTES * 2)).unwrap()
    }

    #[test]
    fn proofs_match_an_independent_hmac() {
        // HMAC-SHA256("key", "pklock-auth-v1\n" + "a"*64 + "\n" + "b"*64), computed with
        // `openssl dgst -sha256 -hmac key`, so the documented bytes are what is hashed.
        let key = AuthKey::new("key").unwrap();
        let client = Proof::Client.compute(&key, &nonce('a'), &nonce('b'));
        assert_eq!(client, "e5665f1ed62cc580596ddd7b39a3cab3226c5a5cd62ef8bbe1bfd16c3695f15c");
        let server = Proof::Server.compute(&key, &nonce('a'), &nonce('b'));
        assert_eq!(server, "4d7fade1012c153dc4522381c65ff0ebff0f0882c576e3f58fb780356ddfcf21");
        let proof = client;
        assert!(Proof::Client.verify(&key, &nonce('a'), &nonce('b'), &proof));
    }

    #[test]
    fn a_proof_is_bound_to_key_nonces_and_side() {
        let key = AuthKey::new("key").unwrap();
        let proof = Proof::Client.compute(&key, &nonce('a'), &nonce('b'));
        assert!(!Proof::Client.verify(&AuthKey::new("kez").unwrap(), &nonce('a'), &nonce('b'), &proof));
        assert!(!Proof::Client.verify(&key, &nonce('c'), &nonce('b'), &proof));
        assert!(!Proof::Client.verify(&key, &nonce('a'), &nonce('c'), &proof));
        assert!(!Proof::Server.verify(&key, &nonce('a'), &nonce('b'), &proof), "not reflectable");
        assert!(!Proof::Client.verify(&key, &nonce('a'), &nonce('b'), &proof[..62]));
        assert!(!Proof::Client.verify(&key, &nonce('a'), &nonce('b'), "zz"));
    }

    #[test]
    fn nonces_are_fresh_and_strictly_formatted() {
        let (one, two) = (Nonce::random().unwrap(), Nonce::random().unwrap());
        assert_ne!(one, two);
        assert!(Nonce::parse(one.as_str()).is_ok());
        assert!(Nonce::parse(&one.as_str().to_uppercase()).is_err());
        assert!(Nonce::parse(&one.as_str()[1..]).is_err());
        assert!(Nonce::parse("").is_err());
    }

    #[test]
    fn keys_are_never_empty_and_never_printed() {
        assert!(AuthKey::new("").is_err());
        assert_eq!(format!("{:?}", AuthKey::new("s3cret").unwrap()), "AuthKey(hidden)");
    }
}
