//! How refresh jobs reach a worker — the in-process pool or an Azure Storage queue — and the
//! signed queue message that carries one.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::domain::TenantId;

/// How jobs reach a worker.
pub enum JobQueue {
    /// Tokio tasks in this process, at most `permits` jobs at once.
    Local { permits: Arc<Semaphore> },
    /// An Azure Storage queue; the `refresh-worker` function's queue trigger delivers each
    /// message back to this binary (`POST /refresh-worker`).
    Storage {
        client: azure_storage_queue::QueueClient,
        signer: QueueSigner,
    },
}

/// The queue message of a refresh job (base64 of this JSON, the Functions host's default
/// queue message encoding). `sig` is an HMAC-SHA256 of the tenant and job ids under a key only
/// SOPHIA holds (in its secret store): whoever can reach `/refresh-worker` or write to the
/// queue still cannot forge a delivery.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobMessage {
    pub tenant_id: TenantId,
    pub job_id: String,
    pub sig: String,
}

/// The secret holding the queue-message key (32 random bytes, base64).
pub const QUEUE_KEY_SECRET: &str = "sophia-queue-signing-key";

/// Signs and checks refresh queue messages.
#[derive(Clone)]
pub struct QueueSigner {
    key: secrecy::SecretSlice<u8>,
}

impl std::fmt::Debug for QueueSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueSigner([REDACTED])")
    }
}

impl QueueSigner {
    /// The key from the secret store, generated and stored on first use.
    pub async fn load_or_create(secrets: &dyn crate::secrets::SecretStore) -> anyhow::Result<Self> {
        use base64::Engine;
        use secrecy::ExposeSecret;
        let name = crate::secrets::SecretName::parse(QUEUE_KEY_SECRET)?;
        let stored = crate::secrets::latest_or_create(secrets, &name, || {
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            Ok(secrecy::SecretString::from(
                base64::engine::general_purpose::STANDARD.encode(key),
            ))
        })
        .await?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(stored.expose_secret().trim())
            .ok()
            .filter(|k| k.len() >= 32)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the secret {QUEUE_KEY_SECRET} is not a base64 key of 32 bytes or more"
                )
            })?;
        Ok(Self {
            key: secrecy::SecretSlice::from(key),
        })
    }

    /// HMAC-SHA256 over the ids (HMAC takes keys of any length, so this never fails).
    fn mac(&self, tenant: &TenantId, job: &str) -> Option<hmac::Hmac<sha2::Sha256>> {
        use hmac::Mac;
        use secrecy::ExposeSecret;
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(self.key.expose_secret()).ok()?;
        mac.update(b"sophia-refresh-v1\n");
        mac.update(tenant.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(job.as_bytes());
        Some(mac)
    }

    /// The signed message for a job.
    pub fn message(&self, tenant: &TenantId, job: &str) -> anyhow::Result<JobMessage> {
        use base64::Engine;
        use hmac::Mac;
        let mac = self
            .mac(tenant, job)
            .ok_or_else(|| anyhow::anyhow!("the queue signing key is unusable"))?;
        Ok(JobMessage {
            tenant_id: tenant.clone(),
            job_id: job.to_owned(),
            sig: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(mac.finalize().into_bytes()),
        })
    }

    /// Whether a message carries a valid signature (compared in constant time).
    pub fn verify(&self, message: &JobMessage) -> bool {
        use base64::Engine;
        use hmac::Mac;
        let Some(mac) = self.mac(&message.tenant_id, &message.job_id) else {
            return false;
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&message.sig)
            .is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
    }
}

impl JobQueue {
    pub fn local(workers: usize) -> Self {
        Self::Local {
            permits: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// A Storage queue at `url`: a SAS in its query string authenticates, else SOPHIA's
    /// identity (role 'Storage Queue Data Message Sender').
    pub fn storage(
        url: &secrecy::SecretString,
        entra: Option<&Arc<crate::azure_auth::EntraTokens>>,
        signer: QueueSigner,
    ) -> anyhow::Result<Self> {
        use secrecy::ExposeSecret;
        let parsed = url::Url::parse(url.expose_secret())
            .map_err(|_| anyhow::anyhow!("SOPHIA_REFRESH_QUEUE_URL is not a URL"))?;
        let credential = if parsed.query().is_some() {
            None
        } else {
            Some(entra.map(|e| e.credential()).ok_or_else(|| {
                anyhow::anyhow!(
                    "SOPHIA_REFRESH_QUEUE_URL has no SAS: SOPHIA's identity is needed (SOPHIA_AZURE_CREDENTIAL)"
                )
            })?)
        };
        // Sends made inside a request are Queue dependencies in App Insights (the polling loop
        // runs outside any request and is not recorded).
        let options = azure_storage_queue::QueueClientOptions {
            client_options: azure_core::http::ClientOptions {
                transport: Some(crate::telemetry::deps::TracedHttp::transport(
                    azure_core::http::new_http_client(None),
                    crate::telemetry::deps::Service::Queue,
                )),
                ..Default::default()
            },
            ..Default::default()
        };
        let client = azure_storage_queue::QueueClient::new(parsed, credential, Some(options)).map_err(|e| {
            anyhow::anyhow!("SOPHIA_REFRESH_QUEUE_URL is not usable ({}): https is required with SOPHIA's identity", e.kind())
        })?;
        Ok(Self::Storage { client, signer })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Local { .. } => "local",
            Self::Storage { .. } => "storage_queue",
        }
    }

    /// The signer of queue messages (a Storage queue only: nothing else delivers them).
    pub fn signer(&self) -> Option<&QueueSigner> {
        match self {
            Self::Local { .. } => None,
            Self::Storage { signer, .. } => Some(signer),
        }
    }
}
