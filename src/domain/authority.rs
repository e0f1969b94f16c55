//! Who may point an instance at what.
//!
//! SOPHIA calls Azure resources on a company's behalf. With the company's own credentials
//! (API keys, a SAS) a wrong endpoint only fails at that endpoint; with an Entra identity it
//! would not: the identity is what Azure trusts. So:
//!
//! * a company `ADMIN` brings its own credentials and can never make SOPHIA use an identity;
//! * only a `PLATFORM_ADMIN` sets `settings.authMode = managedIdentity`, and then binds
//!   `settings.managedIdentityClientId`, a user-assigned identity of that company alone (Azure
//!   RBAC on it is what confines the company to its own resources);
//! * while an instance uses an identity, a company `ADMIN` cannot move it: not its endpoints
//!   (its failover `deployments` included), search index, knowledge container or prefix, nor the identity or the mode;
//! * a knowledge container read without an identity needs the company's own SAS;
//! * an instance a `PLATFORM_ADMIN` disabled is re-enabled only by a `PLATFORM_ADMIN`.
//!
//! [`check`] applies these rules to a proposed instance against the stored one; it knows no
//! HTTP, and refuses before anything is written.

use super::{AgentInstance, InstanceStatus};

pub use super::settings::AuthMode;

/// The client id of the company's user-assigned identity (`settings.managedIdentityClientId`).
pub fn identity_client_id(instance: &AgentInstance) -> Option<&str> {
    instance.settings.managed_identity_client_id()
}

/// Who disabled an instance, which decides who may re-enable it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DisabledBy {
    Admin,
    PlatformAdmin,
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This admin may not make this change (403, naming the field).
    Forbidden { field: &'static str, reason: String },
    /// The change is incomplete or inconsistent for anyone (400, naming the field).
    Invalid { field: &'static str, reason: String },
}

/// A proposed write of an instance.
pub struct Change<'a> {
    /// A `PLATFORM_ADMIN` (else a company `ADMIN`).
    pub platform: bool,
    /// The stored instance (`None` for a create).
    pub current: Option<&'a AgentInstance>,
    pub next: &'a AgentInstance,
    /// Whether the credential bundle the instance will use holds a `knowledgeSas`.
    pub knowledge_sas: bool,
    /// Whether this write changes the credentials or the secret reference.
    pub credentials_changed: bool,
    /// SOPHIA's own identity (`SOPHIA_AZURE_CLIENT_ID`), which no company may be given.
    pub sophia_client_id: Option<&'a str>,
}

/// The fields that decide where SOPHIA sends a company's identity, with how to read them.
type FieldReader = fn(&AgentInstance) -> Option<&str>;

const IDENTITY_BOUND: &[(&str, FieldReader)] = &[
    ("azureOpenaiEndpoint", |i| {
        i.config.azure_openai_endpoint.as_deref()
    }),
    ("azureSearchEndpoint", |i| {
        i.config.azure_search_endpoint.as_deref()
    }),
    ("settings.searchIndex", |i| i.settings.search_index()),
    ("settings.knowledgeContainerUrl", |i| {
        i.settings.knowledge_container_url()
    }),
    ("settings.knowledgePrefix", |i| {
        i.settings.knowledge_prefix()
    }),
    ("settings.managedIdentityClientId", identity_client_id),
    ("azureProjectEndpoint", |i| {
        i.config.azure_project_endpoint.as_deref()
    }),
    ("azureAgentId", |i| i.config.azure_agent_id.as_deref()),
    ("azureVectorStoreId", |i| {
        i.config.azure_vector_store_id.as_deref()
    }),
    ("settings.runtime", |i| match i.settings.runtime() {
        super::settings::Runtime::Foundry => Some("foundry"),
        super::settings::Runtime::Sophia => None,
    }),
];

/// Applies the rules above; `Ok` when the write may go ahead.
pub fn check(change: &Change<'_>) -> Result<(), Refusal> {
    if !change.platform {
        company_admin(change)?;
    }
    consistent(change)
}

