//! Unit tests of the configuration reader.

use super::*;
use std::collections::HashMap;

fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn defaults_are_sane() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.port, 8080);
    assert_eq!(s.store, StoreBackend::Sqlite);
    assert_eq!(s.secrets, SecretsBackend::Local);
    assert_eq!(s.bcrypt_cost, 12);
    assert_eq!(s.token_ttl_secs, 3600);
    assert_eq!(s.data_dir, PathBuf::from("./.sophia"));
    assert!(!s.allow_local_upstreams);
}

#[test]
fn azure_backends_need_their_endpoints() {
    let e = settings(&[("SOPHIA_STORE", "cosmos")]).err().unwrap();
    assert_eq!(e.var, "SOPHIA_COSMOS_ENDPOINT");
    let e = settings(&[
        ("SOPHIA_STORE", "cosmos"),
        ("SOPHIA_COSMOS_ENDPOINT", "http://acct.documents.azure.com/"),
    ])
    .err()
    .unwrap();
    assert_eq!(
        e.var, "SOPHIA_COSMOS_ENDPOINT",
        "plain http only for loopback"
    );
    assert!(
        settings(&[
            ("SOPHIA_STORE", "cosmos"),
            ("SOPHIA_COSMOS_ENDPOINT", "http://127.0.0.1:8081/"),
            ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
        ])
        .is_ok()
    );
    let e = settings(&[("SOPHIA_SECRETS", "keyvault")]).err().unwrap();
    assert_eq!(e.var, "SOPHIA_KEYVAULT_URL");
    for bad in [
        "http://v.vault.azure.net",
        "https://v.vault.azure.net/secrets/x",
        "vault",
    ] {
        let e = settings(&[("SOPHIA_SECRETS", "keyvault"), ("SOPHIA_KEYVAULT_URL", bad)])
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert_eq!(e.var, "SOPHIA_KEYVAULT_URL");
    }
    let s = settings(&[
        ("SOPHIA_SECRETS", "keyvault"),
        ("SOPHIA_KEYVAULT_URL", "https://v.vault.azure.net"),
        ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
        ("REGION_NAME", "North Europe"),
    ])
    .unwrap();
    assert_eq!(s.cosmos_region, "North Europe");
    assert_eq!(s.audit_ttl_days, 365);
}

#[test]
fn functions_port_wins_over_sophia_port() {
    let s = settings(&[
        ("FUNCTIONS_CUSTOMHANDLER_PORT", "7071"),
        ("SOPHIA_PORT", "9000"),
        ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
    ])
    .unwrap();
    assert_eq!(s.port, 7071);
    assert_eq!(settings(&[("SOPHIA_PORT", "9000")]).unwrap().port, 9000);
}

/// Outside local development the public URL is configured, never guessed from requests.
#[test]
fn the_public_url_is_required_outside_local_development() {
    for azure in [
        vec![("FUNCTIONS_CUSTOMHANDLER_PORT", "7071")],
        vec![
            ("SOPHIA_SECRETS", "keyvault"),
            ("SOPHIA_KEYVAULT_URL", "https://v.vault.azure.net"),
        ],
    ] {
        assert_eq!(settings(&azure).err().unwrap().var, "SOPHIA_PUBLIC_URL");
        let mut http = azure.clone();
        http.push(("SOPHIA_PUBLIC_URL", "http://sophia.example.com"));
        assert_eq!(settings(&http).err().unwrap().var, "SOPHIA_PUBLIC_URL");
        let mut ok = azure.clone();
        ok.push(("SOPHIA_PUBLIC_URL", "https://sophia.example.com/"));
        assert_eq!(
            settings(&ok).unwrap().public_base(),
            "https://sophia.example.com"
        );
    }
    for bad in ["https://x.example.com/?a=1", "https://u:p@x.example.com"] {
        assert_eq!(
            settings(&[("SOPHIA_PUBLIC_URL", bad)]).err().unwrap().var,
            "SOPHIA_PUBLIC_URL"
        );
    }
    let local = settings(&[("SOPHIA_PORT", "9000")]).unwrap();
    assert_eq!(local.public_base(), "http://127.0.0.1:9000");
    assert_eq!(
        settings(&[("SOPHIA_TRUSTED_PROXY_HOPS", "0")])
            .err()
            .unwrap()
            .var,
        "SOPHIA_TRUSTED_PROXY_HOPS"
    );
}

#[test]
fn bad_values_name_their_variable() {
    for (var, value) in [
        ("SOPHIA_PORT", "http"),
        ("SOPHIA_BCRYPT_COST", "3"),
        ("SOPHIA_STORE", "postgres"),
        ("SOPHIA_SECRETS", "vault"),
        ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "maybe"),
        ("SOPHIA_ADMIN_JWT_SECRET", "short"),
        ("SOPHIA_ADMIN_JWKS_URL", "http://idp.example.com/keys"),
        ("SOPHIA_UPSTREAM_ALLOWED_HOSTS", "a*b"),
        ("SOPHIA_MASTER_KEY", "nope"),
        ("SOPHIA_TOKEN_TTL_SECS", "5"),
        ("SOPHIA_AZURE_CREDENTIAL", "default"),
        ("SOPHIA_AUDIT_TTL_DAYS", "-1"),
    ] {
        let e = settings(&[(var, value)])
            .err()
            .unwrap_or_else(|| panic!("{var}={value} accepted"));
        assert_eq!(e.var, var);
        assert!(e.to_string().contains(var));
    }
}

#[test]
fn debug_hides_secrets() {
    let s = settings(&[(
        "SOPHIA_ADMIN_JWT_SECRET",
        "super-secret-value-that-is-long-enough",
    )])
    .unwrap();
    assert!(!format!("{s:?}").contains("super-secret"));
}
