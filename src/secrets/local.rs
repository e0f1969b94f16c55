//! The embedded `SecretStore`: secrets encrypted with AES-256-GCM (random 96-bit nonce per
//! value, stored in front of the ciphertext; the name and version are bound in as associated
//! data) in a SQLite file of their own, so it works beside any document store.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rusqlite::{Connection, OptionalExtension, params};
use secrecy::{ExposeSecret, SecretBox, SecretString};

use super::{SecretError, SecretName, SecretRef, SecretResult, SecretStore};

const ID_PREFIX: &str = "sophia-local:/secrets/";
const NONCE_LEN: usize = 12;

/// A 256-bit master key. Never printed.
pub struct MasterKey(SecretBox<[u8; 32]>);

impl MasterKey {
    /// Parses a key given as base64 (44 characters) or hex (64 characters).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let bytes = if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&raw[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| "not hex".to_owned())?
        } else {
            STANDARD
                .decode(raw)
                .map_err(|_| "neither base64 nor hex".to_owned())?
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the master key must be exactly 32 bytes".to_owned())?;
        Ok(Self(SecretBox::new(Box::new(key))))
    }

    /// Loads the key file in `dir`, creating it (mode 0600) with a random key on first run.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("master.key");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading master key {}", path.display()))?;
            return Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
        }
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        write_private_file(&path, STANDARD.encode(key).as_bytes())?;
        Ok(Self(SecretBox::new(Box::new(key))))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(*self.0.expose_secret()))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

/// Writes a file readable only by its owner (created new; an existing file is an error).
pub fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// The local encrypted secret store.
pub struct LocalSecretStore {
    conn: Arc<Mutex<Connection>>,
    key: Arc<MasterKey>,
}

impl LocalSecretStore {
    pub fn open(path: &Path, key: MasterKey) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening secret store {}", path.display()))?;
        Self::init(conn, key)
    }

    pub fn open_in_memory(key: MasterKey) -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?, key)
    }

    fn init(conn: Connection, key: MasterKey) -> anyhow::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS secrets (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL,
                version TEXT NOT NULL,
                created_at TEXT NOT NULL,
                sealed BLOB NOT NULL,
                UNIQUE (name, version)
            );",
        )?;
        // v1 rows have no owner; the column is added in place (a NULL owner is v1's AAD).
        let has_owner: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('secrets') WHERE name = 'owner'")?
            .exists([])?;
        if !has_owner {
            conn.execute_batch("ALTER TABLE secrets ADD COLUMN owner TEXT")?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            key: Arc::new(key),
        })
    }

    async fn run<T, F>(&self, f: F) -> SecretResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &MasterKey) -> SecretResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let key = Arc::clone(&self.key);
        tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| SecretError::Internal(anyhow::anyhow!("secret store poisoned")))?;
            f(&guard, &key)
        })
        .await
        .map_err(|e| SecretError::Internal(anyhow::anyhow!("secret task failed: {e}")))?
    }
}

/// The additional data a value is sealed with: its name, version and owner, so a row copied
/// under another name or given another owner no longer decrypts.
fn aad(name: &str, version: &str, owner: Option<&str>) -> Vec<u8> {
    match owner {
        None => format!("sophia-secret:v1:{name}:{version}").into_bytes(),
        Some(owner) => format!("sophia-secret:v2:{name}:{version}:{owner}").into_bytes(),
    }
}

fn seal(
    key: &MasterKey,
    name: &str,
    version: &str,
    owner: Option<&str>,
    plain: &str,
) -> SecretResult<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let aad = aad(name, version, owner);
    let ct = key
        .cipher()
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plain.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| SecretError::Internal(anyhow::anyhow!("encryption failed")))?;
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&ct);
    Ok(sealed)
}

fn open_sealed(
    key: &MasterKey,
    name: &str,
    version: &str,
    owner: Option<&str>,
    sealed: &[u8],
) -> SecretResult<SecretString> {
    if sealed.len() < NONCE_LEN {
        return Err(SecretError::Internal(anyhow::anyhow!(
            "sealed secret too short"
        )));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| SecretError::Internal(anyhow::anyhow!("sealed secret too short")))?;
    let aad = aad(name, version, owner);
    let plain = key
        .cipher()
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad })
        .map_err(|_| {
            SecretError::Internal(anyhow::anyhow!(
                "secret '{name}' could not be decrypted (wrong SOPHIA_MASTER_KEY or tampered data)"
            ))
        })?;
    let text = String::from_utf8(plain)
        .map_err(|_| SecretError::Internal(anyhow::anyhow!("secret is not UTF-8")))?;
    Ok(SecretString::from(text))
}

/// One stored version: (seq, version, owner, sealed).
type Row = (i64, String, Option<String>, Vec<u8>);

