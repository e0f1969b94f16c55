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
        let meta = tokio::fs::symlink_metadata(&file)
            .await
            .map_err(|e| SourceError::Document(format!("cannot read '{path}': {e}")))?;
        if !meta.is_file() {
            return Err(SourceError::Document(format!("'{path}' is not a file")));
        }
        if meta.len() > MAX_DOCUMENT_BYTES {
            return Err(SourceError::Document(format!(
                "'{path}' is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                meta.len()
            )));
        }
        tokio::fs::read(&file)
            .await
            .map_err(|e| SourceError::Document(format!("cannot read '{path}': {e}")))
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
