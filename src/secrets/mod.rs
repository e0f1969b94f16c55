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

/// The Key Vault tag (and local column) recording which tenant a secret belongs to. Compared
/// exactly: `acme` does not own what `acme-corp` or `ACME` owns.
pub const OWNER_TAG: &str = "sophiaTenantId";

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
    /// kept as `keyvaultSecretId`). SOPHIA's own secrets (signing keys) have no owner.
    async fn set(&self, name: &SecretName, value: &SecretString) -> SecretResult<String> {
        self.set_owned(name, value, None).await
    }

    /// Stores a new version of `name` bound to `owner` (the tenant whose credentials it
    /// holds): Key Vault records the binding as the version's `sophiaTenantId` tag, the local
    /// store in the sealed row.
    async fn set_owned(
        &self,
        name: &SecretName,
        value: &SecretString,
        owner: Option<&crate::domain::TenantId>,
    ) -> SecretResult<String>;

    /// The tenant the secret an identifier names (that version, or the latest) is bound to;
    /// `None` when it is bound to nobody. `NotFound` when there is no such secret.
    async fn owner(&self, id: &str) -> SecretResult<Option<String>>;

    /// Reads a secret and the tenant it is bound to, in one read where the store allows.
    async fn get_owned(&self, id: &str) -> SecretResult<(SecretString, Option<String>)> {
        Ok((self.get(id).await?, self.owner(id).await?))
    }

    /// Binds the secret an identifier names (that version, or the latest) to `owner`. Only a
    /// platform admin's binding of an existing secret calls this.
    async fn bind(&self, id: &str, owner: &crate::domain::TenantId) -> SecretResult<()>;

    /// Reads the secret an identifier names (a given version, or the latest).
    async fn get(&self, id: &str) -> SecretResult<SecretString>;

    /// Reads the latest version of `name`, if it exists.
    async fn get_latest(&self, name: &SecretName) -> SecretResult<Option<SecretString>>;

    /// Removes every version of `name` (used to undo a write whose document write failed).
    async fn delete(&self, name: &SecretName) -> SecretResult<()>;

    /// Parses an identifier of this store (rejecting ones that belong elsewhere).
    fn parse_id(&self, id: &str) -> SecretResult<SecretRef>;
}

/// The latest value of one of SOPHIA's own secrets (a signing key), generating and storing it
/// on first use; read back after writing, so concurrent first starts converge on what the
/// store holds.
pub async fn latest_or_create(
    store: &dyn SecretStore,
    name: &SecretName,
    generate: impl FnOnce() -> anyhow::Result<SecretString>,
) -> anyhow::Result<SecretString> {
    if let Some(value) = store.get_latest(name).await? {
        return Ok(value);
    }
    let value = generate()?;
    store.set(name, &value).await?;
    Ok(store.get_latest(name).await?.unwrap_or(value))
}

/// The credential bundle a secret holds for `tenant`: empty when the secret is gone, or when
/// it is bound to another tenant (never used for this one; logged).
pub async fn tenant_bundle(
    store: &dyn SecretStore,
    tenant: &crate::domain::TenantId,
    id: &str,
) -> SecretResult<CredentialBundle> {
    match store.get_owned(id).await {
        Ok((_, Some(owner))) if owner != tenant.as_str() => {
            tracing::error!(tenant.id = %tenant, "a credential secret bound to another company was not used");
            Ok(CredentialBundle::default())
        }
        Ok((secret, _)) => Ok(CredentialBundle::from_secret(&secret)),
        Err(SecretError::NotFound) => Ok(CredentialBundle::default()),
        Err(e) => Err(e),
    }
}
