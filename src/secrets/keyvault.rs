//! The production `SecretStore`: Azure Key Vault secrets through
//! `azure_security_keyvault_secrets` 1.x, authenticated with an Entra token.
//!
//! * Each instance's credential bundle is one secret, `sophia-instance-<instance id>` (valid
//!   Key Vault characters); `keyvaultSecretId` is the full identifier the vault returns,
//!   version included (`https://<vault>.vault.azure.net/secrets/<name>/<version>`).
//! * An admin-supplied identifier is read if it names a secret of the configured vault;
//!   identifiers of any other vault are refused (SOPHIA's identity would not be allowed there,
//!   and following them would let a request make SOPHIA fetch arbitrary URLs).
//! * Throttling (429) and transient 5xx answers are retried by the SDK's exponential policy,
//!   which honours `Retry-After`; what still fails is `SecretError::Unavailable`.
//! * The service-token signing keys (`sophia-token-signing-key[-previous]`, PKCS#8 PEM) live
//!   here too when this store is configured.
//!
//! A vault URL of `http://127.0.0.1:<port>` (or `localhost`) is accepted for local stand-ins:
//! the SDK only sends bearer tokens over https, so the client is given `https://…` and a
//! transport that speaks plain HTTP to the loopback address. Nothing else may use http.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{
    AsyncRawResponse, ClientOptions, ExponentialRetryOptions, HttpClient, Request, RetryOptions,
    StatusCode, Url,
};
use azure_security_keyvault_secrets::models::{
    Secret, SecretClientGetSecretOptions, SecretClientUpdateSecretPropertiesOptions,
    SetSecretParameters, UpdateSecretPropertiesParameters,
};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};

use crate::telemetry::deps::{Service, TracedHttp};
use secrecy::{ExposeSecret, SecretString};

use super::{OWNER_TAG, SecretError, SecretName, SecretRef, SecretResult, SecretStore};

/// Key Vault's data-plane scope (the challenge names it too).
pub const KEYVAULT_SCOPE: &str = "https://vault.azure.net/.default";

/// Retries of a throttled or failing call, and the time they may take in all.
const MAX_RETRIES: u32 = 5;
const MAX_RETRY_ELAPSED_SECS: i64 = 20;

/// Key Vault secret store.
pub struct KeyVaultSecretStore {
    client: SecretClient,
    /// `https://host[:port]` as identifiers spell it.
    vault: String,
    host: String,
    port: Option<u16>,
}

impl std::fmt::Debug for KeyVaultSecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyVaultSecretStore({})", self.vault)
    }
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1")
}

/// Sends `https://<loopback>` requests as plain HTTP (local stand-ins only).
#[derive(Debug)]
struct LoopbackHttp {
    inner: Arc<dyn HttpClient>,
}

#[async_trait]
impl HttpClient for LoopbackHttp {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut request = request.clone();
        let loopback = request.url().host_str().is_some_and(is_loopback);
        if loopback && request.url().scheme() == "https" {
            // Url::set_scheme between "https" and "http" always succeeds.
            let _ = request.url_mut().set_scheme("http");
        }
        self.inner.execute_request(&request).await
    }
}

