//! The `SecretStore` contract, run against the local encrypted store and against the Key
//! Vault store talking to the in-process Key Vault stand-in (`tests/support/azure.rs`), plus
//! what only Key Vault has: the bearer challenge, foreign vaults, throttling, missing roles.

use crate::support;

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sophia::secrets::keyvault::KeyVaultSecretStore;
use sophia::secrets::local::{LocalSecretStore, MasterKey};
use sophia::secrets::{SecretError, SecretName, SecretStore};
use support::azure::{KeyVault, StaticCredential};

const TOKEN: &str = "kv-test-token-5150";

fn name(prefix: &str) -> SecretName {
    SecretName::parse(&format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    ))
    .unwrap()
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

mod contract {
    use super::*;

    pub async fn versions_and_latest(store: Arc<dyn SecretStore>) {
        let n = name("alpha");
        let v1 = store.set(&n, &secret("one")).await.unwrap();
        let v2 = store.set(&n, &secret("two")).await.unwrap();
        assert_ne!(v1, v2, "each write is a new version");
        assert_eq!(store.get(&v1).await.unwrap().expose_secret(), "one");
        assert_eq!(store.get(&v2).await.unwrap().expose_secret(), "two");
        assert_eq!(
            store.get_latest(&n).await.unwrap().unwrap().expose_secret(),
            "two"
        );
        let reference = store.parse_id(&v1).unwrap();
        assert_eq!(reference.name, n);
        assert!(reference.version.is_some());
        // An identifier without a version reads the latest.
        let unversioned = v1.rsplit_once('/').unwrap().0.to_owned();
        assert_eq!(
            store.get(&unversioned).await.unwrap().expose_secret(),
            "two"
        );
    }

    pub async fn missing_and_deleted(store: Arc<dyn SecretStore>) {
        let n = name("beta");
        assert!(store.get_latest(&n).await.unwrap().is_none());
        let id = store.set(&n, &secret("x")).await.unwrap();
        store.delete(&n).await.unwrap();
        assert!(store.get_latest(&n).await.unwrap().is_none());
        assert!(matches!(store.get(&id).await, Err(SecretError::NotFound)));
        store.delete(&n).await.unwrap();
    }

    pub async fn malformed_ids_are_refused(store: Arc<dyn SecretStore>) {
        for bad in ["", "nope", "https://", "a/b/c/d/e", "ftp://x/secrets/a"] {
            assert!(
                matches!(store.parse_id(bad), Err(SecretError::InvalidId(_))),
                "{bad:?} accepted"
            );
        }
    }

    /// Every secret SOPHIA writes for a tenant is bound to it, compared exactly; a binding
    /// can be recorded later on an existing secret, and it stays with the version.
    pub async fn ownership_is_recorded_exactly(store: Arc<dyn SecretStore>) {
        let acme = sophia::domain::TenantId::parse("acme").unwrap();
        let corp = sophia::domain::TenantId::parse("acme-corp").unwrap();
        let n = name("owned");
        let id = store
            .set_owned(&n, &secret("k"), Some(&acme))
            .await
            .unwrap();
        assert_eq!(store.owner(&id).await.unwrap().as_deref(), Some("acme"));
        let (value, owner) = store.get_owned(&id).await.unwrap();
        assert_eq!(
            (value.expose_secret(), owner.as_deref()),
            ("k", Some("acme"))
        );
        let unversioned = id.rsplit_once('/').unwrap().0.to_owned();
        assert_eq!(
            store.owner(&unversioned).await.unwrap().as_deref(),
            Some("acme"),
            "a versionless id reads the latest version's binding"
        );
        let loose_name = name("acme-corp-openai");
        let loose = store.set(&loose_name, &secret("v")).await.unwrap();
        assert_eq!(
            store.owner(&loose).await.unwrap(),
            None,
            "a name is not a binding"
        );
        store.bind(&loose, &corp).await.unwrap();
        assert_eq!(
            store.owner(&loose).await.unwrap().as_deref(),
            Some("acme-corp")
        );
        assert_eq!(store.get(&loose).await.unwrap().expose_secret(), "v");
        // A new version written without an owner is bound to nobody.
        let newer = store.set(&loose_name, &secret("w")).await.unwrap();
        assert_eq!(store.owner(&newer).await.unwrap(), None);
        assert_eq!(
            store.owner(&loose).await.unwrap().as_deref(),
            Some("acme-corp")
        );
        let missing = format!("{}0", unversioned.trim_end_matches('/'));
        assert!(matches!(
            store.owner(&missing).await,
            Err(SecretError::NotFound)
        ));
        assert!(matches!(
            store.bind(&missing, &acme).await,
            Err(SecretError::NotFound)
        ));
    }

