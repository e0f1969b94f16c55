//! `infra/` (Bicep) agrees with the code: the Function App's app settings start SOPHIA in
//! Azure mode, every name is one SOPHIA or the Functions host reads, the Cosmos DB containers
//! are the store's, APIM publishes exactly the router's routes, and the workbook runs the
//! README's queries. The Bicep compiler cannot run here; `scripts/infra-check.sh` parses every
//! file (pycep-parser), checks module wiring and runs checkov.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `{ … }` block that opens on the first line containing `marker`.
fn block<'a>(text: &'a str, marker: &str) -> &'a str {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in the Bicep"));
    let open = start + text[start..].find('{').unwrap();
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open..=open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced block after `{marker}`")
}

/// `key: value` lines directly inside an object block (one entry per line).
fn entries(block: &str) -> Vec<(String, String)> {
    block
        .lines()
        .skip(1)
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with("//") {
                return None;
            }
            let (k, v) = line.split_once(": ")?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// A Bicep string literal's value, if `expr` is one.
fn literal(expr: &str) -> Option<String> {
    let inner = expr.strip_prefix('\'')?.strip_suffix('\'')?;
    (!inner.contains("${")).then(|| inner.replace("\\'", "'"))
}

/// `param name type = 'default'` defaults of a Bicep file.
fn param_defaults(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("param ")?;
            let (decl, default) = rest.split_once(" = ")?;
            let name = decl.split_whitespace().next()?;
            Some((name.to_owned(), default.trim().to_owned()))
        })
        .collect()
}

/// What the deployment would hand SOPHIA, for parameters the operator must give.
fn sample(ident: &str) -> Option<&'static str> {
    Some(match ident {
        "storageAccountName" => "stsophiaabc123",
        "sophiaClientId" => "6f1d7f3e-0000-4000-8000-00000000abcd",
        "appInsightsConnectionString" => {
            "InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"
        }
        "cosmosEndpoint" => "https://cosmos-sophia-abc.documents.azure.com:443/",
        "cosmosDatabase" => "sophia",
        "keyVaultUri" => "https://kv-sophia-abc.vault.azure.net/",
        "refreshQueueUrl" => "https://stsophiaabc123.queue.core.windows.net/sophia-refresh",
        "refreshQueueName" => "sophia-refresh",
        "queueEndpoint" => "https://stsophiaabc123.queue.core.windows.net/",
        "publicUrl" => "https://func-sophia-abc.azurewebsites.net",
        "adminJwksUrl" => "https://login.microsoftonline.com/contoso/discovery/v2.0/keys",
        "adminIssuer" => "https://login.microsoftonline.com/contoso/v2.0",
        "adminAudience" => "api://sophia-admin",
        _ => return None,
    })
}

/// The Function App's app settings as SOPHIA would see them.
fn app_settings() -> BTreeMap<String, String> {
    let text = read("infra/modules/function-app.bicep");
    let defaults = param_defaults(&text);
    let mut out = BTreeMap::new();
    for (name, expr) in entries(block(&text, "var appSettings = {")) {
        let value = if let Some(v) = literal(&expr) {
            v
        } else if let Some(arg) = expr
            .strip_prefix("string(")
            .and_then(|e| e.strip_suffix(')'))
        {
            defaults
                .get(arg)
                .unwrap_or_else(|| panic!("{name}: string({arg}) has no default"))
                .clone()
        } else if let Some(v) = defaults.get(&expr).and_then(|d| literal(d)) {
            v
        } else {
            sample(&expr)
                .unwrap_or_else(|| panic!("{name}: no sample value for `{expr}`: add one"))
                .to_owned()
        };
        assert!(out.insert(name.clone(), value).is_none(), "{name} twice");
    }
    out
}

/// What the Functions host adds on a Function App.
fn with_host(mut settings: BTreeMap<String, String>) -> BTreeMap<String, String> {
    settings.insert("FUNCTIONS_CUSTOMHANDLER_PORT".into(), "40123".into());
    settings.insert("WEBSITE_SITE_NAME".into(), "func-sophia-abc".into());
    settings
}

