//! Where a company's documents come from for a refresh: a `KnowledgeSource` lists documents
//! (path + size) and fetches their bytes. The embedded source is the folder
//! `<SOPHIA_DATA_DIR>/knowledge/<companyId>/`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::domain::TenantId;

/// Largest document read (bigger ones are reported, not indexed).
pub const MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Most documents one source may hold.
pub const MAX_DOCUMENTS: usize = 100_000;

/// A document as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// `/`-separated path inside the source; the document's id.
    pub path: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source itself does not exist (no folder, no container).
    #[error("{0}")]
    Missing(String),
    /// The source refused SOPHIA's credentials.
    #[error("{0}")]
    Denied(String),
    /// The source could not be reached, or failed; a later refresh may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// One document cannot be read (too large, vanished, unreadable).
    #[error("{0}")]
    Document(String),
}

#[async_trait]
pub trait KnowledgeSource: Send + Sync {
    /// A description without credentials, e.g. `folder:acme`.
    fn describe(&self) -> String;

    /// Every document, sorted by path.
    async fn list(&self) -> Result<Vec<SourceEntry>, SourceError>;

    /// One document's bytes.
    async fn fetch(&self, path: &str) -> Result<Vec<u8>, SourceError>;
}

/// A local folder: files below it (hidden files and folders, and symbolic links, skipped).
pub struct FolderSource {
    root: PathBuf,
    label: String,
}

