//! Agent instances as the admin API changes them: create, patch, rotate the key, disable —
//! each validated, authorised by the rules of `domain::authority`, written with its
//! credentials, audited, and with the security and runtime caches forgotten so the change
//! bites at once. The handlers in `routes::admin::instances` only parse and shape.
//!
//! Errors are `AdminError`s (no HTTP type here); `error.rs` answers them.

use chrono::Utc;
use serde_json::json;

use super::AdminError;
use crate::admin::credentials::{ReferencedSecret, bind_secret, current_bundle, referenced_secret};
use crate::admin::views::{CreateInstance, Patch, PatchInstance};
use crate::admin::{provision, validate};
use crate::auth::admin::{AdminPrincipal, AdminRole};
use crate::auth::keys::AccessKey;
use crate::domain::audit::action;
use crate::domain::authority::{self, DisabledBy};
use crate::domain::{
    AgentInstance, AuditEntry, AuditOutcome, InstanceId, InstanceStatus, KeyHash, PreviousKey,
};
use crate::secrets::{CredentialBundle, SecretName};
use crate::state::App;
use crate::store::{InstanceFilter, PageRequest, TenantScope};

/// The instance, if this admin may see it; another company's instance is a plain 404.
pub async fn load(
    app: &App,
    admin: &AdminPrincipal,
    id: &InstanceId,
) -> Result<AgentInstance, AdminError> {
    app.store
        .get_instance(&admin.scope(), id)
        .await
        .map_err(AdminError::store_as("agent instance"))
}

/// Writes `next` if the stored etag is still `etag`, and forgets the cached security state so
/// the change bites at once on this instance of the service.
pub(super) async fn save(
    app: &App,
    next: &AgentInstance,
    etag: &str,
) -> Result<AgentInstance, AdminError> {
    let stored = app
        .store
        .replace_instance(next, etag)
        .await
        .map_err(AdminError::store_as("agent instance"))?;
    app.auth
        .security
        .invalidate(&stored.tenant_id, &stored.id)
        .await;
    app.runtimes.invalidate(&stored.tenant_id, &stored.id).await;
    Ok(stored)
}

/// Records an admin's action on an instance.
async fn audit_admin(
    app: &App,
    admin: &AdminPrincipal,
    client: &str,
    instance: &AgentInstance,
    action: &str,
    details: serde_json::Value,
) {
    app.audit(
        AuditEntry::new(
            instance.tenant_id.clone(),
            action,
            admin.actor(),
            AuditOutcome::Success,
        )
        .instance(instance.id)
        .client(client)
        .details(details),
    )
    .await;
}

/// Applies the rules of [`authority`] to a proposed write; nothing has been written yet.
fn authorize(
    app: &App,
    admin: &AdminPrincipal,
    current: Option<&AgentInstance>,
    next: &AgentInstance,
    knowledge_sas: bool,
    credentials_changed: bool,
) -> Result<(), AdminError> {
    authority::check(&authority::Change {
        platform: matches!(admin.role, AdminRole::PlatformAdmin),
        current,
        next,
        knowledge_sas,
        credentials_changed,
        sophia_client_id: app.settings.azure_client_id.as_deref(),
    })
    .map_err(|refusal| refused(admin, next, refusal))
}

/// An [`authority`] refusal as the admin API answers it (logged when forbidden).
fn refused(
    admin: &AdminPrincipal,
    next: &AgentInstance,
    refusal: authority::Refusal,
) -> AdminError {
    match refusal {
        authority::Refusal::Forbidden { field, reason } => {
            tracing::warn!(tenant.id = %next.tenant_id, admin.actor = %admin.actor(), field, "admin change refused: {reason}");
            AdminError::ForbiddenField {
                field: field.into(),
                detail: reason,
            }
        }
        authority::Refusal::Invalid { field, reason } => AdminError::invalid(field, reason),
    }
}

/// A budget set or changed counts what the company used earlier in its day and month (not
/// only from now on). A failure is logged: the write stands, the windows count from now.
async fn seed_budgets(app: &App, before: Option<&AgentInstance>, after: &AgentInstance) {
    let then = before.map(|b| b.settings.limits()).unwrap_or_default();
    let now = after.settings.limits();
    if then == now || (now.tokens_per_day.is_none() && now.tokens_per_month.is_none()) {
        return;
    }
    if let Err(e) = app
        .limits
        .seed_from_usage(app.store.as_ref(), &app.usage, &after.tenant_id)
        .await
    {
        tracing::warn!(tenant.id = %after.tenant_id, error = ?e, "the budget counts from now: earlier usage could not be read: {e:#}");
    }
}

