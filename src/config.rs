//! Configuration from environment variables (Azure app settings are environment variables),
//! read and validated once at start-up. The README's configuration table lists them all.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::upstream::policy::{DEFAULT_ALLOWED_HOSTS, UpstreamPolicy};

/// A configuration problem, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Sqlite,
    /// Cosmos DB at this account endpoint (https, or http for a loopback emulator).
    Cosmos {
        endpoint: url::Url,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsBackend {
    Local,
    KeyVault,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Every setting SOPHIA reads. Built by [`Settings::from_env`], which reads:
///
/// `FUNCTIONS_CUSTOMHANDLER_PORT`, `SOPHIA_PORT`, `SOPHIA_BIND_ADDRESS`, `SOPHIA_DATA_DIR`,
/// `SOPHIA_STORE`, `SOPHIA_SECRETS`, `SOPHIA_MASTER_KEY`, `SOPHIA_ADMIN_JWT_SECRET`,
/// `SOPHIA_ADMIN_JWKS_URL`, `SOPHIA_ADMIN_ISSUER`, `SOPHIA_ADMIN_AUDIENCE`,
/// `SOPHIA_ADMIN_ROLE_CLAIM`, `SOPHIA_ADMIN_COMPANY_CLAIM`, `SOPHIA_ADMIN_JWKS_MIN_REFRESH_SECS`,
/// `SOPHIA_ALLOW_LOCAL_UPSTREAMS`, `SOPHIA_UPSTREAM_ALLOWED_HOSTS`, `SOPHIA_BCRYPT_COST`,
/// `SOPHIA_TRUST_FORWARDED`, `SOPHIA_TRUSTED_PROXY_HOPS`, `SOPHIA_TOKEN_ISSUER`, `SOPHIA_TOKEN_AUDIENCE`,
/// `SOPHIA_TOKEN_TTL_SECS`, `SOPHIA_PUBLIC_URL`, `SOPHIA_SECURITY_CACHE_TTL_SECS`,
/// `SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS`, `SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY`,
/// `SOPHIA_TOKEN_FAILURES_PER_SOURCE`, `SOPHIA_EXTRACTOR`, `SOPHIA_EXTRACT_MEMORY_MB`,
/// `SOPHIA_EXTRACT_TIMEOUT_SECS`, `SOPHIA_EXTRACT_MAX_CHARS`,
/// `SOPHIA_MAX_BODY_BYTES`, `SOPHIA_TENANT_CACHE_TTL_SECS`, `SOPHIA_TENANT_CACHE_MAX_STALE_SECS`,
/// `SOPHIA_UPSTREAM_CONNECT_TIMEOUT_MS`, `SOPHIA_UPSTREAM_FIRST_BYTE_TIMEOUT_MS`,
/// `SOPHIA_UPSTREAM_TIMEOUT_MS`, `SOPHIA_UPSTREAM_IDLE_TIMEOUT_MS`,
/// `SOPHIA_UPSTREAM_RETRY_BUDGET_MS`, `SOPHIA_USAGE_FLUSH_MS`, `SOPHIA_LOG`, `SOPHIA_LOG_FORMAT`, `SOPHIA_COSMOS_ENDPOINT`,
/// `SOPHIA_COSMOS_DATABASE`, `SOPHIA_COSMOS_KEY`, `SOPHIA_COSMOS_CREATE_CONTAINERS`,
/// `SOPHIA_COSMOS_REGION`, `SOPHIA_AUDIT_TTL_DAYS`, `SOPHIA_REFRESH_WORKERS`, `SOPHIA_REFRESH_STALE_SECS`,
/// `SOPHIA_CONFIG_TEST_TIMEOUT_MS`, `SOPHIA_REFRESH_QUEUE`, `SOPHIA_REFRESH_QUEUE_URL`,
/// `SOPHIA_KEYVAULT_URL`, `SOPHIA_AZURE_CREDENTIAL`, `SOPHIA_AZURE_CLIENT_ID`,
/// `APPLICATIONINSIGHTS_CONNECTION_STRING`.
#[derive(Clone)]
pub struct Settings {
    pub port: u16,
    pub bind_address: IpAddr,
    pub data_dir: PathBuf,
    pub store: StoreBackend,
    pub secrets: SecretsBackend,
    pub master_key: Option<SecretString>,
    pub admin_jwt_secret: Option<SecretString>,
    pub admin_jwks_url: Option<url::Url>,
    pub admin_issuer: Option<String>,
    pub admin_audience: Option<String>,
    pub admin_role_claim: Option<String>,
    pub admin_company_claim: String,
    pub admin_jwks_min_refresh: Duration,
    pub allow_local_upstreams: bool,
    /// `SOPHIA_UPSTREAM_ALLOWED_HOSTS` (and `SOPHIA_ALLOW_LOCAL_UPSTREAMS`), parsed.
    pub upstreams: UpstreamPolicy,
    pub bcrypt_cost: u32,
    pub trust_forwarded: bool,
    /// How many proxies in front of SOPHIA append to `X-Forwarded-For` (the client address
    /// is the entry that many places from the right).
    pub trusted_proxy_hops: usize,
    pub token_issuer: String,
    pub token_audience: String,
    pub token_ttl_secs: u64,
    pub public_url: Option<url::Url>,
    pub security_cache_ttl: Duration,
    pub token_rate_limit_per_address: u32,
    /// The executable that serves `extract-text` (`SOPHIA_EXTRACTOR`; default this one).
    pub extractor: Option<PathBuf>,
    pub extract_memory_mb: u64,
    pub extract_timeout: Duration,
    pub extract_max_chars: usize,
    /// Failed key checks per company per minute (all addresses) past which that company's
    /// checks are slowed down (run one at a time), never refused.
    pub token_rate_limit_per_company: u32,
    /// Failed key checks per (company, client address) per minute past which that source is
    /// refused (429) for that company.
    pub token_failures_per_source: u32,
    pub max_body_bytes: usize,
    pub tenant_cache_ttl: Duration,
    pub tenant_cache_max_stale: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_first_byte_timeout: Duration,
    pub upstream_total_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub upstream_retry_budget: Duration,
    pub usage_flush_interval: Duration,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub cosmos_database: String,
    pub cosmos_key: Option<SecretString>,
    pub cosmos_create_containers: bool,
    /// The region SOPHIA runs in, for Cosmos DB routing (`SOPHIA_COSMOS_REGION`, else the
    /// host's `REGION_NAME`).
    pub cosmos_region: String,
    /// Default TTL of audit documents in Cosmos DB, in days (0: forever).
    pub audit_ttl_days: u32,
    /// Refresh jobs run at once by this process (`SOPHIA_REFRESH_WORKERS`, default 2).
    pub refresh_workers: usize,
    /// An active refresh job without progress for this long is abandoned
    /// (`SOPHIA_REFRESH_STALE_SECS`, default 600).
    pub refresh_stale_after: Duration,
    /// Where refresh jobs go: the in-process workers, or an Azure Storage queue read by the
    /// queue-triggered `refresh-worker` function (`SOPHIA_REFRESH_QUEUE=local|storage`).
    pub refresh_queue_url: Option<SecretString>,
    /// Longest wait per diagnostics check (`SOPHIA_CONFIG_TEST_TIMEOUT_MS`, default 5000).
    pub config_test_timeout: Duration,
    pub keyvault_url: Option<String>,
    pub azure_credential: Option<crate::azure_auth::CredentialKind>,
    pub azure_client_id: Option<String>,
    pub appinsights_connection_string: Option<SecretString>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets show only whether they are set.
        f.debug_struct("Settings")
            .field("port", &self.port)
            .field("bind_address", &self.bind_address)
            .field("data_dir", &self.data_dir)
            .field("store", &self.store)
            .field("secrets", &self.secrets)
            .field("master_key", &self.master_key.as_ref().map(|_| "[set]"))
            .field(
                "admin_jwt_secret",
                &self.admin_jwt_secret.as_ref().map(|_| "[set]"),
            )
            .field(
                "admin_jwks_url",
                &self.admin_jwks_url.as_ref().map(url::Url::as_str),
            )
            .field("allow_local_upstreams", &self.allow_local_upstreams)
            .field("bcrypt_cost", &self.bcrypt_cost)
            .field("token_issuer", &self.token_issuer)
            .field("token_audience", &self.token_audience)
            .field("cosmos_key", &self.cosmos_key.as_ref().map(|_| "[set]"))
            .finish_non_exhaustive()
    }
}

struct Env<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// A variable's value; empty counts as unset.
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        var: &'static str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| err(var, format!("'{v}' is not {what}"))),
        }
    }

    fn flag(&self, var: &'static str) -> Result<bool, ConfigError> {
        match self.get(var).map(|v| v.to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if ["true", "1", "yes"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "0", "no"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(err(var, format!("'{v}' is not true or false"))),
        }
    }

    fn range<T>(&self, var: &'static str, default: T, lo: T, hi: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let v = self.parse(var, default, "a number")?;
        if v < lo || v > hi {
            return Err(err(var, format!("{v} is outside {lo}..={hi}")));
        }
        Ok(v)
    }

    fn url(&self, var: &'static str) -> Result<Option<url::Url>, ConfigError> {
        self.get(var)
            .map(|v| url::Url::parse(&v).map_err(|e| err(var, format!("not a URL: {e}"))))
            .transpose()
    }
}

