//! The audit trail records every admin change and every authentication, without secrets.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{assert_problem, spawn_app};

fn actions(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn admin_changes_and_authentications_are_audited() {
    let app = spawn_app().await;
    let created = app
        .create_instance_with(
            "acme",
            json!({"credentials": {"azureOpenaiKey": "cred-value-1"}}),
        )
        .await;
    let token = app.platform_token();
    let path = format!("/admin/agent-instances/{}", created.id);
    app.service_token("acme", &created.key).await;
    app.exchange("acme", "sph_wrongwrongwrongwrongwrongwrongwrongw")
        .await;
    app.request(
        Method::PATCH,
        &path,
        Some(&token),
        Some(json!({"model": "gpt-4o-mini", "credentials": {"azureOpenaiKey": "cred-value-2"}})),
    )
    .await;
    app.request(
        Method::POST,
        &format!("{path}/rotate-key"),
        Some(&token),
        None,
    )
    .await;
    app.request(Method::DELETE, &path, Some(&token), None).await;

    let entries = app
        .audit(&format!("companyId=acme&instanceId={}", created.id))
        .await;
    assert_eq!(
        actions(&entries),
        [
            "agent_instance.disable",
            "agent_instance.rotate_key",
            "agent_instance.update",
            "agent.auth.failure",
            "agent.auth.success",
            "agent_instance.create"
        ],
        "newest first"
    );
    for e in &entries {
        assert_eq!(e["tenantId"], "acme");
        assert!(
            e["requestId"]
                .as_str()
                .is_some_and(|r| !r.is_empty() && r != "-"),
            "{e}"
        );
        assert_eq!(e["clientAddress"], "127.0.0.1");
        assert!(e["time"].is_string());
    }
    let by = |a: &str| entries.iter().find(|e| e["action"] == a).unwrap().clone();
    assert!(
        by("agent_instance.create")["actor"]
            .as_str()
            .unwrap()
            .starts_with("admin:")
    );
    assert_eq!(by("agent.auth.success")["actor"], "client:acme");
    assert_eq!(by("agent.auth.failure")["outcome"], "failure");
    assert_eq!(by("agent.auth.failure")["details"]["reason"], "wrong_key");
    assert_eq!(
        by("agent_instance.update")["details"]["fields"],
        json!(["model", "credentials"])
    );
    assert_eq!(
        by("agent_instance.update")["details"]["credentials"],
        json!(["azureOpenaiKey"])
    );
    assert_eq!(by("agent_instance.rotate_key")["details"]["keyVersion"], 2);

    let text = serde_json::to_string(&entries).unwrap();
    for secret in ["cred-value-1", "cred-value-2", created.key.as_str()] {
        assert!(!text.contains(secret), "{secret} in the audit trail");
    }

    // Filter by action.
    let only = app.audit("action=agent.auth.success").await;
    assert_eq!(actions(&only), ["agent.auth.success"]);
    // Made-up company ids write nothing into partitions of their own: they are counted at
    // platform level (health) instead.
    for i in 0..5 {
        app.exchange(
            &format!("ghost-co-{i}"),
            "sph_wrongwrongwrongwrongwrongwrongwrongw",
        )
        .await;
    }
    app.exchange("bad id!", "sph_x").await;
    for i in 0..5 {
        assert!(
            app.audit(&format!("companyId=ghost-co-{i}"))
                .await
                .is_empty()
        );
    }
    let health: Value = app
        .request(reqwest::Method::GET, "/health", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(health["auth"]["unknownCompanyFailures"], 6);
    // A company that exists but has no live instance still gets its failures audited.
    let resp = app
        .request(
            reqwest::Method::DELETE,
            &format!("/admin/agent-instances/{}", created.id),
            Some(&app.platform_token()),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    app.exchange("acme", &created.key).await;
    let failures = app.audit("companyId=acme&action=agent.auth.failure").await;
    assert_eq!(failures[0]["details"]["reason"], "no_live_instance");
}

#[tokio::test]
async fn audit_listing_is_scoped_and_validated() {
    let app = spawn_app().await;
    app.create_instance("acme").await;
    app.create_instance("beta").await;
    let resp = app.get("/admin/audit-logs", &app.admin_token("acme")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(
        items.iter().all(|e| e["tenantId"] == "acme"),
        "an ADMIN sees only its company"
    );
    assert_problem(
        app.get("/admin/audit-logs?companyId=beta", &app.admin_token("acme"))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    for bad in [
        "action=DROP%20TABLE",
        "limit=0",
        "instanceId=nope",
        "continuationToken=%%%",
    ] {
        let resp = app
            .get(&format!("/admin/audit-logs?{bad}"), &app.platform_token())
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}