    pub async fn values_never_print(store: Arc<dyn SecretStore>) {
        let n = name("gamma");
        let id = store.set(&n, &secret("s3cr3t-VALUE-42")).await.unwrap();
        let value = store.get(&id).await.unwrap();
        assert!(!format!("{value:?}").contains("s3cr3t"));
        assert!(!id.contains("s3cr3t"));
    }
}

macro_rules! secret_contract_tests {
    ($make:expr) => {
        secret_contract_tests!(@case $make, versions_and_latest, missing_and_deleted,
            malformed_ids_are_refused, values_never_print, ownership_is_recorded_exactly);
    };
    (@case $make:expr, $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $make().await;
                crate::secrets::contract::$case(store).await;
            }
        )*
    };
}

mod local {
    use super::*;

    async fn local() -> Arc<dyn SecretStore> {
        Arc::new(
            LocalSecretStore::open_in_memory(MasterKey::parse(&"42".repeat(32)).unwrap()).unwrap(),
        )
    }

    secret_contract_tests!(local);
}

mod keyvault {
    use super::*;

    fn vault_and_store() -> (KeyVault, Arc<StaticCredential>, KeyVaultSecretStore) {
        let vault = KeyVault::start(TOKEN);
        let credential = StaticCredential::new(TOKEN);
        let store = KeyVaultSecretStore::new(&vault.url, credential.clone()).unwrap();
        (vault, credential, store)
    }

    async fn keyvault() -> Arc<dyn SecretStore> {
        Arc::new(vault_and_store().2)
    }

    secret_contract_tests!(keyvault);

    /// The binding is the `sophiaTenantId` tag on the version, visible to operators in the
    /// portal and `az keyvault secret show`; binding keeps the version's other tags.
    #[tokio::test]
    async fn ownership_is_a_tag_on_the_version() {
        let (vault, _, store) = vault_and_store();
        let acme = sophia::domain::TenantId::parse("acme").unwrap();
        let n = name("tagged");
        store
            .set_owned(&n, &secret("k"), Some(&acme))
            .await
            .unwrap();
        assert_eq!(vault.tags(n.as_str())["sophiaTenantId"], "acme");
        let id = vault.put_tagged("ops-made", "v", &[("team", "payments")]);
        store.bind(&id, &acme).await.unwrap();
        let tags = vault.tags("ops-made");
        assert_eq!(tags["sophiaTenantId"], "acme");
        assert_eq!(tags["team"], "payments");
        assert!(
            vault
                .requests()
                .iter()
                .any(|r| r.method == "PATCH" && r.path.starts_with("/secrets/ops-made/")),
            "Update Secret on the version"
        );
    }

