//! Admin tokens: HS256 with a configured secret (local development; `sophia admin-token`
//! mints them) and/or RS256/ES256 with keys from a JWKS URL (Entra ID or an existing identity
//! backend). The algorithm is pinned per path: an HS256 token is only ever checked against the
//! configured secret, never against a JWKS key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use crate::domain::TenantId;
use crate::store::TenantScope;

pub const ROLE_ADMIN: &str = "ADMIN";
pub const ROLE_PLATFORM_ADMIN: &str = "PLATFORM_ADMIN";

/// What an admin may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRole {
    /// A company admin: only its own company.
    Admin(TenantId),
    /// Every company.
    PlatformAdmin,
}

/// A verified admin.
#[derive(Debug, Clone)]
pub struct AdminPrincipal {
    pub subject: String,
    pub role: AdminRole,
}

impl AdminPrincipal {
    /// The partitions this admin may read.
    pub fn scope(&self) -> TenantScope {
        match &self.role {
            AdminRole::Admin(company) => TenantScope::Tenant(company.clone()),
            AdminRole::PlatformAdmin => TenantScope::All,
        }
    }

    /// The scope of a listing with an optional `companyId` filter; a company admin naming
    /// another company is refused.
    pub fn scope_for_filter(
        &self,
        company: Option<&TenantId>,
    ) -> Result<TenantScope, AdminAuthError> {
        match (company, &self.role) {
            (None, _) => Ok(self.scope()),
            (Some(c), AdminRole::PlatformAdmin) => Ok(TenantScope::Tenant(c.clone())),
            (Some(c), AdminRole::Admin(own)) if c == own => Ok(self.scope()),
            (Some(_), AdminRole::Admin(_)) => Err(AdminAuthError::Forbidden(
                "an ADMIN token may only act on its own company",
            )),
        }
    }

    /// Refuses a write for a company this admin does not manage.
    pub fn check_company(&self, company: &TenantId) -> Result<(), AdminAuthError> {
        self.scope_for_filter(Some(company)).map(|_| ())
    }

    /// How the audit trail names this admin.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.subject)
    }
}

/// Why an admin token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminAuthError {
    /// Not a valid token at all (401).
    #[error("invalid admin token: {0}")]
    Invalid(&'static str),
    /// A valid token without the right role or company (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The key source could not be reached (503).
    #[error("admin token keys unavailable: {0}")]
    Unavailable(String),
}

/// Settings of admin-token verification.
#[derive(Clone)]
pub struct AdminAuthConfig {
    pub hs256_secret: Option<SecretString>,
    pub jwks_url: Option<url::Url>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// When set, roles are read from this claim only; otherwise from `roles`, then `role`.
    pub role_claim: Option<String>,
    pub company_claim: String,
    /// Least time between two JWKS fetches caused by unknown key ids.
    pub jwks_min_refresh: Duration,
    /// Keys are re-fetched after this long even when every `kid` is known.
    pub jwks_max_age: Duration,
}

struct CachedKeys {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    fetched_at: Option<Instant>,
}

/// Verifies admin tokens.
pub struct AdminVerifier {
    config: AdminAuthConfig,
    http: reqwest::Client,
    cache: RwLock<CachedKeys>,
    refresh: Mutex<()>,
}

impl std::fmt::Debug for AdminVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminVerifier")
            .field("hs256", &self.config.hs256_secret.is_some())
            .field(
                "jwks_url",
                &self.config.jwks_url.as_ref().map(url::Url::as_str),
            )
            .finish_non_exhaustive()
    }
}

impl AdminVerifier {
    pub fn new(config: AdminAuthConfig, http: reqwest::Client) -> Self {
        Self {
            config,
            http,
            cache: RwLock::new(CachedKeys {
                keys: HashMap::new(),
                fetched_at: None,
            }),
            refresh: Mutex::new(()),
        }
    }

    /// Whether HS256 (a configured or generated secret) and JWKS verification are enabled.
    pub fn modes(&self) -> (bool, bool) {
        (
            self.config.hs256_secret.is_some(),
            self.config.jwks_url.is_some(),
        )
    }

