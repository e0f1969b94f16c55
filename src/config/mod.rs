//! Configuration from environment variables (Azure app settings are environment variables),
//! read and validated once at start-up. The README's configuration table lists them all.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::upstream::policy::{DEFAULT_ALLOWED_HOSTS, UpstreamPolicy};

mod endpoints;
mod env;
#[cfg(test)]
mod tests;

pub use env::ConfigError;
use env::{Env, err};

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
/// `SOPHIA_UPSTREAM_RETRY_BUDGET_MS`, `SOPHIA_BREAKER_FAILURES`, `SOPHIA_BREAKER_OPEN_MS`, `SOPHIA_USAGE_FLUSH_MS`, `SOPHIA_LOG`, `SOPHIA_LOG_FORMAT`, `SOPHIA_COSMOS_ENDPOINT`,
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
    /// Consecutive failures that open a failover deployment's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips its deployment before one turn probes it.
    pub breaker_open_for: Duration,
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
    pub telemetry: TelemetrySettings,
}

/// Application Insights export (`APPLICATIONINSIGHTS_CONNECTION_STRING`, `SOPHIA_TELEMETRY_*`).
#[derive(Clone)]
pub struct TelemetrySettings {
    /// Where telemetry goes; unset: logs on stdout only.
    pub connection_string: Option<SecretString>,
    /// Share of successful traces exported, 0.0–1.0 (`SOPHIA_TELEMETRY_SAMPLING`, default 1);
    /// failures are always exported.
    pub sampling: f64,
    /// Spans waiting for export at most (`SOPHIA_TELEMETRY_QUEUE`, default 2048); past it
    /// spans are dropped and counted.
    pub queue: usize,
    /// Longest time a span waits to be posted (`SOPHIA_TELEMETRY_EXPORT_MS`, default 1000).
    pub export_interval: Duration,
    /// Longest wait for one post to the ingestion endpoint (`SOPHIA_TELEMETRY_TIMEOUT_MS`,
    /// default 5000).
    pub post_timeout: Duration,
    /// How often metrics are exported (`SOPHIA_TELEMETRY_METRICS_SECS`, default 60).
    pub metrics_interval: Duration,
    /// Longest wait for pending telemetry on shutdown (`SOPHIA_TELEMETRY_FLUSH_MS`, default 3000).
    pub flush_timeout: Duration,
    /// The cloud role name (`SOPHIA_TELEMETRY_ROLE`, else `WEBSITE_SITE_NAME`, else `sophia`).
    pub role_name: String,
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
                endpoint: endpoints::cosmos_endpoint(&env)?,
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
            endpoints::keyvault_url(&env)?;
        }
        let refresh_queue_url = endpoints::refresh_queue_url(&env)?;
        let endpoints::AdminAuth {
            jwt_secret: admin_jwt_secret,
            jwks_url: admin_jwks_url,
            issuer: admin_issuer,
            audience: admin_audience,
        } = endpoints::admin_auth(&env)?;
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
        endpoints::check_public_url(public_url.as_ref(), on_azure)?;
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
            breaker_failures: env.range("SOPHIA_BREAKER_FAILURES", 3u32, 1, 100)?,
            breaker_open_for: Duration::from_millis(env.range(
                "SOPHIA_BREAKER_OPEN_MS",
                30_000u64,
                10,
                3_600_000,
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
            telemetry: telemetry_settings(&env)?,
        })
    }

    /// The upstream endpoint policy these settings describe.
    pub fn upstream_policy(&self) -> UpstreamPolicy {
        self.upstreams.clone()
    }
}

/// Routing preference when neither `SOPHIA_COSMOS_REGION` nor `REGION_NAME` is set.
pub const DEFAULT_COSMOS_REGION: &str = "West Europe";

fn telemetry_settings<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<TelemetrySettings, ConfigError> {
    let connection_string = env
        .get("APPLICATIONINSIGHTS_CONNECTION_STRING")
        .filter(|v| !v.trim().is_empty());
    if let Some(raw) = &connection_string {
        crate::telemetry::ConnectionString::parse(raw)
            .map_err(|e| err("APPLICATIONINSIGHTS_CONNECTION_STRING", e))?;
    }
    let sampling = match env.get("SOPHIA_TELEMETRY_SAMPLING") {
        None => 1.0,
        Some(raw) => match raw.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => v,
            _ => {
                return Err(err(
                    "SOPHIA_TELEMETRY_SAMPLING",
                    format!("'{raw}' is not a number from 0 to 1"),
                ));
            }
        },
    };
    Ok(TelemetrySettings {
        connection_string: connection_string.map(SecretString::from),
        sampling,
        queue: env.range("SOPHIA_TELEMETRY_QUEUE", 2048usize, 16, 1_000_000)?,
        export_interval: Duration::from_millis(env.range(
            "SOPHIA_TELEMETRY_EXPORT_MS",
            1_000u64,
            10,
            60_000,
        )?),
        post_timeout: Duration::from_millis(env.range(
            "SOPHIA_TELEMETRY_TIMEOUT_MS",
            5_000u64,
            100,
            60_000,
        )?),
        metrics_interval: Duration::from_secs(env.range(
            "SOPHIA_TELEMETRY_METRICS_SECS",
            60u64,
            1,
            3_600,
        )?),
        flush_timeout: Duration::from_millis(env.range(
            "SOPHIA_TELEMETRY_FLUSH_MS",
            3_000u64,
            0,
            60_000,
        )?),
        role_name: env
            .get("SOPHIA_TELEMETRY_ROLE")
            .or_else(|| env.get("WEBSITE_SITE_NAME"))
            .unwrap_or_else(|| "sophia".to_owned()),
    })
}