/// Marks `next` disabled by this admin and revokes every token issued so far (they carry
/// the old key version). The access key itself is kept: re-enabling restores it.
fn disable(next: &mut AgentInstance, admin: &AdminPrincipal) {
    next.status = InstanceStatus::Disabled;
    next.key_version = next.key_version.saturating_add(1);
    next.previous_key = None;
    next.disabled_by = Some(match admin.role {
        AdminRole::PlatformAdmin => DisabledBy::PlatformAdmin,
        AdminRole::Admin(_) => DisabledBy::Admin,
    });
}

/// A company admin's new instance keeps the limits of the company's latest earlier one (a
/// disabled one included): disabling and re-creating must not lift them.
async fn limits_carried_over(
    app: &App,
    admin: &AdminPrincipal,
    next: &AgentInstance,
) -> Result<(), AdminError> {
    let page = PageRequest {
        limit: 100,
        continuation_token: None,
    };
    let earlier = app
        .store
        .list_instances(
            &TenantScope::Tenant(next.tenant_id.clone()),
            &InstanceFilter::default(),
            &page,
        )
        .await
        .map_err(AdminError::store_as("agent instance"))?;
    let Some(latest) = earlier
        .items
        .iter()
        .filter(|i| !i.settings.limits().is_empty())
        .max_by_key(|i| i.updated_at)
    else {
        return Ok(());
    };
    authority::limits_only_lowered(latest, next).map_err(|refusal| refused(admin, next, refusal))
}

/// A company's managed identity belongs to that company alone: binding one that another
/// company's instance uses would give each the other's resources (409). Checked across every
/// company — a platform admin's rare write — only when the identity changes.
async fn identity_unshared(
    app: &App,
    current: Option<&AgentInstance>,
    next: &AgentInstance,
) -> Result<(), AdminError> {
    let Some(id) = authority::identity_client_id(next) else {
        return Ok(());
    };
    if current.and_then(authority::identity_client_id) == Some(id) {
        return Ok(());
    }
    let mut page = PageRequest {
        limit: crate::http::extract::MAX_LIMIT,
        continuation_token: None,
    };
    loop {
        let found = app
            .store
            .list_instances(&TenantScope::All, &InstanceFilter::default(), &page)
            .await?;
        if found.items.iter().any(|other| {
            other.tenant_id != next.tenant_id
                && authority::identity_client_id(other).is_some_and(|o| o.eq_ignore_ascii_case(id))
        }) {
            return Err(AdminError::Conflict(
                "this managed identity is bound to another company; give each company an identity of its own"
                    .into(),
            ));
        }
        match found.continuation_token {
            Some(token) => page.continuation_token = Some(token),
            None => return Ok(()),
        }
    }
}