/// What a company admin may not do, whatever else the write says.
fn company_admin(change: &Change<'_>) -> Result<(), Refusal> {
    let next = change.next;
    let next_mode = AuthMode::of(next);
    let current_mode = change.current.map(AuthMode::of);

    if current_mode == Some(AuthMode::ManagedIdentity) {
        if next_mode != AuthMode::ManagedIdentity {
            return Err(Refusal::Forbidden {
                field: "settings.authMode",
                reason: "this instance uses its company's managed identity; only a platform \
                         admin changes how it authenticates"
                    .into(),
            });
        }
        if let Some(current) = change.current {
            for (field, read) in IDENTITY_BOUND {
                if read(current) != read(next) {
                    return Err(Refusal::Forbidden {
                        field,
                        reason: format!(
                            "this instance uses its company's managed identity: only a platform \
                             admin may change {field}"
                        ),
                    });
                }
            }
            // Every failover deployment is a place the identity is sent.
            if current.config.deployments != next.config.deployments {
                return Err(Refusal::Forbidden {
                    field: "deployments",
                    reason: "this instance uses its company's managed identity: only a platform \
                             admin may change its deployments"
                        .into(),
                });
            }
        }
    } else {
        if next_mode == AuthMode::ManagedIdentity {
            return Err(Refusal::Forbidden {
                field: "settings.authMode",
                reason: "only a platform admin may make SOPHIA call a company's resources with a \
                         managed identity; company admins bring their own credentials"
                    .into(),
            });
        }
        if identity_client_id(next) != change.current.and_then(identity_client_id) {
            return Err(Refusal::Forbidden {
                field: "settings.managedIdentityClientId",
                reason: "only a platform admin binds a company's managed identity".into(),
            });
        }
    }
    if let Some(current) = change.current {
        limits_only_lowered(current, next)?;
    }
    if let Some(current) = change.current
        && current.status == InstanceStatus::Disabled
        && next.status != InstanceStatus::Disabled
        && current.disabled_by == Some(DisabledBy::PlatformAdmin)
    {
        return Err(Refusal::Forbidden {
            field: "status",
            reason: "a platform admin disabled this instance; only a platform admin may \
                     re-enable it"
                .into(),
        });
    }
    Ok(())
}

/// A company admin may lower a limit (or set one where there is none), never raise or remove
/// one: `next`'s limits against `current`'s (for a create, the company's earlier instance).
pub fn limits_only_lowered(current: &AgentInstance, next: &AgentInstance) -> Result<(), Refusal> {
    let (now, then) = (current.settings.limits(), next.settings.limits());
    for key in super::settings::LIMITS {
        if let Some(limit) = now.named(key)
            && then.named(key).is_none_or(|n| n > limit)
        {
            return Err(Refusal::Forbidden {
                field: limit_field(key),
                reason: format!(
                    "settings.{key} is {limit}: a company admin may only lower it; a platform \
                     admin raises or removes it"
                ),
            });
        }
    }
    Ok(())
}

/// The field a limit refusal names.
fn limit_field(key: &str) -> &'static str {
    match key {
        "tokensPerMinute" => "settings.tokensPerMinute",
        "requestsPerMinute" => "settings.requestsPerMinute",
        "tokensPerDay" => "settings.tokensPerDay",
        _ => "settings.tokensPerMonth",
    }
}

