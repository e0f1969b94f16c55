//! The one streaming pump: reads a tenant's upstream stream, hands each piece of the answer to
//! whoever serves the client (SOPHIA events or OpenAI chunks), and records the turn when the
//! stream ends. A client that goes away does not stop it: the rest is read so the usage (and
//! a stored conversation) is still recorded.

use tokio::sync::mpsc;

use crate::chat::{Answer, ChatError, Ending, Turn};
use crate::llm::wire::ContentFilters;
use crate::llm::{StreamPart, ToolCallDelta};
use crate::state::AppState;

/// What a streamed turn produces, in order: deltas, then one `Done` or one `Failed`.
#[derive(Debug)]
pub enum TurnEvent {
    Delta(String),
    /// A piece of the model's refusal.
    Refusal(String),
    /// Azure's content-filter verdicts on the prompt or the answer so far, as a chunk
    /// carried them (before that chunk's own pieces).
    Filters(Box<ContentFilters>),
    /// A piece of a function call (a `/v1` caller's tools).
    ToolCall(ToolCallDelta),
    /// The turn finished and is recorded.
    Done(Answer),
    /// The upstream failed mid-answer; the tokens so far are recorded, nothing is stored.
    Failed(ChatError),
}

/// The events of a streamed turn.
pub type TurnEvents = mpsc::Receiver<TurnEvent>;

impl Turn {
    /// Starts the answer upstream and returns once its first content has arrived (so an
    /// upstream that refuses the request is still an ordinary error answer).
    pub async fn stream(mut self, app: &AppState) -> Result<TurnEvents, ChatError> {
        let (mut upstream, entry) = app
            .models
            .stream_on(
                &self.pool,
                &self.messages,
                &self.params,
                self.native_responses,
            )
            .await
            .map_err(|e| ChatError::from(e).admitted(self.reservation.standing))?;
        self.answered_by = entry.name.clone();
        let (tx, rx) = mpsc::channel(16);
        let app = app.clone();
        tokio::spawn(async move {
            let (mut answer, mut usage, mut model, mut finish) = (String::new(), None, None, None);
            let mut tool_calls = Vec::new();
            let mut refusal = String::new();
            let mut citations = Vec::new();
            let mut client_gone = false;
            while let Some(part) = upstream.next().await {
                match part {
                    Ok(StreamPart::Delta(d)) => {
                        answer.push_str(&d);
                        if !client_gone && tx.send(TurnEvent::Delta(d)).await.is_err() {
                            client_gone = true;
                        }
                    }
                    Ok(StreamPart::Refusal(piece)) => {
                        refusal.push_str(&piece);
                        if !client_gone && tx.send(TurnEvent::Refusal(piece)).await.is_err() {
                            client_gone = true;
                        }
                    }
                    // Passed on as they come (the streamed answer does not repeat them).
                    Ok(StreamPart::Filters(seen)) => {
                        if !client_gone && tx.send(TurnEvent::Filters(seen)).await.is_err() {
                            client_gone = true;
                        }
                    }
                    Ok(StreamPart::ToolCall(piece)) => {
                        piece.merge_into(&mut tool_calls);
                        if !client_gone && tx.send(TurnEvent::ToolCall(piece)).await.is_err() {
                            client_gone = true;
                        }
                    }
                    Ok(StreamPart::Usage(u)) => usage = Some(u),
                    Ok(StreamPart::Model(m)) => model = Some(m),
                    Ok(StreamPart::Finish(f)) => finish = Some(f),
                    Ok(StreamPart::Citations(c)) => citations = c,
                    Err(e) => {
                        self.fail(&app, usage, &answer);
                        let error = ChatError::from(e);
                        tracing::warn!(tenant.id = %self.caller.tenant, error = %error, "stream failed mid-answer: {error}");
                        let _ = tx.send(TurnEvent::Failed(error)).await;
                        return;
                    }
                }
            }
            let end = Ending {
                content: answer,
                usage,
                model,
                finish_reason: finish,
                tool_calls,
                refusal: Some(refusal).filter(|r| !r.is_empty()),
                filters: None,
                citations,
            };
            let done = self.finish(&app, end).await;
            let _ = tx.send(TurnEvent::Done(done)).await;
        });
        Ok(rx)
    }
}