    /// The SDK's first call is unauthenticated and body-less; the vault's challenge names the
    /// resource, the token is asked for its scope, and every call carries `api-version`.
    #[tokio::test]
    async fn speaks_the_challenge_protocol() {
        let (vault, credential, store) = vault_and_store();
        let n = name("delta");
        let id = store.set(&n, &secret("v")).await.unwrap();
        assert!(
            id.starts_with(&format!("{}/secrets/{n}/", store.vault())),
            "{id}"
        );
        let requests = vault.requests();
        assert!(!requests[0].authorized, "first request is the challenge");
        assert!(requests[1..].iter().all(|r| r.authorized));
        assert!(requests.iter().all(|r| r.api_version.is_some()));
        assert_eq!(
            credential.scopes.lock().unwrap().as_slice(),
            ["https://vault.azure.net/.default"]
        );
        assert_eq!(vault.value(n.as_str()).as_deref(), Some("v"));
    }

    /// An identifier an operator created with `az keyvault secret set` in the same vault is
    /// readable; one in another vault is refused before any request.
    #[tokio::test]
    async fn admin_supplied_ids_must_name_this_vault() {
        let (vault, _, store) = vault_and_store();
        let id = vault.put("acme-openai", "{\"azureOpenaiKey\":\"k\"}");
        assert_eq!(
            store.get(&id).await.unwrap().expose_secret(),
            "{\"azureOpenaiKey\":\"k\"}"
        );
        let before = vault.requests().len();
        for foreign in [
            "https://other.vault.azure.net/secrets/acme-openai",
            &id.replace("127.0.0.1", "localhost"),
            &format!("{id}?x=1"),
            "https://169.254.169.254/secrets/acme-openai",
        ] {
            assert!(
                matches!(store.get(foreign).await, Err(SecretError::InvalidId(_))),
                "{foreign} accepted"
            );
        }
        assert_eq!(vault.requests().len(), before, "nothing was fetched");
    }

    #[tokio::test]
    async fn throttling_is_retried_then_unavailable() {
        let (vault, _, store) = vault_and_store();
        let n = name("eps");
        store.set(&n, &secret("warm")).await.unwrap();
        vault.throttle(2);
        store
            .set(&n, &secret("after-two-429s"))
            .await
            .expect("two 429s are absorbed");
        assert_eq!(vault.value(n.as_str()).as_deref(), Some("after-two-429s"));
        vault.throttle(1_000);
        let err = store.get_latest(&n).await.unwrap_err();
        assert!(matches!(err, SecretError::Unavailable(_)), "{err:?}");
        vault.throttle(0);
    }

    #[tokio::test]
    async fn missing_role_and_bad_token_are_explained() {
        let (vault, _, store) = vault_and_store();
        vault.forbid(true);
        let err = store.get_latest(&name("zeta")).await.unwrap_err();
        assert!(
            err.to_string().contains("Key Vault Secrets Officer"),
            "{err}"
        );
        vault.forbid(false);

        let wrong =
            KeyVaultSecretStore::new(&vault.url, StaticCredential::new("not-the-token")).unwrap();
        let err = wrong.get_latest(&name("eta")).await.unwrap_err();
        assert!(matches!(err, SecretError::Internal(_)), "{err:?}");
        assert!(!format!("{err:?}").contains("not-the-token"));
    }

    #[test]
    fn vault_urls_are_checked() {
        let credential = StaticCredential::new(TOKEN);
        for bad in [
            "http://myvault.vault.azure.net",
            "https://myvault.vault.azure.net/secrets",
            "not a url",
        ] {
            assert!(
                KeyVaultSecretStore::new(bad, credential.clone()).is_err(),
                "{bad} accepted"
            );
        }
        let store =
            KeyVaultSecretStore::new("https://myvault.vault.azure.net/", credential).unwrap();
        assert_eq!(store.vault(), "https://myvault.vault.azure.net");
        let r = store
            .parse_id("https://myvault.vault.azure.net/secrets/acme-creds/0123456789abcdef0123456789abcdef")
            .unwrap();
        assert_eq!(r.name.as_str(), "acme-creds");
        assert!(
            store
                .parse_id("http://myvault.vault.azure.net/secrets/acme-creds")
                .is_err()
        );
    }
}
