//! The `foundry` runtime, run as its users run it: the real binary on its company's managed
//! identities (the App Service identity endpoint stand-in) against the simulator's Foundry
//! projects, two companies with a project each, each identity granted on its own project only.
//! Provisioning (create, idempotent re-run, a new version on a model change, a failure that
//! leaves nothing behind and a recovery), chat on `/chat` and `/v1/chat/completions` whole and
//! streamed with Foundry's file-search citations, the conversation mapping, Foundry's 429/500
//! mapped, every call on the company's own project with its own token, no token in the logs.

use crate::support;

use reqwest::blocking::Client;
use serde_json::{Value, json};
use sophia::dev::simulator::{Fault, SimConfig, Simulator};
use support::azure::{ManagedIdentity, serve_router};
use support::binary::*;

const ADMIN_SECRET: &str = "foundry-admin-secret-0123456789-abcdefghijklmn";
const ACME_ID: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const BETA_ID: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
const ACME_TOKEN: &str = "entra-acme-foundry-token-7781";
const BETA_TOKEN: &str = "entra-beta-foundry-token-9913";

struct Rig {
    server: Server,
    sim: Simulator,
    sim_url: String,
    platform: String,
    _msi: ManagedIdentity,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let msi = ManagedIdentity::start("sophia-own-token")
        .with_identity(ACME_ID, ACME_TOKEN)
        .with_identity(BETA_ID, BETA_TOKEN);
    let sim = Simulator::new(SimConfig {
        project_tokens: vec![
            ("acme-proj".into(), ACME_TOKEN.into()),
            ("beta-proj".into(), BETA_TOKEN.into()),
        ],
        ..Default::default()
    });
    let port = serve_router(sim.router());
    let sim_url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET),
        ("SOPHIA_AZURE_CREDENTIAL", "managed_identity"),
        ("IDENTITY_ENDPOINT", msi.endpoint.as_str()),
        ("IDENTITY_HEADER", msi.header.as_str()),
        ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
        ("SOPHIA_LOG", "debug"),
    ];
    let server = Server::start(dir.path(), &env);
    let platform = admin_token_with(
        dir.path(),
        &[("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)],
        &["--role", "PLATFORM_ADMIN"],
    );
    Rig {
        server,
        sim,
        sim_url,
        platform,
        _msi: msi,
        _dir: dir,
    }
}

fn foundry_instance(sim_url: &str, company: &str, project: &str, identity: &str) -> Value {
    json!({"companyId": company, "agentType": "SOPHIA",
           "azureProjectEndpoint": format!("{sim_url}/api/projects/{project}"),
           "azureOpenaiDeployment": "gpt-4o",
           "settings": {"runtime": "foundry", "authMode": "managedIdentity",
                        "managedIdentityClientId": identity,
                        "systemPrompt": format!("You are {company}'s assistant.")}})
}

fn post(rig: &Rig, path: &str, bearer: &str, body: &Value) -> (u16, Value, String) {
    let res = Client::new()
        .post(rig.server.url(path))
        .bearer_auth(bearer)
        .json(body)
        .send()
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

fn patch(rig: &Rig, id: &str, body: &Value) -> Value {
    let res = Client::new()
        .patch(rig.server.url(&format!("/admin/agent-instances/{id}")))
        .bearer_auth(&rig.platform)
        .json(body)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().unwrap()
}

fn exchange(rig: &Rig, company: &str, key: &Value) -> String {
    let (status, body, text) = post(
        rig,
        "/agents/auth/token",
        "",
        &json!({"companyId": company, "agentAccessKey": key}),
    );
    assert_eq!(status, 200, "{text}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The `data:` payloads of an SSE body, parsed.
fn sse(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

#[test]
fn foundry_instances_provision_chat_and_stay_in_their_own_project() {
    let rig = rig();
    let sim = &rig.sim;

    // Provisioning on create: a vector store and a prompt agent in ACME's project, with
    // ACME's own token; the instance is ACTIVE with both ids recorded.
    let (status, acme, text) = post(
        &rig,
        "/admin/agent-instances",
        &rig.platform,
        &foundry_instance(&rig.sim_url, "acme", "acme-proj", ACME_ID),
    );
    assert_eq!(status, 201, "{text}");
    assert_eq!(acme["status"], "ACTIVE", "{acme}");
    assert_eq!(acme["azureAgentId"], "sophia-acme:1", "{acme}");
    let store = acme["azureVectorStoreId"].as_str().unwrap().to_owned();
    assert!(store.starts_with("vs_"), "{store}");
    let agents = sim.foundry_agents("acme-proj");
    let version = &agents["sophia-acme"][0];
    assert_eq!(version["definition"]["model"], "gpt-4o");
    assert_eq!(
        version["definition"]["instructions"],
        "You are acme's assistant."
    );
    assert_eq!(
        version["definition"]["tools"][0],
        json!({"type": "file_search", "vector_store_ids": [store]})
    );
    let id = acme["id"].as_str().unwrap().to_owned();

    // Idempotent: provisioning again validates and publishes nothing.
    let (status, again, text) = post(
        &rig,
        &format!("/admin/agent-instances/{id}/provision"),
        &rig.platform,
        &json!({}),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(again["azureAgentId"], "sophia-acme:1");
    assert_eq!(again["azureVectorStoreId"], store.as_str());
    assert_eq!(sim.foundry_agents("acme-proj")["sophia-acme"].len(), 1);
    assert_eq!(sim.foundry_vector_stores("acme-proj").len(), 1);

    // A model change publishes a new agent version over the same store.
    let changed = patch(&rig, &id, &json!({"azureOpenaiDeployment": "gpt-4o-mini"}));
    assert_eq!(changed["azureAgentId"], "sophia-acme:2", "{changed}");
    let versions = &sim.foundry_agents("acme-proj")["sophia-acme"];
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["definition"]["model"], "gpt-4o-mini");
    assert_eq!(sim.foundry_vector_stores("acme-proj").len(), 1);

    // A failure (an agent id that does not exist) leaves BETA TO_PROVISION with the reason,
    // audited, and removes the vector store the run had created.
    let mut beta_body = foundry_instance(&rig.sim_url, "beta", "beta-proj", BETA_ID);
    beta_body["azureAgentId"] = json!("missing-agent:4");
    let (status, beta, text) = post(&rig, "/admin/agent-instances", &rig.platform, &beta_body);
    assert_eq!(status, 201, "{text}");
    assert_eq!(beta["status"], "TO_PROVISION", "{beta}");
    let reason = beta["provisioningError"].as_str().unwrap();
    assert!(reason.contains("missing-agent:4"), "{reason}");
    assert!(sim.foundry_vector_stores("beta-proj").is_empty());
    let beta_id = beta["id"].as_str().unwrap().to_owned();
    let audit: Value = Client::new()
        .get(rig.server.url(&format!(
            "/admin/audit-logs?instanceId={beta_id}&action=agent_instance.provision"
        )))
        .bearer_auth(&rig.platform)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(audit["items"][0]["outcome"], "failure", "{audit}");
    // Its clients cannot chat yet: the instance is not configured.
    let beta_token = exchange(&rig, "beta", &beta["agentAccessKey"]);
    let (status, problem, _) = post(&rig, "/chat", &beta_token, &json!({"message": "hi"}));
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "instance_not_configured", "{problem}");
    // The explicit re-run answers the failure too.
    let (status, problem, _) = post(
        &rig,
        &format!("/admin/agent-instances/{beta_id}/provision"),
        &rig.platform,
        &json!({}),
    );
    assert_eq!(status, 409, "{problem}");
    // Clearing the bad id provisions BETA in its own project.
    let fixed = patch(&rig, &beta_id, &json!({"azureAgentId": null}));
    assert_eq!(fixed["status"], "ACTIVE", "{fixed}");
    assert_eq!(fixed["azureAgentId"], "sophia-beta:1");
    assert!(fixed.get("provisioningError").is_none(), "{fixed}");

    // Another company on BETA's identity (which could reach BETA's project) is refused.
    let (status, stray, _) = post(
        &rig,
        "/admin/agent-instances",
        &rig.platform,
        &foundry_instance(&rig.sim_url, "gamma", "acme-proj", BETA_ID),
    );
    // One identity per company: reusing BETA's identity is refused outright.
    assert_eq!(status, 409, "{stray}");

    // Chat: the agent's file search over ACME's store, cited.
    sim.foundry_add_file(
        "acme-proj",
        &store,
        "policies/refunds.md",
        "Refunds are paid within 14 days of a return. Shipping is free over 50 euros.",
    )
    .unwrap();
    let acme_token = exchange(&rig, "acme", &acme["agentAccessKey"]);
    let (status, first, text) = post(
        &rig,
        "/chat",
        &acme_token,
        &json!({"message": "When are refunds paid?"}),
    );
    assert_eq!(status, 200, "{text}");
    assert!(
        first["answer"].as_str().unwrap().contains("14 days"),
        "{first}"
    );
    assert_eq!(first["citations"][0]["documentId"], "policies/refunds.md");
    assert!(
        first["citations"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("14 days")
    );
    let responses: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.kind == "responses")
        .collect();
    let call = &responses.last().unwrap().body;
    assert_eq!(
        call["agent_reference"],
        json!({"type": "agent_reference", "name": "sophia-acme", "version": "2"})
    );
    let conversation = call["conversation"].as_str().unwrap().to_owned();
    assert!(call.get("model").is_none(), "{call}");
    // Diagnostics check the project, the agent's model and the vector store.
    let (status, report, text) = post(
        &rig,
        &format!("/admin/agent-instances/{id}/config-test"),
        &rig.platform,
        &json!({}),
    );
    assert_eq!(status, 200, "{text}");
    let named = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check: {report}"))
    };
    assert_eq!(named("foundryProject")["ok"], true, "{report}");
    assert_eq!(named("foundryAgent")["model"], "gpt-4o-mini", "{report}");
    assert_eq!(named("foundryAgent")["ok"], true, "{report}");
    let store_check = named("vectorStore");
    assert!(
        store_check["detail"].as_str().unwrap().contains("1 files"),
        "{store_check}"
    );
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "chatDeployment")
    );
    // The next turn continues the same Foundry conversation with only the new message.
    let conversation_id = first["conversationId"].as_str().unwrap();
    let (status, _, text) = post(
        &rig,
        "/chat",
        &acme_token,
        &json!({"message": "Is shipping free?", "conversationId": conversation_id}),
    );
    assert_eq!(status, 200, "{text}");
    let last = sim
        .requests()
        .into_iter()
        .rfind(|r| r.kind == "responses")
        .unwrap();
    assert_eq!(last.body["conversation"], conversation.as_str());
    assert_eq!(
        last.body["input"].as_array().unwrap().len(),
        1,
        "{}",
        last.body
    );
    assert_eq!(
        sim.foundry_conversations("acme-proj")[&conversation].len(),
        4
    );
    // BETA cannot continue ACME's conversation.
    let beta_token = exchange(&rig, "beta", &beta["agentAccessKey"]);
    let (status, _, _) = post(
        &rig,
        "/chat",
        &beta_token,
        &json!({"message": "hi", "conversationId": conversation_id}),
    );
    assert_eq!(status, 404);
    // BETA's own turn runs BETA's agent over BETA's store, in BETA's project.
    let beta_store = fixed["azureVectorStoreId"].as_str().unwrap();
    sim.foundry_add_file(
        "beta-proj",
        beta_store,
        "beta/shipping.md",
        "Beta ships parcels only on Mondays.",
    )
    .unwrap();
    let (status, beta_answer, text) = post(
        &rig,
        "/chat",
        &beta_token,
        &json!({"message": "When are parcels shipped?"}),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        beta_answer["citations"][0]["documentId"],
        "beta/shipping.md"
    );
    let beta_call = sim
        .requests()
        .into_iter()
        .rfind(|r| r.kind == "responses")
        .unwrap();
    assert_eq!(beta_call.deployment.as_deref(), Some("beta-proj"));
    assert_eq!(beta_call.body["agent_reference"]["name"], "sophia-beta");
    // ACME's agent never sees BETA's file.
    let (_, acme_answer, _) = post(
        &rig,
        "/chat",
        &acme_token,
        &json!({"message": "When are parcels shipped?"}),
    );
    assert!(
        !acme_answer.to_string().contains("Mondays"),
        "{acme_answer}"
    );

    // Streamed on /chat: deltas, then done with the citations.
    let res = Client::new()
        .post(rig.server.url("/chat"))
        .bearer_auth(&acme_token)
        .json(&json!({"message": "When are refunds paid?", "stream": true}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let events = sse(&res.text().unwrap());
    let text: String = events
        .iter()
        .filter_map(|e| e["content"].as_str())
        .collect();
    assert!(text.contains("14 days"), "{events:?}");
    let done = events
        .iter()
        .find(|e| e.get("citations").is_some())
        .unwrap();
    assert_eq!(done["citations"][0]["documentId"], "policies/refunds.md");

    // `/v1/chat/completions`, whole and streamed, through the same agent.
    let (status, completion, text) = post(
        &rig,
        "/v1/chat/completions",
        &acme_token,
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "When are refunds paid?"}]}),
    );
    assert_eq!(status, 200, "{text}");
    assert!(
        completion["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("14 days")
    );
    let res = Client::new()
        .post(rig.server.url("/v1/chat/completions"))
        .bearer_auth(&acme_token)
        .json(&json!({"model": "gpt-4o", "stream": true,
                      "messages": [{"role": "user", "content": "When are refunds paid?"}]}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let chunks = sse(&res.text().unwrap());
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(streamed.contains("14 days"), "{chunks:?}");

    // `/v1/responses`, stored: the Foundry conversation is kept per response chain.
    let (status, r1, text) = post(
        &rig,
        "/v1/responses",
        &acme_token,
        &json!({"model": "gpt-4o", "input": "When are refunds paid?"}),
    );
    assert_eq!(status, 200, "{text}");
    let message = r1["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "message")
        .unwrap();
    assert!(
        message["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("14 days")
    );
    assert_eq!(
        message["content"][0]["annotations"][0]["filename"],
        "policies/refunds.md"
    );
    let first_call = sim
        .requests()
        .into_iter()
        .rfind(|r| r.kind == "responses")
        .unwrap();
    let (status, _, text) = post(
        &rig,
        "/v1/responses",
        &acme_token,
        &json!({"model": "gpt-4o", "input": "Is shipping free?", "previous_response_id": r1["id"]}),
    );
    assert_eq!(status, 200, "{text}");
    let next_call = sim
        .requests()
        .into_iter()
        .rfind(|r| r.kind == "responses")
        .unwrap();
    assert_eq!(
        next_call.body["conversation"],
        first_call.body["conversation"]
    );
    assert_eq!(next_call.body["input"].as_array().unwrap().len(), 1);

    // Foundry's 429 and 500 map as model failures do.
    sim.push_fault(Fault {
        deployment: Some("acme-proj".into()),
        status: Some(429),
        retry_after: Some(30),
        ..Default::default()
    });
    let res = Client::new()
        .post(rig.server.url("/chat"))
        .bearer_auth(&acme_token)
        .json(&json!({"message": "hi", "conversationId": conversation_id}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    sim.push_fault(Fault {
        deployment: Some("acme-proj".into()),
        status: Some(500),
        times: Some(5),
        ..Default::default()
    });
    let (status, problem, _) = post(
        &rig,
        "/chat",
        &acme_token,
        &json!({"message": "hi", "conversationId": conversation_id}),
    );
    assert_eq!(status, 502, "{problem}");
    assert_eq!(problem["code"], "upstream_unavailable", "{problem}");

    // Every Foundry call went to the caller's own project with its own token.
    for r in sim.requests().iter().filter(|r| r.route == "foundry") {
        let expected = match r.deployment.as_deref() {
            Some("acme-proj") => ACME_TOKEN,
            Some("beta-proj") => BETA_TOKEN,
            other => panic!("unexpected project {other:?}"),
        };
        assert_eq!(r.key.as_deref(), Some(expected), "{:?}", r.kind);
    }
    assert_eq!(
        sim.foundry_conversations("beta-proj").len(),
        1,
        "BETA's one chat"
    );

    // No token in the logs.
    let (_, logs) = rig.server.stop();
    for secret in [ACME_TOKEN, BETA_TOKEN] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}

#[test]
fn a_foundry_instance_without_its_company_identity_waits_to_be_provisioned() {
    let rig = rig();
    let mut body = foundry_instance(&rig.sim_url, "delta", "acme-proj", ACME_ID);
    body["settings"] = json!({"runtime": "foundry"});
    body["credentials"] = json!({"azureOpenaiKey": "delta-key-1"});
    let (status, created, text) = post(&rig, "/admin/agent-instances", &rig.platform, &body);
    assert_eq!(status, 201, "{text}");
    assert_eq!(created["status"], "TO_PROVISION");
    let reason = created["provisioningError"].as_str().unwrap();
    assert!(reason.contains("managed identity"), "{reason}");
    // Nothing reached the project.
    assert!(rig.sim.requests().iter().all(|r| r.route != "foundry"));
    let token = exchange(&rig, "delta", &created["agentAccessKey"]);
    let (status, problem, _) = post(&rig, "/chat", &token, &json!({"message": "hi"}));
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("managed identity"),
        "{problem}"
    );
    // A company ADMIN cannot point it elsewhere or pick the agent.
    let admin = admin_token_with(
        rig._dir.path(),
        &[("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)],
        &["--role", "ADMIN", "--company", "delta"],
    );
    let id = created["id"].as_str().unwrap();
    let res = Client::new()
        .patch(rig.server.url(&format!("/admin/agent-instances/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"settings": {"authMode": "managedIdentity", "managedIdentityClientId": ACME_ID}}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 403);
}

fn refresh(rig: &Rig, token: &str) -> Value {
    let (status, job, text) = post(rig, "/refresh", token, &json!({}));
    assert_eq!(status, 202, "{text}");
    let id = job["jobId"].as_str().unwrap().to_owned();
    for _ in 0..400 {
        let job: Value = Client::new()
            .get(rig.server.url(&format!("/refresh/{id}")))
            .bearer_auth(token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        if matches!(job["status"].as_str(), Some("succeeded" | "failed")) {
            return job;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("refresh {id} did not finish");
}

#[test]
fn refresh_syncs_the_knowledge_folder_into_the_agents_vector_store() {
    let rig = rig();
    let (status, acme, text) = post(
        &rig,
        "/admin/agent-instances",
        &rig.platform,
        &foundry_instance(&rig.sim_url, "acme", "acme-proj", ACME_ID),
    );
    assert_eq!(status, 201, "{text}");
    let store = acme["azureVectorStoreId"].as_str().unwrap().to_owned();
    let token = exchange(&rig, "acme", &acme["agentAccessKey"]);
    let folder = rig._dir.path().join("knowledge").join("acme");
    std::fs::create_dir_all(folder.join("policies")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(folder.join(name), text).unwrap();
    write(
        "policies/refunds.md",
        "Refunds are paid within 14 days of a return.",
    );
    write("policies/shipping.md", "Shipping is free over 50 euros.");
    write("holidays.md", "The office closes on the first of May.");

    let job = refresh(&rig, &token);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["counts"]["indexed"], 3, "{job}");
    let attached = |rig: &Rig| {
        let mut names = rig.sim.foundry_vector_stores("acme-proj")[&store].1.clone();
        names.sort();
        names
    };
    assert_eq!(
        attached(&rig),
        ["holidays.md", "policies/refunds.md", "policies/shipping.md"]
    );

    // One unchanged, one changed, one gone, one new.
    write("policies/shipping.md", "Shipping is free over 30 euros.");
    std::fs::remove_file(folder.join("holidays.md")).unwrap();
    write("warranty.md", "The warranty lasts two years from delivery.");
    let job = refresh(&rig, &token);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["counts"]["unchanged"], 1, "{job}");
    assert_eq!(job["counts"]["indexed"], 2, "{job}");
    assert_eq!(job["counts"]["deleted"], 1, "{job}");
    assert_eq!(
        attached(&rig),
        ["policies/refunds.md", "policies/shipping.md", "warranty.md"]
    );
    // Replaced and removed files are deleted from the project, not only detached.
    assert_eq!(
        rig.sim.foundry_files("acme-proj"),
        ["policies/refunds.md", "policies/shipping.md", "warranty.md"]
    );
    // The agent now answers from the new file, cited by its document id.
    let (status, answer, text) = post(
        &rig,
        "/chat",
        &token,
        &json!({"message": "How long does the warranty last?"}),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        answer["citations"][0]["documentId"], "warranty.md",
        "{answer}"
    );

    // A failed upload is reported for its document; the old file keeps serving.
    write(
        "policies/refunds.md",
        "Refunds are paid within 10 days of a return.",
    );
    rig.sim.push_fault(Fault {
        deployment: Some("acme-proj".into()),
        status: Some(500),
        ..Default::default()
    });
    let job = refresh(&rig, &token);
    assert_eq!(job["counts"]["failed"], 1, "{job}");
    assert_eq!(job["counts"]["unchanged"], 2, "{job}");
    assert!(job.to_string().contains("policies/refunds.md"), "{job}");
    assert_eq!(
        attached(&rig),
        ["policies/refunds.md", "policies/shipping.md", "warranty.md"]
    );
    // The next refresh uploads it.
    let job = refresh(&rig, &token);
    assert_eq!(job["counts"]["indexed"], 1, "{job}");
    assert_eq!(rig.sim.foundry_files("acme-proj").len(), 3);

    // BETA's refresh reaches BETA's project only, and ACME's files stay ACME's.
    let (status, beta, text) = post(
        &rig,
        "/admin/agent-instances",
        &rig.platform,
        &foundry_instance(&rig.sim_url, "beta", "beta-proj", BETA_ID),
    );
    assert_eq!(status, 201, "{text}");
    let beta_token = exchange(&rig, "beta", &beta["agentAccessKey"]);
    let beta_folder = rig._dir.path().join("knowledge").join("beta");
    std::fs::create_dir_all(&beta_folder).unwrap();
    std::fs::write(beta_folder.join("beta-only.md"), "Beta ships on Mondays.").unwrap();
    let job = refresh(&rig, &beta_token);
    assert_eq!(job["counts"]["indexed"], 1, "{job}");
    assert_eq!(rig.sim.foundry_files("beta-proj"), ["beta-only.md"]);
    assert_eq!(
        rig.sim.foundry_files("acme-proj"),
        ["policies/refunds.md", "policies/shipping.md", "warranty.md"]
    );
    for r in rig.sim.requests().iter().filter(|r| r.route == "foundry") {
        let expected = if r.deployment.as_deref() == Some("beta-proj") {
            BETA_TOKEN
        } else {
            ACME_TOKEN
        };
        assert_eq!(r.key.as_deref(), Some(expected), "{}", r.kind);
    }
    let (_, logs) = rig.server.stop();
    assert!(!logs.contains(ACME_TOKEN));
}
