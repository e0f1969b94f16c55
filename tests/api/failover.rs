//! Failover between a company's model deployments, against two simulator deployments (two
//! endpoints, each with its own key): a 429 moves the turn on and keeps the throttled one
//! aside for its `Retry-After`; 5xx and timeouts move it on; consecutive failures open a
//! deployment's breaker, a probe closes it; the answering deployment is in the usage record;
//! config-test checks every deployment; the entries are validated like any endpoint, and a
//! credential reference reaches only the company's own bundle.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sophia::dev::simulator::{Fault, SimConfig};

use crate::chat::{chat, sse_events};
use crate::support::{
    Created, SimServer, TestApp, assert_problem, spawn_app_with, spawn_simulator,
};

struct Rig {
    app: TestApp,
    ptu: SimServer,
    payg: SimServer,
    acme: Created,
    token: String,
}

/// Acme with two deployments: `ptu` (priority 1, its `azureOpenaiKey`) and `payg`
/// (priority 2, its own key by reference), on two simulators that each accept only their key.
async fn rig(extra: &[(&str, &str)], ptu_entry: Value) -> Rig {
    let ptu = spawn_simulator(SimConfig {
        keys: vec!["key-ptu".into()],
        ..Default::default()
    })
    .await;
    let payg = spawn_simulator(SimConfig {
        keys: vec!["key-payg".into()],
        ..Default::default()
    })
    .await;
    let mut overrides = vec![("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")];
    overrides.extend_from_slice(extra);
    let app = spawn_app_with(&overrides).await;
    let mut first =
        json!({"name": "ptu", "endpoint": ptu.base, "deployment": "gpt-4o-ptu", "priority": 1});
    for (k, v) in ptu_entry.as_object().unwrap() {
        first[k] = v.clone();
    }
    let acme = app
        .create_instance_with(
            "acme",
            json!({
                "azureOpenaiEndpoint": null,
                "deployments": [
                    first,
                    {"name": "payg", "endpoint": payg.base, "deployment": "gpt-4o-payg",
                     "priority": 2, "credential": "payg"}
                ],
                "credentials": {"azureOpenaiKey": "key-ptu", "deploymentKeys": {"payg": "key-payg"}}
            }),
        )
        .await;
    let token = app.service_token("acme", &acme.key).await;
    Rig {
        app,
        ptu,
        payg,
        acme,
        token,
    }
}

impl Rig {
    async fn turn(&self) -> Value {
        let resp = chat(&self.app, &self.token, json!({"message": "hello"})).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    /// How many model calls each deployment has received so far.
    fn calls(&self) -> (usize, usize) {
        (
            self.ptu.sim.requests().len(),
            self.payg.sim.requests().len(),
        )
    }
}

#[tokio::test]
async fn a_429_moves_the_turn_on_and_the_throttled_deployment_waits_out_its_retry_after() {
    let rig = rig(&[], json!({})).await;
    assert_eq!(rig.turn().await["model"], "gpt-4o-ptu", "priority 1 first");
    assert_eq!(rig.calls(), (1, 0));

    rig.ptu.sim.push_fault(Fault {
        status: Some(429),
        retry_after: Some(2),
        ..Default::default()
    });
    let started = Instant::now();
    let answer = rig.turn().await;
    assert_eq!(answer["model"], "gpt-4o-payg");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "no wait on the throttled deployment when another can answer"
    );
    assert_eq!(rig.calls(), (2, 1));
    // Each deployment was called with its own key.
    assert_eq!(rig.ptu.sim.requests()[1].key.as_deref(), Some("key-ptu"));
    assert_eq!(rig.payg.sim.requests()[0].key.as_deref(), Some("key-payg"));

