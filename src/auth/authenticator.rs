//! `Authenticator`: everything that decides who a data-plane caller is — service-token
//! verification with its cache of verified tokens, the liveness check (instance active, same
//! key version) through the short-TTL security cache, and access-key authentication with its
//! brute-force protection and its cache of verified keys. Handlers call it; it knows nothing
//! of HTTP.

use std::sync::Arc;

use chrono::Utc;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::key_checks::KeyChecks;
use crate::auth::keys::{AccessKey, KeyHasher};
use crate::auth::rate_limit::RateLimiter;
use crate::auth::service_token::{ServiceClaims, ServiceTokens};
use crate::domain::audit::action;
use crate::domain::{AgentInstance, AgentType, AuditEntry, AuditOutcome, InstanceId, TenantId};
use crate::store::{InstanceFilter, PageRequest, Store, StoreError, TenantScope};
use crate::tenant::SecurityCache;

/// Why a caller is not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A service token that is malformed, expired, revoked, or whose instance is gone,
    /// disabled or rotated (the reason is logged, never answered).
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// Unknown company, wrong or malformed key, inactive instance: one answer for all.
    #[error("invalid client credentials")]
    InvalidClient,
    #[error("too many attempts; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// An access key that matched: its instance and the key version it is — the current one, or
/// the previous one while its grace period runs (`valid_until`).
#[derive(Debug)]
pub struct KeyMatch {
    pub instance: AgentInstance,
    pub key_version: u32,
    pub valid_until: Option<chrono::DateTime<Utc>>,
}

/// What the verified-key cache remembers for (companyId, SHA-256 of the key).
#[derive(Clone)]
struct VerifiedKey {
    tenant: TenantId,
    instance: InstanceId,
    key_version: u32,
}

/// The cache key for a presented access key: its digest, never the key itself.
fn key_digest(company: &str, key: &str) -> (String, [u8; 32]) {
    (company.to_owned(), Sha256::digest(key.as_bytes()).into())
}