/// Creates an instance for `body.companyId` with a new access key (returned once, here).
pub async fn create(
    app: &App,
    admin: &AdminPrincipal,
    client: &str,
    mut body: CreateInstance,
) -> Result<(AgentInstance, AccessKey), AdminError> {
    admin.check_company(&body.company_id)?;
    let mut config = body.take_config();
    validate::config(&app.upstreams, &mut config)?;
    if let Some(raw) = &body.deployments {
        config.deployments = validate::deployments(&app.upstreams, raw)?;
    }
    let settings = validate::settings(&body.settings.unwrap_or_default(), &app.upstreams)?;
    let credentials = body.credentials.filter(|c| !c.is_empty());
    if credentials.is_some() && body.keyvault_secret_id.is_some() {
        return Err(AdminError::invalid(
            "credentials",
            "give either credentials (stored for you) or keyvaultSecretId (an existing secret), not both",
        ));
    }
    if let Some(bundle) = &credentials {
        validate::credentials(&app.upstreams, "credentials", bundle)?;
    }
    if app
        .store
        .find_live_instance(&body.company_id, body.agent_type)
        .await?
        .is_some()
    {
        return Err(AdminError::Conflict(format!(
            "company '{}' already has a {} agent instance; rotate its key or disable it first",
            body.company_id,
            body.agent_type.as_str()
        )));
    }
    let referenced = match &body.keyvault_secret_id {
        Some(raw) => {
            let secret = referenced_secret(app, admin, &body.company_id, raw).await?;
            validate::credentials(&app.upstreams, "keyvaultSecretId", &secret.bundle)?;
            Some(secret)
        }
        None => None,
    };

    let id = InstanceId::new();
    let key = AccessKey::generate();
    let hash = app
        .auth
        .hasher
        .hash(&key)
        .await
        .map_err(AdminError::internal)?;
    let secret_name = SecretName::for_instance(&id);
    let now = Utc::now();
    let mut instance = AgentInstance {
        id,
        tenant_id: body.company_id.clone(),
        agent_type: body.agent_type,
        // A `foundry` instance is active once its agent is provisioned (below).
        status: if config.azure_project_id.is_some()
            && settings.runtime() != crate::domain::settings::Runtime::Foundry
        {
            InstanceStatus::Active
        } else {
            InstanceStatus::ToProvision
        },
        config,
        settings,
        keyvault_secret_id: None,
        access_key_hash: KeyHash::new(hash),
        access_key_last4: key.last4(),
        key_version: 1,
        previous_key: None,
        disabled_by: None,
        provisioning_error: None,
        created_at: now,
        updated_at: now,
        last_used_at: None,
        etag: String::new(),
    };
    let knowledge_sas = match (&credentials, &referenced) {
        (Some(bundle), _) => bundle.knowledge_sas.is_some(),
        (None, Some(secret)) => secret.bundle.knowledge_sas.is_some(),
        (None, None) => false,
    };
    authorize(
        app,
        admin,
        None,
        &instance,
        knowledge_sas,
        credentials.is_some() || referenced.is_some(),
    )?;
    if !matches!(admin.role, AdminRole::PlatformAdmin) {
        limits_carried_over(app, admin, &instance).await?;
    }
    identity_unshared(app, None, &instance).await?;
    instance.keyvault_secret_id = match (&credentials, &referenced) {
        (Some(bundle), _) => Some(
            app.secrets
                .set_owned(&secret_name, &bundle.to_secret(), Some(&instance.tenant_id))
                .await?,
        ),
        (None, Some(secret)) => {
            bind_secret(app, secret, &instance.tenant_id).await?;
            Some(secret.id.clone())
        }
        (None, None) => None,
    };
    let stored = match app.store.insert_instance(&instance).await {
        Ok(stored) => stored,
        Err(e) => {
            // Undo the secret written for this instance: nothing half-made stays behind.
            if credentials.is_some()
                && let Err(cleanup) = app.secrets.delete(&secret_name).await
            {
                tracing::error!(secret.name = %secret_name, error = ?cleanup, "orphaned secret could not be removed");
            }
            return Err(e.into());
        }
    };
    app.auth
        .security
        .invalidate(&stored.tenant_id, &stored.id)
        .await;
    app.runtimes.invalidate(&stored.tenant_id, &stored.id).await;
    seed_budgets(app, None, &stored).await;
    let fields = credentials
        .as_ref()
        .map(CredentialBundle::present_fields)
        .unwrap_or_default();
    let details = json!({ "status": stored.status.as_str(), "credentials": fields });
    audit_admin(
        app,
        admin,
        client,
        &stored,
        action::INSTANCE_CREATE,
        details,
    )
    .await;
    tracing::info!(tenant.id = %stored.tenant_id, instance.id = %stored.id, "agent instance {} created", stored.id);
    if provision::applies(&stored) && stored.config.azure_project_endpoint.is_some() {
        let (provisioned, _) = provision_and_save(app, admin, client, stored).await?;
        return Ok((provisioned, key));
    }
    Ok((stored, key))
}

fn patch_text(
    target: &mut Option<String>,
    patch: Patch<String>,
    name: &'static str,
    changed: &mut Vec<&'static str>,
    check: impl Fn(&str) -> Result<String, AdminError>,
) -> Result<(), AdminError> {
    match patch {
        Patch::Absent => {}
        Patch::Null => {
            *target = None;
            changed.push(name);
        }
        Patch::Value(v) => {
            *target = Some(check(&v)?);
            changed.push(name);
        }
    }
    Ok(())
}

