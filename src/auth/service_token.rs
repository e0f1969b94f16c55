//! Service tokens: ES256 JWTs (`typ: at+jwt`, RFC 9068) that a client app gets for its access
//! key. The signing key lives in the secret store (generated on first run); the JWKS
//! publishes it, plus a previous key while one is still honoured.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{AgentInstance, InstanceId, TenantId};
use crate::secrets::{SecretName, SecretStore};

/// Secret holding the current signing key (PKCS#8 PEM).
pub const SIGNING_KEY_SECRET: &str = "sophia-token-signing-key";
/// Secret holding the previous signing key, still published and accepted after a rotation.
pub const PREVIOUS_SIGNING_KEY_SECRET: &str = "sophia-token-signing-key-previous";

pub const SCOPE_INVOKE: &str = "agent:invoke";

/// The claims of a service token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceClaims {
    pub iss: String,
    pub aud: String,
    /// The instance id.
    pub sub: InstanceId,
    pub company_id: TenantId,
    pub agent_type: String,
    pub scope: String,
    pub key_version: u32,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

impl ServiceClaims {
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope.split(' ').any(|s| s == wanted)
    }
}

/// The scope string of a token for `company`.
pub fn scope_for(company: &TenantId) -> String {
    format!("{SCOPE_INVOKE} company:{company}")
}

struct VerifyKey {
    kid: String,
    decoding: DecodingKey,
    jwk: serde_json::Value,
}

/// Issues and verifies service tokens.
pub struct ServiceTokens {
    issuer: String,
    audience: String,
    ttl_secs: u64,
    kid: String,
    encoding: EncodingKey,
    keys: Vec<VerifyKey>,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokens")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A P-256 key pair as PKCS#8 PEM.
pub fn generate_signing_key() -> anyhow::Result<SecretString> {
    let secret = p256::SecretKey::random(&mut OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding signing key: {e}"))?;
    Ok(SecretString::from(pem.to_string()))
}

fn verify_key(pem: &SecretString) -> anyhow::Result<(VerifyKey, EncodingKey)> {
    let secret = p256::SecretKey::from_pkcs8_pem(pem.expose_secret())
        .map_err(|_| anyhow::anyhow!("the token signing key is not a PKCS#8 P-256 PEM key"))?;
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let (x, y) = match (point.x(), point.y()) {
        (Some(x), Some(y)) => (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)),
        _ => anyhow::bail!("signing key has no affine coordinates"),
    };
    // RFC 7638 thumbprint: members in lexical order, no white space.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    let decoding = DecodingKey::from_ec_components(&x, &y)?;
    let encoding = EncodingKey::from_ec_pem(pem.expose_secret().as_bytes())?;
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": "ES256"
    });
    Ok((VerifyKey { kid, decoding, jwk }, encoding))
}

impl ServiceTokens {
    /// Builds from a current key and an optional previous one (PEM).
    pub fn from_keys(
        issuer: String,
        audience: String,
        ttl_secs: u64,
        current: &SecretString,
        previous: Option<&SecretString>,
    ) -> anyhow::Result<Self> {
        let (current_key, encoding) = verify_key(current)?;
        let kid = current_key.kid.clone();
        let mut keys = vec![current_key];
        if let Some(previous) = previous {
            let (prev, _) = verify_key(previous)?;
            if prev.kid != kid {
                keys.push(prev);
            }
        }
        Ok(Self {
            issuer,
            audience,
            ttl_secs,
            kid,
            encoding,
            keys,
        })
    }

