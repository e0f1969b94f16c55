//! Building the application from settings: backends, keys, caches, listener.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use crate::auth::admin::{AdminAuthConfig, AdminVerifier};
use crate::auth::authenticator::Authenticator;
use crate::auth::keys::KeyHasher;
use crate::auth::rate_limit::RateLimiter;
use crate::auth::service_token::ServiceTokens;
use crate::config::{SecretsBackend, Settings, StoreBackend};
use crate::llm::{ModelClient, UpstreamTimeouts};
use crate::secrets::SecretStore;
use crate::secrets::local::{LocalSecretStore, MasterKey, write_private_file};
use crate::state::{App, AppState};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;
use crate::tenant::SecurityCache;
use crate::tenant::runtime::{Resolver, RuntimeCache};

/// File in the data directory holding the generated local admin secret.
pub const ADMIN_SECRET_FILE: &str = "admin-jwt.secret";

/// Creates the data directory (owner-only) if needed.
pub fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("SOPHIA_DATA_DIR: creating {}", dir.display()))?;
    }
    // Private even when it already existed (a directory made by hand, or by an older version).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("SOPHIA_DATA_DIR: reading {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
                || format!("SOPHIA_DATA_DIR: making {} private (0700)", dir.display()),
            )?;
        }
    }
    Ok(())
}

/// A data-dir file readable by this user only (0600), created empty when missing, before an
/// embedded database opens it: SQLite gives its `-wal` and `-shm` files the database file's
/// mode, so they are private too.
pub fn private_file(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [
            path.to_path_buf(),
            path.with_extension("db-wal"),
            path.with_extension("db-shm"),
        ] {
            if let Ok(meta) = std::fs::metadata(&file)
                && meta.permissions().mode() & 0o077 != 0
            {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("making {} private (0600)", file.display()))?;
            }
        }
    }
    Ok(())
}

/// The HS256 admin secret: configured, or — in local mode with no JWKS — generated into the
/// data directory on first run (so `sophia admin-token` and the server agree).
pub fn admin_secret(settings: &Settings) -> anyhow::Result<Option<SecretString>> {
    if let Some(secret) = &settings.admin_jwt_secret {
        return Ok(Some(secret.clone()));
    }
    if settings.admin_jwks_url.is_some() {
        return Ok(None);
    }
    if settings.secrets != SecretsBackend::Local {
        anyhow::bail!(
            "SOPHIA_ADMIN_JWT_SECRET or SOPHIA_ADMIN_JWKS_URL must be set when SOPHIA_SECRETS is not local"
        );
    }
    ensure_data_dir(&settings.data_dir)?;
    let path = settings.data_dir.join(ADMIN_SECRET_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let text = text.trim().to_owned();
        if text.len() < 32 {
            anyhow::bail!(
                "{} is shorter than 32 characters; delete it to regenerate",
                path.display()
            );
        }
        return Ok(Some(SecretString::from(text)));
    }
    let secret = crate::auth::keys::AccessKey::generate().expose().to_owned()
        + &crate::auth::keys::AccessKey::generate().expose()[4..];
    write_private_file(&path, secret.as_bytes())?;
    Ok(Some(SecretString::from(secret)))
}

/// The admin verifier these settings describe.
pub fn admin_verifier(settings: &Settings, http: reqwest::Client) -> anyhow::Result<AdminVerifier> {
    Ok(AdminVerifier::new(
        AdminAuthConfig {
            hs256_secret: admin_secret(settings)?,
            jwks_url: settings.admin_jwks_url.clone(),
            issuer: settings.admin_issuer.clone(),
            audience: settings.admin_audience.clone(),
            role_claim: settings.admin_role_claim.clone(),
            company_claim: settings.admin_company_claim.clone(),
            jwks_min_refresh: settings.admin_jwks_min_refresh,
            jwks_max_age: Duration::from_secs(3600),
        },
        http,
    ))
}

async fn open_store(
    settings: &Settings,
    entra: Option<&Arc<crate::azure_auth::EntraTokens>>,
) -> anyhow::Result<Arc<dyn Store>> {
    match &settings.store {
        StoreBackend::Sqlite => {
            ensure_data_dir(&settings.data_dir)?;
            let path = settings.data_dir.join("sophia.db");
            private_file(&path)?;
            Ok(Arc::new(SqliteStore::open(&path)?))
        }
        StoreBackend::Cosmos { endpoint } => {
            use crate::store::cosmos::{CosmosAuth, CosmosConfig, CosmosStore};
            let auth = match (&settings.cosmos_key, entra) {
                (Some(key), _) => CosmosAuth::Key(key.clone()),
                (None, Some(entra)) => CosmosAuth::Entra(entra.credential()),
                (None, None) => anyhow::bail!(
                    "SOPHIA_STORE=cosmos needs SOPHIA_COSMOS_KEY or an Entra credential (SOPHIA_AZURE_CREDENTIAL)"
                ),
            };
            let store = CosmosStore::connect(CosmosConfig {
                endpoint: endpoint.to_string(),
                database: settings.cosmos_database.clone(),
                auth,
                create_containers: settings.cosmos_create_containers,
                audit_ttl_days: settings.audit_ttl_days,
                region: settings.cosmos_region.clone(),
            })
            .await
            .context("SOPHIA_STORE=cosmos")?;
            Ok(Arc::new(store))
        }
    }
}