    // Within its Retry-After the throttled deployment is not called at all.
    rig.turn().await;
    assert_eq!(rig.calls(), (2, 2));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        rig.turn().await["model"],
        "gpt-4o-ptu",
        "back once it has waited"
    );
    assert_eq!(rig.calls(), (3, 2));

    // The usage record says which deployment answered what.
    let usage: Value = rig
        .app
        .get("/admin/usage?companyId=acme", &rig.app.platform_token())
        .await
        .json()
        .await
        .unwrap();
    let day = &usage["items"][0];
    assert_eq!(day["requests"], 4);
    let mut shares: Vec<(String, u64)> = day["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["deployment"].as_str().unwrap().to_owned(),
                d["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    shares.sort();
    assert_eq!(shares, [("payg".to_owned(), 2), ("ptu".to_owned(), 2)]);
    let tokens: u64 = day["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["totalTokens"].as_u64().unwrap())
        .sum();
    assert_eq!(tokens, day["totalTokens"].as_u64().unwrap());
}

#[tokio::test]
async fn server_errors_open_the_breaker_and_a_probe_closes_it() {
    let rig = rig(
        &[
            ("SOPHIA_BREAKER_FAILURES", "2"),
            ("SOPHIA_BREAKER_OPEN_MS", "1500"),
        ],
        json!({}),
    )
    .await;
    rig.ptu.sim.push_fault(Fault {
        status: Some(500),
        times: Some(2),
        ..Default::default()
    });
    // Two failures in a row, each turn answered by the next deployment.
    for _ in 0..2 {
        assert_eq!(rig.turn().await["model"], "gpt-4o-payg");
    }
    assert_eq!(rig.calls(), (2, 2));
    // Open: the turn does not even try it.
    assert_eq!(rig.turn().await["model"], "gpt-4o-payg");
    assert_eq!(rig.calls(), (2, 3), "an open breaker skips its deployment");

    // Once its time is up, one turn probes it; a failed probe opens it again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    rig.ptu.sim.push_fault(Fault {
        status: Some(503),
        times: Some(1),
        ..Default::default()
    });
    assert_eq!(rig.turn().await["model"], "gpt-4o-payg");
    assert_eq!(rig.calls(), (3, 4), "the probe went to ptu and failed");
    assert_eq!(rig.turn().await["model"], "gpt-4o-payg");
    assert_eq!(rig.calls(), (3, 5), "open again after the failed probe");

    // A successful probe closes it: turns go to priority 1 again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(rig.turn().await["model"], "gpt-4o-ptu");
    assert_eq!(rig.turn().await["model"], "gpt-4o-ptu");
    assert_eq!(rig.calls(), (5, 5));

    // Streamed turns fail over the same way, before the first byte reaches the client.
    rig.ptu.sim.push_fault(Fault {
        status: Some(502),
        times: Some(1),
        ..Default::default()
    });
    let resp = chat(
        &rig.app,
        &rig.token,
        json!({"message": "hello", "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let events = sse_events(&resp.text().await.unwrap());
    let done = events.iter().find(|(e, _)| e == "done").unwrap();
    assert_eq!(done.1["model"], "gpt-4o-payg");
    assert_eq!(rig.calls(), (6, 6));
}

#[tokio::test]
async fn a_slow_deployment_is_left_after_its_own_timeout() {
    let rig = rig(&[], json!({"timeoutSeconds": 1})).await;
    rig.ptu.sim.push_fault(Fault {
        delay_ms: Some(4000),
        ..Default::default()
    });
    let started = Instant::now();
    assert_eq!(rig.turn().await["model"], "gpt-4o-payg");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "{took:?}"
    );
}

#[tokio::test]
async fn every_deployment_throttled_is_a_429_with_the_shortest_wait_and_a_refusal_is_final() {
    let rig = rig(&[("SOPHIA_UPSTREAM_RETRY_BUDGET_MS", "0")], json!({})).await;
    rig.ptu.sim.push_fault(Fault {
        status: Some(429),
        retry_after: Some(9),
        ..Default::default()
    });
    rig.payg.sim.push_fault(Fault {
        status: Some(429),
        retry_after: Some(4),
        ..Default::default()
    });
    let resp = chat(&rig.app, &rig.token, json!({"message": "hello"})).await;
    assert_eq!(resp.headers()["retry-after"], "4");
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Both throttled: the next turn is answered 429 without calling either.
    let resp = chat(&rig.app, &rig.token, json!({"message": "hello"})).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rig.calls(), (1, 1));
}

#[tokio::test]
async fn config_test_checks_every_deployment_and_names_a_missing_key() {
    let rig = rig(&[], json!({})).await;
    // A third entry whose key the company never stored.
    let resp = rig
        .app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{}", rig.acme.id),
            Some(&rig.app.platform_token()),
            Some(json!({"deployments": [
                {"name": "ptu", "endpoint": rig.ptu.base, "deployment": "gpt-4o-ptu"},
                {"name": "payg", "endpoint": rig.payg.base, "deployment": "gpt-4o-payg",
                 "priority": 2, "credential": "payg"},
                {"name": "west", "endpoint": rig.payg.base, "deployment": "gpt-4o-west",
                 "priority": 3, "credential": "west"}
            ]})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["deployments"].as_array().unwrap().len(), 3);
    assert_eq!(view["deployments"][0]["priority"], 1, "defaults are stored");
    let report: Value = rig
        .app
        .request(
            Method::POST,
            &format!("/admin/agent-instances/{}/config-test", rig.acme.id),
            Some(&rig.app.platform_token()),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let chats: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "chatDeployment")
        .collect();
    assert_eq!(chats.len(), 3, "{report}");
    let by = |name: &str| {
        *chats
            .iter()
            .find(|c| c["deployment"] == name)
            .unwrap_or_else(|| panic!("{name}: {report}"))
    };
    assert_eq!(by("ptu")["ok"], true, "{report}");
    assert_eq!(by("payg")["ok"], true, "{report}");
    assert_eq!(by("west")["ok"], false);
    assert!(
        by("west")["detail"]
            .as_str()
            .unwrap()
            .contains("credentials.deploymentKeys has no key 'west'"),
        "{report}"
    );
    assert_eq!(report["ok"], false);
    let text = report.to_string();
    assert!(
        !text.contains("key-ptu") && !text.contains("key-payg"),
        "{text}"
    );
    // Turns still go through the usable ones.
    assert_eq!(rig.turn().await["model"], "gpt-4o-ptu");
}

#[tokio::test]
async fn entries_are_validated_and_credentials_are_looked_up_only_in_the_company_bundle() {
    let rig = rig(&[], json!({})).await;
    let app = &rig.app;
    let path = format!("/admin/agent-instances/{}", rig.acme.id);
    let entry = json!({"name": "x", "endpoint": rig.ptu.base, "deployment": "d"});
    let with = |key: &str, value: Value| {
        let mut e = entry.clone();
        e[key] = value;
        json!([e])
    };
    for (deployments, field) in [
        (json!("nope"), "deployments"),
        (
            with("endpoint", json!("https://evil.example.com")),
            "deployments[0].endpoint",
        ),
        (
            with("endpoint", json!("http://169.254.169.254")),
            "deployments[0].endpoint",
        ),
        (
            with("deployment", json!("../x")),
            "deployments[0].deployment",
        ),
        (with("priority", json!(0)), "deployments[0].priority"),
        (with("weight", json!(-1)), "deployments[0].weight"),
        (
            with("credential", json!("UPPER")),
            "deployments[0].credential",
        ),
        (with("apiKey", json!("sk-inline")), "deployments[0].apiKey"),
        (json!([entry, entry]), "deployments[1].name"),
    ] {
        let resp = app
            .request(
                Method::PATCH,
                &path,
                Some(&app.platform_token()),
                Some(json!({ "deployments": deployments })),
            )
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{problem}");
    }
    let bad_keys = app
        .request(
            Method::PATCH,
            &path,
            Some(&app.platform_token()),
            Some(json!({"credentials": {"deploymentKeys": {"Bad Name": "k"}}})),
        )
        .await;
    assert_problem(bad_keys, StatusCode::BAD_REQUEST, "validation_failed").await;
    // Nothing of it was written.
    let view: Value = app
        .get(&path, &app.platform_token())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["deployments"].as_array().unwrap().len(), 2);

    // Beta stores a key named "shared"; acme's entry naming "shared" does not find it.
    let beta = app
        .create_instance_with(
            "beta",
            json!({"azureOpenaiEndpoint": rig.payg.base, "azureOpenaiDeployment": "gpt-4o-beta",
                   "credentials": {"azureOpenaiKey": "key-payg",
                                   "deploymentKeys": {"shared": "key-payg"}}}),
        )
        .await;
    let resp = app
        .request(
            Method::PATCH,
            &path,
            Some(&app.admin_token("acme")),
            Some(json!({"deployments": [
                {"name": "borrowed", "endpoint": rig.payg.base, "deployment": "gpt-4o-payg",
                 "credential": "shared"}
            ]})),
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "a company admin lists its own"
    );
    let resp = chat(app, &rig.token, json!({"message": "hello"})).await;
    let problem = assert_problem(resp, StatusCode::CONFLICT, "instance_not_configured").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no key 'shared'"),
        "{problem}"
    );
    assert!(
        rig.payg.sim.requests().is_empty(),
        "beta's key was never sent"
    );
    let _ = beta;
}

#[tokio::test]
async fn a_deployment_that_cannot_be_reached_is_left_for_the_next() {
    // A port nothing listens on: the connection is refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    };
    let rig = rig(&[], json!({"endpoint": closed})).await;
    assert_eq!(rig.turn().await["model"], "gpt-4o-payg");
    assert_eq!(rig.calls(), (0, 1));
}