/// The row an identifier names (that version, or the latest).
fn find_row(conn: &Connection, reference: &SecretRef) -> SecretResult<Row> {
    let name = reference.name.as_str();
    let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
    match &reference.version {
        Some(version) => conn.query_row(
            "SELECT seq, version, owner, sealed FROM secrets WHERE name = ?1 AND version = ?2",
            params![name, version],
            map,
        ),
        None => conn.query_row(
            "SELECT seq, version, owner, sealed FROM secrets WHERE name = ?1 ORDER BY seq DESC LIMIT 1",
            params![name],
            map,
        ),
    }
    .optional()
    .map_err(sql_err)?
    .ok_or(SecretError::NotFound)
}

fn sql_err(e: rusqlite::Error) -> SecretError {
    SecretError::Internal(e.into())
}

#[async_trait]
impl SecretStore for LocalSecretStore {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn set_owned(
        &self,
        name: &SecretName,
        value: &SecretString,
        owner: Option<&crate::domain::TenantId>,
    ) -> SecretResult<String> {
        let name = name.clone();
        let value = value.clone();
        let owner = owner.map(|o| o.as_str().to_owned());
        self.run(move |conn, key| {
            let version = uuid::Uuid::new_v4().simple().to_string();
            let sealed = seal(
                key,
                name.as_str(),
                &version,
                owner.as_deref(),
                value.expose_secret(),
            )?;
            conn.execute(
                "INSERT INTO secrets (name, version, created_at, sealed, owner) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    name.as_str(),
                    version,
                    chrono::Utc::now().to_rfc3339(),
                    sealed,
                    owner
                ],
            )
            .map_err(sql_err)?;
            Ok(format!("{ID_PREFIX}{}/{version}", name.as_str()))
        })
        .await
    }

    async fn get(&self, id: &str) -> SecretResult<SecretString> {
        self.get_owned(id).await.map(|(value, _)| value)
    }

    async fn get_owned(&self, id: &str) -> SecretResult<(SecretString, Option<String>)> {
        let reference = self.parse_id(id)?;
        self.run(move |conn, key| {
            let (_, version, owner, sealed) = find_row(conn, &reference)?;
            let value = open_sealed(
                key,
                reference.name.as_str(),
                &version,
                owner.as_deref(),
                &sealed,
            )?;
            Ok((value, owner))
        })
        .await
    }

    async fn owner(&self, id: &str) -> SecretResult<Option<String>> {
        // The owner is sealed with the value: a row whose owner was edited does not open.
        self.get_owned(id).await.map(|(_, owner)| owner)
    }

    async fn bind(&self, id: &str, owner: &crate::domain::TenantId) -> SecretResult<()> {
        let reference = self.parse_id(id)?;
        let owner = owner.as_str().to_owned();
        self.run(move |conn, key| {
            let (seq, version, current, sealed) = find_row(conn, &reference)?;
            let name = reference.name.as_str();
            let value = open_sealed(key, name, &version, current.as_deref(), &sealed)?;
            let resealed = seal(key, name, &version, Some(&owner), value.expose_secret())?;
            conn.execute(
                "UPDATE secrets SET owner = ?1, sealed = ?2 WHERE seq = ?3",
                params![owner, resealed, seq],
            )
            .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    async fn get_latest(&self, name: &SecretName) -> SecretResult<Option<SecretString>> {
        match self.get(&format!("{ID_PREFIX}{}", name.as_str())).await {
            Ok(value) => Ok(Some(value)),
            Err(SecretError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, name: &SecretName) -> SecretResult<()> {
        let name = name.clone();
        self.run(move |conn, _| {
            conn.execute(
                "DELETE FROM secrets WHERE name = ?1",
                params![name.as_str()],
            )
            .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    fn parse_id(&self, id: &str) -> SecretResult<SecretRef> {
        let rest = id.strip_prefix(ID_PREFIX).ok_or_else(|| {
            SecretError::InvalidId(format!(
                "this deployment keeps secrets locally; identifiers look like '{ID_PREFIX}<name>[/<version>]'"
            ))
        })?;
        let mut parts = rest.split('/');
        let name = SecretName::parse(parts.next().unwrap_or_default())?;
        let version = match parts.next() {
            None | Some("") => None,
            Some(v) if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                Some(v.to_owned())
            }
            Some(_) => return Err(SecretError::InvalidId("invalid secret version".into())),
        };
        if parts.next().is_some() {
            return Err(SecretError::InvalidId("invalid secret identifier".into()));
        }
        Ok(SecretRef { name, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::parse(&"11".repeat(32)).unwrap()
    }

    #[tokio::test]
    async fn set_get_versions_and_delete() {
        let store = LocalSecretStore::open_in_memory(key()).unwrap();
        let name = SecretName::parse("alpha").unwrap();
        let v1 = store.set(&name, &SecretString::from("one")).await.unwrap();
        let v2 = store.set(&name, &SecretString::from("two")).await.unwrap();
        assert_ne!(v1, v2);
        assert_eq!(store.get(&v1).await.unwrap().expose_secret(), "one");
        assert_eq!(store.get(&v2).await.unwrap().expose_secret(), "two");
        assert_eq!(
            store
                .get_latest(&name)
                .await
                .unwrap()
                .unwrap()
                .expose_secret(),
            "two"
        );
        store.delete(&name).await.unwrap();
        assert!(matches!(store.get(&v1).await, Err(SecretError::NotFound)));
        assert!(store.get_latest(&name).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn owners_are_recorded_sealed_and_bound_later() {
        let store = LocalSecretStore::open_in_memory(key()).unwrap();
        let acme = crate::domain::TenantId::parse("acme").unwrap();
        let corp = crate::domain::TenantId::parse("acme-corp").unwrap();
        let name = SecretName::parse("gamma").unwrap();
        let owned = store
            .set_owned(&name, &SecretString::from("v"), Some(&acme))
            .await
            .unwrap();
        assert_eq!(store.owner(&owned).await.unwrap().as_deref(), Some("acme"));
        let loose = store
            .set(
                &SecretName::parse("delta").unwrap(),
                &SecretString::from("w"),
            )
            .await
            .unwrap();
        assert_eq!(store.owner(&loose).await.unwrap(), None);
        store.bind(&loose, &corp).await.unwrap();
        assert_eq!(
            store.owner(&loose).await.unwrap().as_deref(),
            Some("acme-corp")
        );
        assert_eq!(store.get(&loose).await.unwrap().expose_secret(), "w");
        // Editing the owner column behind SOPHIA's back breaks the seal.
        {
            let conn = store.conn.lock().unwrap();
            conn.execute("UPDATE secrets SET owner = 'acme' WHERE name = 'delta'", [])
                .unwrap();
        }
        assert!(store.owner(&loose).await.is_err());
        assert!(store.get(&loose).await.is_err());
        assert!(matches!(
            store.owner("sophia-local:/secrets/missing").await,
            Err(SecretError::NotFound)
        ));
    }

    #[tokio::test]
    async fn values_are_encrypted_at_rest_and_bound_to_their_name() {
        let store = LocalSecretStore::open_in_memory(key()).unwrap();
        let name = SecretName::parse("beta").unwrap();
        store
            .set(&name, &SecretString::from("plaintext-value"))
            .await
            .unwrap();
        let raw: Vec<u8> = {
            let conn = store.conn.lock().unwrap();
            conn.query_row("SELECT sealed FROM secrets", [], |r| r.get(0))
                .unwrap()
        };
        assert!(!raw.windows(15).any(|w| w == b"plaintext-value"));
        // Moving the ciphertext under another name fails authentication.
        {
            let conn = store.conn.lock().unwrap();
            conn.execute("UPDATE secrets SET name = 'gamma'", [])
                .unwrap();
        }
        let other = SecretName::parse("gamma").unwrap();
        assert!(matches!(
            store.get_latest(&other).await,
            Err(SecretError::Internal(_))
        ));
    }

    #[tokio::test]
    async fn a_wrong_master_key_cannot_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let name = SecretName::parse("delta").unwrap();
        {
            let store = LocalSecretStore::open(&path, key()).unwrap();
            store.set(&name, &SecretString::from("v")).await.unwrap();
        }
        let store =
            LocalSecretStore::open(&path, MasterKey::parse(&"22".repeat(32)).unwrap()).unwrap();
        assert!(store.get_latest(&name).await.is_err());
    }

    #[test]
    fn ids_are_parsed_strictly() {
        let store = LocalSecretStore::open_in_memory(key()).unwrap();
        assert!(store.parse_id("sophia-local:/secrets/abc").is_ok());
        assert!(store.parse_id("sophia-local:/secrets/abc/0123abcd").is_ok());
        assert!(
            store
                .parse_id("https://vault.vault.azure.net/secrets/abc")
                .is_err()
        );
        assert!(store.parse_id("sophia-local:/secrets/a_b").is_err());
        assert!(store.parse_id("sophia-local:/secrets/abc/v/extra").is_err());
    }

    #[test]
    fn master_keys_parse_and_redact() {
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::parse(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(MasterKey::parse("short").is_err());
        assert_eq!(format!("{:?}", key()), "MasterKey([REDACTED])");
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = MasterKey::load_or_create(dir.path()).unwrap();
        let text1 = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
        let _second = MasterKey::load_or_create(dir.path()).unwrap();
        let text2 = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
        assert_eq!(text1, text2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