fn settings_from(
    map: &BTreeMap<String, String>,
) -> Result<sophia::config::Settings, sophia::config::ConfigError> {
    sophia::config::Settings::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn the_app_settings_start_sophia_in_azure_mode() {
    let deployed = with_host(app_settings());
    let settings = settings_from(&deployed).expect("the Bicep app settings start SOPHIA");
    assert!(matches!(
        settings.store,
        sophia::config::StoreBackend::Cosmos { .. }
    ));
    assert_eq!(settings.secrets, sophia::config::SecretsBackend::KeyVault);
    assert!(settings.refresh_queue_url.is_some(), "the refresh queue");
    assert!(
        settings.telemetry.connection_string.is_some(),
        "App Insights"
    );
    assert!(settings.trust_forwarded);
    assert_eq!(
        settings.azure_credential,
        Some(sophia::azure_auth::CredentialKind::ManagedIdentity)
    );
    assert_eq!(
        settings.azure_client_id.as_deref(),
        Some(sample("sophiaClientId").unwrap())
    );
    // Admin tokens come from the JWKS: no shared secret is needed, none is deployed.
    assert!(
        sophia::startup::admin_secret(&settings)
            .expect("admin auth")
            .is_none()
    );
    assert!(!deployed.contains_key("SOPHIA_ADMIN_JWT_SECRET"));
    assert!(!deployed.contains_key("SOPHIA_COSMOS_KEY"));
    assert!(!deployed.contains_key("SOPHIA_MASTER_KEY"));

    // The test can fail: each of these is what Azure mode requires, and without it SOPHIA
    // refuses to start.
    for required in [
        "SOPHIA_PUBLIC_URL",
        "SOPHIA_COSMOS_ENDPOINT",
        "SOPHIA_KEYVAULT_URL",
        "SOPHIA_REFRESH_QUEUE_URL",
        "SOPHIA_ADMIN_ISSUER",
        "SOPHIA_ADMIN_AUDIENCE",
    ] {
        let mut without = deployed.clone();
        without.remove(required);
        assert!(
            settings_from(&without).is_err(),
            "SOPHIA starts without {required}"
        );
    }
    let mut without_jwks = deployed.clone();
    without_jwks.remove("SOPHIA_ADMIN_JWKS_URL");
    let settings = settings_from(&without_jwks).unwrap();
    assert!(sophia::startup::admin_secret(&settings).is_err());
}

#[test]
fn every_app_setting_is_one_sophia_or_the_host_reads() {
    let readme = read("README.md");
    let config = readme
        .split("## Configuration")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let settings = app_settings();
    for name in settings.keys() {
        let base = name.split("__").next().unwrap();
        match base {
            // Identity-based connections read by the Functions host (AzureWebJobsStorage, and
            // the refresh-worker trigger's `connection`).
            "AzureWebJobsStorage" => assert!(
                ["accountName", "credential", "clientId"]
                    .contains(&name.split("__").nth(1).unwrap_or("")),
                "{name}"
            ),
            _ => assert!(
                config.contains(&format!("`{base}`")),
                "{name} is not in the README's configuration table (a typo SOPHIA would ignore?)"
            ),
        }
    }
    // Flex Consumption refuses these as app settings (the runtime is functionAppConfig's).
    assert!(!settings.contains_key("FUNCTIONS_WORKER_RUNTIME"));
    assert!(!settings.contains_key("FUNCTIONS_EXTENSION_VERSION"));
    // No account key or secret anywhere in the templates.
    for file in bicep_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for banned in [
            "listKeys(",
            "AccountKey=",
            "@secure()",
            "SharedAccessSignature",
        ] {
            assert!(!text.contains(banned), "{}: {banned}", file.display());
        }
    }
    // The default upstream allow-list is the binary's.
    let defaults = param_defaults(&read("infra/modules/function-app.bicep"));
    assert_eq!(
        literal(&defaults["upstreamAllowedHosts"]).unwrap(),
        sophia::upstream::policy::DEFAULT_ALLOWED_HOSTS
    );
}

fn bicep_files() -> Vec<std::path::PathBuf> {
    let mut out = vec![std::path::PathBuf::from(format!("{ROOT}/infra/main.bicep"))];
    for entry in std::fs::read_dir(format!("{ROOT}/infra/modules")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bicep") {
            out.push(path);
        }
    }
    out
}

#[test]
fn every_function_binding_setting_is_deployed() {
    let settings = app_settings();
    for entry in std::fs::read_dir(format!("{ROOT}/functions")).unwrap() {
        let dir = entry.unwrap().path();
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("function.json")).unwrap())
                .unwrap();
        for binding in json["bindings"].as_array().unwrap() {
            for (key, value) in binding.as_object().unwrap() {
                let Some(s) = value.as_str() else { continue };
                // %NAME% is an app setting the host substitutes.
                if let Some(name) = s.strip_prefix('%').and_then(|s| s.strip_suffix('%')) {
                    assert!(settings.contains_key(name), "{}: %{name}%", dir.display());
                }
                // A connection is NAME or NAME__<property> (identity-based).
                if key == "connection" {
                    let prefix = format!("{s}__");
                    assert!(
                        settings.contains_key(s) || settings.keys().any(|k| k.starts_with(&prefix)),
                        "{}: connection {s}",
                        dir.display()
                    );
                    if !settings.contains_key(s) {
                        assert!(settings.contains_key(&format!("{s}__queueServiceUri")));
                        assert_eq!(settings[&format!("{s}__credential")], "managedidentity");
                    }
                }
            }
        }
    }
    // The queue the binary writes to is the queue the trigger reads.
    assert!(
        settings["SOPHIA_REFRESH_QUEUE_URL"]
            .ends_with(&format!("/{}", settings["SOPHIA_REFRESH_QUEUE_NAME"]))
    );
    assert!(
        settings["SOPHIA_REFRESH_QUEUE_URL"]
            .starts_with(&settings["SOPHIA_REFRESH_QUEUE_CONNECTION__queueServiceUri"])
    );
}

