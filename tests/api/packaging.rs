//! The Functions packaging and the OpenAPI document agree with the router.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::support::spawn_app;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Routes the host itself uses and that need no function: `GET /` is its readiness probe.
/// `POST /refresh-worker` is how the host invokes the queue-triggered `refresh-worker`.
const HOST_ONLY: &[(&str, &str)] = &[("GET", "/"), ("POST", "/refresh-worker")];

fn router_routes() -> BTreeSet<(String, String)> {
    sophia::router::routes()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_owned(), p.to_owned()))
        .collect()
}

/// (method, path) pairs declared by `functions/*/function.json` HTTP triggers.
fn function_routes() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(format!("{ROOT}/functions")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "bad function name {name}"
        );
        assert!(
            names.insert(name.to_ascii_lowercase()),
            "duplicate function {name}"
        );
        let text = std::fs::read_to_string(dir.join("function.json")).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for binding in json["bindings"].as_array().unwrap() {
            if binding["type"] == "httpTrigger" {
                assert_eq!(binding["direction"], "in");
                assert_eq!(
                    binding["authLevel"], "anonymous",
                    "{name}: SOPHIA authenticates itself"
                );
                let route = binding["route"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: no route"));
                for method in binding["methods"].as_array().unwrap() {
                    out.insert((
                        method.as_str().unwrap().to_ascii_uppercase(),
                        format!("/{route}"),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn host_json_declares_the_custom_handler() {
    let host: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{ROOT}/host.json")).unwrap())
            .unwrap();
    assert_eq!(host["version"], "2.0");
    assert_eq!(host["customHandler"]["enableProxyingHttpRequest"], true);
    assert_eq!(host["extensions"]["http"]["routePrefix"], "");
    assert!(
        host["customHandler"]["description"]["defaultExecutablePath"]
            .as_str()
            .unwrap()
            .contains("sophia")
    );
    assert!(
        host["extensionBundle"]["id"]
            .as_str()
            .unwrap()
            .starts_with("Microsoft.Azure.Functions.ExtensionBundle")
    );
}

#[test]
fn every_router_route_has_a_function_and_vice_versa() {
    let functions = function_routes();
    let mut router = router_routes();
    for (m, p) in HOST_ONLY {
        router.remove(&((*m).to_owned(), (*p).to_owned()));
    }
    let missing: Vec<_> = router.difference(&functions).collect();
    assert!(
        missing.is_empty(),
        "routes without a function.json: {missing:?}"
    );
    let extra: Vec<_> = functions.difference(&router).collect();
    assert!(
        extra.is_empty(),
        "function.json routes the router does not serve: {extra:?}"
    );
}

#[test]
fn the_refresh_worker_is_a_queue_trigger() {
    let text =
        std::fs::read_to_string(format!("{ROOT}/functions/refresh-worker/function.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let binding = &json["bindings"][0];
    assert_eq!(binding["type"], "queueTrigger");
    assert_eq!(binding["direction"], "in");
    assert_eq!(binding["name"], "msg");
    assert!(binding["queueName"].is_string() && binding["connection"].is_string());
    let host: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{ROOT}/host.json")).unwrap())
            .unwrap();
    assert_eq!(host["extensions"]["queues"]["messageEncoding"], "base64");
}

#[tokio::test]
async fn every_declared_function_route_is_served() {
    let app = spawn_app().await;
    for (method, path) in function_routes() {
        let concrete = path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{jobId}", &uuid::Uuid::new_v4().to_string());
        let resp = app
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete,
                None,
                None,
            )
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(body["code"], "method_not_allowed", "{method} {path}");
        assert!(
            !(status == 404 && body["detail"] == "route not found"),
            "{method} {path} not routed"
        );
    }
}

fn spec() -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/openapi/openapi.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

#[test]
fn openapi_documents_every_route_and_nothing_else() {
    let spec = spec();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if let Some(op) = item.get(method) {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
                assert!(
                    op["responses"].is_object(),
                    "{method} {path} has no responses"
                );
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path} has no operationId"
                );
            }
        }
    }
    let router = router_routes();
    let missing: Vec<_> = router.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.yaml: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&router).collect();
    assert!(
        extra.is_empty(),
        "openapi.yaml documents routes that do not exist: {extra:?}"
    );
}

#[test]
fn openapi_security_matches_the_public_allow_list() {
    let spec = spec();
    let public: BTreeSet<(String, String)> = sophia::router::PUBLIC_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            let Some(op) = item.get(method) else { continue };
            let open = op
                .get("security")
                .is_some_and(|s| s.as_array().is_some_and(|a| a.is_empty()));
            let listed = public.contains(&(method.to_ascii_uppercase(), path.clone()));
            assert_eq!(
                open, listed,
                "{method} {path}: security in the spec vs PUBLIC_ROUTES"
            );
        }
    }
    let schemes = spec["components"]["securitySchemes"].as_object().unwrap();
    assert!(schemes.contains_key("adminBearer") && schemes.contains_key("serviceBearer"));
}

#[tokio::test]
async fn every_non_public_route_requires_credentials() {
    let app = spawn_app().await;
    let public: BTreeSet<(String, String)> = sophia::router::PUBLIC_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    for (method, path) in router_routes() {
        if public.contains(&(method.clone(), path.clone())) {
            continue;
        }
        let concrete = path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{jobId}", &uuid::Uuid::new_v4().to_string());
        let resp = app
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete,
                None,
                Some(serde_json::json!({})),
            )
            .await;
        assert_eq!(
            resp.status(),
            401,
            "{method} {path} answered without credentials"
        );
    }
}

#[tokio::test]
async fn the_spec_is_served() {
    let app = spawn_app().await;
    let resp = app.request(Method::GET, "/openapi.yaml", None, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/yaml");
    let served = resp.text().await.unwrap();
    assert_eq!(
        served,
        std::fs::read_to_string(format!("{ROOT}/openapi/openapi.yaml")).unwrap()
    );
}
