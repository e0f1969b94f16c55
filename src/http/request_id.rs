//! Request ids: accepted from `x-request-id` when well-formed, generated otherwise, echoed on
//! every response and available to error rendering through a task-local.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, or `"-"` outside a request.
pub fn current() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// Runs `future` with `id` as its request id (background work started by a request, so its
/// logs and audit entries carry the request's id).
pub async fn scope<F: std::future::Future>(id: String, future: F) -> F::Output {
    REQUEST_ID.scope(id, future).await
}

/// The request id a client sent, if it is safe to reuse (1–128 visible ASCII characters of a
/// conservative set); anything else is replaced so logs cannot be forged.
fn accepted(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b));
    ok.then(|| s.to_owned())
}

/// Middleware: assigns the id, runs the request inside its scope, sets the response header.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(accepted)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
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
            Some("abc-123".into())
        );
        assert_eq!(accepted(&HeaderValue::from_static("a b")), None);
        assert_eq!(accepted(&HeaderValue::from_static("")), None);
        let long = "a".repeat(129);
        assert_eq!(accepted(&HeaderValue::from_str(&long).unwrap()), None);
    }
}