impl KeyVaultSecretStore {
    /// `vault_url` is `SOPHIA_KEYVAULT_URL` (`https://<name>.vault.azure.net`).
    pub fn new(vault_url: &str, credential: Arc<dyn TokenCredential>) -> anyhow::Result<Self> {
        let url = Url::parse(vault_url.trim())
            .map_err(|e| anyhow::anyhow!("SOPHIA_KEYVAULT_URL '{vault_url}' is not a URL: {e}"))?;
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("SOPHIA_KEYVAULT_URL '{vault_url}' has no host"))?
            .to_owned();
        let local = is_loopback(&host);
        match url.scheme() {
            "https" => {}
            "http" if local => {}
            _ => anyhow::bail!(
                "SOPHIA_KEYVAULT_URL must be https://<vault>.vault.azure.net (http is only \
                 accepted for a loopback stand-in)"
            ),
        }
        if url.path() != "/" || url.query().is_some() {
            anyhow::bail!("SOPHIA_KEYVAULT_URL is the vault's base URL, without a path");
        }
        let port = url.port();
        let vault = match port {
            Some(p) => format!("https://{host}:{p}"),
            None => format!("https://{host}"),
        };
        let mut client_options = ClientOptions {
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(200),
                max_retries: MAX_RETRIES,
                max_total_elapsed: azure_core::time::Duration::seconds(MAX_RETRY_ELAPSED_SECS),
                max_delay: azure_core::time::Duration::seconds(10),
            }),
            ..Default::default()
        };
        let http: Arc<dyn HttpClient> = if local {
            Arc::new(LoopbackHttp {
                inner: azure_core::http::new_http_client(None),
            })
        } else {
            azure_core::http::new_http_client(None)
        };
        // Every secret read inside a request is a Key Vault dependency in App Insights.
        client_options.transport = Some(TracedHttp::transport(http, Service::KeyVault));
        let options = SecretClientOptions {
            client_options,
            // A loopback stand-in cannot be a subdomain of the challenge's resource.
            verify_challenge_resource: Some(!local),
            ..Default::default()
        };
        let client = SecretClient::new(&format!("{vault}/"), credential, Some(options))
            .map_err(|e| anyhow::anyhow!("Key Vault client for {vault}: {e}"))?;
        Ok(Self {
            client,
            vault,
            host,
            port,
        })
    }

    /// The vault's base URL as identifiers spell it.
    pub fn vault(&self) -> &str {
        &self.vault
    }

    async fn bundle(&self, name: &SecretName, version: Option<String>) -> SecretResult<Secret> {
        let options = SecretClientGetSecretOptions {
            secret_version: version,
            ..Default::default()
        };
        let response = self
            .client
            .get_secret(name.as_str(), Some(options))
            .await
            .map_err(map_err)?;
        response
            .into_model()
            .map_err(|e| SecretError::Internal(anyhow::anyhow!("Key Vault answer: {e}")))
    }
}

/// The value of a secret bundle the vault answered.
fn value_of(secret: Secret) -> SecretResult<SecretString> {
    secret
        .value
        .map(SecretString::from)
        .ok_or_else(|| SecretError::Internal(anyhow::anyhow!("Key Vault returned no value")))
}

fn map_err(e: azure_core::Error) -> SecretError {
    use azure_core::error::ErrorKind;
    match e.kind() {
        ErrorKind::HttpResponse { status, .. } => match *status {
            StatusCode::NotFound => SecretError::NotFound,
            StatusCode::Unauthorized | StatusCode::Forbidden => {
                SecretError::Internal(anyhow::anyhow!(
                    "Key Vault refused SOPHIA's identity (HTTP {}); it needs the 'Key Vault \
                     Secrets Officer' role on the vault (or 'Key Vault Secrets User' to read only)",
                    u16::from(*status)
                ))
            }
            StatusCode::TooManyRequests => SecretError::Unavailable(anyhow::anyhow!(
                "Key Vault is throttling SOPHIA (HTTP 429) after {MAX_RETRIES} retries"
            )),
            s if u16::from(s) >= 500 || s == StatusCode::RequestTimeout => {
                SecretError::Unavailable(anyhow::anyhow!(
                    "Key Vault answered HTTP {}",
                    u16::from(s)
                ))
            }
            s => SecretError::Internal(anyhow::anyhow!(
                "Key Vault answered HTTP {}: {}",
                u16::from(s),
                first_line(&e)
            )),
        },
        ErrorKind::Io | ErrorKind::Connection => {
            SecretError::Unavailable(anyhow::anyhow!("Key Vault unreachable: {}", first_line(&e)))
        }
        ErrorKind::Credential => SecretError::Unavailable(anyhow::anyhow!(
            "no Entra token for Key Vault: {}",
            first_line(&e)
        )),
        _ => SecretError::Internal(anyhow::anyhow!("Key Vault: {}", first_line(&e))),
    }
}

fn first_line(e: &azure_core::Error) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

