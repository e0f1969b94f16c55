//! An Application Insights ingestion stand-in speaking the Breeze protocol the real service
//! does: `POST /v2/track` (or `/v2.1/track`) with a JSON array (or newline-delimited JSON) of
//! envelopes, gzip or not; `200 {itemsReceived, itemsAccepted, errors}`, `206` naming the
//! items it refused, `400` for a body that is not envelopes. It can be switched to answer 503
//! or to hang, and keeps every decompressed byte it was sent (for the secret search).

use std::io::Read;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const OK: u8 = 0;
const UNAVAILABLE: u8 = 1;
const HANG: u8 = 2;

#[derive(Default)]
struct State {
    mode: AtomicU8,
    raw: Mutex<Vec<u8>>,
    envelopes: Mutex<Vec<Value>>,
    posts: Mutex<u32>,
}

/// A running ingestion endpoint.
pub struct Ingestion {
    pub url: String,
    state: Arc<State>,
}

/// The connection string of an ingestion endpoint with this instrumentation key.
pub fn connection_string(url: &str, ikey: &str) -> String {
    format!(
        "InstrumentationKey={ikey};IngestionEndpoint={url}/;LiveEndpoint={url}/;ApplicationId=00000000-0000-0000-0000-000000000000"
    )
}

async fn track(state: Arc<State>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    *state.posts.lock().unwrap() += 1;
    match state.mode.load(Ordering::SeqCst) {
        UNAVAILABLE => {
            return (StatusCode::SERVICE_UNAVAILABLE, "ingestion unavailable").into_response();
        }
        HANG => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    if !matches!(uri.path(), "/v2/track" | "/v2.1/track") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let bytes = if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return bad("the body is not valid gzip");
        }
        out
    } else {
        body.to_vec()
    };
    state.raw.lock().unwrap().extend_from_slice(&bytes);
    let items: Vec<Value> = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(items)) => items,
        Ok(one @ Value::Object(_)) => vec![one],
        _ => match bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(serde_json::from_slice::<Value>)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(items) => items,
            Err(_) => return bad("the body is neither a JSON array nor newline-delimited JSON"),
        },
    };
    let mut errors = Vec::new();
    let mut accepted = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match check(item) {
            Ok(()) => accepted.push(item.clone()),
            Err(message) => {
                errors.push(json!({"index": index, "statusCode": 400, "message": message}))
            }
        }
    }
    let received = items.len();
    let n_accepted = accepted.len();
    state.envelopes.lock().unwrap().extend(accepted);
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::PARTIAL_CONTENT
    };
    (
        status,
        axum::Json(
            json!({"itemsReceived": received, "itemsAccepted": n_accepted, "errors": errors}),
        ),
    )
        .into_response()
}

fn bad(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"itemsReceived": 0, "itemsAccepted": 0, "errors": [{"index": 0, "statusCode": 400, "message": message}]})),
    )
        .into_response()
}

/// What the service requires of an envelope.
fn check(item: &Value) -> Result<(), &'static str> {
    let name = item["name"]
        .as_str()
        .ok_or("Field 'name' on type 'Envelope' is required but missing or empty")?;
    if name.is_empty() {
        return Err("Field 'name' on type 'Envelope' is required but missing or empty");
    }
    let time = item["time"]
        .as_str()
        .ok_or("Field 'time' on type 'Envelope' is required")?;
    if chrono::DateTime::parse_from_rfc3339(time).is_err() {
        return Err("Field 'time' on type 'Envelope' is not a valid date");
    }
    if item["iKey"].as_str().is_none_or(str::is_empty) {
        return Err("Invalid instrumentation key");
    }
    let base = item["data"]["baseType"]
        .as_str()
        .ok_or("Field 'baseType' is required")?;
    if !matches!(
        base,
        "RequestData"
            | "RemoteDependencyData"
            | "MessageData"
            | "ExceptionData"
            | "MetricData"
            | "EventData"
    ) {
        return Err("Unknown baseType");
    }
    if !item["data"]["baseData"].is_object() {
        return Err("Field 'baseData' is required");
    }
    Ok(())
}

impl Ingestion {
    pub fn start() -> Self {
        let state = Arc::new(State::default());
        let s = state.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            track(s.clone(), uri, headers, body)
        });
        let port = super::azure::serve_router(app);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    pub fn connection_string(&self, ikey: &str) -> String {
        connection_string(&self.url, ikey)
    }

    /// Answer 503 (`unavailable`), hang, or accept again.
    pub fn unavailable(&self) {
        self.state.mode.store(UNAVAILABLE, Ordering::SeqCst);
    }

    pub fn hang(&self) {
        self.state.mode.store(HANG, Ordering::SeqCst);
    }

    pub fn accept(&self) {
        self.state.mode.store(OK, Ordering::SeqCst);
    }

    pub fn posts(&self) -> u32 {
        *self.state.posts.lock().unwrap()
    }

    /// Every accepted envelope so far.
    pub fn envelopes(&self) -> Vec<Value> {
        self.state.envelopes.lock().unwrap().clone()
    }

    /// Every decompressed byte received.
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.state.raw.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until `pred` holds for the accepted envelopes; returns them.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.envelopes();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {} envelopes: {}",
                got.len(),
                serde_json::to_string_pretty(&got).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The envelopes of one base type (`RequestData`, `RemoteDependencyData`, …).
pub fn of_type<'a>(envelopes: &'a [Value], base: &str) -> Vec<&'a Value> {
    envelopes
        .iter()
        .filter(|e| e["data"]["baseType"] == base)
        .collect()
}
