//! The tenant's models and embeddings for the `/v1` surface (`GET /v1/models`,
//! `POST /v1/embeddings`): resolved from the same tenant runtime as every turn, so the tenant's
//! own deployment answers and its usage is recorded like a turn's.

use crate::domain::Usage;
use crate::domain::usage::estimate_tokens;
use crate::llm::EmbedInput;
use crate::state::App;

use super::{Caller, ChatError};

/// Most inputs in one embeddings call (OpenAI's own limit).
pub const MAX_INPUTS: usize = 2048;

/// A model the caller may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    /// When the instance was created (Unix seconds): the model is the instance's.
    pub created: i64,
}

/// The models of the caller's instance: its allowed models (or its chat model) and its
/// embedding deployment, each once.
pub async fn models(
    app: &App,
    caller: &Caller,
) -> Result<(Vec<ModelInfo>, crate::limits::Standing), ChatError> {
    let runtime = app
        .runtimes
        .get(&app.store, &app.secrets, &caller.tenant, &caller.instance)
        .await?;
    let standing = super::standing_of(app, &runtime).await;
    let created = runtime.instance.created_at.timestamp();
    let mut ids: Vec<String> = if runtime.allowed_models.is_empty() {
        let name = runtime.model_name();
        if name.is_empty() { vec![] } else { vec![name] }
    } else {
        runtime.allowed_models.clone()
    };
    if let Some(embeddings) = &runtime.embeddings {
        ids.push(embeddings.deployment.clone());
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    Ok((
        ids.into_iter()
            .map(|id| ModelInfo { id, created })
            .collect(),
        standing,
    ))
}

/// Embeddings from the caller's embedding deployment.
#[derive(Debug)]
pub struct EmbeddingAnswer {
    pub vectors: Vec<Vec<f32>>,
    /// The model the deployment reported, else the deployment's name.
    pub model: String,
    pub usage: Usage,
    /// Where the company stands against its limits, for the answer's headers.
    pub standing: crate::limits::Standing,
}

/// Embeds `inputs` with the tenant's embedding deployment (whatever `model` the caller named:
/// the instance decides) and records the tokens as the tenant's usage.
pub async fn embed(
    app: &App,
    caller: &Caller,
    inputs: EmbedInput<'_>,
    dimensions: Option<u32>,
) -> Result<EmbeddingAnswer, ChatError> {
    let runtime = app
        .runtimes
        .get(&app.store, &app.secrets, &caller.tenant, &caller.instance)
        .await?;
    let Some(endpoint) = &runtime.embeddings else {
        return Err(ChatError::NoEmbeddingDeployment);
    };
    // The token ids given, or the turns' estimate: reserved, and the count when the
    // deployment reports none.
    let estimate = match inputs {
        EmbedInput::Texts(texts) => texts.iter().map(|t| estimate_tokens(t)).sum(),
        EmbedInput::Tokens(lists) => lists.iter().map(|l| l.len() as u64).sum(),
    };
    let reservation = super::admit(app, caller, &runtime, estimate).await?;
    let answer = app
        .models
        .embeddings(endpoint, inputs, dimensions)
        .await
        .map_err(|e| ChatError::from(e).admitted(reservation.standing))?;
    let prompt_tokens = answer.prompt_tokens.unwrap_or(estimate);
    let usage = Usage::new(prompt_tokens, 0);
    app.usage.record(&caller.tenant, usage, None);
    reservation.settle(usage.total_tokens);
    Ok(EmbeddingAnswer {
        vectors: answer.vectors,
        model: answer
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| endpoint.deployment.clone()),
        usage,
        standing: reservation.standing,
    })
}
