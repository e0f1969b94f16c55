//! Application Insights export, checked from outside: the real binary posts to an ingestion
//! stand-in speaking the Breeze protocol, and the model simulator records what reached it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::appinsights::{Ingestion, of_type};
use crate::support::binary::{Server, admin_token_with, create_and_exchange, start_simulator};
use crate::support::search_standin::SearchStandIn;

const MODEL_KEY: &str = "CRED-TELEMETRY-MODEL-7777";
const ADMIN_SECRET: &str = "telemetry-admin-secret-0123456789abcdef";
const IKEY: &str = "11111111-2222-3333-4444-555555555555";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn start(ingestion: &Ingestion, extra: &[(&str, &str)]) -> (Server, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let cs = ingestion.connection_string(IKEY);
    let mut env = vec![
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", cs.as_str()),
        ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
        ("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET),
        ("SOPHIA_TELEMETRY_EXPORT_MS", "50"),
        ("SOPHIA_TELEMETRY_METRICS_SECS", "1"),
        ("SOPHIA_LOG", "debug"),
    ];
    env.extend_from_slice(extra);
    let server = Server::start(dir.path(), &env);
    let admin = admin_token_with(
        dir.path(),
        &[("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)],
        &["--role", "PLATFORM_ADMIN"],
    );
    (server, dir, admin)
}

fn instance(company: &str, sim_url: &str) -> Value {
    json!({"companyId": company, "agentType": "SOPHIA", "azureOpenaiEndpoint": sim_url,
           "azureOpenaiDeployment": "gpt-4o", "credentials": {"azureOpenaiKey": MODEL_KEY}})
}

fn prop<'a>(e: &'a Value, name: &str) -> &'a Value {
    &e["data"]["baseData"]["properties"][name]
}

fn op_id(e: &Value) -> &str {
    e["tags"]["ai.operation.id"].as_str().unwrap_or("")
}

/// `POST /chat` with `body`; its status.
fn chat(server: &Server, token: &str, body: Value) -> u16 {
    let resp = reqwest::blocking::Client::new()
        .post(server.url("/chat"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let _ = resp.text();
    status
}

/// Makes the simulator's next model call answer 500.
fn fail_next_model_call(sim_url: &str) {
    reqwest::blocking::Client::new()
        .post(format!("{sim_url}/_sim/faults"))
        .json(&json!({"status": 500}))
        .send()
        .unwrap();
}

#[test]
fn requests_dependencies_traces_and_metrics_reach_app_insights() {
    let ingestion = Ingestion::start();
    let (mut sim, sim_url) = start_simulator(MODEL_KEY);
    let (server, _dir, admin) = start(&ingestion, &[]);
    let (created, token) = create_and_exchange(&server, &admin, &instance("acme", &sim_url));
    let key = created["agentAccessKey"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let client = reqwest::blocking::Client::new();

    // A whole answer inside the caller's trace, then a streamed one.
    let parent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let resp = client
        .post(server.url("/chat"))
        .bearer_auth(&token)
        .header("traceparent", &parent)
        .header("x-request-id", "telemetry-req-1")
        .json(&json!({"message": "hello"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        chat(
            &server,
            &token,
            json!({"message": "stream please", "stream": true})
        ),
        200
    );
    // The model fails (500): SOPHIA answers 502.
    fail_next_model_call(&sim_url);
    assert_eq!(
        chat(&server, &token, json!({"message": "this one fails"})),
        502
    );
    // Other routes, by their templates.
    assert_eq!(
        client
            .get(server.url("/agents/me"))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(server.url(&format!("/admin/agent-instances/{id}")))
            .bearer_auth(&admin)
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client.get(server.url("/health")).send().unwrap().status(),
        200
    );

    let all = ingestion.wait_for("requests, dependencies and metrics", |e| {
        let names: Vec<&str> = of_type(e, "RequestData")
            .iter()
            .filter_map(|r| r["data"]["baseData"]["name"].as_str())
            .collect();
        names.iter().filter(|n| **n == "POST /chat").count() >= 3
            && names.contains(&"GET /agents/me")
            && names.contains(&"GET /admin/agent-instances/{id}")
            && of_type(e, "RemoteDependencyData").len() >= 3
            && of_type(e, "MetricData")
                .iter()
                .any(|m| m["data"]["baseData"]["metrics"][0]["name"] == "sophia.tokens.prompt")
    });
    for e in &all {
        assert_eq!(e["iKey"], IKEY);
    }
    let requests = of_type(&all, "RequestData");
    let deps = of_type(&all, "RemoteDependencyData");

    // The traced request continues the caller's trace and names the caller.
    let traced = requests
        .iter()
        .find(|r| op_id(r) == TRACE)
        .expect("the request continues the incoming traceparent");
    let base = &traced["data"]["baseData"];
    assert_eq!(base["name"], "POST /chat");
    assert_eq!(base["responseCode"], "200");
    assert_eq!(base["success"], true);
    assert_eq!(traced["tags"]["ai.operation.parentId"], "00f067aa0ba902b7");
    assert_eq!(prop(traced, "companyId"), "acme");
    assert_eq!(prop(traced, "instanceId"), id.as_str());
    assert_eq!(prop(traced, "agentType"), "SOPHIA");
    assert_eq!(prop(traced, "request.id"), "telemetry-req-1");
    // Its model call is a dependency under the same operation, with the GenAI attributes.
    let dep = deps
        .iter()
        .find(|d| op_id(d) == TRACE)
        .expect("the model call is in the same operation");
    let db = &dep["data"]["baseData"];
    assert_eq!(dep["tags"]["ai.operation.parentId"], base["id"]);
    assert_eq!(db["type"], "HTTP");
    assert_eq!(db["resultCode"], "200");
    assert_eq!(db["success"], true);
    assert!(
        db["target"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{db}"
    );
    assert_eq!(prop(dep, "gen_ai.system"), "az.ai.openai");
    assert_eq!(prop(dep, "gen_ai.operation.name"), "chat");
    assert_eq!(prop(dep, "gen_ai.request.model"), "gpt-4o");
    assert!(prop(dep, "gen_ai.response.model").is_string(), "{dep}");
    let tokens = |k: &str| {
        prop(dep, k)
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(tokens("gen_ai.usage.input_tokens") > 0, "{dep}");
    assert!(tokens("gen_ai.usage.output_tokens") > 0, "{dep}");
    assert_eq!(prop(dep, "sophia.stream"), "false");
    assert_eq!(prop(dep, "companyId"), "acme");
    // The model stand-in got the traceparent of that dependency.
    let seen: Vec<Value> = client
        .get(format!("{sim_url}/_sim/requests"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let expected = format!("00-{TRACE}-{}-01", db["id"].as_str().unwrap());
    assert!(
        seen.iter().any(|r| r["traceparent"] == expected.as_str()),
        "the model call carried {expected}: {seen:?}"
    );
    // The streamed call is a streaming dependency with its tokens.
    assert!(
        deps.iter().any(|d| prop(d, "sophia.stream") == "true"
            && prop(d, "gen_ai.usage.output_tokens").is_string())
    );
    // The failure: a failed 502 request over a failed 500 dependency, in one operation.
    let failed = requests
        .iter()
        .find(|r| r["data"]["baseData"]["responseCode"] == "502")
        .expect("the failed request");
    assert_eq!(failed["data"]["baseData"]["success"], false);
    let failed_dep = deps
        .iter()
        .find(|d| op_id(d) == op_id(failed))
        .expect("the failed dependency");
    assert_eq!(failed_dep["data"]["baseData"]["resultCode"], "500");
    assert_eq!(failed_dep["data"]["baseData"]["success"], false);
    // Log events inside requests are traces in their operation, with a severity.
    let messages = of_type(&all, "MessageData");
    assert!(
        messages
            .iter()
            .any(|m| op_id(m) == TRACE && m["data"]["baseData"]["severityLevel"].is_number()),
        "a log event of the traced request: {messages:?}"
    );
    // Metrics carry the company, never a conversation.
    let metrics = of_type(&all, "MetricData");
    let tokens_metric = metrics
        .iter()
        .find(|m| m["data"]["baseData"]["metrics"][0]["name"] == "sophia.tokens.prompt")
        .unwrap();
    assert_eq!(
        tokens_metric["data"]["baseData"]["properties"]["companyId"],
        "acme"
    );
    assert!(!ingestion.raw().contains("conversationId"));

    // /health counts what went out.
    let health: Value = client
        .get(server.url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["telemetry"]["exporter"], "appinsights", "{health}");
    assert!(
        health["telemetry"]["exported"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert_eq!(health["telemetry"]["dropped"], 0, "{health}");

    let (status, logs) = server.stop();
    assert!(status.success());
    let _ = sim.kill();
    let _ = sim.wait();
    // No credential in any byte sent.
    let raw = ingestion.raw();
    for secret in [
        MODEL_KEY,
        key.as_str(),
        token.as_str(),
        admin.as_str(),
        ADMIN_SECRET,
    ] {
        assert!(!raw.contains(secret), "a secret reached App Insights");
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}

#[test]
fn slow_or_down_ingestion_never_slows_chat() {
    let ingestion = Ingestion::start();
    ingestion.hang();
    let (mut sim, sim_url) = start_simulator(MODEL_KEY);
    let (server, _dir, admin) = start(
        &ingestion,
        &[
            ("SOPHIA_TELEMETRY_QUEUE", "16"),
            ("SOPHIA_TELEMETRY_TIMEOUT_MS", "300"),
            ("SOPHIA_TELEMETRY_FLUSH_MS", "1000"),
        ],
    );
    let (_, token) = create_and_exchange(&server, &admin, &instance("acme", &sim_url));
    let client = reqwest::blocking::Client::new();
    let chat = |n: usize| {
        let started = Instant::now();
        for _ in 0..n {
            assert_eq!(chat(&server, &token, json!({"message": "hello"})), 200);
        }
        started.elapsed()
    };
    // A hanging endpoint: every chat still answers at once; the queue overflows and counts.
    let hanging = chat(40);
    assert!(hanging < Duration::from_secs(20), "{hanging:?}");
    let health: Value = client
        .get(server.url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        health["telemetry"]["dropped"].as_u64().unwrap() > 0,
        "{health}"
    );
    // A 503 endpoint: the same.
    ingestion.unavailable();
    let down = chat(10);
    assert!(down < Duration::from_secs(10), "{down:?}");
    // SIGTERM: pending telemetry is given its bound, no more.
    let stopping = Instant::now();
    let (status, _) = server.stop();
    assert!(status.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );
    let _ = sim.kill();
    let _ = sim.wait();
}

#[test]
fn failures_are_kept_whatever_the_sampling() {
    let ingestion = Ingestion::start();
    let (mut sim, sim_url) = start_simulator(MODEL_KEY);
    let (server, _dir, admin) = start(&ingestion, &[("SOPHIA_TELEMETRY_SAMPLING", "0")]);
    let (_, token) = create_and_exchange(&server, &admin, &instance("acme", &sim_url));
    let client = reqwest::blocking::Client::new();
    for _ in 0..3 {
        assert_eq!(chat(&server, &token, json!({"message": "hi"})), 200);
    }
    fail_next_model_call(&sim_url);
    assert_eq!(chat(&server, &token, json!({"message": "fails"})), 502);
    let all = ingestion.wait_for("the failed request", |e| {
        of_type(e, "RequestData")
            .iter()
            .any(|r| r["data"]["baseData"]["responseCode"] == "502")
    });
    std::thread::sleep(Duration::from_millis(300));
    let all = ingestion
        .envelopes()
        .into_iter()
        .chain(all)
        .collect::<Vec<_>>();
    for r in of_type(&all, "RequestData") {
        assert_eq!(
            r["data"]["baseData"]["success"], false,
            "only failures at sampling 0: {r}"
        );
        assert_eq!(r["sampleRate"], 100.0);
    }
    let health: Value = client
        .get(server.url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        health["telemetry"]["sampledOut"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert_eq!(health["telemetry"]["sampling"], 0.0);
    server.stop();
    let _ = sim.kill();
    let _ = sim.wait();
}

#[test]
fn a_bad_connection_string_or_sampling_stops_start_up_with_a_clear_error() {
    for (var, value, says) in [
        (
            "APPLICATIONINSIGHTS_CONNECTION_STRING",
            "InstrumentationKey=not a key",
            "APPLICATIONINSIGHTS_CONNECTION_STRING",
        ),
        (
            "SOPHIA_TELEMETRY_SAMPLING",
            "2",
            "SOPHIA_TELEMETRY_SAMPLING",
        ),
        (
            "SOPHIA_TELEMETRY_SAMPLING",
            "NaN",
            "SOPHIA_TELEMETRY_SAMPLING",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = crate::support::binary::command(dir.path(), 0)
            .env(var, value)
            .arg("serve")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// Two companies with their own App Insights (and a third without): each company's resource
/// receives that company's requests, dependencies, traces and metrics, and not one byte of
/// anyone else's; the operator's resource receives everything.
#[test]
fn each_company_gets_its_own_telemetry_and_nothing_of_another() {
    const ACME_IKEY: &str = "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa";
    const BETA_IKEY: &str = "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb";
    let operator = Ingestion::start();
    let acme_ai = Ingestion::start();
    let beta_ai = Ingestion::start();
    let (mut sim, sim_url) = start_simulator(MODEL_KEY);
    let (server, dir, platform) = start(&operator, &[]);
    let client = reqwest::blocking::Client::new();

    // ACME's knowledge is in its own AI Search service: those calls are ACME's dependencies.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let search = rt.block_on(SearchStandIn::start("acme-search-key-5150"));
    let mut acme_body = instance("acme", &sim_url);
    acme_body["azureSearchEndpoint"] = json!(search.base);
    acme_body["credentials"]["azureSearchKey"] = json!(search.key);
    let (acme, acme_token) = create_and_exchange(&server, &platform, &acme_body);
    let (beta, beta_token) = create_and_exchange(&server, &platform, &instance("beta", &sim_url));
    let (gamma, gamma_token) =
        create_and_exchange(&server, &platform, &instance("gamma", &sim_url));
    // ACME's company admin sets ACME's resource; BETA's is set at the platform level.
    let acme_admin = admin_token_with(
        dir.path(),
        &[("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)],
        &["--role", "ADMIN", "--company", "acme"],
    );
    for (id, admin, cs) in [
        (
            &acme["id"],
            &acme_admin,
            acme_ai.connection_string(ACME_IKEY),
        ),
        (&beta["id"], &platform, beta_ai.connection_string(BETA_IKEY)),
    ] {
        let resp = client
            .patch(server.url(&format!("/admin/agent-instances/{}", id.as_str().unwrap())))
            .bearer_auth(admin)
            .header("content-type", "application/merge-patch+json")
            .body(json!({"credentials": {"appInsightsConnectionString": cs}}).to_string())
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().unwrap());
    }
    // ACME's admin cannot set anything on BETA's instance.
    let resp = client
        .patch(server.url(&format!(
            "/admin/agent-instances/{}",
            beta["id"].as_str().unwrap()
        )))
        .bearer_auth(&acme_admin)
        .header("content-type", "application/merge-patch+json")
        .body(
            json!({"credentials": {"appInsightsConnectionString": acme_ai.connection_string(ACME_IKEY)}})
                .to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);

    for token in [&acme_token, &beta_token, &gamma_token] {
        assert_eq!(chat(&server, token, json!({"message": "hello"})), 200);
        assert_eq!(
            chat(&server, token, json!({"message": "stream", "stream": true})),
            200
        );
    }
    fail_next_model_call(&sim_url);
    assert_eq!(chat(&server, &beta_token, json!({"message": "fails"})), 502);

    let complete = |company: &'static str| {
        move |e: &[Value]| {
            let mine = |t: &str| {
                of_type(e, t)
                    .iter()
                    .filter(|x| prop(x, "companyId") == company)
                    .count()
            };
            mine("RequestData") >= 2
                && mine("RemoteDependencyData") >= if company == "acme" { 4 } else { 2 }
                && of_type(e, "MetricData")
                    .iter()
                    .any(|m| m["data"]["baseData"]["metrics"][0]["name"] == "sophia.turns")
        }
    };
    let acme_seen = acme_ai.wait_for("ACME's telemetry", complete("acme"));
    let beta_seen = beta_ai.wait_for("BETA's telemetry", complete("beta"));
    let op_seen = operator.wait_for("everyone's telemetry at the operator", |e| {
        ["acme", "beta", "gamma"].iter().all(|c| {
            of_type(e, "RequestData")
                .iter()
                .any(|r| prop(r, "companyId") == *c)
        })
    });
    // BETA's failure reached BETA's resource, as a failed request over a failed dependency.
    assert!(
        of_type(&beta_seen, "RequestData")
            .iter()
            .any(|r| r["data"]["baseData"]["success"] == false)
    );
    assert!(
        of_type(&beta_seen, "RemoteDependencyData")
            .iter()
            .any(|d| d["data"]["baseData"]["resultCode"] == "500")
    );
    // ACME's search calls reached ACME's resource as AI Search dependencies with the
    // traceparent sent; nobody else's resource has one.
    let acme_search = of_type(&acme_seen, "RemoteDependencyData")
        .into_iter()
        .find(|d| d["data"]["baseData"]["name"] == "AI Search POST /indexes/{}/docs/search")
        .expect("ACME's search dependency");
    assert_eq!(acme_search["data"]["baseData"]["resultCode"], "200");
    assert!(
        !acme_search["data"]["baseData"]["data"]
            .as_str()
            .unwrap_or("")
            .contains('?'),
        "url.full carries no query: {acme_search}"
    );
    // The search service got that dependency's traceparent: same operation, the dependency
    // as the parent.
    let sent = format!(
        "00-{}-{}-01",
        acme_search["tags"]["ai.operation.id"].as_str().unwrap(),
        acme_search["data"]["baseData"]["id"].as_str().unwrap()
    );
    let seen_by_search = search.inner.search_traceparents.lock().unwrap().clone();
    assert!(
        seen_by_search
            .iter()
            .any(|t| t.as_deref() == Some(sent.as_str())),
        "{sent} not in {seen_by_search:?}"
    );
    assert!(!beta_ai.raw().contains("AI Search"));
    // Traces (log events) of a company's requests go with them.
    assert!(!of_type(&beta_seen, "MessageData").is_empty());
    assert!(op_seen.iter().all(|e| e["iKey"] == IKEY));

    // Let anything still queued arrive, then check every byte each company received.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, logs) = server.stop();
    assert!(status.success());
    let _ = sim.kill();
    let _ = sim.wait();
    for (ai, company, ikey, others) in [
        (
            &acme_ai,
            "acme",
            ACME_IKEY,
            [("beta", &beta, BETA_IKEY), ("gamma", &gamma, IKEY)],
        ),
        (
            &beta_ai,
            "beta",
            BETA_IKEY,
            [("acme", &acme, ACME_IKEY), ("gamma", &gamma, IKEY)],
        ),
    ] {
        let own = &if company == "acme" { &acme } else { &beta }["id"];
        for e in ai.envelopes() {
            assert_eq!(
                e["iKey"], ikey,
                "{company} got an envelope for another resource: {e}"
            );
            let base = e["data"]["baseType"].as_str().unwrap_or("");
            if base == "RequestData" || base == "RemoteDependencyData" {
                assert_eq!(prop(&e, "companyId"), company, "{e}");
                assert_eq!(prop(&e, "instanceId"), own, "{e}");
            }
            if base == "MetricData" {
                let p = &e["data"]["baseData"]["properties"];
                assert!(
                    p["companyId"].is_null() || p["companyId"] == company,
                    "{company} got another company's metric: {e}"
                );
            }
        }
        let raw = ai.raw();
        for (other, created, other_ikey) in others {
            assert!(
                !raw.contains(&format!("\"{other}\"")),
                "{company} saw {other}"
            );
            assert!(
                !raw.contains(created["id"].as_str().unwrap()),
                "{company} saw {other}'s instance"
            );
            assert!(
                !raw.contains(other_ikey),
                "{company} saw {other}'s resource key"
            );
        }
    }
    // The operator's resource has everyone, and no company's own key.
    let op_raw = operator.raw();
    assert!(!op_raw.contains(ACME_IKEY) && !op_raw.contains(BETA_IKEY));
    // No credential anywhere: not in what was posted, not in the logs.
    let raws = [operator.raw(), acme_ai.raw(), beta_ai.raw()];
    for secret in [
        MODEL_KEY,
        acme_token.as_str(),
        beta_token.as_str(),
        acme["agentAccessKey"].as_str().unwrap(),
        beta["agentAccessKey"].as_str().unwrap(),
        acme_admin.as_str(),
        platform.as_str(),
        search.key.as_str(),
    ] {
        for raw in &raws {
            assert!(!raw.contains(secret), "a secret reached App Insights");
        }
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    for ikey in [ACME_IKEY, BETA_IKEY] {
        assert!(
            !logs.contains(ikey),
            "a company's connection string reached the logs"
        );
    }
}

#[test]
fn a_failover_shows_the_failed_attempt_and_the_deployment_that_answered() {
    let ingestion = Ingestion::start();
    let (mut sim, sim_url) = start_simulator(MODEL_KEY);
    let (server, _dir, admin) = start(&ingestion, &[]);
    let body = json!({"companyId": "acme", "agentType": "SOPHIA",
        "deployments": [
            {"name": "ptu", "endpoint": sim_url, "deployment": "gpt-4o-ptu"},
            {"name": "payg", "endpoint": sim_url, "deployment": "gpt-4o-payg", "priority": 2}
        ],
        "credentials": {"azureOpenaiKey": MODEL_KEY}});
    let (_, token) = create_and_exchange(&server, &admin, &body);
    reqwest::blocking::Client::new()
        .post(format!("{sim_url}/_sim/faults"))
        .json(&json!({"status": 503, "deployment": "gpt-4o-ptu"}))
        .send()
        .unwrap();
    let parent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let resp = reqwest::blocking::Client::new()
        .post(server.url("/chat"))
        .bearer_auth(&token)
        .header("traceparent", &parent)
        .json(&json!({"message": "hello"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let all = ingestion.wait_for("both attempts", |e| {
        of_type(e, "RemoteDependencyData")
            .iter()
            .filter(|d| op_id(d) == TRACE && prop(d, "gen_ai.operation.name") == "chat")
            .count()
            >= 2
    });
    let deps: Vec<&Value> = of_type(&all, "RemoteDependencyData")
        .into_iter()
        .filter(|d| op_id(d) == TRACE && prop(d, "gen_ai.operation.name") == "chat")
        .collect();
    let by = |name: &str| {
        deps.iter()
            .find(|d| prop(d, "sophia.deployment") == name)
            .unwrap_or_else(|| panic!("{name}: {deps:?}"))
    };
    assert_eq!(by("ptu")["data"]["baseData"]["success"], false);
    assert_eq!(by("ptu")["data"]["baseData"]["resultCode"], "503");
    assert_eq!(by("payg")["data"]["baseData"]["success"], true);
    assert_eq!(prop(by("payg"), "gen_ai.request.model"), "gpt-4o-payg");
    server.stop();
    let _ = sim.kill();
    let _ = sim.wait();
}

/// The metrics' last interval goes out when the host stops SOPHIA (SIGTERM), as App Insights
/// aggregations: a turn's tokens as the model reported them, its duration with count, min and
/// max, by company and instance.
#[test]
fn the_last_metrics_interval_goes_out_on_sigterm() {
    let ingestion = Ingestion::start();
    let (mut sim, sim_url) = start_simulator(MODEL_KEY);
    let (server, _dir, admin) = start(&ingestion, &[("SOPHIA_TELEMETRY_METRICS_SECS", "3600")]);
    let (created, token) = create_and_exchange(&server, &admin, &instance("acme", &sim_url));
    for _ in 0..2 {
        assert_eq!(chat(&server, &token, json!({"message": "hello"})), 200);
    }
    let running = ingestion.wait_for("the model calls", |e| {
        of_type(e, "RemoteDependencyData").len() >= 2
    });
    assert!(
        of_type(&running, "MetricData").is_empty(),
        "no metrics before the interval ends"
    );
    let (status, _) = server.stop();
    assert!(status.success());
    let _ = sim.kill();
    let _ = sim.wait();
    let all = ingestion.envelopes();
    let metric = |name: &str| -> Vec<&Value> {
        of_type(&all, "MetricData")
            .into_iter()
            .filter(|m| m["data"]["baseData"]["metrics"][0]["name"] == name)
            .collect()
    };
    let input: f64 = of_type(&all, "RemoteDependencyData")
        .iter()
        .filter_map(|d| prop(d, "gen_ai.usage.input_tokens").as_str())
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    let prompt = metric("sophia.tokens.prompt");
    assert_eq!(prompt.len(), 1, "one series: {prompt:?}");
    let point = &prompt[0]["data"]["baseData"]["metrics"][0];
    assert_eq!(point["kind"], "Aggregation");
    assert_eq!(point["value"].as_f64(), Some(input));
    assert_eq!(prop(prompt[0], "companyId"), "acme");
    assert_eq!(prop(prompt[0], "instanceId"), &created["id"]);
    assert!(prop(prompt[0], "model").is_string());
    let turns = metric("sophia.turns");
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0]["data"]["baseData"]["metrics"][0]["value"], 2.0);
    assert_eq!(prop(turns[0], "outcome"), "ok");
    let duration = metric("sophia.turn.duration");
    let d = &duration[0]["data"]["baseData"]["metrics"][0];
    assert_eq!(d["count"], 2);
    let (min, max, sum) = (
        d["min"].as_f64().unwrap(),
        d["max"].as_f64().unwrap(),
        d["value"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= max && max <= sum, "{d}");
    assert_eq!(duration[0]["tags"]["ai.cloud.role"], "sophia");
    assert!(duration[0].get("sampleRate").is_none());
    // The token cache and tenant cache were looked up: their lookups are counted too.
    assert!(
        metric("sophia.cache.lookups")
            .iter()
            .any(|m| prop(m, "cache") == "tenant"),
        "{all:?}"
    );
}
