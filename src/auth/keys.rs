//! Agent access keys: `sph_` + 36 base62 characters (≈214 bits) from the OS CSPRNG, stored
//! only as a bcrypt hash, verified off the async runtime.

use std::fmt;
use std::sync::Arc;

use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OnceCell, Semaphore};

pub const KEY_PREFIX: &str = "sph_";
const BODY_LEN: usize = 36;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// An access key in clear. Exists only while a key is generated (shown once) or checked.
pub struct AccessKey(SecretString);

impl AccessKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut out = String::with_capacity(KEY_PREFIX.len() + BODY_LEN);
        out.push_str(KEY_PREFIX);
        let mut buf = [0u8; 64];
        while out.len() < KEY_PREFIX.len() + BODY_LEN {
            OsRng.fill_bytes(&mut buf);
            for &b in &buf {
                // Rejection sampling keeps every character equally likely (248 = 4 × 62).
                if b < 248 && out.len() < KEY_PREFIX.len() + BODY_LEN {
                    out.push(BASE62[(b % 62) as usize] as char);
                }
            }
        }
        Self(SecretString::from(out))
    }

    /// Parses a presented key; `None` when it cannot be a SOPHIA key.
    pub fn parse(raw: &str) -> Option<Self> {
        let body = raw.strip_prefix(KEY_PREFIX)?;
        (body.len() == BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| Self(SecretString::from(raw.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The last four characters, kept in clear to help humans tell keys apart.
    pub fn last4(&self) -> String {
        let s = self.expose();
        s[s.len() - 4..].to_owned()
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessKey(****{})", self.last4())
    }
}

/// Hashes and verifies keys with bcrypt on the blocking pool, at most `permits` at a time
/// (bcrypt is deliberately slow; unbounded parallel verification would starve the host).
#[derive(Clone)]
pub struct KeyHasher {
    cost: u32,
    permits: Arc<Semaphore>,
    dummy: Arc<OnceCell<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("bcrypt failed: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("hasher closed")]
    Closed,
}

impl KeyHasher {
    pub fn new(cost: u32) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            cost,
            permits: Arc::new(Semaphore::new(cores * 2)),
            dummy: Arc::new(OnceCell::new()),
        }
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    pub async fn hash(&self, key: &AccessKey) -> Result<String, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::Closed)?;
        let plain = SecretString::from(key.expose().to_owned());
        let cost = self.cost;
        Ok(
            tokio::task::spawn_blocking(move || bcrypt::hash(plain.expose_secret(), cost))
                .await??,
        )
    }

    /// Checks `key` against `hash`. With no hash (unknown company, no key), a dummy hash of
    /// the same cost is checked instead, so timing does not reveal which case occurred.
    pub async fn verify(
        &self,
        key: Option<&AccessKey>,
        hash: Option<&str>,
    ) -> Result<bool, HashError> {
        let (candidate, target, real) = match (key, hash) {
            (Some(k), Some(h)) => (k.expose().to_owned(), h.to_owned(), true),
            _ => (
                KEY_PREFIX.to_owned() + &"0".repeat(BODY_LEN),
                self.dummy_hash().await?,
                false,
            ),
        };
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::Closed)?;
        let candidate = SecretString::from(candidate);
        let ok = tokio::task::spawn_blocking(move || {
            bcrypt::verify(candidate.expose_secret(), &target).unwrap_or(false)
        })
        .await?;
        Ok(ok && real)
    }

    async fn dummy_hash(&self) -> Result<String, HashError> {
        let cost = self.cost;
        self.dummy
            .get_or_try_init(|| async move {
                let dummy = AccessKey::generate();
                let plain = SecretString::from(dummy.expose().to_owned());
                Ok::<_, HashError>(
                    tokio::task::spawn_blocking(move || bcrypt::hash(plain.expose_secret(), cost))
                        .await??,
                )
            })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        for _ in 0..200 {
            let key = AccessKey::generate();
            let s = key.expose();
            assert_eq!(s.len(), 40);
            assert!(s.starts_with("sph_"));
            assert!(AccessKey::parse(s).is_some());
        }
        assert_ne!(
            AccessKey::generate().expose(),
            AccessKey::generate().expose()
        );
    }

    #[test]
    fn generated_keys_use_the_whole_alphabet() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            seen.extend(AccessKey::generate().expose()[4..].bytes());
        }
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn parse_rejects_other_shapes() {
        assert!(AccessKey::parse("sph_short").is_none());
        assert!(AccessKey::parse(&format!("key_{}", "a".repeat(36))).is_none());
        assert!(AccessKey::parse(&format!("sph_{}!", "a".repeat(35))).is_none());
    }

    #[test]
    fn debug_shows_only_the_last_four() {
        let key = AccessKey::generate();
        let debug = format!("{key:?}");
        assert!(!debug.contains(&key.expose()[4..36]), "{debug}");
        assert!(debug.ends_with(&format!("{})", key.last4())));
    }

    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = KeyHasher::new(4);
        let key = AccessKey::generate();
        let hash = hasher.hash(&key).await.unwrap();
        assert!(hash.starts_with("$2"));
        assert!(!hash.contains(key.expose()));
        assert!(hasher.verify(Some(&key), Some(&hash)).await.unwrap());
        let other = AccessKey::generate();
        assert!(!hasher.verify(Some(&other), Some(&hash)).await.unwrap());
        assert!(!hasher.verify(None, Some(&hash)).await.unwrap());
        assert!(!hasher.verify(Some(&key), None).await.unwrap());
    }
}