impl FolderSource {
    /// The company's folder under the data dir.
    pub fn for_tenant(data_dir: &Path, tenant: &TenantId) -> Self {
        Self {
            root: data_dir.join("knowledge").join(tenant.as_str()),
            label: format!("folder:{tenant}"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` resolved inside the root; anything that could leave it is refused.
    fn resolve(&self, path: &str) -> Result<PathBuf, SourceError> {
        let mut out = self.root.clone();
        for part in path.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.contains('\\') {
                return Err(SourceError::Document(format!(
                    "invalid document path '{path}'"
                )));
            }
            out.push(part);
        }
        Ok(out)
    }
}

fn walk(root: &Path) -> Result<Vec<SourceEntry>, SourceError> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            SourceError::Unavailable(format!("cannot read folder '{}': {e}", dir.display()))
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                SourceError::Unavailable(format!("cannot read folder '{}': {e}", dir.display()))
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(folder = %dir.display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            // `file_type` does not follow symbolic links: links are skipped, so a company's
            // folder cannot pull in files from elsewhere on the machine.
            let kind = entry.file_type().map_err(|e| {
                SourceError::Unavailable(format!("cannot stat '{}': {e}", entry.path().display()))
            })?;
            let path = format!("{prefix}{name}");
            if kind.is_dir() {
                stack.push((entry.path(), format!("{path}/")));
            } else if kind.is_file() {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(SourceEntry { path, size });
                if out.len() > MAX_DOCUMENTS {
                    return Err(SourceError::Unavailable(format!(
                        "the folder holds more than {MAX_DOCUMENTS} documents"
                    )));
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[async_trait]
impl KnowledgeSource for FolderSource {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn list(&self) -> Result<Vec<SourceEntry>, SourceError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || match std::fs::symlink_metadata(&root) {
            Ok(m) if m.is_dir() => walk(&root),
            Ok(_) => Err(SourceError::Missing(format!(
                "the knowledge folder '{}' is not a directory",
                root.display()
            ))),
            Err(_) => Err(SourceError::Missing(format!(
                "no knowledge folder at '{}': create it and put the company's documents \
                     (.txt, .md, .html, .pdf) in it",
                root.display()
            ))),
        })
        .await
        .map_err(|e| SourceError::Unavailable(format!("listing task failed: {e}")))?
    }

    async fn fetch(&self, path: &str) -> Result<Vec<u8>, SourceError> {
        let file = self.resolve(path)?;
        let path = path.to_owned();
        // One trip to the blocking pool per document: check, open, read.
        tokio::task::spawn_blocking(move || read_document(&file, &path))
            .await
            .map_err(|e| SourceError::Unavailable(format!("reading task failed: {e}")))?
    }
}

/// Reads a listed file: not a link (the listing skipped them; one put there since is
/// refused), a regular file, at most [`MAX_DOCUMENT_BYTES`].
fn read_document(file: &Path, path: &str) -> Result<Vec<u8>, SourceError> {
    use std::io::Read;
    let unreadable =
        |e: std::io::Error| SourceError::Document(format!("cannot read '{path}': {e}"));
    let meta = std::fs::symlink_metadata(file).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(SourceError::Document(format!("'{path}' is not a file")));
    }
    if meta.len() > MAX_DOCUMENT_BYTES {
        return Err(SourceError::Document(format!(
            "'{path}' is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(file)
        .map_err(unreadable)?
        // A file that grew since: never more than the limit.
        .take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(SourceError::Document(format!(
            "'{path}' is over the limit of {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// How SOPHIA authenticates to a company's Blob container.
pub enum BlobAuth {
    /// A SAS token from the company's credential bundle (`credentials.knowledgeSas`), with
    /// read and list permissions.
    Sas(secrecy::SecretString),
    /// SOPHIA's own identity (role 'Storage Blob Data Reader' on the container).
    Entra(std::sync::Arc<dyn azure_core::credentials::TokenCredential>),
}

/// A company's documents in an Azure Blob Storage container (`azure_storage_blob`),
/// optionally below a prefix. Errors never carry the SAS: they are built from status codes.
pub struct BlobSource {
    client: azure_storage_blob::BlobContainerClient,
    prefix: String,
    label: String,
}

impl BlobSource {
    /// `container_url` has no query string (the SAS, if any, comes separately).
    ///
    /// `transport` carries the SDK's requests (in production the upstream client, with its
    /// private-address DNS policy: [`crate::upstream::PolicyTransport`]).
    pub fn new(
        container_url: &url::Url,
        prefix: Option<&str>,
        auth: BlobAuth,
        transport: Option<std::sync::Arc<dyn azure_core::http::HttpClient>>,
    ) -> Result<Self, SourceError> {
        use secrecy::ExposeSecret;
        let mut url = container_url.clone();
        url.set_query(None);
        let label = format!(
            "blob:{}{}",
            url.host_str().unwrap_or("?"),
            url.path().trim_end_matches('/')
        );
        let (url, credential) = match auth {
            BlobAuth::Sas(sas) => {
                let mut with_sas = url.clone();
                with_sas.set_query(Some(sas.expose_secret().trim_start_matches('?')));
                (with_sas, None)
            }
            BlobAuth::Entra(credential) => (url, Some(credential)),
        };
        let options = azure_storage_blob::BlobContainerClientOptions {
            client_options: azure_core::http::ClientOptions {
                transport: transport.map(azure_core::http::Transport::new),
                ..Default::default()
            },
            ..Default::default()
        };
        let client = azure_storage_blob::BlobContainerClient::new(url, credential, Some(options))
            .map_err(|e| SourceError::Missing(format!(
                "the knowledge container URL is not usable ({}): it must be https when SOPHIA's identity is used",
                e.kind()
            )))?;
        let prefix = prefix
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
            .map(|p| format!("{p}/"))
            .unwrap_or_default();
        let label = if prefix.is_empty() {
            label
        } else {
            format!("{label}/{}", prefix.trim_end_matches('/'))
        };
        Ok(Self {
            client,
            prefix,
            label,
        })
    }

    fn failure(&self, e: &azure_core::Error, doing: &str) -> SourceError {
        match e.http_status().map(u16::from) {
            Some(404) => SourceError::Missing(format!(
                "the knowledge container '{}' was not found (404)",
                self.label
            )),
            Some(status @ (401 | 403)) => SourceError::Denied(format!(
                "the storage account refused SOPHIA's credentials ({status}) {doing} '{}': the SAS \
                 (credentials.knowledgeSas) needs read and list permissions, or SOPHIA's identity \
                 the 'Storage Blob Data Reader' role",
                self.label
            )),
            Some(status) => SourceError::Unavailable(format!(
                "the storage account answered {status} {doing} '{}'",
                self.label
            )),
            None => SourceError::Unavailable(format!(
                "the storage account could not be reached {doing} '{}' ({})",
                self.label,
                e.kind()
            )),
        }
    }
}

#[async_trait]
impl KnowledgeSource for BlobSource {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn list(&self) -> Result<Vec<SourceEntry>, SourceError> {
        use futures_util::TryStreamExt;
        let options = azure_storage_blob::models::BlobContainerClientListBlobsOptions {
            prefix: (!self.prefix.is_empty()).then(|| self.prefix.clone()),
            ..Default::default()
        };
        let mut pager = self
            .client
            .list_blobs(Some(options))
            .map_err(|e| self.failure(&e, "listing"))?;
        let mut out = Vec::new();
        while let Some(item) = pager
            .try_next()
            .await
            .map_err(|e| self.failure(&e, "listing"))?
        {
            let Some(name) = item.name else { continue };
            let Some(path) = name.strip_prefix(&self.prefix) else {
                continue;
            };
            if path.is_empty() || path.ends_with('/') {
                continue;
            }
            let size = item.properties.and_then(|p| p.content_length).unwrap_or(0);
            out.push(SourceEntry {
                path: path.to_owned(),
                size,
            });
            if out.len() > MAX_DOCUMENTS {
                return Err(SourceError::Unavailable(format!(
                    "the container holds more than {MAX_DOCUMENTS} documents"
                )));
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn fetch(&self, path: &str) -> Result<Vec<u8>, SourceError> {
        let blob = self.client.blob_client(&format!("{}{path}", self.prefix));
        let download = blob.download(None).await.map_err(|e| {
            SourceError::Document(
                self.failure(&e, &format!("reading '{path}' from"))
                    .to_string(),
            )
        })?;
        if download.properties.content_length.unwrap_or(0) > MAX_DOCUMENT_BYTES {
            return Err(SourceError::Document(format!(
                "'{path}' is larger than the limit of {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        // Read at most the limit, whatever the headers said.
        use futures_util::StreamExt;
        let mut body = download.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                SourceError::Document(
                    self.failure(&e, &format!("reading '{path}' from"))
                        .to_string(),
                )
            })?;
            if (bytes.len() + chunk.len()) as u64 > MAX_DOCUMENT_BYTES {
                return Err(SourceError::Document(format!(
                    "'{path}' is larger than the limit of {MAX_DOCUMENT_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap_or_else(|_| unreachable!())
    }

    #[tokio::test]
    async fn lists_files_below_the_company_folder_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let source = FolderSource::for_tenant(dir.path(), &tenant());
        assert!(matches!(source.list().await, Err(SourceError::Missing(_))));
        let root = source.root().to_path_buf();
        std::fs::create_dir_all(root.join("policies/.git")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("faq.md"), "# FAQ").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("policies/leave.txt"), "25 days")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join(".hidden"), "x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("policies/.git/config"), "x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("secret.txt"), "other").unwrap_or_else(|e| panic!("{e}"));
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt"))
            .unwrap_or_else(|e| panic!("{e}"));
        let listed: Vec<String> = source
            .list()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(listed, ["faq.md", "policies/leave.txt"]);
        assert_eq!(
            source.fetch("policies/leave.txt").await.unwrap_or_default(),
            b"25 days"
        );
        for bad in [
            "../secret.txt",
            "policies/../../secret.txt",
            "/etc/passwd",
            "link.txt",
        ] {
            assert!(source.fetch(bad).await.is_err(), "{bad}");
        }
    }
}
