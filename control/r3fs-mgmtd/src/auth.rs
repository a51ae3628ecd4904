//! User tokens: random secrets, stored only as SHA-256 hashes.
//!
//! A token is `r3fs-` followed by 64 hex digits (256 random bits from the thread-local CSPRNG).
//! Because tokens are uniformly random and long, a plain SHA-256 (no salt, no stretching) is enough:
//! the hash is the lookup key (`mgmtd/token/<hash hex>` -> uid), so checking a token is one KV read and
//! nothing secret is ever compared byte by byte in memory.

use rand::RngCore;
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "r3fs-";
const TOKEN_RANDOM_BYTES: usize = 32;
/// Longest token accepted from a request (bounds the work done on junk input).
pub const TOKEN_LEN_MAX: usize = 256;

/// A fresh random token.
pub fn generate_token() -> String {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex(&bytes))
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token's SHA-256 as lower-case hex: the stored form and the lookup key.
pub fn token_hash_hex(token: &str) -> String {
    hex(&token_hash(token))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// What a call needs from its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Any valid token.
    User,
    /// A valid token of an admin user.
    Admin,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_well_formed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn hash_matches_a_known_vector() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hex(&token_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
