//! Secret storage behind one trait: Key Vault in Azure, an AES-256-GCM encrypted table
//! locally. Values are `SecretString`s, which never print.

pub mod bundle;
pub mod keyvault;
pub mod local;

use std::fmt;

use async_trait::async_trait;
use secrecy::SecretString;

pub use bundle::CredentialBundle;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret not found")]
    NotFound,
    #[error("{0}")]
    InvalidId(String),
    #[error("secret store unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    #[error("secret store error: {0}")]
    Internal(#[source] anyhow::Error),
}

pub type SecretResult<T> = Result<T, SecretError>;

/// A secret name valid in Key Vault and locally: 1–127 characters of `[0-9A-Za-z-]`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let ok = !raw.is_empty()
            && raw.len() <= 127
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(SecretError::InvalidId(
                "secret names are 1-127 characters of letters, digits and '-'".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name under which an instance's credential bundle is kept.
    pub fn for_instance(id: &crate::domain::InstanceId) -> Self {
        Self(format!("sophia-instance-{id}"))
    }

    /// Names SOPHIA manages itself; an admin may not point an instance at one of them.
    pub fn is_reserved(&self) -> bool {
        self.0.to_ascii_lowercase().starts_with("sophia-")
    }
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretName({})", self.0)
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference to one secret (and, when known, one version of it). It is a pointer, not a
/// secret: it may be stored and shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub name: SecretName,
    pub version: Option<String>,
}

/// Where secrets are kept.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    /// Stores a new version of `name`; returns the full identifier of that version (the value
    /// kept as `keyvaultSecretId`).
    async fn set(&self, name: &SecretName, value: &SecretString) -> SecretResult<String>;

    /// Reads the secret an identifier names (a given version, or the latest).
    async fn get(&self, id: &str) -> SecretResult<SecretString>;

    /// Reads the latest version of `name`, if it exists.
    async fn get_latest(&self, name: &SecretName) -> SecretResult<Option<SecretString>>;

    /// Removes every version of `name` (used to undo a write whose document write failed).
    async fn delete(&self, name: &SecretName) -> SecretResult<()>;

    /// Parses an identifier of this store (rejecting ones that belong elsewhere).
    fn parse_id(&self, id: &str) -> SecretResult<SecretRef>;
}
