//! Account rules: names, argon2id password hashes and random session tokens.
//!
//! Hashing is deliberately slow; callers run it on the blocking pool and bound
//! how many run at once (see `session`).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

/// Longest username or group name.
pub const MAX_NAME_LEN: usize = 32;
/// Longest password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A password a user may set: 1 to [`MAX_PASSWORD_LEN`] bytes.
pub fn check_password(password: &str) -> crate::error::ChatResult<()> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(crate::error::ChatError::BadRequest(format!(
            "password must be 1 to {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

/// True for 1 to 32 characters of `[A-Za-z0-9_.-]`: the rule for users, groups and nodes.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Hashes and verifies passwords with argon2id at the configured cost.
#[derive(Clone)]
pub struct PasswordHashing {
    params: Params,
}

/// The password is wrong, or the stored hash is unreadable.
#[derive(Debug, thiserror::Error)]
#[error("password does not match")]
pub struct Mismatch;

impl PasswordHashing {
    /// argon2id with `memory_kib` KiB and `iterations` passes, one lane.
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Self, String> {
        let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| e.to_string())?;
        Ok(Self { params })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$v=19$...`) holding a fresh salt and the hash.
    pub fn hash(&self, password: &str) -> String {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .expect("argon2 parameters were validated at construction")
            .to_string()
    }

    /// Checks `password` against a stored PHC string, with the parameters stored in it.
    pub fn verify(&self, password: &str, phc: &str) -> Result<(), Mismatch> {
        let parsed = PasswordHash::new(phc).map_err(|_| Mismatch)?;
        self.argon2()
            .verify_password(password.as_bytes(), &parsed)
            .map_err(|_| Mismatch)
    }
}

/// A random number (session id bases).
pub fn random_u64() -> u64 {
    rand::rng().next_u64()
}

/// A random 256-bit session token, hex encoded.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True if `token` could be one of ours (64 lowercase hex digits).
pub fn plausible_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_rule() {
        for ok in ["a", "alice", "Bob_2", "x.y-z", &"a".repeat(32)] {
            assert!(valid_name(ok), "{ok} should be valid");
        }
        for bad in ["", &"a".repeat(33), "al ice", "bob/1", "émile", "a:b", "#g", "@x"] {
            assert!(!valid_name(bad), "{bad} should be invalid");
        }
    }

    #[test]
    fn hashes_are_argon2id_salted_and_verify_only_the_right_password() {
        let h = PasswordHashing::new(64, 1).unwrap();
        let one = h.hash("hunter2");
        let two = h.hash("hunter2");
        assert!(one.starts_with("$argon2id$"), "{one}");
        assert_ne!(one, two, "each hash has its own salt");
        assert!(!one.contains("hunter2"));
        h.verify("hunter2", &one).unwrap();
        assert!(h.verify("hunter3", &one).is_err());
        assert!(h.verify("hunter2", "not a phc string").is_err());
    }

    #[test]
    fn tokens_are_random_and_plausible() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(plausible_token(&a));
        assert!(!plausible_token("short"));
        assert!(!plausible_token(&"Z".repeat(64)));
    }
}
