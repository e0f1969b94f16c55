//! The model client against the simulator over real HTTP: whole and streamed answers, 429
//! retries within the budget, then pass-through; timeouts; refused credentials and
//! deployments; the upstream policy at request time.

use crate::support;

use std::time::{Duration, Instant};

use sophia::dev::simulator::{Fault, SimConfig};
use sophia::domain::Provider;
use sophia::llm::{
    ChatParams, ModelClient, ModelEndpoint, StreamPart, UpstreamAuth, UpstreamTimeouts, WireMessage,
};
use sophia::upstream::UpstreamPolicy;
use sophia::upstream::{ModelTransport, UpstreamError, upstream_client};
use support::spawn_simulator;

fn policy() -> UpstreamPolicy {
    UpstreamPolicy::new("*.openai.azure.com", true).unwrap()
}

fn client(timeouts: UpstreamTimeouts) -> ModelClient {
    client_for(policy(), timeouts)
}

fn client_for(policy: UpstreamPolicy, timeouts: UpstreamTimeouts) -> ModelClient {
    ModelClient::new(
        upstream_client(&policy, Duration::from_secs(1)).unwrap(),
        ModelTransport::new(&policy, Duration::from_secs(1)).unwrap(),
        policy,
        timeouts,
    )
}

fn endpoint(base: &str, deployment: &str, key: &str) -> ModelEndpoint {
    ModelEndpoint::new(
        Provider::AzureOpenai,
        url::Url::parse(base).unwrap(),
        deployment.into(),
        "2024-10-21".into(),
        UpstreamAuth::Key(key.to_owned().into()),
    )
}

fn messages(question: &str) -> Vec<WireMessage> {
    vec![
        WireMessage::text(
            "system",
            "Context:\nThe refund window is 30 days. Support answers within one hour.".into(),
        ),
        WireMessage::text("user", question.into()),
    ]
}

fn fast() -> UpstreamTimeouts {
    UpstreamTimeouts {
        first_byte: Duration::from_secs(5),
        total: Duration::from_secs(10),
        idle: Duration::from_secs(5),
        retry_budget: Duration::from_secs(3),
        max_retries: 3,
    }
}

#[tokio::test]
async fn whole_answers_are_grounded_and_counted() {
    let server = spawn_simulator(SimConfig {
        keys: vec!["k-acme".into()],
        ..Default::default()
    })
    .await;
    let c = client(fast());
    let answer = c
        .complete(
            &endpoint(&server.base, "gpt-4o", "k-acme"),
            &messages("How long is the refund window?"),
            &ChatParams {
                temperature: Some(0.1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        answer.content,
        "According to the knowledge base: The refund window is 30 days."
    );
    assert_eq!(answer.model, "gpt-4o");
    assert!(answer.usage.prompt_tokens > 0 && answer.usage.completion_tokens > 0);
    assert_eq!(
        answer.usage.total_tokens,
        answer.usage.prompt_tokens + answer.usage.completion_tokens
    );
    let seen = server.sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].deployment.as_deref(), Some("gpt-4o"));
    assert_eq!(seen[0].key.as_deref(), Some("k-acme"));
    assert_eq!(seen[0].api_version.as_deref(), Some("2024-10-21"));
    assert_eq!(seen[0].body["temperature"], 0.1);
}