fn open_secrets(
    settings: &Settings,
    entra: Option<&Arc<crate::azure_auth::EntraTokens>>,
) -> anyhow::Result<Arc<dyn SecretStore>> {
    match settings.secrets {
        SecretsBackend::Local => {
            ensure_data_dir(&settings.data_dir)?;
            let key = match &settings.master_key {
                Some(raw) => MasterKey::parse(raw.expose_secret())
                    .map_err(|e| anyhow::anyhow!("SOPHIA_MASTER_KEY: {e}"))?,
                None => MasterKey::load_or_create(&settings.data_dir)?,
            };
            let path = settings.data_dir.join("secrets.db");
            private_file(&path)?;
            Ok(Arc::new(LocalSecretStore::open(&path, key)?))
        }
        SecretsBackend::KeyVault => {
            let url = settings
                .keyvault_url
                .as_deref()
                .context("SOPHIA_KEYVAULT_URL is required with SOPHIA_SECRETS=keyvault")?;
            let entra = entra.context(
                "SOPHIA_SECRETS=keyvault needs an Entra credential (SOPHIA_AZURE_CREDENTIAL)",
            )?;
            Ok(Arc::new(
                crate::secrets::keyvault::KeyVaultSecretStore::new(url, entra.credential())
                    .context("SOPHIA_SECRETS=keyvault")?,
            ))
        }
    }
}

/// The process's Entra credential: the one `SOPHIA_AZURE_CREDENTIAL` names, or managed
/// identity when an Azure backend needs a token and none is named.
fn entra_credential(
    settings: &Settings,
) -> anyhow::Result<Option<Arc<crate::azure_auth::EntraTokens>>> {
    use crate::azure_auth::{CredentialKind, EntraTokens};
    let needs_token = settings.secrets == SecretsBackend::KeyVault
        || (matches!(settings.store, StoreBackend::Cosmos { .. }) && settings.cosmos_key.is_none())
        || settings
            .refresh_queue_url
            .as_ref()
            .is_some_and(|u| !u.expose_secret().contains('?'));
    let kind = match settings.azure_credential {
        Some(kind) => kind,
        None if needs_token => {
            tracing::info!(
                "SOPHIA_AZURE_CREDENTIAL is not set; using managed_identity for Azure backends"
            );
            CredentialKind::ManagedIdentity
        }
        None => return Ok(None),
    };
    let tokens =
        EntraTokens::new(kind, settings.azure_client_id.as_deref()).with_context(|| {
            format!(
                "SOPHIA_AZURE_CREDENTIAL={}: the credential could not be created",
                kind.as_str()
            )
        })?;
    Ok(Some(Arc::new(tokens)))
}

/// The shared HTTP client (connection pooling for every upstream call).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("sophia/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Builds the application state from settings.
pub async fn build_state(settings: Settings) -> anyhow::Result<AppState> {
    build_state_with(settings, None).await
}