#[async_trait]
impl SecretStore for KeyVaultSecretStore {
    fn backend(&self) -> &'static str {
        "keyvault"
    }

    async fn set_owned(
        &self,
        name: &SecretName,
        value: &SecretString,
        owner: Option<&crate::domain::TenantId>,
    ) -> SecretResult<String> {
        let parameters = SetSecretParameters {
            value: Some(value.expose_secret().to_owned()),
            tags: owner.map(|o| {
                std::collections::HashMap::from([(OWNER_TAG.to_owned(), o.as_str().to_owned())])
            }),
            ..Default::default()
        };
        let body = parameters
            .try_into()
            .map_err(|e: azure_core::Error| SecretError::Internal(e.into()))?;
        let response = self
            .client
            .set_secret(name.as_str(), body, None)
            .await
            .map_err(map_err)?;
        let secret: Secret = response
            .into_model()
            .map_err(|e| SecretError::Internal(anyhow::anyhow!("Key Vault answer: {e}")))?;
        let id = secret.id.ok_or_else(|| {
            SecretError::Internal(anyhow::anyhow!("Key Vault returned no secret id"))
        })?;
        // Check (and normalise) what the vault answered: it is stored and shown.
        let reference = self.parse_id(&id)?;
        match reference.version {
            Some(version) if reference.name == *name => {
                Ok(format!("{}/secrets/{}/{version}", self.vault, name))
            }
            _ => Err(SecretError::Internal(anyhow::anyhow!(
                "Key Vault returned an unexpected secret id"
            ))),
        }
    }

    async fn get(&self, id: &str) -> SecretResult<SecretString> {
        self.get_owned(id).await.map(|(value, _)| value)
    }

    async fn get_owned(&self, id: &str) -> SecretResult<(SecretString, Option<String>)> {
        let reference = self.parse_id(id)?;
        let mut secret = self.bundle(&reference.name, reference.version).await?;
        let owner = secret.tags.as_mut().and_then(|tags| tags.remove(OWNER_TAG));
        Ok((value_of(secret)?, owner))
    }

    async fn owner(&self, id: &str) -> SecretResult<Option<String>> {
        self.get_owned(id).await.map(|(_, owner)| owner)
    }

    async fn bind(&self, id: &str, owner: &crate::domain::TenantId) -> SecretResult<()> {
        let reference = self.parse_id(id)?;
        // Tags are per version and an update replaces them all: keep the others.
        let current = self
            .bundle(&reference.name, reference.version.clone())
            .await?;
        let version = match reference.version {
            Some(v) => v,
            None => current
                .id
                .as_deref()
                .and_then(|id| self.parse_id(id).ok())
                .and_then(|r| r.version)
                .ok_or_else(|| {
                    SecretError::Internal(anyhow::anyhow!("Key Vault returned no secret version"))
                })?,
        };
        let mut tags = current.tags.unwrap_or_default();
        tags.insert(OWNER_TAG.to_owned(), owner.as_str().to_owned());
        let parameters = UpdateSecretPropertiesParameters {
            tags: Some(tags),
            ..Default::default()
        };
        let body = parameters
            .try_into()
            .map_err(|e: azure_core::Error| SecretError::Internal(e.into()))?;
        let options = SecretClientUpdateSecretPropertiesOptions {
            secret_version: Some(version),
            ..Default::default()
        };
        self.client
            .update_secret_properties(reference.name.as_str(), body, Some(options))
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn get_latest(&self, name: &SecretName) -> SecretResult<Option<SecretString>> {
        match self.bundle(name, None).await {
            Ok(secret) => value_of(secret).map(Some),
            Err(SecretError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, name: &SecretName) -> SecretResult<()> {
        // Soft delete: the vault keeps it (recoverable) for its retention period.
        match self.client.delete_secret(name.as_str(), None).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(e) {
                SecretError::NotFound => Ok(()),
                other => Err(other),
            },
        }
    }

    fn parse_id(&self, id: &str) -> SecretResult<SecretRef> {
        let wrong_vault = || {
            SecretError::InvalidId(format!(
                "keyvaultSecretId must name a secret of this deployment's vault: \
                 '{}/secrets/<name>[/<version>]'",
                self.vault
            ))
        };
        let url = Url::parse(id.trim()).map_err(|_| wrong_vault())?;
        let scheme_ok =
            url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&self.host));
        let same_vault = url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && url.port() == self.port;
        if !scheme_ok
            || !same_vault
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
        {
            return Err(wrong_vault());
        }
        let mut segments = url.path().trim_start_matches('/').split('/');
        if segments.next() != Some("secrets") {
            return Err(wrong_vault());
        }
        let name = SecretName::parse(segments.next().unwrap_or_default())?;
        let version = match segments.next() {
            None | Some("") => None,
            Some(v) if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                Some(v.to_owned())
            }
            Some(_) => return Err(SecretError::InvalidId("invalid secret version".into())),
        };
        if segments.any(|s| !s.is_empty()) {
            return Err(SecretError::InvalidId("invalid secret identifier".into()));
        }
        Ok(SecretRef { name, version })
    }
}