#[tokio::test]
async fn streams_deliver_every_part_and_usage() {
    let server = spawn_simulator(SimConfig {
        chunk_delay: Duration::from_millis(2),
        ..Default::default()
    })
    .await;
    let c = client(fast());
    let mut stream = c
        .stream(
            &endpoint(&server.base, "gpt-4o-mini", "any"),
            &messages("support hours?"),
            &ChatParams::default(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    let mut usage = None;
    let mut finish = None;
    while let Some(part) = stream.next().await {
        match part.unwrap() {
            StreamPart::Delta(d) => text.push_str(&d),
            StreamPart::Usage(u) => usage = Some(u),
            StreamPart::Finish(f) => finish = Some(f),
            StreamPart::Model(_)
            | StreamPart::ToolCall(_)
            | StreamPart::Refusal(_)
            | StreamPart::Filters(_)
            | StreamPart::Citations(_) => {}
        }
    }
    assert_eq!(
        text,
        "According to the knowledge base: Support answers within one hour."
    );
    assert_eq!(finish.as_deref(), Some("stop"));
    assert!(usage.unwrap().completion_tokens > 0);
    assert_eq!(
        server.sim.requests()[0].body["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_then_passes() {
    let server = spawn_simulator(SimConfig::default()).await;
    server.sim.push_fault(Fault {
        status: Some(429),
        retry_after_ms: Some(200),
        times: Some(2),
        ..Default::default()
    });
    let started = Instant::now();
    let answer = client(fast())
        .complete(
            &endpoint(&server.base, "gpt-4o", "k"),
            &messages("refund?"),
            &ChatParams::default(),
        )
        .await
        .unwrap();
    assert!(answer.content.contains("30 days"));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited as asked"
    );
    assert_eq!(server.sim.requests().len(), 3);
}

#[tokio::test]
async fn a_429_beyond_the_budget_is_passed_through_with_its_wait() {
    let server = spawn_simulator(SimConfig::default()).await;
    server.sim.push_fault(Fault {
        status: Some(429),
        retry_after: Some(30),
        times: Some(5),
        ..Default::default()
    });
    let started = Instant::now();
    let err = client(fast())
        .complete(
            &endpoint(&server.base, "gpt-4o", "k"),
            &messages("x"),
            &ChatParams::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::RateLimited {
                retry_after_secs: 30
            }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no pointless wait beyond the budget"
    );
    assert_eq!(server.sim.requests().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let server = spawn_simulator(SimConfig::default()).await;
    server.sim.push_fault(Fault {
        status: Some(503),
        times: Some(1),
        ..Default::default()
    });
    assert!(
        client(fast())
            .complete(
                &endpoint(&server.base, "d", "k"),
                &messages("x"),
                &ChatParams::default()
            )
            .await
            .is_ok()
    );
    server.sim.push_fault(Fault {
        status: Some(500),
        times: Some(1),
        ..Default::default()
    });
    let err = client(fast())
        .complete(
            &endpoint(&server.base, "d", "k"),
            &messages("x"),
            &ChatParams::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn a_slow_upstream_times_out() {
    let server = spawn_simulator(SimConfig::default()).await;
    server.sim.push_fault(Fault {
        delay_ms: Some(1500),
        ..Default::default()
    });
    let timeouts = UpstreamTimeouts {
        first_byte: Duration::from_millis(300),
        ..fast()
    };
    let started = Instant::now();
    let err = client(timeouts)
        .complete(
            &endpoint(&server.base, "d", "k"),
            &messages("x"),
            &ChatParams::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(1200));
}

#[tokio::test]
async fn a_stalled_stream_times_out() {
    let server = spawn_simulator(SimConfig {
        chunk_delay: Duration::from_millis(800),
        ..Default::default()
    })
    .await;
    let timeouts = UpstreamTimeouts {
        idle: Duration::from_millis(200),
        ..fast()
    };
    // The first chunks arrive late, so even priming the stream times out.
    let result = client(timeouts)
        .stream(
            &endpoint(&server.base, "d", "k"),
            &messages("x"),
            &ChatParams::default(),
        )
        .await;
    assert!(
        matches!(result, Err(UpstreamError::Timeout("stream idle"))),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn refused_keys_and_missing_deployments_are_clear() {
    let server = spawn_simulator(SimConfig {
        keys: vec!["right".into()],
        deployments: vec!["gpt-4o".into()],
        ..Default::default()
    })
    .await;
    let c = client(fast());
    match c
        .complete(
            &endpoint(&server.base, "gpt-4o", "wrong"),
            &messages("x"),
            &ChatParams::default(),
        )
        .await
        .unwrap_err()
    {
        UpstreamError::Rejected {
            status: 401,
            detail,
        } => assert!(detail.contains("rejected the credentials"), "{detail}"),
        other => panic!("{other:?}"),
    }
    match c
        .complete(
            &endpoint(&server.base, "gpt-5", "right"),
            &messages("x"),
            &ChatParams::default(),
        )
        .await
        .unwrap_err()
    {
        UpstreamError::Rejected {
            status: 404,
            detail,
        } => assert!(detail.contains("deployment 'gpt-5' not found"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // Streams report the same errors before any byte is answered.
    assert!(matches!(
        c.stream(
            &endpoint(&server.base, "gpt-4o", "wrong"),
            &messages("x"),
            &ChatParams::default()
        )
        .await,
        Err(UpstreamError::Rejected { status: 401, .. })
    ));
}

#[tokio::test]
async fn unreachable_endpoints_and_policy_violations() {
    let c = client(fast());
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", dead.local_addr().unwrap().port());
    drop(dead);
    assert!(matches!(
        c.complete(
            &endpoint(&base, "d", "k"),
            &messages("x"),
            &ChatParams::default()
        )
        .await,
        Err(UpstreamError::Unavailable(_))
    ));
    // Without local upstreams allowed, loopback is refused before any connection.
    let strict = UpstreamPolicy::new("*.openai.azure.com", false).unwrap();
    let strict_client = client_for(strict, fast());
    assert!(matches!(
        strict_client
            .complete(
                &endpoint("http://127.0.0.1:9", "d", "k"),
                &messages("x"),
                &ChatParams::default()
            )
            .await,
        Err(UpstreamError::Configuration(_))
    ));
    // An allowed name that resolves to loopback is refused by the resolver.
    let any = UpstreamPolicy::new("*", false).unwrap();
    let any_client = client_for(any, fast());
    assert!(matches!(
        any_client
            .complete(
                &endpoint("https://localhost:9", "d", "k"),
                &messages("x"),
                &ChatParams::default()
            )
            .await,
        Err(UpstreamError::Unavailable(_))
    ));
}

#[tokio::test]
async fn the_openai_provider_uses_v1_and_bearer() {
    let server = spawn_simulator(SimConfig {
        keys: vec!["sk-test".into()],
        ..Default::default()
    })
    .await;
    let ep = endpoint(&server.base, "gpt-4o-mini", "sk-test").with_provider(Provider::Openai);
    let answer = client(fast())
        .complete(&ep, &messages("refund window?"), &ChatParams::default())
        .await
        .unwrap();
    assert!(answer.content.contains("30 days"));
    let seen = &server.sim.requests()[0];
    assert_eq!(seen.body["model"], "gpt-4o-mini");
    assert!(seen.api_version.is_none());
}

/// An https endpoint gets TLS with certificate checks: the plain-HTTP simulator behind an
/// https URL is unreachable (the handshake fails), and it never sees a request, so the key
/// never travels in clear.
#[tokio::test]
async fn https_endpoints_speak_tls_and_nothing_in_clear() {
    let server = spawn_simulator(SimConfig::default()).await;
    let https = server.base.replacen("http://", "https://", 1);
    let err = client(fast())
        .complete(
            &endpoint(&https, "d", "k"),
            &messages("x"),
            &ChatParams::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unavailable(_)), "{err:?}");
    assert!(server.sim.requests().is_empty());
}

/// The Azure SDK transport for company resources (the knowledge Blob container) resolves
/// through the same policy: an allowed name that resolves to loopback reaches nothing.
#[tokio::test]
async fn the_sdk_transport_applies_the_private_address_policy() {
    use azure_core::http::{HttpClient, Method, Request};
    use sophia::upstream::PolicyTransport;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    let app = axum::Router::new().fallback(move || {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            "ok"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url =
        azure_core::http::Url::parse(&format!("http://localhost:{port}/docs?restype=container"))
            .unwrap();
    let strict = PolicyTransport::new(
        upstream_client(
            &UpstreamPolicy::new("*", false).unwrap(),
            Duration::from_secs(2),
        )
        .unwrap(),
    );
    let refused = strict
        .execute_request(&Request::new(url.clone(), Method::Get))
        .await;
    assert!(refused.is_err(), "a private address was reached");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    let local = PolicyTransport::new(
        upstream_client(
            &UpstreamPolicy::new("*", true).unwrap(),
            Duration::from_secs(2),
        )
        .unwrap(),
    );
    let answer = local
        .execute_request(&Request::new(url, Method::Get))
        .await
        .unwrap();
    assert_eq!(u16::from(answer.status()), 200);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}