/// Builds the application state, on `store` when given (tests wrap the real store to inject
/// faults) instead of the one the settings name.
pub async fn build_state_with(
    settings: Settings,
    store: Option<Arc<dyn Store>>,
) -> anyhow::Result<AppState> {
    let entra = entra_credential(&settings)?;
    let identities = entra
        .as_ref()
        .and_then(|e| crate::azure_auth::CompanyIdentities::new(e.kind()))
        .map(Arc::new);
    let secrets = open_secrets(&settings, entra.as_ref())?;
    let store = match store {
        Some(store) => store,
        None => open_store(&settings, entra.as_ref()).await?,
    };
    ensure_data_dir(&settings.data_dir)?;
    let index_path = settings.data_dir.join("knowledge.db");
    private_file(&index_path)?;
    for key_file in ["master.key", ADMIN_SECRET_FILE] {
        let path = settings.data_dir.join(key_file);
        if path.exists() {
            private_file(&path)?;
        }
    }
    let knowledge: Arc<dyn crate::knowledge::KnowledgeIndex> =
        Arc::new(crate::knowledge::sqlite::SqliteIndex::open(&index_path)?);
    let http = http_client()?;
    let tokens = ServiceTokens::load_or_create(
        secrets.as_ref(),
        settings.token_issuer.clone(),
        settings.token_audience.clone(),
        settings.token_ttl_secs,
    )
    .await
    .context("loading the service-token signing key")?;
    let admin = admin_verifier(&settings, http.clone())?;
    let upstreams = settings.upstream_policy();
    let models = ModelClient::new(
        crate::upstream::upstream_client(&upstreams, settings.upstream_connect_timeout)?,
        crate::upstream::ModelTransport::new(&upstreams, settings.upstream_connect_timeout)?,
        upstreams.clone(),
        UpstreamTimeouts {
            first_byte: settings.upstream_first_byte_timeout,
            total: settings.upstream_total_timeout,
            idle: settings.upstream_idle_timeout,
            retry_budget: settings.upstream_retry_budget,
            max_retries: 3,
        },
    );
    let jobs = match &settings.refresh_queue_url {
        None => crate::jobs::JobQueue::local(settings.refresh_workers),
        Some(url) => crate::jobs::JobQueue::storage(
            url,
            entra.as_ref(),
            crate::jobs::QueueSigner::load_or_create(secrets.as_ref())
                .await
                .context("loading the refresh queue's signing key")?,
        )?,
    };
    let extractor = crate::knowledge::sandbox::Extractor {
        executable: match &settings.extractor {
            Some(path) => path.clone(),
            None => {
                std::env::current_exe().context("locating this executable (the text extractor)")?
            }
        },
        memory_bytes: settings.extract_memory_mb * 1024 * 1024,
        timeout: settings.extract_timeout,
        max_chars: settings.extract_max_chars,
    };
    // One set of fleet counters: the limits and the token endpoint's failure counts.
    let limits = crate::limits::Limiter::default();
    let auth = Authenticator::new(
        Arc::clone(&store),
        tokens,
        KeyHasher::new(settings.bcrypt_cost),
        SecurityCache::new(settings.security_cache_ttl),
        RateLimiter::new(settings.token_rate_limit_per_address),
        crate::auth::key_checks::KeyChecks::new(
            settings.token_failures_per_source,
            settings.token_rate_limit_per_company,
        )
        .across(limits.clone()),
    );
    let resolver = Resolver {
        upstreams: Arc::new(upstreams.clone()),
        http: models.http().clone(),
        embedded: Arc::clone(&knowledge),
        data_dir: settings.data_dir.clone(),
        identities: identities.clone(),
        breakers: Arc::default(),
        breaker_policy: crate::llm::pool::BreakerPolicy {
            failures: settings.breaker_failures,
            open_for: settings.breaker_open_for,
        },
    };
    Ok(Arc::new(App {
        extractor,
        upstreams,
        models,
        usage: crate::usage::UsageRecorder::default(),
        limits,
        runtimes: RuntimeCache::new(
            settings.tenant_cache_ttl,
            settings.tenant_cache_max_stale,
            100_000,
            resolver,
        ),
        identities,
        entra,
        auth,
        started_at: Instant::now(),
        store,
        secrets,
        knowledge,
        jobs,
        http,
        admin,
        settings,
    }))
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Builds the state and binds the port (port 0 picks a free one; see [`Self::port`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_store(settings, None).await
    }

    /// [`Self::build`] on a given store (fault-injection tests).
    pub async fn build_with_store(
        settings: Settings,
        store: Option<Arc<dyn Store>>,
    ) -> anyhow::Result<Self> {
        let mut settings = settings;
        let addr = SocketAddr::new(settings.bind_address, settings.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        // Port 0 picked a free port: the local base URL names the real one.
        settings.port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(settings.port);
        let state = build_state_with(settings, store).await?;
        Ok(Self { listener, state })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> AppState {
        Arc::clone(&self.state)
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and flushes usage.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let state = Arc::clone(&self.state);
        let flusher = {
            let state = Arc::clone(&state);
            let every = state.settings.usage_flush_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    state.usage.flush(state.store.as_ref()).await;
                }
            })
        };
        let limit_sync = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::limits::SYNC_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    state.limits.sync_all(state.store.as_ref()).await;
                }
            })
        };
        tokio::spawn({
            let state = Arc::clone(&state);
            async move { crate::jobs::resume_queued(&state).await }
        });
        let app = crate::router::router(Arc::clone(&state));
        // Small SSE writes must not wait for delayed ACKs (Nagle): set TCP_NODELAY.
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let result = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        flusher.abort();
        limit_sync.abort();
        state.usage.flush(state.store.as_ref()).await;
        state.limits.flush(state.store.as_ref()).await;
        result
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}
