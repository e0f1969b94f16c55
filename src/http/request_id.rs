//! Request ids: accepted from `x-request-id` when well-formed, generated otherwise, echoed on
//! every response and available to error rendering through a task-local.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    // Shared, not copied, by what records it (the request's span).
    static REQUEST_ID: Arc<str>;
}

/// The id of the request being served, or `"-"` outside a request.
pub fn current() -> String {
    REQUEST_ID
        .try_with(|id| id.to_string())
        .unwrap_or_else(|_| "-".to_owned())
}

/// The id of the request being served, shared (`None` outside a request).
pub fn shared() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Runs `future` with `id` as its request id (background work started by a request, so its
/// logs and audit entries carry the request's id).
pub async fn scope<F: std::future::Future>(id: String, future: F) -> F::Output {
    REQUEST_ID.scope(Arc::from(id), future).await
}

/// The request id a client sent, if it is safe to reuse (1–128 visible ASCII characters of a
/// conservative set); anything else is replaced so logs cannot be forged.
fn accepted(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b));
    ok.then_some(s)
}

/// Middleware: assigns the id, runs the request inside its scope, sets the response header.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id: Arc<str> = match request.headers().get(&X_REQUEST_ID).and_then(accepted) {
        Some(id) => Arc::from(id),
        None => {
            let mut buf = uuid::Uuid::encode_buffer();
            Arc::from(&*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf))
        }
    };
    // One header value for the request and the response (a clone shares its bytes).
    let value = HeaderValue::from_str(&id).ok();
    if let Some(value) = &value {
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), value.clone());
    }
    let mut response = REQUEST_ID.scope(id, next.run(request)).await;
    if let Some(value) = value {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reasonable_ids_and_rejects_forgeries() {
        assert_eq!(
            accepted(&HeaderValue::from_static("abc-123")),
            Some("abc-123")
        );
        assert_eq!(accepted(&HeaderValue::from_static("a b")), None);
        assert_eq!(accepted(&HeaderValue::from_static("")), None);
        let long = "a".repeat(129);
        assert_eq!(accepted(&HeaderValue::from_str(&long).unwrap()), None);
    }
}