    /// Loads the signing key from the secret store, generating and storing one on first run.
    pub async fn load_or_create(
        secrets: &dyn SecretStore,
        issuer: String,
        audience: String,
        ttl_secs: u64,
    ) -> anyhow::Result<Self> {
        let name = SecretName::parse(SIGNING_KEY_SECRET)?;
        let current =
            crate::secrets::latest_or_create(secrets, &name, generate_signing_key).await?;
        let previous_name = SecretName::parse(PREVIOUS_SIGNING_KEY_SECRET)?;
        let previous = secrets.get_latest(&previous_name).await?;
        Self::from_keys(issuer, audience, ttl_secs, &current, previous.as_ref())
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Signs a token for `instance` under its current key; returns it with its claims.
    pub fn issue(&self, instance: &AgentInstance) -> anyhow::Result<(String, ServiceClaims)> {
        self.issue_under(instance, instance.key_version, None)
    }

    /// Signs a token for `instance` under key version `key_version`, expiring no later than
    /// `not_after` (Unix seconds; the end of a previous key's grace period).
    pub fn issue_under(
        &self,
        instance: &AgentInstance,
        key_version: u32,
        not_after: Option<i64>,
    ) -> anyhow::Result<(String, ServiceClaims)> {
        let now = chrono::Utc::now().timestamp();
        let exp = (now + self.ttl_secs as i64).min(not_after.unwrap_or(i64::MAX));
        let claims = ServiceClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: instance.id,
            company_id: instance.tenant_id.clone(),
            agent_type: instance.agent_type.as_str().to_owned(),
            scope: scope_for(&instance.tenant_id),
            key_version,
            iat: now,
            nbf: now,
            exp,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// Verifies signature (ES256 only, known `kid`), type, issuer, audience, time and scope.
    /// Whether the instance is still active is the caller's second check.
    pub fn verify(&self, token: &str) -> Result<ServiceClaims, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        if header.alg != Algorithm::ES256 {
            return Err("unexpected algorithm");
        }
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt"))
        {
            return Err("not an access token");
        }
        let kid = header.kid.ok_or("no key id")?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or("unknown key id")?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<ServiceClaims>(token, &key.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "expired",
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer",
                jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong audience",
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => "not yet valid",
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature",
                _ => "invalid token",
            })?;
        let claims = data.claims;
        if !claims.has_scope(SCOPE_INVOKE)
            || !claims.has_scope(&format!("company:{}", claims.company_id))
        {
            return Err("missing scope");
        }
        Ok(claims)
    }

    /// The public keys, as a JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::AccessKey;
    use crate::domain::{AgentType, InstanceStatus, Provider};

    fn tokens() -> ServiceTokens {
        let pem = generate_signing_key().unwrap();
        ServiceTokens::from_keys("sophia".into(), "sophia-agents".into(), 3600, &pem, None).unwrap()
    }

    fn instance() -> AgentInstance {
        let now = chrono::Utc::now();
        AgentInstance {
            id: InstanceId::new(),
            tenant_id: TenantId::parse("acme").unwrap(),
            agent_type: AgentType::Sophia,
            status: InstanceStatus::Active,
            config: crate::domain::InstanceConfig {
                provider: Provider::AzureOpenai,
                region: None,
                model: None,
                azure_project_id: None,
                azure_openai_endpoint: None,
                azure_openai_deployment: None,
                azure_embedding_deployment: None,
                azure_search_endpoint: None,
                azure_vector_store_id: None,
                azure_project_endpoint: None,
                azure_agent_id: None,
                deployments: Vec::new(),
            },
            settings: Default::default(),
            keyvault_secret_id: None,
            access_key_hash: Default::default(),
            access_key_last4: AccessKey::generate().last4(),
            key_version: 3,
            previous_key: None,
            disabled_by: None,
            provisioning_error: None,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            etag: String::new(),
        }
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_claims() {
        let t = tokens();
        let inst = instance();
        let (token, _) = t.issue(&inst).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert!(header.kid.is_some());
        let claims = t.verify(&token).unwrap();
        assert_eq!(claims.sub, inst.id);
        assert_eq!(claims.company_id.as_str(), "acme");
        assert_eq!(claims.key_version, 3);
        assert_eq!(claims.scope, "agent:invoke company:acme");
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn tokens_from_another_key_are_rejected() {
        let (token, _) = tokens().issue(&instance()).unwrap();
        assert!(tokens().verify(&token).is_err());
    }

    #[test]
    fn tampered_tokens_are_rejected() {
        let t = tokens();
        let (token, _) = t.issue(&instance()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["companyId"] = "other".into();
        payload["scope"] = "agent:invoke company:other".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
            parts[2]
        );
        assert_eq!(t.verify(&forged).unwrap_err(), "bad signature");
    }

    #[test]
    fn previous_key_is_published_and_accepted() {
        let old_pem = generate_signing_key().unwrap();
        let old =
            ServiceTokens::from_keys("sophia".into(), "sophia-agents".into(), 60, &old_pem, None)
                .unwrap();
        let (token, _) = old.issue(&instance()).unwrap();
        let new_pem = generate_signing_key().unwrap();
        let rotated = ServiceTokens::from_keys(
            "sophia".into(),
            "sophia-agents".into(),
            60,
            &new_pem,
            Some(&old_pem),
        )
        .unwrap();
        assert!(rotated.verify(&token).is_ok());
        assert_eq!(rotated.jwks()["keys"].as_array().unwrap().len(), 2);
    }
}