impl Settings {
    /// The base URL clients reach SOPHIA at: `SOPHIA_PUBLIC_URL` (required outside local
    /// development), else the local listener. Never derived from a request's headers.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => {
                let host = match self.bind_address {
                    IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_owned(),
                    IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_owned(),
                    IpAddr::V6(a) => format!("[{a}]"),
                    a => a.to_string(),
                };
                format!("http://{host}:{}", self.port)
            }
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(lookup);
        let port = match env.get("FUNCTIONS_CUSTOMHANDLER_PORT") {
            Some(_) => env.parse("FUNCTIONS_CUSTOMHANDLER_PORT", 8080u16, "a port number")?,
            None => env.parse("SOPHIA_PORT", 8080u16, "a port number")?,
        };
        let store = match env.get("SOPHIA_STORE").as_deref() {
            None | Some("sqlite") => StoreBackend::Sqlite,
            Some("cosmos") => StoreBackend::Cosmos {
                endpoint: cosmos_endpoint(&env)?,
            },
            Some(other) => {
                return Err(err(
                    "SOPHIA_STORE",
                    format!("'{other}' is not sqlite or cosmos"),
                ));
            }
        };
        let secrets = match env.get("SOPHIA_SECRETS").as_deref() {
            None | Some("local") => SecretsBackend::Local,
            Some("keyvault") => SecretsBackend::KeyVault,
            Some(other) => {
                return Err(err(
                    "SOPHIA_SECRETS",
                    format!("'{other}' is not local or keyvault"),
                ));
            }
        };
        if secrets == SecretsBackend::KeyVault {
            match env.get("SOPHIA_KEYVAULT_URL") {
                None => {
                    return Err(err(
                        "SOPHIA_KEYVAULT_URL",
                        "is required with SOPHIA_SECRETS=keyvault (https://<vault>.vault.azure.net)",
                    ));
                }
                Some(raw) => match url::Url::parse(&raw) {
                    Ok(u)
                        if (u.scheme() == "https"
                            || (u.scheme() == "http" && is_loopback_url(&u)))
                            && u.path() == "/"
                            && u.query().is_none() => {}
                    _ => {
                        return Err(err(
                            "SOPHIA_KEYVAULT_URL",
                            "must be the vault's https base URL, e.g. https://<vault>.vault.azure.net (http only for a loopback stand-in)",
                        ));
                    }
                },
            }
        }
        let refresh_queue_url = match env.get("SOPHIA_REFRESH_QUEUE").as_deref() {
            None | Some("local") => None,
            Some("storage") => match env.get("SOPHIA_REFRESH_QUEUE_URL") {
                None => {
                    return Err(err(
                        "SOPHIA_REFRESH_QUEUE_URL",
                        "is required with SOPHIA_REFRESH_QUEUE=storage (https://<account>.queue.core.windows.net/<queue>, optionally ?<SAS>)",
                    ));
                }
                Some(raw) => match url::Url::parse(&raw) {
                    Ok(u)
                        if (u.scheme() == "https"
                            || (u.scheme() == "http" && is_loopback_url(&u)))
                            && u.path().trim_matches('/').len() >= 3 =>
                    {
                        Some(SecretString::from(raw))
                    }
                    _ => {
                        return Err(err(
                            "SOPHIA_REFRESH_QUEUE_URL",
                            "must be the queue's https URL, e.g. https://<account>.queue.core.windows.net/sophia-refresh (http only on loopback)",
                        ));
                    }
                },
            },
            Some(_) => {
                return Err(err("SOPHIA_REFRESH_QUEUE", "must be local or storage"));
            }
        };
        let admin_jwt_secret = env.get("SOPHIA_ADMIN_JWT_SECRET");
        if let Some(s) = &admin_jwt_secret
            && s.len() < 32
        {
            return Err(err(
                "SOPHIA_ADMIN_JWT_SECRET",
                "must be at least 32 characters",
            ));
        }
        let admin_jwks_url = env.url("SOPHIA_ADMIN_JWKS_URL")?;
        if let Some(u) = &admin_jwks_url {
            let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
            if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                return Err(err(
                    "SOPHIA_ADMIN_JWKS_URL",
                    "must be https (http only for a loopback host)",
                ));
            }
        }
        let admin_issuer = env.get("SOPHIA_ADMIN_ISSUER");
        let admin_audience = env.get("SOPHIA_ADMIN_AUDIENCE");
        if admin_jwks_url.is_some() {
            // An identity provider's keys sign the tokens of every one of its tenants and apps
            // (Entra ID signs all of them with the same keys): without a pinned issuer and
            // audience, anyone with an account there could mint a PLATFORM_ADMIN token.
            if admin_issuer.is_none() {
                return Err(err(
                    "SOPHIA_ADMIN_ISSUER",
                    "is required with SOPHIA_ADMIN_JWKS_URL: the identity provider's issuer \
                     (e.g. https://login.microsoftonline.com/<tenant id>/v2.0), or any account \
                     of that provider could mint admin tokens",
                ));
            }
            if admin_audience.is_none() {
                return Err(err(
                    "SOPHIA_ADMIN_AUDIENCE",
                    "is required with SOPHIA_ADMIN_JWKS_URL: the application id URI or client id \
                     admin tokens are issued for (e.g. api://sophia-admin)",
                ));
            }
        }
        let upstream_allowed_hosts = env
            .get("SOPHIA_UPSTREAM_ALLOWED_HOSTS")
            .unwrap_or_else(|| DEFAULT_ALLOWED_HOSTS.to_owned());
        let allow_local_upstreams = env.flag("SOPHIA_ALLOW_LOCAL_UPSTREAMS")?;
        let upstreams = UpstreamPolicy::new(&upstream_allowed_hosts, allow_local_upstreams)
            .map_err(|e| err("SOPHIA_UPSTREAM_ALLOWED_HOSTS", e))?;
        let log_format = match env.get("SOPHIA_LOG_FORMAT").as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(err(
                    "SOPHIA_LOG_FORMAT",
                    format!("'{other}' is not json or pretty"),
                ));
            }
        };
        let public_url = env.url("SOPHIA_PUBLIC_URL")?;
        let under_functions_host = env.get("FUNCTIONS_CUSTOMHANDLER_PORT").is_some();
        let on_azure = under_functions_host
            || matches!(store, StoreBackend::Cosmos { .. })
            || secrets == SecretsBackend::KeyVault
            || refresh_queue_url.is_some();
        match &public_url {
            None if on_azure => {
                return Err(err(
                    "SOPHIA_PUBLIC_URL",
                    "is required outside local development (under the Functions host or on an \
                     Azure backend): the https base URL clients reach SOPHIA at; the token issuer \
                     and the discovery document are built from it, never from request headers",
                ));
            }
            Some(u)
                if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() =>
            {
                return Err(err(
                    "SOPHIA_PUBLIC_URL",
                    "must be a base URL without query, fragment or user info",
                ));
            }
            Some(u)
                if u.scheme() != "https"
                    && on_azure
                    && !matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) =>
            {
                return Err(err(
                    "SOPHIA_PUBLIC_URL",
                    "must be https outside local development (http only for localhost)",
                ));
            }
            _ => {}
        }
        let trusted_proxy_hops = env.range("SOPHIA_TRUSTED_PROXY_HOPS", 1usize, 1, 8)?;
        let token_issuer = env
            .get("SOPHIA_TOKEN_ISSUER")
            .or_else(|| {
                public_url
                    .as_ref()
                    .map(|u| u.as_str().trim_end_matches('/').to_owned())
            })
            .unwrap_or_else(|| "sophia".to_owned());
        let master_key = env.get("SOPHIA_MASTER_KEY");
        if let Some(k) = &master_key {
            crate::secrets::local::MasterKey::parse(k).map_err(|e| err("SOPHIA_MASTER_KEY", e))?;
        }
        Ok(Self {
            port,
            bind_address: env.parse(
                "SOPHIA_BIND_ADDRESS",
                IpAddr::from([127, 0, 0, 1]),
                "an IP address",
            )?,
            data_dir: PathBuf::from(
                env.get("SOPHIA_DATA_DIR")
                    .unwrap_or_else(|| "./.sophia".into()),
            ),
            store,
            secrets,
            master_key: master_key.map(SecretString::from),
            admin_jwt_secret: admin_jwt_secret.map(SecretString::from),
            admin_jwks_url,
            admin_issuer,
            admin_audience,
            admin_role_claim: env.get("SOPHIA_ADMIN_ROLE_CLAIM"),
            admin_company_claim: env
                .get("SOPHIA_ADMIN_COMPANY_CLAIM")
                .unwrap_or_else(|| "companyId".into()),
            admin_jwks_min_refresh: Duration::from_secs(env.range(
                "SOPHIA_ADMIN_JWKS_MIN_REFRESH_SECS",
                30u64,
                0,
                86_400,
            )?),
            allow_local_upstreams,
            upstreams,
            bcrypt_cost: env.range("SOPHIA_BCRYPT_COST", 12u32, 4, 31)?,
            trust_forwarded: env.flag("SOPHIA_TRUST_FORWARDED")?,
            trusted_proxy_hops,
            token_issuer,
            token_audience: env
                .get("SOPHIA_TOKEN_AUDIENCE")
                .unwrap_or_else(|| "sophia-agents".into()),
            token_ttl_secs: env.range("SOPHIA_TOKEN_TTL_SECS", 3600u64, 60, 86_400)?,
            public_url,
            security_cache_ttl: Duration::from_secs(env.range(
                "SOPHIA_SECURITY_CACHE_TTL_SECS",
                30u64,
                0,
                3600,
            )?),
            token_rate_limit_per_address: env.range(
                "SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS",
                30u32,
                0,
                1_000_000,
            )?,
            extractor: env.get("SOPHIA_EXTRACTOR").map(PathBuf::from),
            extract_memory_mb: env.range("SOPHIA_EXTRACT_MEMORY_MB", 512u64, 64, 16_384)?,
            extract_timeout: Duration::from_secs(env.range(
                "SOPHIA_EXTRACT_TIMEOUT_SECS",
                60u64,
                1,
                3_600,
            )?),
            extract_max_chars: env.range(
                "SOPHIA_EXTRACT_MAX_CHARS",
                2_000_000usize,
                1_000,
                100_000_000,
            )?,
            token_failures_per_source: env.range(
                "SOPHIA_TOKEN_FAILURES_PER_SOURCE",
                10u32,
                0,
                1_000_000,
            )?,
            token_rate_limit_per_company: env.range(
                "SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY",
                60u32,
                0,
                1_000_000,
            )?,
            max_body_bytes: env.range(
                "SOPHIA_MAX_BODY_BYTES",
                262_144usize,
                1024,
                64 * 1024 * 1024,
            )?,
            tenant_cache_ttl: Duration::from_secs(env.range(
                "SOPHIA_TENANT_CACHE_TTL_SECS",
                300u64,
                1,
                86_400,
            )?),
            tenant_cache_max_stale: Duration::from_secs(env.range(
                "SOPHIA_TENANT_CACHE_MAX_STALE_SECS",
                600u64,
                0,
                86_400,
            )?),
            upstream_connect_timeout: Duration::from_millis(env.range(
                "SOPHIA_UPSTREAM_CONNECT_TIMEOUT_MS",
                5_000u64,
                10,
                120_000,
            )?),
            upstream_first_byte_timeout: Duration::from_millis(env.range(
                "SOPHIA_UPSTREAM_FIRST_BYTE_TIMEOUT_MS",
                60_000u64,
                10,
                600_000,
            )?),
            upstream_total_timeout: Duration::from_millis(env.range(
                "SOPHIA_UPSTREAM_TIMEOUT_MS",
                120_000u64,
                10,
                1_800_000,
            )?),
            upstream_idle_timeout: Duration::from_millis(env.range(
                "SOPHIA_UPSTREAM_IDLE_TIMEOUT_MS",
                60_000u64,
                10,
                600_000,
            )?),
            upstream_retry_budget: Duration::from_millis(env.range(
                "SOPHIA_UPSTREAM_RETRY_BUDGET_MS",
                10_000u64,
                0,
                600_000,
            )?),
            usage_flush_interval: Duration::from_millis(env.range(
                "SOPHIA_USAGE_FLUSH_MS",
                1_000u64,
                10,
                600_000,
            )?),
            log_filter: env.get("SOPHIA_LOG").unwrap_or_else(|| "info".into()),
            log_format,
            cosmos_database: env
                .get("SOPHIA_COSMOS_DATABASE")
                .unwrap_or_else(|| "sophia".into()),
            cosmos_key: env.get("SOPHIA_COSMOS_KEY").map(SecretString::from),
            cosmos_create_containers: env.flag("SOPHIA_COSMOS_CREATE_CONTAINERS")?,
            cosmos_region: env
                .get("SOPHIA_COSMOS_REGION")
                .or_else(|| env.get("REGION_NAME"))
                .unwrap_or_else(|| DEFAULT_COSMOS_REGION.into()),
            audit_ttl_days: env.range("SOPHIA_AUDIT_TTL_DAYS", 365u32, 0, 36_500)?,
            refresh_queue_url,
            refresh_workers: env.range("SOPHIA_REFRESH_WORKERS", 2usize, 1, 64)?,
            refresh_stale_after: Duration::from_secs(env.range(
                "SOPHIA_REFRESH_STALE_SECS",
                600u64,
                30,
                86_400,
            )?),
            config_test_timeout: Duration::from_millis(env.range(
                "SOPHIA_CONFIG_TEST_TIMEOUT_MS",
                5_000u64,
                100,
                60_000,
            )?),
            keyvault_url: env.get("SOPHIA_KEYVAULT_URL"),
            azure_credential: match env.get("SOPHIA_AZURE_CREDENTIAL") {
                None => None,
                Some(raw) => Some(crate::azure_auth::CredentialKind::parse(&raw).ok_or_else(|| {
                    err(
                        "SOPHIA_AZURE_CREDENTIAL",
                        format!("'{raw}' is not managed_identity, workload_identity, developer_tools or client_secret"),
                    )
                })?),
            },
            azure_client_id: env.get("SOPHIA_AZURE_CLIENT_ID"),
            appinsights_connection_string: env
                .get("APPLICATIONINSIGHTS_CONNECTION_STRING")
                .map(SecretString::from),
        })
    }

    /// The upstream endpoint policy these settings describe.
    pub fn upstream_policy(&self) -> UpstreamPolicy {
        self.upstreams.clone()
    }
}

