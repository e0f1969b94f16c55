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
        .map(|(m, p)| (m.as_str().to_owned(), p))
        .collect()
}

/// The router's routes in their canonical spelling (without the `/manage/*` aliases).
fn canonical_routes() -> BTreeSet<(String, String)> {
    router_routes()
        .into_iter()
        .filter(|(_, p)| !p.starts_with(sophia::router::FUNCTIONS_ADMIN_PREFIX))
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

/// The Azure Functions host's rules for `function.json`, which nothing here can run: it
/// refuses HTTP routes that start with `admin` or `runtime` ("The specified route conflicts
/// with one or more built in routes", whatever the `routePrefix`: Azure/azure-functions-host
/// #1781, #7634, #6990), function names must be valid and unique (case-insensitive), and each
/// route must be one the binary serves, with the same parameters and methods.
#[test]
fn function_json_obeys_the_functions_host_rules() {
    let served = router_routes();
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(format!("{ROOT}/functions")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let valid = name.len() <= 128
            && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        assert!(valid, "invalid function name {name}");
        assert!(
            names.insert(name.to_ascii_lowercase()),
            "duplicate function {name}"
        );
        assert!(
            !name.to_ascii_lowercase().starts_with("admin"),
            "{name}: function names do not start with 'admin'"
        );
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("function.json")).unwrap())
                .unwrap();
        for binding in json["bindings"].as_array().unwrap() {
            if binding["type"] != "httpTrigger" {
                continue;
            }
            let route = binding["route"].as_str().unwrap();
            let lower = route.trim_start_matches('/').to_ascii_lowercase();
            for reserved in ["admin", "runtime"] {
                assert!(
                    !lower.starts_with(reserved),
                    "{name}: route '{route}' starts with the reserved '{reserved}'"
                );
            }
            let params: Vec<&str> = route.split('/').filter(|s| s.starts_with('{')).collect();
            for p in &params {
                let inner = p.trim_start_matches('{').trim_end_matches('}');
                assert!(
                    !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_alphanumeric()),
                    "{name}: route parameter {p} (no constraints or catch-alls: the router has none)"
                );
            }
            let methods = binding["methods"].as_array().unwrap();
            assert!(!methods.is_empty(), "{name}: no methods");
            for method in methods {
                let method = method.as_str().unwrap();
                assert_eq!(method, method.to_ascii_lowercase(), "{name}: {method}");
                assert!(
                    served.contains(&(method.to_ascii_uppercase(), format!("/{route}"))),
                    "{name}: {method} /{route} is not a route of the binary (same template and parameters)"
                );
            }
        }
    }
}

/// The binary serves the admin API under both spellings, with the same handlers.
#[tokio::test]
async fn the_admin_api_answers_under_manage_too() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let token = app.platform_token();
    for prefix in ["/admin", "/manage"] {
        let resp = app
            .get(&format!("{prefix}/agent-instances/{}", created.id), &token)
            .await;
        assert_eq!(resp.status(), 200, "{prefix}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["id"], created.id);
        let resp = app
            .get(
                &format!("{prefix}/agent-instances/{}", created.id),
                &app.admin_token("beta"),
            )
            .await;
        assert_eq!(
            resp.status(),
            404,
            "{prefix}: isolation holds under both spellings"
        );
    }
    let resp = app
        .request(Method::GET, "/manage/agent-instances", None, None)
        .await;
    assert_eq!(resp.status(), 401);
    // A create answers with a Location in the spelling it was called with.
    let resp = app
        .request(
            Method::POST,
            "/manage/agent-instances",
            Some(&token),
            Some(serde_json::json!({"companyId": "beta", "agentType": "SOPHIA"})),
        )
        .await;
    assert_eq!(resp.status(), 201);
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/manage/agent-instances/")
    );
}

#[test]
fn every_router_route_has_a_function_and_vice_versa() {
    let functions = function_routes();
    let mut router = router_routes();
    for (m, p) in HOST_ONLY {
        router.remove(&((*m).to_owned(), (*p).to_owned()));
    }
    // The `/admin/*` spelling is for APIM and hosting outside Functions; its functions route
    // the `/manage/*` alias.
    router.retain(|(_, p)| !p.starts_with(sophia::router::ADMIN_PREFIX));
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
    // The `/manage/*` aliases are documented once, as the spec's `x-functions-admin-prefix`.
    assert_eq!(
        spec["x-functions-admin-prefix"],
        sophia::router::FUNCTIONS_ADMIN_PREFIX
    );
    let router = canonical_routes();
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
