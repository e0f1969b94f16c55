//! Company credentials as admins give them: a secret reference resolved and checked for
//! ownership (never by its name), the bundle an instance uses now, binding a platform admin's
//! secret to its company.

use super::AdminError;
use crate::auth::admin::{AdminPrincipal, AdminRole};
use crate::domain::{AgentInstance, TenantId};
use crate::secrets::{CredentialBundle, SecretError};
use crate::state::App;

/// An admin-supplied secret reference, resolved: its identifier, its credentials, and whether
/// it still has to be bound to the company (a platform admin's first use of it).
pub struct ReferencedSecret {
    pub id: String,
    pub bundle: CredentialBundle,
    bind: bool,
}

/// Resolves an admin-supplied secret reference. It must parse for the configured secret
/// store, not name a secret SOPHIA manages, and be bound to `company` — exactly, by the
/// ownership record on the secret, never by its name. A company `ADMIN` may reference only
/// secrets already bound to its company (a foreign or missing one gets the same answer, so the
/// check reveals nothing); a `PLATFORM_ADMIN` may bind an unbound secret to the company.
pub async fn referenced_secret(
    app: &App,
    admin: &AdminPrincipal,
    company: &TenantId,
    raw: &str,
) -> Result<ReferencedSecret, AdminError> {
    let raw = raw.trim();
    let reference = app.secrets.parse_id(raw)?;
    if reference.name.is_reserved() {
        return Err(AdminError::invalid(
            "keyvaultSecretId",
            "refers to a secret that SOPHIA manages itself",
        ));
    }
    let platform = matches!(admin.role, AdminRole::PlatformAdmin);
    let not_bound = || {
        AdminError::invalid(
            "keyvaultSecretId",
            format!("no secret with this id is bound to company '{company}'"),
        )
    };
    let (secret, owner) = match app.secrets.get_owned(raw).await {
        Ok(found) => found,
        Err(SecretError::NotFound) if platform => {
            return Err(AdminError::invalid(
                "keyvaultSecretId",
                "no such secret in the secret store",
            ));
        }
        Err(SecretError::NotFound) => return Err(not_bound()),
        Err(e) => return Err(e.into()),
    };
    let bind = match owner.as_deref() {
        Some(o) if o == company.as_str() => false,
        None if platform => true,
        Some(other) if platform => {
            tracing::warn!(tenant.id = %company, secret.owner = other, "platform admin tried to bind another company's secret");
            return Err(AdminError::Conflict(
                "this secret is bound to another company; give this company a secret of its own"
                    .into(),
            ));
        }
        _ => return Err(not_bound()),
    };
    Ok(ReferencedSecret {
        id: raw.to_owned(),
        bundle: CredentialBundle::from_secret(&secret),
        bind,
    })
}

/// The credentials the stored instance uses (empty when it has none or they are gone).
pub async fn current_bundle(
    app: &App,
    current: &AgentInstance,
) -> Result<CredentialBundle, AdminError> {
    match &current.keyvault_secret_id {
        Some(id) => {
            Ok(crate::secrets::tenant_bundle(app.secrets.as_ref(), &current.tenant_id, id).await?)
        }
        None => Ok(CredentialBundle::default()),
    }
}

/// Records that a platform admin bound an existing secret to the company.
pub async fn bind_secret(
    app: &App,
    secret: &ReferencedSecret,
    company: &TenantId,
) -> Result<(), AdminError> {
    if secret.bind {
        app.secrets.bind(&secret.id, company).await?;
        tracing::info!(tenant.id = %company, "secret bound to company {company}");
    }
    Ok(())
}