    /// Verifies `token` and extracts the admin it names.
    pub async fn verify(&self, token: &str) -> Result<AdminPrincipal, AdminAuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AdminAuthError::Invalid("malformed token"))?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => {
                let secret = self
                    .config
                    .hs256_secret
                    .as_ref()
                    .ok_or(AdminAuthError::Invalid(
                        "HS256 admin tokens are not accepted here",
                    ))?;
                (
                    DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                    Algorithm::HS256,
                )
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                if self.config.jwks_url.is_none() {
                    return Err(AdminAuthError::Invalid(
                        "no JWKS configured for asymmetric admin tokens",
                    ));
                }
                let kid = header
                    .kid
                    .ok_or(AdminAuthError::Invalid("token has no key id"))?;
                let (key, key_alg) = self.jwks_key(&kid).await?;
                if key_alg != header.alg {
                    return Err(AdminAuthError::Invalid("algorithm does not match the key"));
                }
                (key, key_alg)
            }
            _ => return Err(AdminAuthError::Invalid("unsupported algorithm")),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 30;
        validation.validate_nbf = true;
        // A pinned issuer or audience must also be present: jsonwebtoken checks a claim's value
        // only when the claim is there.
        let mut required = vec!["exp"];
        match &self.config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| {
                AdminAuthError::Invalid(match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "expired",
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong audience",
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer",
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature",
                    jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => "missing claim",
                    _ => "invalid token",
                })
            })?
            .claims;
        self.principal(&claims)
    }

    fn principal(&self, claims: &Value) -> Result<AdminPrincipal, AdminAuthError> {
        let roles = match &self.config.role_claim {
            Some(name) => strings(claims.get(name)),
            None => {
                let mut r = strings(claims.get("roles"));
                r.extend(strings(claims.get("role")));
                r
            }
        };
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .or_else(|| claims.get("oid").and_then(Value::as_str))
            .unwrap_or("unknown")
            .chars()
            .take(128)
            .collect::<String>();
        if roles.iter().any(|r| r == ROLE_PLATFORM_ADMIN) {
            return Ok(AdminPrincipal {
                subject,
                role: AdminRole::PlatformAdmin,
            });
        }
        if roles.iter().any(|r| r == ROLE_ADMIN) {
            let company = match claims.get(&self.config.company_claim) {
                Some(Value::String(s)) => TenantId::parse(s).ok(),
                Some(Value::Number(n)) => TenantId::parse(&n.to_string()).ok(),
                _ => None,
            }
            .ok_or(AdminAuthError::Forbidden(
                "an ADMIN token must name its company",
            ))?;
            return Ok(AdminPrincipal {
                subject,
                role: AdminRole::Admin(company),
            });
        }
        Err(AdminAuthError::Forbidden(
            "the token has neither the ADMIN nor the PLATFORM_ADMIN role",
        ))
    }

    async fn jwks_key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AdminAuthError> {
        {
            let cache = self.cache.read().await;
            let fresh = cache
                .fetched_at
                .is_some_and(|t| t.elapsed() < self.config.jwks_max_age);
            if fresh && let Some(found) = cache.keys.get(kid) {
                return Ok(found.clone());
            }
        }
        // Unknown kid or stale set: one fetch at a time, and not more often than allowed.
        let _guard = self.refresh.lock().await;
        {
            let cache = self.cache.read().await;
            let recent = cache
                .fetched_at
                .is_some_and(|t| t.elapsed() < self.config.jwks_min_refresh);
            if let Some(found) = cache.keys.get(kid)
                && cache
                    .fetched_at
                    .is_some_and(|t| t.elapsed() < self.config.jwks_max_age)
            {
                return Ok(found.clone());
            }
            if recent {
                return Err(AdminAuthError::Invalid("unknown key id"));
            }
        }
        let keys = self.fetch_jwks().await?;
        let mut cache = self.cache.write().await;
        cache.keys = keys;
        cache.fetched_at = Some(Instant::now());
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or(AdminAuthError::Invalid("unknown key id"))
    }

    async fn fetch_jwks(
        &self,
    ) -> Result<HashMap<String, (DecodingKey, Algorithm)>, AdminAuthError> {
        let Some(url) = &self.config.jwks_url else {
            return Ok(HashMap::new());
        };
        let unavailable = |e: reqwest::Error| {
            AdminAuthError::Unavailable(format!(
                "the admin JWKS could not be fetched: {}",
                e.without_url()
            ))
        };
        let set: JwkSet = self
            .http
            .get(url.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(unavailable)?
            .error_for_status()
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p)
                    if p.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (key, alg));
            }
        }
        tracing::info!(
            jwks.keys = keys.len(),
            "admin JWKS refreshed ({} keys)",
            keys.len()
        );
        Ok(keys)
    }

    /// Mints an HS256 admin token (local development: the `admin-token` command).
    pub fn mint(
        &self,
        role: &str,
        company: Option<&TenantId>,
        ttl_secs: u64,
    ) -> anyhow::Result<String> {
        let secret =
            self.config.hs256_secret.as_ref().ok_or_else(|| {
                anyhow::anyhow!("minting admin tokens needs SOPHIA_ADMIN_JWT_SECRET")
            })?;
        let now = chrono::Utc::now().timestamp();
        let mut claims = serde_json::json!({
            "sub": "sophia-cli",
            "iat": now,
            "nbf": now,
            "exp": now + ttl_secs as i64,
        });
        let role_claim = self.config.role_claim.as_deref().unwrap_or("roles");
        claims[role_claim] = serde_json::json!([role]);
        if let Some(company) = company {
            claims[self.config.company_claim.as_str()] = Value::String(company.to_string());
        }
        if let Some(iss) = &self.config.issuer {
            claims["iss"] = Value::String(iss.clone());
        }
        if let Some(aud) = &self.config.audience {
            claims["aud"] = Value::String(aud.clone());
        }
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
        )?)
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> AdminVerifier {
        AdminVerifier::new(
            AdminAuthConfig {
                hs256_secret: Some(SecretString::from("0123456789abcdef0123456789abcdef")),
                jwks_url: None,
                issuer: None,
                audience: None,
                role_claim: None,
                company_claim: "companyId".into(),
                jwks_min_refresh: Duration::from_secs(5),
                jwks_max_age: Duration::from_secs(3600),
            },
            reqwest::Client::new(),
        )
    }

    #[tokio::test]
    async fn minted_tokens_verify_with_their_role() {
        let v = verifier();
        let acme = TenantId::parse("acme").unwrap();
        let t = v.mint(ROLE_ADMIN, Some(&acme), 60).unwrap();
        assert_eq!(v.verify(&t).await.unwrap().role, AdminRole::Admin(acme));
        let t = v.mint(ROLE_PLATFORM_ADMIN, None, 60).unwrap();
        assert_eq!(v.verify(&t).await.unwrap().role, AdminRole::PlatformAdmin);
    }

    #[tokio::test]
    async fn wrong_role_or_missing_company_is_forbidden() {
        let v = verifier();
        let t = v.mint("READER", None, 60).unwrap();
        assert!(matches!(
            v.verify(&t).await,
            Err(AdminAuthError::Forbidden(_))
        ));
        let t = v.mint(ROLE_ADMIN, None, 60).unwrap();
        assert!(matches!(
            v.verify(&t).await,
            Err(AdminAuthError::Forbidden(_))
        ));
    }

    #[tokio::test]
    async fn rs_and_es_tokens_need_a_jwks() {
        let v = verifier();
        let pem = crate::auth::service_token::generate_signing_key().unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k".into());
        let token = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"roles":["PLATFORM_ADMIN"],"exp": chrono::Utc::now().timestamp() + 60}),
            &EncodingKey::from_ec_pem(pem.expose_secret().as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            v.verify(&token).await,
            Err(AdminAuthError::Invalid(_))
        ));
    }

    #[test]
    fn role_claims_accept_strings_and_arrays() {
        assert_eq!(strings(Some(&serde_json::json!("ADMIN"))), vec!["ADMIN"]);
        assert_eq!(
            strings(Some(&serde_json::json!(["A", "B"]))),
            vec!["A", "B"]
        );
        assert!(strings(Some(&serde_json::json!(5))).is_empty());
    }
}