/// Applies an admin's PATCH to the stored instance `current` (RFC 7386 for `settings`;
/// credentials merged or referenced; status rules; authority rules). Unchanged: `current`.
pub async fn patch(
    app: &App,
    admin: &AdminPrincipal,
    client: &str,
    current: AgentInstance,
    mut patch: PatchInstance,
) -> Result<AgentInstance, AdminError> {
    let mut next = current.clone();
    let mut changed: Vec<&'static str> = Vec::new();

    for (field, value) in patch.take_config() {
        patch_text(
            next.config.field_mut(field),
            value,
            field.name(),
            &mut changed,
            |v| validate::config_field(&app.upstreams, field, v),
        )?;
    }
    match &patch.deployments {
        Patch::Absent => {}
        Patch::Null => {
            next.config.deployments.clear();
            changed.push("deployments");
        }
        Patch::Value(raw) => {
            next.config.deployments = validate::deployments(&app.upstreams, raw)?;
            changed.push("deployments");
        }
    }
    match patch.provider {
        Patch::Absent => {}
        Patch::Null => return Err(AdminError::invalid("provider", "cannot be null")),
        Patch::Value(p) => {
            next.config.provider = p;
            changed.push("provider");
        }
    }
    match patch.settings {
        Patch::Absent => {}
        Patch::Null => {
            next.settings = Default::default();
            changed.push("settings");
        }
        Patch::Value(merge) => {
            let mut merged = next.settings.to_map();
            for (key, value) in merge {
                if value.is_null() {
                    merged.remove(&key);
                } else {
                    merged.insert(key, value);
                }
            }
            next.settings = validate::settings(&merged, &app.upstreams)?;
            changed.push("settings");
        }
    }
    let status_given = match patch.status {
        Patch::Absent => false,
        Patch::Null => return Err(AdminError::invalid("status", "cannot be null")),
        Patch::Value(s) => {
            next.status = s;
            true
        }
    };
    // An instance waiting for provisioning becomes active once it names its Azure project.
    if !status_given
        && next.status == InstanceStatus::ToProvision
        && next.config.azure_project_id.is_some()
        && next.settings.runtime() != crate::domain::settings::Runtime::Foundry
    {
        next.status = InstanceStatus::Active;
    }
    if next.status != current.status {
        changed.push("status");
    }
    if next.status != InstanceStatus::Disabled
        && current.status == InstanceStatus::Disabled
        && let Some(live) = app
            .store
            .find_live_instance(&next.tenant_id, next.agent_type)
            .await?
        && live.id != next.id
    {
        return Err(AdminError::Conflict(format!(
            "company '{}' already has another live {} instance ({})",
            next.tenant_id,
            next.agent_type.as_str(),
            live.id
        )));
    }

    // Disabling revokes: every token issued before it carries an older key version. Who
    // disabled decides who may re-enable (checked by `authorize`).
    if next.status == InstanceStatus::Disabled && current.status != InstanceStatus::Disabled {
        disable(&mut next, admin);
    } else if next.status != InstanceStatus::Disabled {
        next.disabled_by = None;
    }

    /// What this PATCH does to the instance's credentials.
    enum Credentials {
        Keep,
        /// A new version of the instance's own bundle.
        Write(CredentialBundle),
        Reference(ReferencedSecret),
        Detach,
    }
    let mut credential_fields = Vec::new();
    let plan = match (patch.credentials, patch.keyvault_secret_id) {
        (Patch::Value(_), Patch::Value(_)) => {
            return Err(AdminError::invalid(
                "credentials",
                "give either credentials or keyvaultSecretId, not both",
            ));
        }
        (Patch::Null, _) => {
            return Err(AdminError::invalid(
                "credentials",
                "cannot be null; set keyvaultSecretId to null to detach credentials",
            ));
        }
        (Patch::Value(bundle), _) if !bundle.is_empty() => {
            validate::credentials(&app.upstreams, "credentials", &bundle)?;
            credential_fields = bundle.present_fields();
            // Merged over the current bundle.
            let base = current_bundle(app, &current).await?;
            changed.push("credentials");
            Credentials::Write(base.merged(bundle))
        }
        (_, Patch::Value(raw)) => {
            changed.push("keyvaultSecretId");
            let secret = referenced_secret(app, admin, &next.tenant_id, &raw).await?;
            validate::credentials(&app.upstreams, "keyvaultSecretId", &secret.bundle)?;
            Credentials::Reference(secret)
        }
        (_, Patch::Null) => {
            changed.push("keyvaultSecretId");
            Credentials::Detach
        }
        _ => Credentials::Keep,
    };
    let knowledge_sas = match &plan {
        Credentials::Write(bundle) => bundle.knowledge_sas.is_some(),
        Credentials::Reference(secret) => secret.bundle.knowledge_sas.is_some(),
        Credentials::Detach => false,
        Credentials::Keep if next.settings.knowledge_container_url.is_some() => {
            current_bundle(app, &current).await?.knowledge_sas.is_some()
        }
        Credentials::Keep => false,
    };
    authorize(
        app,
        admin,
        Some(&current),
        &next,
        knowledge_sas,
        !matches!(plan, Credentials::Keep),
    )?;
    identity_unshared(app, Some(&current), &next).await?;
    match plan {
        Credentials::Keep => {}
        Credentials::Write(bundle) => {
            next.keyvault_secret_id = Some(
                app.secrets
                    .set_owned(
                        &SecretName::for_instance(&next.id),
                        &bundle.to_secret(),
                        Some(&next.tenant_id),
                    )
                    .await?,
            );
        }
        Credentials::Reference(secret) => {
            bind_secret(app, &secret, &next.tenant_id).await?;
            next.keyvault_secret_id = Some(secret.id);
        }
        Credentials::Detach => next.keyvault_secret_id = None,
    }

    if changed.is_empty() {
        return Ok(current);
    }
    next.updated_at = Utc::now();
    let stored = save(app, &next, &current.etag).await?;
    seed_budgets(app, Some(&current), &stored).await;
    let disabled_now =
        stored.status == InstanceStatus::Disabled && current.status != InstanceStatus::Disabled;
    let details = json!({ "fields": changed, "credentials": credential_fields, "status": stored.status.as_str() });
    audit_admin(
        app,
        admin,
        client,
        &stored,
        action::INSTANCE_UPDATE,
        details,
    )
    .await;
    if disabled_now {
        let details = json!({ "via": "patch", "keyVersion": stored.key_version });
        audit_admin(
            app,
            admin,
            client,
            &stored,
            action::INSTANCE_DISABLE,
            details,
        )
        .await;
    }
    // What the Foundry agent is made of changed: provision again (validates, or publishes a
    // new agent version).
    const PROVISIONED_FROM: &[&str] = &[
        "azureProjectEndpoint",
        "azureOpenaiDeployment",
        "model",
        "azureAgentId",
        "azureVectorStoreId",
        "settings",
        "status",
    ];
    if provision::applies(&stored) && changed.iter().any(|f| PROVISIONED_FROM.contains(f)) {
        let (provisioned, _) = provision_and_save(app, admin, client, stored).await?;
        return Ok(provisioned);
    }
    Ok(stored)
}