#[test]
fn every_cosmos_container_is_declared_with_the_tenant_partition() {
    let text = read("infra/modules/cosmos.bicep");
    assert!(
        block(&text, "var partitionKey = {").contains("'/tenantId'"),
        "the shared partition key is /tenantId"
    );
    assert_eq!(
        sophia::store::cosmos::PARTITION_KEY,
        "/tenantId",
        "DESIGN.md: every document is partitioned by tenantId"
    );
    let mut declared = BTreeSet::new();
    for (at, _) in text.match_indices("/sqlDatabases/containers@") {
        let decl = &text[text[..at].rfind("resource ").unwrap()..];
        let body = block(decl, "=");
        let id = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("id: ").and_then(literal))
            .expect("container id");
        assert!(
            body.contains("partitionKey: partitionKey"),
            "{id}: not partitioned by the shared /tenantId key"
        );
        declared.insert((id, body.to_owned()));
    }
    let definitions = sophia::store::cosmos::container_definitions(365);
    let names: BTreeSet<String> = definitions.iter().map(|d| d.id.to_string()).collect();
    assert_eq!(
        names,
        declared.iter().map(|(id, _)| id.clone()).collect(),
        "the containers in infra/modules/cosmos.bicep vs the store's"
    );
    let ttl = param_defaults(&text)["auditTtlDays"].clone();
    assert_eq!(
        ttl, "365",
        "the audit TTL default is SOPHIA_AUDIT_TTL_DAYS's"
    );
    for definition in definitions {
        let json = serde_json::to_value(&definition).unwrap();
        let id = definition.id.to_string();
        let body = &declared.iter().find(|(d, _)| *d == id).unwrap().1;
        assert_eq!(
            json["partitionKey"]["paths"],
            serde_json::json!(["/tenantId"])
        );
        if let Some(keys) = json["uniqueKeyPolicy"]["uniqueKeys"].as_array() {
            for key in keys {
                for path in key["paths"].as_array().unwrap() {
                    let path = path.as_str().unwrap();
                    assert!(
                        body.contains("uniqueKeyPolicy") && body.contains(&format!("'{path}'")),
                        "{id}: unique key {path} (unique keys can only be set at creation)"
                    );
                }
            }
        } else {
            assert!(
                !body.contains("uniqueKeyPolicy"),
                "{id}: unexpected unique key"
            );
        }
        if let Some(composites) = json["indexingPolicy"]["compositeIndexes"].as_array() {
            let var = body
                .lines()
                .find_map(|l| l.trim().strip_prefix("indexingPolicy: "))
                .unwrap_or_else(|| panic!("{id}: no indexing policy"));
            let policy = block(&text, &format!("var {var} = {{"));
            for composite in composites {
                for part in composite.as_array().unwrap() {
                    let path = part["path"].as_str().unwrap();
                    assert!(
                        policy.contains(&format!("path: '{path}'")),
                        "{id}: composite index on {path}"
                    );
                }
            }
        }
        if json.get("defaultTtl").is_some_and(|t| !t.is_null()) {
            assert!(body.contains("defaultTtl:"), "{id}: default TTL");
        }
    }
}

