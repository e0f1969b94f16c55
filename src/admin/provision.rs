//! Provisioning a `foundry` instance in its company's Azure AI Foundry project: the vector
//! store its agent searches and the prompt agent itself (model = the company's deployment,
//! instructions = its system prompt, `file_search` over that store), both reached with the
//! company's own identity. Idempotent: ids an admin gave (or an earlier run recorded) are
//! validated, not created again; an unchanged definition publishes nothing; a changed model or
//! system prompt publishes a new agent version. A failure leaves the instance `TO_PROVISION`
//! with its reason, audited, and removes what this run created.

use serde_json::json;

use crate::domain::settings::Runtime;
use crate::domain::{AgentInstance, AgentRef, InstanceStatus};
use crate::llm::foundry::{AgentDefinition, FoundryProject};
use crate::state::App;

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub agent: AgentRef,
    pub vector_store: String,
    pub created_vector_store: bool,
    /// A new agent version was published (a first agent, or a changed definition).
    pub published: bool,
}

/// Whether an instance is one provisioning applies to.
pub fn applies(instance: &AgentInstance) -> bool {
    instance.settings.runtime() == Runtime::Foundry && instance.status != InstanceStatus::Disabled
}

/// The agent's name in the project: `sophia-<company>` in the characters Foundry allows.
fn agent_name(instance: &AgentInstance) -> String {
    let mut name: String = format!("sophia-{}", instance.tenant_id.as_str())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// The company's project, reached with its own identity.
fn project(app: &App, instance: &AgentInstance) -> Result<FoundryProject, String> {
    let identity = crate::tenant::runtime::company_identity(instance, app.identities.as_deref());
    let owner = std::sync::Arc::new(crate::telemetry::Owner::new(
        instance.tenant_id.as_str(),
        &instance.id.to_string(),
    ));
    crate::tenant::runtime::foundry_project(
        instance,
        identity.as_ref(),
        &app.upstreams,
        &app.http,
        Some(owner),
    )
}

/// Creates or validates the company's vector store and agent.
pub async fn run(app: &App, instance: &AgentInstance) -> Result<Provisioned, String> {
    let project = project(app, instance)?;
    let company = instance.tenant_id.as_str();
    let model = instance
        .config
        .azure_openai_deployment
        .clone()
        .or_else(|| instance.config.model.clone())
        .ok_or_else(|| {
            "the agent needs a model: set azureOpenaiDeployment (a model deployment of the \
             project's resource)"
                .to_owned()
        })?;
    let instructions = instance
        .settings
        .system_prompt()
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "You are SOPHIA, the assistant of company {company}. Answer from the files you \
                 can search and say so when they do not hold the answer."
            )
        });
    let (vector_store, created_vector_store) = match &instance.config.azure_vector_store_id {
        Some(id) => match project.vector_store(id).await {
            Ok(Some(_)) => (id.clone(), false),
            Ok(None) => {
                return Err(format!(
                    "azureVectorStoreId: vector store '{id}' does not exist in the project"
                ));
            }
            Err(e) => return Err(format!("the vector store could not be read: {e}")),
        },
        None => match project
            .create_vector_store(&agent_name(instance), company)
            .await
        {
            Ok(id) => (id, true),
            Err(e) => return Err(format!("the vector store could not be created: {e}")),
        },
    };
    let definition = AgentDefinition {
        model,
        instructions,
        vector_store: vector_store.clone(),
    };
    let agent = async {
        match instance
            .config
            .azure_agent_id
            .as_deref()
            .and_then(AgentRef::parse)
        {
            Some(agent) => match project.agent_version(&agent).await {
                Ok(Some(version)) if definition.matches(&version) => Ok((agent, false)),
                Ok(Some(_)) => project
                    .create_agent_version(&agent.name, &definition, company)
                    .await
                    .map(|(r, _)| (r, true))
                    .map_err(|e| format!("a new agent version could not be published: {e}")),
                Ok(None) => Err(format!(
                    "azureAgentId: agent version '{agent}' does not exist in the project"
                )),
                Err(e) => Err(format!("the agent could not be read: {e}")),
            },
            None => project
                .create_agent_version(&agent_name(instance), &definition, company)
                .await
                .map(|(r, _)| (r, true))
                .map_err(|e| format!("the agent could not be created: {e}")),
        }
    }
    .await;
    match agent {
        Ok((agent, published)) => Ok(Provisioned {
            agent,
            vector_store,
            created_vector_store,
            published,
        }),
        Err(reason) => {
            // Nothing half-made stays behind: the store this run created goes.
            if created_vector_store && let Err(e) = project.delete_vector_store(&vector_store).await
            {
                tracing::error!(tenant.id = %instance.tenant_id, error = %e, "the vector store created for a failed provisioning could not be removed");
            }
            Err(reason)
        }
    }
}

/// Runs provisioning for a stored instance: the instance as it should be stored next (ids
/// recorded and `ACTIVE`, or `TO_PROVISION` with the reason), the outcome, and its audit
/// details. Nothing is saved here.
pub async fn outcome(
    app: &App,
    current: &AgentInstance,
) -> (
    AgentInstance,
    Result<Provisioned, String>,
    serde_json::Value,
) {
    let outcome = if current.config.azure_project_endpoint.is_none() {
        Err("the foundry runtime needs azureProjectEndpoint (the company's Foundry project)".into())
    } else {
        run(app, current).await
    };
    let mut next = current.clone();
    let details = match &outcome {
        Ok(done) => {
            next.config.azure_agent_id = Some(done.agent.to_string());
            next.config.azure_vector_store_id = Some(done.vector_store.clone());
            next.status = InstanceStatus::Active;
            next.provisioning_error = None;
            json!({"agent": done.agent.to_string(), "vectorStore": done.vector_store,
                   "createdVectorStore": done.created_vector_store, "published": done.published})
        }
        Err(reason) => {
            next.status = InstanceStatus::ToProvision;
            next.provisioning_error = Some(reason.clone());
            json!({"reason": reason})
        }
    };
    (next, outcome, details)
}