/// Provisions a stored `foundry` instance and saves the outcome (ids recorded and `ACTIVE`,
/// or `TO_PROVISION` with the reason). Audited either way; `Err` only when saving fails.
async fn provision_and_save(
    app: &App,
    admin: &AdminPrincipal,
    client: &str,
    current: AgentInstance,
) -> Result<(AgentInstance, Result<provision::Provisioned, String>), AdminError> {
    let (mut next, outcome, details) = provision::outcome(app, &current).await;
    let stored = if next.config != current.config
        || next.status != current.status
        || next.provisioning_error != current.provisioning_error
    {
        next.updated_at = Utc::now();
        save(app, &next, &current.etag).await?
    } else {
        current
    };
    let entry = AuditEntry::new(
        stored.tenant_id.clone(),
        action::INSTANCE_PROVISION,
        admin.actor(),
        if outcome.is_ok() {
            AuditOutcome::Success
        } else {
            AuditOutcome::Failure
        },
    )
    .instance(stored.id)
    .client(client)
    .details(details);
    app.audit(entry).await;
    match &outcome {
        Ok(done) => {
            tracing::info!(tenant.id = %stored.tenant_id, instance.id = %stored.id, "Foundry agent {} provisioned", done.agent)
        }
        Err(reason) => {
            tracing::warn!(tenant.id = %stored.tenant_id, instance.id = %stored.id, "Foundry provisioning failed: {reason}")
        }
    }
    Ok((stored, outcome))
}

/// `POST …/{id}/provision`: provisions a `foundry` instance again (idempotent). A failure is
/// recorded on the instance and answered as `instance_not_configured` with its reason.
pub async fn provision_instance(
    app: &App,
    admin: &AdminPrincipal,
    client: &str,
    current: AgentInstance,
) -> Result<AgentInstance, AdminError> {
    if current.status == InstanceStatus::Disabled {
        return Err(AdminError::Conflict(
            "the instance is disabled; enable it before provisioning".into(),
        ));
    }
    if current.settings.runtime() != crate::domain::settings::Runtime::Foundry {
        return Err(AdminError::NotConfigured(
            "only a foundry instance (settings.runtime = foundry) is provisioned".into(),
        ));
    }
    match provision_and_save(app, admin, client, current).await? {
        (stored, Ok(_)) => Ok(stored),
        (_, Err(reason)) => Err(AdminError::NotConfigured(format!(
            "provisioning failed: {reason}"
        ))),
    }
}