#[test]
fn apim_publishes_exactly_the_routers_routes() {
    let text = read("infra/modules/apim.bicep");
    let mut published = BTreeSet::new();
    let public: BTreeSet<(String, String)> = sophia::router::PUBLIC_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let start = text
        .find("var operations = [")
        .expect("the operations list");
    let end = start + text[start..].find("\n]\n").expect("the list's end");
    for line in text[start..end].lines() {
        let Some(op) = line
            .trim()
            .strip_prefix("{ ")
            .and_then(|l| l.strip_suffix(" }"))
        else {
            continue;
        };
        let fields: BTreeMap<&str, String> = op
            .split(", ")
            .map(|f| {
                let (k, v) = f.split_once(": ").unwrap();
                (k, literal(v).unwrap())
            })
            .collect();
        let key = (fields["method"].clone(), fields["template"].clone());
        let auth = fields["auth"].as_str();
        assert_eq!(
            auth == "public",
            public.contains(&key),
            "{key:?}: public at the gateway iff public in SOPHIA"
        );
        assert_eq!(
            auth == "admin",
            key.1.starts_with("/admin/"),
            "{key:?}: the admin policy (rewrite to /manage) on exactly the admin API"
        );
        assert!(published.insert(key));
    }
    let served: BTreeSet<(String, String)> = sophia::router::routes()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_owned(), p))
        .filter(|(_, p)| !p.starts_with(sophia::router::FUNCTIONS_ADMIN_PREFIX))
        // The host's queue trigger, not a public route.
        .filter(|(m, p)| !(m == "POST" && p == "/refresh-worker"))
        .collect();
    assert_eq!(published, served, "APIM operations vs the router");
    let admin = read("infra/modules/apim/admin-policy.xml");
    assert!(admin.contains("\"/manage\" + context.Request.Url.Path.Substring(\"/admin\".Length)"));
    assert_eq!(sophia::router::FUNCTIONS_ADMIN_PREFIX, "/manage/");
    assert_eq!(sophia::router::ADMIN_PREFIX, "/admin/");
    let service = read("infra/modules/apim/service-policy.xml");
    assert!(service.contains("__PUBLIC_URL__/.well-known/openid-configuration"));
    let api = read("infra/modules/apim/api-policy.xml");
    assert!(api.contains("rate-limit-by-key") && api.contains("X-Forwarded-For"));
    // With APIM in front, SOPHIA trusts two hops (the gateway's and the front end's).
    assert!(read("infra/main.bicep").contains("trustedProxyHops: deployApim ? 2 : 1"));
}

#[test]
fn the_workbook_runs_the_readmes_queries() {
    let readme = read("README.md");
    let kql = readme
        .split("KQL to paste into Logs:")
        .nth(1)
        .unwrap()
        .split("```kusto\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for line in kql.lines() {
        if let Some(title) = line.strip_prefix("// ") {
            queries.push((title.to_owned(), String::new()));
        } else if let Some((_, q)) = queries.last_mut() {
            q.push_str(line);
            q.push('\n');
        }
    }
    let workbook: Value = serde_json::from_str(&read("infra/modules/workbook.json")).unwrap();
    let items: Vec<(String, String)> = workbook["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == 3)
        .map(|i| {
            (
                i["content"]["title"].as_str().unwrap().to_owned(),
                i["content"]["query"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(items.len(), queries.len());
    for ((title, query), (wt, wq)) in queries.iter().zip(&items) {
        assert_eq!(title, wt);
        assert_eq!(
            query.trim(),
            wq.trim(),
            "{title}: the workbook and the README differ"
        );
    }
    assert!(read("infra/modules/monitoring.bicep").contains("loadJsonContent('workbook.json')"));
}

/// `scripts/package.sh` on the test build of the binary (a native build: it needs the build
/// machine's glibc): refused under an old ceiling, packaged and listed under a high one. The
/// full cross-build (`cargo zigbuild`) is a release build, run by hand (README).
#[test]
fn the_package_script_checks_glibc_and_the_listing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg.zip");
    let run = |ceiling: &str| {
        std::process::Command::new("bash")
            .arg(format!("{ROOT}/scripts/package.sh"))
            .env("SOPHIA_PACKAGE_BINARY", env!("CARGO_BIN_EXE_sophia"))
            .env("SOPHIA_GLIBC_MAX", ceiling)
            .env("SOPHIA_PACKAGE_OUT", &out)
            .env("SOPHIA_ZIP_LEVEL", "1")
            .output()
            .unwrap()
    };
    let refused = run("2.17");
    assert!(
        !refused.status.success(),
        "a binary needing a newer glibc is packaged"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("newer than the ceiling GLIBC_2.17"),
        "{stderr}"
    );
    assert!(!out.exists(), "no package after a refusal");

    let packaged = run("99.0");
    assert!(
        packaged.status.success(),
        "{}",
        String::from_utf8_lossy(&packaged.stderr)
    );
    let listing = std::process::Command::new("unzip")
        .arg("-Z1")
        .arg(&out)
        .output()
        .unwrap();
    let listing: BTreeSet<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(str::to_owned)
        .collect();
    let mut expected: BTreeSet<String> = ["host.json".to_owned(), "sophia".to_owned()].into();
    for entry in std::fs::read_dir(format!("{ROOT}/functions")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        expected.insert(format!("{name}/function.json"));
    }
    assert_eq!(
        listing, expected,
        "the package is flat: host.json, sophia, <function>/function.json"
    );
    let mode = std::process::Command::new("unzip")
        .args(["-Z"])
        .arg(&out)
        .arg("sophia")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&mode.stdout).starts_with("-rwx"));
}
