//! The prompt of a turn: the tenant's knowledge passages for the question, and the system
//! message that carries them with the instance's own prompt.

use crate::chat::ChatError;
use crate::domain::{Citation, TenantId};
use crate::knowledge::IndexError;
use crate::llm::WireMessage;
use crate::state::App;
use crate::tenant::runtime::TenantRuntime;

/// Longest snippet quoted in a citation.
const SNIPPET_CHARS: usize = 600;

/// The tenant's passages for a question, as citations. A failed query embedding degrades to
/// keyword search (logged); a failed index fails the turn.
pub async fn retrieve(
    app: &App,
    runtime: &TenantRuntime,
    tenant: &TenantId,
    query: &str,
) -> Result<Vec<Citation>, ChatError> {
    if runtime.top_k == 0 || query.is_empty() {
        return Ok(Vec::new());
    }
    let knowledge = runtime
        .knowledge
        .as_ref()
        .map_err(|e| ChatError::NotConfigured(e.clone()))?;
    let vector = match &runtime.embeddings {
        Some(endpoint) => match app.models.embed(endpoint, &[query.to_owned()]).await {
            Ok(mut vectors) => vectors.pop(),
            Err(e) => {
                tracing::warn!(tenant.id = %tenant, error = %e, "query embedding failed; keyword search only: {e}");
                None
            }
        },
        None => None,
    };
    let passages = knowledge
        .index()
        .search(tenant, query, vector.as_deref(), runtime.top_k)
        .await
        .map_err(|e| match e {
            IndexError::Unavailable(cause) => ChatError::KnowledgeUnavailable(cause),
            IndexError::Rejected { status, detail } => {
                ChatError::Upstream(crate::upstream::UpstreamError::Rejected { status, detail })
            }
            IndexError::Internal(cause) => ChatError::Internal(cause),
        })?;
    Ok(passages
        .into_iter()
        .map(|p| Citation {
            document_id: p.document_id,
            title: p.title,
            snippet: p.text.chars().take(SNIPPET_CHARS).collect(),
            score: p.score,
        })
        .collect())
}

/// The system message: the instance's prompt plus the knowledge passages.
pub fn system_message(runtime: &TenantRuntime, citations: &[Citation]) -> Option<WireMessage> {
    let mut text = runtime.system_prompt.clone().unwrap_or_default();
    if !citations.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str("Answer from the context below when it is relevant, and cite the documents you use.\nContext:\n");
        for c in citations {
            use std::fmt::Write;
            let _ = write!(text, "[{}] {}\n{}\n\n", c.document_id, c.title, c.snippet);
        }
    }
    (!text.is_empty()).then(|| WireMessage::text("system", text))
}