/// The longest grace period a rotation may give the previous key: seven days.
pub const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;

/// A new access key. With `grace_seconds = 0` every token issued under the old key stops
/// working at once; otherwise the old key, and the tokens issued under it, stay valid for that
/// long (a key still in an earlier rotation's grace period is replaced: two keys at most).
pub async fn rotate_key(
    app: &App,
    admin: &AdminPrincipal,
    client: &str,
    current: AgentInstance,
    grace_seconds: u64,
) -> Result<(AgentInstance, AccessKey), AdminError> {
    if grace_seconds > MAX_GRACE_SECONDS {
        return Err(AdminError::invalid(
            "gracePeriodSeconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS} (7 days)"),
        ));
    }
    if current.status == InstanceStatus::Disabled && grace_seconds > 0 {
        return Err(AdminError::Conflict(
            "the instance is disabled: its old key has nothing to keep working; rotate without a grace period".into(),
        ));
    }
    let key = AccessKey::generate();
    let now = Utc::now();
    let mut next = current.clone();
    next.previous_key = (grace_seconds > 0).then(|| PreviousKey {
        hash: current.access_key_hash.clone(),
        last4: current.access_key_last4.clone(),
        version: current.key_version,
        expires_at: now + chrono::Duration::seconds(grace_seconds as i64),
    });
    next.access_key_hash = KeyHash::new(
        app.auth
            .hasher
            .hash(&key)
            .await
            .map_err(AdminError::internal)?,
    );
    next.access_key_last4 = key.last4();
    next.key_version = current.key_version.saturating_add(1);
    next.updated_at = now;
    let stored = save(app, &next, &current.etag).await?;
    let previous_expires = stored.previous_key.as_ref().map(|p| p.expires_at);
    audit_admin(
        app,
        admin,
        client,
        &stored,
        action::INSTANCE_ROTATE_KEY,
        json!({
            "keyVersion": stored.key_version,
            "gracePeriodSeconds": grace_seconds,
            "previousKeyExpiresAt": previous_expires,
        }),
    )
    .await;
    tracing::info!(tenant.id = %stored.tenant_id, instance.id = %stored.id, key.version = stored.key_version, "access key of {} rotated", stored.id);
    Ok((stored, key))
}

/// Ends a rotation's grace period now: the previous key and every token issued under it stop
/// working. Without a previous key in its grace period nothing changes (and nothing is
/// audited).
pub async fn revoke_previous_key(
    app: &App,
    admin: &AdminPrincipal,
    client: &str,
    current: AgentInstance,
) -> Result<AgentInstance, AdminError> {
    let Some(previous) = current.previous_key_at(Utc::now()).cloned() else {
        return Ok(current);
    };
    let mut next = current.clone();
    next.previous_key = None;
    next.updated_at = Utc::now();
    let stored = save(app, &next, &current.etag).await?;
    audit_admin(
        app,
        admin,
        client,
        &stored,
        action::INSTANCE_REVOKE_PREVIOUS_KEY,
        json!({
            "keyVersion": stored.key_version,
            "revokedKeyVersion": previous.version,
            "graceEndedEarlyBySeconds": (previous.expires_at - next.updated_at).num_seconds(),
        }),
    )
    .await;
    tracing::info!(tenant.id = %stored.tenant_id, instance.id = %stored.id, key.version = previous.version, "previous access key of {} revoked", stored.id);
    Ok(stored)
}

/// A soft delete: `DISABLED`, its tokens revoked; the record and its audit trail remain.
pub async fn disable_instance(
    app: &App,
    admin: &AdminPrincipal,
    client: &str,
    current: AgentInstance,
) -> Result<AgentInstance, AdminError> {
    if current.status == InstanceStatus::Disabled {
        return Ok(current);
    }
    let mut next = current.clone();
    disable(&mut next, admin);
    next.updated_at = Utc::now();
    let stored = save(app, &next, &current.etag).await?;
    audit_admin(
        app,
        admin,
        client,
        &stored,
        action::INSTANCE_DISABLE,
        json!({ "keyVersion": stored.key_version }),
    )
    .await;
    Ok(stored)
}