/// `SOPHIA_COSMOS_ENDPOINT`, required with `SOPHIA_STORE=cosmos`.
fn cosmos_endpoint<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<url::Url, ConfigError> {
    let Some(raw) = env.get("SOPHIA_COSMOS_ENDPOINT") else {
        return Err(err(
            "SOPHIA_COSMOS_ENDPOINT",
            "is required with SOPHIA_STORE=cosmos (https://<account>.documents.azure.com:443/)",
        ));
    };
    match url::Url::parse(&raw) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback_url(&u)) => Ok(u),
        _ => Err(err(
            "SOPHIA_COSMOS_ENDPOINT",
            "must be an https URL (http only for a loopback emulator)",
        )),
    }
}

/// Routing preference when neither `SOPHIA_COSMOS_REGION` nor `REGION_NAME` is set.
pub const DEFAULT_COSMOS_REGION: &str = "West Europe";

fn is_loopback_url(u: &url::Url) -> bool {
    matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_sane() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.store, StoreBackend::Sqlite);
        assert_eq!(s.secrets, SecretsBackend::Local);
        assert_eq!(s.bcrypt_cost, 12);
        assert_eq!(s.token_ttl_secs, 3600);
        assert_eq!(s.data_dir, PathBuf::from("./.sophia"));
        assert!(!s.allow_local_upstreams);
    }

    #[test]
    fn azure_backends_need_their_endpoints() {
        let e = settings(&[("SOPHIA_STORE", "cosmos")]).err().unwrap();
        assert_eq!(e.var, "SOPHIA_COSMOS_ENDPOINT");
        let e = settings(&[
            ("SOPHIA_STORE", "cosmos"),
            ("SOPHIA_COSMOS_ENDPOINT", "http://acct.documents.azure.com/"),
        ])
        .err()
        .unwrap();
        assert_eq!(
            e.var, "SOPHIA_COSMOS_ENDPOINT",
            "plain http only for loopback"
        );
        assert!(
            settings(&[
                ("SOPHIA_STORE", "cosmos"),
                ("SOPHIA_COSMOS_ENDPOINT", "http://127.0.0.1:8081/"),
                ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
            ])
            .is_ok()
        );
        let e = settings(&[("SOPHIA_SECRETS", "keyvault")]).err().unwrap();
        assert_eq!(e.var, "SOPHIA_KEYVAULT_URL");
        for bad in [
            "http://v.vault.azure.net",
            "https://v.vault.azure.net/secrets/x",
            "vault",
        ] {
            let e = settings(&[("SOPHIA_SECRETS", "keyvault"), ("SOPHIA_KEYVAULT_URL", bad)])
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.var, "SOPHIA_KEYVAULT_URL");
        }
        let s = settings(&[
            ("SOPHIA_SECRETS", "keyvault"),
            ("SOPHIA_KEYVAULT_URL", "https://v.vault.azure.net"),
            ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
            ("REGION_NAME", "North Europe"),
        ])
        .unwrap();
        assert_eq!(s.cosmos_region, "North Europe");
        assert_eq!(s.audit_ttl_days, 365);
    }

    #[test]
    fn functions_port_wins_over_sophia_port() {
        let s = settings(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "7071"),
            ("SOPHIA_PORT", "9000"),
            ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
        ])
        .unwrap();
        assert_eq!(s.port, 7071);
        assert_eq!(settings(&[("SOPHIA_PORT", "9000")]).unwrap().port, 9000);
    }

    /// Outside local development the public URL is configured, never guessed from requests.
    #[test]
    fn the_public_url_is_required_outside_local_development() {
        for azure in [
            vec![("FUNCTIONS_CUSTOMHANDLER_PORT", "7071")],
            vec![
                ("SOPHIA_SECRETS", "keyvault"),
                ("SOPHIA_KEYVAULT_URL", "https://v.vault.azure.net"),
            ],
        ] {
            assert_eq!(settings(&azure).err().unwrap().var, "SOPHIA_PUBLIC_URL");
            let mut http = azure.clone();
            http.push(("SOPHIA_PUBLIC_URL", "http://sophia.example.com"));
            assert_eq!(settings(&http).err().unwrap().var, "SOPHIA_PUBLIC_URL");
            let mut ok = azure.clone();
            ok.push(("SOPHIA_PUBLIC_URL", "https://sophia.example.com/"));
            assert_eq!(
                settings(&ok).unwrap().public_base(),
                "https://sophia.example.com"
            );
        }
        for bad in ["https://x.example.com/?a=1", "https://u:p@x.example.com"] {
            assert_eq!(
                settings(&[("SOPHIA_PUBLIC_URL", bad)]).err().unwrap().var,
                "SOPHIA_PUBLIC_URL"
            );
        }
        let local = settings(&[("SOPHIA_PORT", "9000")]).unwrap();
        assert_eq!(local.public_base(), "http://127.0.0.1:9000");
        assert_eq!(
            settings(&[("SOPHIA_TRUSTED_PROXY_HOPS", "0")])
                .err()
                .unwrap()
                .var,
            "SOPHIA_TRUSTED_PROXY_HOPS"
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("SOPHIA_PORT", "http"),
            ("SOPHIA_BCRYPT_COST", "3"),
            ("SOPHIA_STORE", "postgres"),
            ("SOPHIA_SECRETS", "vault"),
            ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "maybe"),
            ("SOPHIA_ADMIN_JWT_SECRET", "short"),
            ("SOPHIA_ADMIN_JWKS_URL", "http://idp.example.com/keys"),
            ("SOPHIA_UPSTREAM_ALLOWED_HOSTS", "a*b"),
            ("SOPHIA_MASTER_KEY", "nope"),
            ("SOPHIA_TOKEN_TTL_SECS", "5"),
            ("SOPHIA_AZURE_CREDENTIAL", "default"),
            ("SOPHIA_AUDIT_TTL_DAYS", "-1"),
        ] {
            let e = settings(&[(var, value)])
                .err()
                .unwrap_or_else(|| panic!("{var}={value} accepted"));
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(var));
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let s = settings(&[(
            "SOPHIA_ADMIN_JWT_SECRET",
            "super-secret-value-that-is-long-enough",
        )])
        .unwrap();
        assert!(!format!("{s:?}").contains("super-secret"));
    }
}