/// Who the data plane's callers are (see the module comment).
pub struct Authenticator {
    pub tokens: ServiceTokens,
    pub hasher: KeyHasher,
    pub security: SecurityCache,
    /// Per-address limit of key exchanges (the token endpoint and `/chat`'s body keys).
    pub limit_by_address: RateLimiter,
    /// Brute-force protection of access-key checks (per source, per company, unknown ids).
    pub key_checks: KeyChecks,
    store: Arc<dyn Store>,
    /// SHA-256 of a service token → its verified claims (signature checked once per token).
    verified_tokens: moka::future::Cache<[u8; 32], Arc<ServiceClaims>>,
    /// `/chat` body-key flow: (companyId, SHA-256 of the key) → verified instance.
    verified_keys: moka::future::Cache<(String, [u8; 32]), VerifiedKey>,
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn Store>,
        tokens: ServiceTokens,
        hasher: KeyHasher,
        security: SecurityCache,
        limit_by_address: RateLimiter,
        key_checks: KeyChecks,
    ) -> Self {
        let ttl = std::time::Duration::from_secs(60);
        Self {
            tokens,
            hasher,
            security,
            limit_by_address,
            key_checks,
            store,
            verified_tokens: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            verified_keys: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Verifies a service token and that its instance is still live with the same key version.
    ///
    /// A token's signature is checked once: its claims are then cached under the token's
    /// SHA-256 for up to a minute (never past `exp`). The live-instance check runs every time.
    pub async fn service_token(&self, token: &str) -> Result<ServiceClaims, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Utc::now().timestamp();
        let claims = match self.verified_tokens.get(&digest).await {
            Some(claims) if claims.exp > now => claims,
            _ => {
                let claims = Arc::new(self.tokens.verify(token).map_err(AuthError::InvalidToken)?);
                self.verified_tokens
                    .insert(digest, Arc::clone(&claims))
                    .await;
                claims
            }
        };
        self.check_live(&claims.company_id, &claims.sub, claims.key_version)
            .await?;
        Ok((*claims).clone())
    }

    /// Checks (through the short-TTL security cache) that an instance is live with
    /// `key_version`.
    pub async fn check_live(
        &self,
        tenant: &TenantId,
        instance: &InstanceId,
        key_version: u32,
    ) -> Result<(), AuthError> {
        let security = self
            .security
            .get(self.store.as_ref(), tenant, instance)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => AuthError::InvalidToken("instance not found"),
                other => AuthError::Store(other),
            })?
            .ok_or(AuthError::InvalidToken("instance not found"))?;
        if !security.status.can_authenticate() {
            return Err(AuthError::InvalidToken("instance disabled"));
        }
        if !security.honours(key_version, Utc::now().timestamp()) {
            return Err(AuthError::InvalidToken("access key rotated"));
        }
        Ok(())
    }

    /// `/chat`'s body-key flow: a key verified in the last minute (for the same company, with
    /// the instance still live on the same key version) is taken without bcrypt; any other is
    /// checked like a token exchange (the per-address limit included).
    pub async fn body_key(
        &self,
        client: &str,
        company: &str,
        agent_type: AgentType,
        key: &str,
    ) -> Result<(TenantId, InstanceId), AuthError> {
        let digest = key_digest(company, key);
        if let Some(hit) = self.verified_keys.get(&digest).await {
            // Still live with the same key version? (Disable and rotation bite here too.)
            match self
                .check_live(&hit.tenant, &hit.instance, hit.key_version)
                .await
            {
                Ok(()) => return Ok((hit.tenant, hit.instance)),
                Err(_) => self.verified_keys.invalidate(&digest).await,
            }
        }
        self.limit_by_address
            .check(client)
            .map_err(|retry_after_secs| AuthError::RateLimited { retry_after_secs })?;
        let matched = self
            .access_key(client, company, agent_type, key, "chat")
            .await?;
        let instance = matched.instance;
        let verified = VerifiedKey {
            tenant: instance.tenant_id.clone(),
            instance: instance.id,
            key_version: matched.key_version,
        };
        self.verified_keys.insert(digest, verified).await;
        Ok((instance.tenant_id, instance.id))
    }

    /// Verifies a company's access key (brute-force protected per source and per company —
    /// see `auth::key_checks`; bcrypt off the runtime; one generic failure; audited both ways,
    /// failures only in the partition of a company that exists; `lastUsedAt` updated). Shared
    /// by the token exchange and `/chat`'s body-key flow. The per-address limit is the
    /// caller's.
    pub async fn access_key(
        &self,
        client: &str,
        company: &str,
        agent_type: AgentType,
        key: &str,
        via: &str,
    ) -> Result<KeyMatch, AuthError> {
        let mut admission = self
            .key_checks
            .admit(company, client)
            .await
            .map_err(|retry_after_secs| AuthError::RateLimited { retry_after_secs })?;
        let tenant = TenantId::parse(company).ok();
        let instance = match &tenant {
            Some(t) => self.store.find_live_instance(t, agent_type).await?,
            None => None,
        };
        if let (Some(t), Some(_)) = (&tenant, &instance) {
            self.key_checks
                .slow_down_if_fleet_over(&mut admission, t)
                .await;
        }
        let key = AccessKey::parse(key);
        let mut matched = self
            .hasher
            .verify(
                key.as_ref(),
                instance.as_ref().map(|i| i.access_key_hash.as_str()),
            )
            .await
            .map_err(|e| AuthError::Internal(e.into()))?
            .then(|| instance.as_ref().map(|i| (i.key_version, None)))
            .flatten();
        // During a rotation's grace period the previous key is still good (until its end).
        let previous = instance
            .as_ref()
            .and_then(|i| i.previous_key_at(Utc::now()))
            .cloned();
        if let (None, Some(previous), Some(presented)) = (&matched, previous, &key)
            && self
                .hasher
                .verify(Some(presented), Some(previous.hash.as_str()))
                .await
                .map_err(|e| AuthError::Internal(e.into()))?
        {
            matched = Some((previous.version, Some(previous.expires_at)));
        }
        let verified = matched.is_some();
        let instance = match instance {
            Some(i) if verified && i.status.can_authenticate() => i,
            other => {
                self.key_checks.failed(&admission);
                let reason = match (&tenant, &other, &key) {
                    (None, _, _) => "malformed_company_id",
                    (Some(_), None, _) => "no_live_instance",
                    (Some(_), Some(_), None) => "malformed_key",
                    _ => "wrong_key",
                };
                // Only a company that exists gets the audit row: made-up ids must not let
                // anyone write into partitions of their choosing.
                let known = match (&tenant, &other) {
                    (Some(_), Some(_)) => true,
                    (Some(t), None) => self.company_exists(t).await,
                    (None, _) => false,
                };
                match tenant {
                    Some(tenant) if known => {
                        self.key_checks.failed_known(&tenant);
                        let mut entry = AuditEntry::new(
                            tenant.clone(),
                            action::AUTH_FAILURE,
                            format!("client:{tenant}"),
                            AuditOutcome::Failure,
                        )
                        .client(client)
                        .details(json!({ "reason": reason, "via": via }));
                        if let Some(i) = &other {
                            entry = entry.instance(i.id);
                        }
                        crate::store::audit(self.store.as_ref(), entry).await;
                    }
                    _ => self.key_checks.unknown_company(client, reason),
                }
                tracing::info!(auth.reason = reason, client.address = %client, auth.via = via, "token exchange refused: {reason}");
                return Err(AuthError::InvalidClient);
            }
        };
        let (key_version, valid_until) = matched.unwrap_or((instance.key_version, None));
        if let Err(e) = self
            .store
            .touch_instance(&instance.tenant_id, &instance.id, Utc::now())
            .await
        {
            tracing::warn!(tenant.id = %instance.tenant_id, error = ?e, "lastUsedAt not updated: {e:#}");
        }
        crate::store::audit(
            self.store.as_ref(),
            AuditEntry::new(
                instance.tenant_id.clone(),
                action::AUTH_SUCCESS,
                format!("client:{}", instance.tenant_id),
                AuditOutcome::Success,
            )
            .instance(instance.id)
            .client(client)
            .details(json!({ "keyVersion": key_version, "via": via })),
        )
        .await;
        Ok(KeyMatch {
            instance,
            key_version,
            valid_until,
        })
    }

    /// Whether `tenant` has any instance at all (a disabled one counts): the partition exists.
    async fn company_exists(&self, tenant: &TenantId) -> bool {
        let page = PageRequest {
            limit: 1,
            continuation_token: None,
        };
        match self
            .store
            .list_instances(
                &TenantScope::Tenant(tenant.clone()),
                &InstanceFilter::default(),
                &page,
            )
            .await
        {
            Ok(found) => !found.items.is_empty(),
            Err(e) => {
                tracing::warn!(tenant.id = %tenant, error = ?e, "could not tell whether the company exists: {e:#}");
                false
            }
        }
    }
}