/// What must hold of any instance, whoever writes it.
fn consistent(change: &Change<'_>) -> Result<(), Refusal> {
    let next = change.next;
    let next_mode = AuthMode::of(next);
    let current_mode = change.current.map(AuthMode::of);
    if next_mode == AuthMode::ManagedIdentity {
        match identity_client_id(next) {
            None => {
                return Err(Refusal::Invalid {
                    field: "settings.managedIdentityClientId",
                    reason: "settings.authMode=managedIdentity needs the client id of the \
                             company's own user-assigned managed identity; SOPHIA's identity is \
                             never used for a company"
                        .into(),
                });
            }
            Some(id)
                if change
                    .sophia_client_id
                    .is_some_and(|own| own.eq_ignore_ascii_case(id)) =>
            {
                return Err(Refusal::Invalid {
                    field: "settings.managedIdentityClientId",
                    reason: "is SOPHIA's own identity (SOPHIA_AZURE_CLIENT_ID); give the \
                             company an identity of its own"
                        .into(),
                });
            }
            Some(_) => {}
        }
    }
    let container = next.settings.knowledge_container_url();
    let container_changed = change
        .current
        .is_none_or(|c| c.settings.knowledge_container_url() != container);
    if container.is_some()
        && next_mode == AuthMode::ApiKey
        && !change.knowledge_sas
        && (container_changed || change.credentials_changed || current_mode != Some(next_mode))
    {
        return Err(Refusal::Invalid {
            field: "credentials.knowledgeSas",
            reason: "a knowledge container is read with the company's own SAS token (read + \
                     list): supply credentials.knowledgeSas with settings.knowledgeContainerUrl"
                .into(),
        });
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AgentType, InstanceId, InstanceSettings, KeyHash, Provider, TenantId};
    use serde_json::{Value, json};

    fn set(settings: &mut InstanceSettings, key: String, value: Value) {
        let mut map = settings.to_map();
        map.insert(key, value);
        *settings = InstanceSettings::from_map(&map).unwrap();
    }

    fn instance(settings: Value) -> AgentInstance {
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
                azure_project_id: Some("p".into()),
                azure_openai_endpoint: Some("https://acme.openai.azure.com".into()),
                azure_openai_deployment: Some("gpt-4o".into()),
                azure_embedding_deployment: None,
                azure_search_endpoint: None,
                azure_vector_store_id: None,
                azure_project_endpoint: None,
                azure_agent_id: None,
                deployments: Vec::new(),
            },
            settings: InstanceSettings::from_map(
                &settings.as_object().cloned().unwrap_or_default(),
            )
            .unwrap(),
            keyvault_secret_id: None,
            access_key_hash: KeyHash::default(),
            access_key_last4: "abcd".into(),
            key_version: 1,
            previous_key: None,
            disabled_by: None,
            provisioning_error: None,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            etag: String::new(),
        }
    }

    const ID: &str = "6f1c2a9e-5b7d-4c3e-9a8f-0123456789ab";

    fn change<'a>(
        platform: bool,
        current: Option<&'a AgentInstance>,
        next: &'a AgentInstance,
    ) -> Change<'a> {
        Change {
            platform,
            current,
            next,
            knowledge_sas: false,
            credentials_changed: false,
            sophia_client_id: Some("11111111-1111-1111-1111-111111111111"),
        }
    }

    fn forbidden_field(r: Result<(), Refusal>) -> &'static str {
        match r {
            Err(Refusal::Forbidden { field, .. }) => field,
            other => panic!("expected a 403, got {other:?}"),
        }
    }

    #[test]
    fn company_admins_only_lower_limits() {
        let limited = instance(json!({"tokensPerMinute": 1000, "tokensPerDay": 50_000}));
        let lower = instance(json!({"tokensPerMinute": 500, "tokensPerDay": 50_000}));
        assert!(check(&change(false, Some(&limited), &lower)).is_ok());
        let higher = instance(json!({"tokensPerMinute": 1001, "tokensPerDay": 50_000}));
        assert_eq!(
            forbidden_field(check(&change(false, Some(&limited), &higher))),
            "settings.tokensPerMinute"
        );
        let removed = instance(json!({"tokensPerMinute": 1000}));
        assert_eq!(
            forbidden_field(check(&change(false, Some(&limited), &removed))),
            "settings.tokensPerDay"
        );
        // A new limit where there was none is a lowering; a platform admin does anything.
        let more = instance(json!({"tokensPerMinute": 1000, "tokensPerDay": 50_000,
            "requestsPerMinute": 10, "tokensPerMonth": 1}));
        assert!(check(&change(false, Some(&limited), &more)).is_ok());
        assert!(check(&change(true, Some(&limited), &higher)).is_ok());
        assert!(check(&change(true, Some(&limited), &instance(json!({})))).is_ok());
    }

    #[test]
    fn only_platform_admins_turn_identities_on() {
        let mi = instance(json!({"authMode": "managedIdentity", "managedIdentityClientId": ID}));
        assert!(check(&change(true, None, &mi)).is_ok());
        assert_eq!(
            forbidden_field(check(&change(false, None, &mi))),
            "settings.authMode"
        );
        let plain = instance(json!({}));
        assert_eq!(
            forbidden_field(check(&change(false, Some(&plain), &mi))),
            "settings.authMode"
        );
        let id_only = instance(json!({"managedIdentityClientId": ID}));
        assert_eq!(
            forbidden_field(check(&change(false, Some(&plain), &id_only))),
            "settings.managedIdentityClientId"
        );
        let bare = instance(json!({"authMode": "managedIdentity"}));
        assert!(matches!(
            check(&change(true, None, &bare)),
            Err(Refusal::Invalid {
                field: "settings.managedIdentityClientId",
                ..
            })
        ));
        let sophia = instance(json!({"authMode": "managedIdentity",
            "managedIdentityClientId": "11111111-1111-1111-1111-111111111111"}));
        assert!(matches!(
            check(&change(true, None, &sophia)),
            Err(Refusal::Invalid {
                field: "settings.managedIdentityClientId",
                ..
            })
        ));
    }

    #[test]
    fn identity_bound_fields_are_locked_for_company_admins() {
        let current = instance(
            json!({"authMode": "managedIdentity", "managedIdentityClientId": ID,
            "knowledgeContainerUrl": "https://acme.blob.core.windows.net/docs"}),
        );
        type Tweak = Box<dyn Fn(&mut AgentInstance)>;
        let tweaks: Vec<(&str, Tweak)> = vec![
            (
                "deployments",
                Box::new(|i| {
                    i.config.deployments = vec![crate::domain::deployments::Deployment {
                        name: "elsewhere".into(),
                        endpoint: "https://beta.openai.azure.com".into(),
                        deployment: "gpt-4o".into(),
                        priority: 1,
                        weight: 1,
                        credential: None,
                        timeout_seconds: None,
                    }]
                }),
            ),
            (
                "azureOpenaiEndpoint",
                Box::new(|i| {
                    i.config.azure_openai_endpoint = Some("https://beta.openai.azure.com".into())
                }),
            ),
            (
                "azureSearchEndpoint",
                Box::new(|i| {
                    i.config.azure_search_endpoint = Some("https://beta.search.windows.net".into())
                }),
            ),
            (
                "settings.searchIndex",
                Box::new(|i| {
                    set(&mut i.settings, "searchIndex".into(), json!("beta"));
                }),
            ),
            (
                "settings.knowledgeContainerUrl",
                Box::new(|i| {
                    set(
                        &mut i.settings,
                        "knowledgeContainerUrl".into(),
                        json!("https://beta.blob.core.windows.net/docs"),
                    );
                }),
            ),
            (
                "settings.knowledgePrefix",
                Box::new(|i| {
                    set(&mut i.settings, "knowledgePrefix".into(), json!("beta/"));
                }),
            ),
            (
                "settings.managedIdentityClientId",
                Box::new(|i| {
                    set(
                        &mut i.settings,
                        "managedIdentityClientId".into(),
                        json!("22222222-2222-2222-2222-222222222222"),
                    );
                }),
            ),
            (
                "settings.authMode",
                Box::new(|i| {
                    set(&mut i.settings, "authMode".into(), json!("apiKey"));
                }),
            ),
        ];
        for (field, tweak) in tweaks {
            let mut next = current.clone();
            tweak(&mut next);
            assert_eq!(
                forbidden_field(check(&change(false, Some(&current), &next))),
                field
            );
            assert!(
                check(&Change {
                    knowledge_sas: true,
                    ..change(true, Some(&current), &next)
                })
                .is_ok(),
                "a platform admin may change {field}"
            );
        }
        // What does not move the identity stays the company's to change.
        let mut next = current.clone();
        next.config.azure_openai_deployment = Some("gpt-4o-mini".into());
        set(&mut next.settings, "systemPrompt".into(), json!("hi"));
        assert!(check(&change(false, Some(&current), &next)).is_ok());
    }

    #[test]
    fn containers_without_an_identity_need_the_companys_sas() {
        let plain = instance(json!({}));
        let with_container =
            instance(json!({"knowledgeContainerUrl": "https://acme.blob.core.windows.net/docs"}));
        for platform in [false, true] {
            assert!(matches!(
                check(&change(platform, Some(&plain), &with_container)),
                Err(Refusal::Invalid {
                    field: "credentials.knowledgeSas",
                    ..
                })
            ));
            assert!(
                check(&Change {
                    knowledge_sas: true,
                    ..change(platform, Some(&plain), &with_container)
                })
                .is_ok()
            );
        }
    }

    #[test]
    fn platform_disables_stick() {
        let mut disabled = instance(json!({}));
        disabled.status = InstanceStatus::Disabled;
        disabled.disabled_by = Some(DisabledBy::PlatformAdmin);
        let mut enabled = disabled.clone();
        enabled.status = InstanceStatus::Active;
        assert_eq!(
            forbidden_field(check(&change(false, Some(&disabled), &enabled))),
            "status"
        );
        assert!(check(&change(true, Some(&disabled), &enabled)).is_ok());
        disabled.disabled_by = Some(DisabledBy::Admin);
        assert!(check(&change(false, Some(&disabled), &enabled)).is_ok());
    }
}
