//! Text extraction that one company's hostile document cannot use to take the shared
//! process down.
//!
//! A PDF's streams are compressed: 400 KB can inflate to gigabytes, and parsers of PDF and
//! HTML recurse on nesting an attacker controls. So formats that decompress or nest (`.pdf`,
//! `.html`/`.htm`) are extracted in a child process — this same executable, run as
//! `sophia extract-text`, with an empty environment (it needs no secret) and its address space
//! capped by `setrlimit(RLIMIT_AS)` (`SOPHIA_EXTRACT_MEMORY_MB`). One child serves one refresh
//! job (one company) document after document over a framed pipe, so a job pays one process
//! start, not one per document; a document that takes longer than
//! `SOPHIA_EXTRACT_TIMEOUT_SECS` gets its child killed, and an answer is read only up to a
//! bound. A child that runs out of memory aborts: only that document fails, with a clear
//! reason, and the next document gets a fresh child. Plain text and Markdown, which neither inflate nor nest, are extracted in process.
//! Every extraction is cut at `SOPHIA_EXTRACT_MAX_CHARS` characters.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::extract::{Extracted, extension, extract};

/// How extraction runs, from settings.
#[derive(Debug, Clone)]
pub struct Extractor {
    /// The executable that serves `extract-text` (this one, unless configured).
    pub executable: PathBuf,
    pub memory_bytes: u64,
    pub timeout: Duration,
    pub max_chars: usize,
}

/// What the child writes on stdout (one JSON object).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum ChildAnswer {
    Extracted { title: String, text: String },
    Failed { error: String },
}

/// Formats extracted in a child process.
fn isolated(path: &str) -> bool {
    matches!(extension(path).as_deref(), Some("pdf" | "html" | "htm"))
}

/// One refresh job's extractions: the child (started on first use, replaced after a failure)
/// serves only this job's documents, one at a time.
pub struct Session<'a> {
    extractor: &'a Extractor,
    worker: tokio::sync::Mutex<Option<Worker>>,
}

/// A running `extract-text` child and its pipes.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
}

/// Longest file name sent to the child; longest document.
const MAX_NAME: usize = 4096;
const MAX_INPUT: u64 = 64 * 1024 * 1024 + 1;

impl Extractor {
    /// A session for one job's documents.
    pub fn session(&self) -> Session<'_> {
        Session {
            extractor: self,
            worker: tokio::sync::Mutex::new(None),
        }
    }

    fn spawn(&self) -> Result<Worker, String> {
        let mut child = tokio::process::Command::new(&self.executable)
            .arg("extract-text")
            .arg(self.memory_bytes.to_string())
            .arg(self.max_chars.to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                tracing::error!(extractor = %self.executable.display(), error = %e, "the text extractor could not be started: {e}");
                "the text extractor could not be started".to_owned()
            })?;
        match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => Ok(Worker {
                child,
                stdin,
                stdout,
            }),
            _ => Err("the text extractor could not be started".into()),
        }
    }

    /// Characters are at most 4 bytes; JSON escaping may double that. More is not an honest
    /// answer.
    fn answer_limit(&self) -> u64 {
        (self.max_chars as u64).saturating_mul(8) + 64 * 1024
    }
}

impl Session<'_> {
    /// Extracts a document's text; `Err` says why it cannot be indexed.
    pub async fn extract(&self, path: &str, bytes: Vec<u8>) -> Result<Extracted, String> {
        let mut doc = if isolated(path) {
            self.in_child(path, bytes).await?
        } else {
            let owned = path.to_owned();
            tokio::task::spawn_blocking(move || extract(&owned, &bytes))
                .await
                .map_err(|e| format!("extraction failed: {e}"))??
        };
        cut(&mut doc.text, self.extractor.max_chars);
        Ok(doc)
    }

    async fn in_child(&self, path: &str, bytes: Vec<u8>) -> Result<Extracted, String> {
        let ex = self.extractor;
        // The file name only: the child needs its extension, and its stem for a title.
        let name = path.rsplit('/').next().unwrap_or(path);
        let name: String = name.chars().take(MAX_NAME / 4).collect();
        let mut slot = self.worker.lock().await;
        let mut worker = match slot.take() {
            Some(worker) => worker,
            None => ex.spawn()?,
        };
        let exchange = async {
            let w = &mut worker;
            w.stdin.write_u32(name.len() as u32).await?;
            w.stdin.write_all(name.as_bytes()).await?;
            w.stdin.write_u64(bytes.len() as u64).await?;
            w.stdin.write_all(&bytes).await?;
            w.stdin.flush().await?;
            let len = w.stdout.read_u64().await?;
            if len > ex.answer_limit() {
                return Ok(None);
            }
            let mut out = vec![0u8; len as usize];
            w.stdout.read_exact(&mut out).await?;
            Ok::<_, std::io::Error>(Some(out))
        };
        let out = match tokio::time::timeout(ex.timeout, exchange).await {
            Ok(Ok(Some(out))) => out,
            Ok(Ok(None)) => {
                return Err("the text extractor answered more than its bound".into());
            }
            Ok(Err(_)) => {
                // The child died mid-document: its exit says why. It is not reused.
                let status = tokio::time::timeout(Duration::from_secs(5), worker.child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                return Err(match status {
                    Some(status) => ex.crashed(status),
                    None => "the text extractor stopped answering".into(),
                });
            }
            Err(_) => {
                // Dropping the worker kills it.
                return Err(format!(
                    "text extraction took longer than {} s and was stopped",
                    ex.timeout.as_secs()
                ));
            }
        };
        let answer = serde_json::from_slice::<ChildAnswer>(&out);
        // A child that answered is healthy: keep it for the job's next document.
        *slot = Some(worker);
        match answer {
            Ok(ChildAnswer::Extracted { title, text }) => Ok(Extracted { title, text }),
            Ok(ChildAnswer::Failed { error }) => Err(error),
            Err(_) => Err("the text extractor gave no readable answer".into()),
        }
    }
}

impl Extractor {
    fn crashed(&self, status: std::process::ExitStatus) -> String {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                // SIGABRT: an allocation past the address-space limit; SIGSEGV: the stack.
                Some(6) | Some(11) => {
                    return format!(
                        "the document needs more than {} MiB to extract (a compression or nesting \
                         bomb?); it was stopped",
                        self.memory_bytes / (1024 * 1024)
                    );
                }
                Some(9) => {
                    return format!(
                        "text extraction took longer than {} s and was stopped",
                        self.timeout.as_secs()
                    );
                }
                _ => {}
            }
        }
        format!("the text extractor failed ({status})")
    }
}

/// Cuts `text` at `max` characters (on a character boundary).
fn cut(text: &mut String, max: usize) {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
    }
}

/// The child's side (`sophia extract-text <memory bytes> <max chars>`): limits itself, then
/// serves documents until its input ends — each a frame `u32 name length, name, u64 length,
/// bytes` on stdin, answered by `u64 length, JSON` on stdout. Runs before any runtime or
/// configuration; returns the exit code.
pub fn child_main(args: &[String]) -> i32 {
    use std::io::{Read, Write};
    let [memory, max_chars] = args else {
        return 2;
    };
    let (Ok(memory), Ok(max_chars)) = (memory.parse::<u64>(), max_chars.parse::<usize>()) else {
        return 2;
    };
    #[cfg(unix)]
    {
        if rlimit::setrlimit(rlimit::Resource::AS, memory, memory).is_err() {
            return 3;
        }
    }
    #[cfg(not(unix))]
    let _ = memory;
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    loop {
        let mut len = [0u8; 4];
        match stdin.read_exact(&mut len) {
            Ok(()) => {}
            // The parent closed the pipe: the job is done.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return 0,
            Err(_) => return 4,
        }
        let name_len = u32::from_be_bytes(len) as usize;
        if name_len > MAX_NAME {
            return 4;
        }
        let mut name = vec![0u8; name_len];
        let mut size = [0u8; 8];
        if stdin.read_exact(&mut name).is_err() || stdin.read_exact(&mut size).is_err() {
            return 4;
        }
        let size = u64::from_be_bytes(size);
        if size > MAX_INPUT {
            return 4;
        }
        let mut bytes = Vec::new();
        if (&mut stdin).take(size).read_to_end(&mut bytes).is_err() || bytes.len() as u64 != size {
            return 4;
        }
        let name = String::from_utf8_lossy(&name);
        let answer = match extract(&name, &bytes) {
            Ok(mut doc) => {
                cut(&mut doc.text, max_chars);
                ChildAnswer::Extracted {
                    title: doc.title,
                    text: doc.text,
                }
            }
            Err(error) => ChildAnswer::Failed { error },
        };
        drop(bytes);
        let Ok(json) = serde_json::to_vec(&answer) else {
            return 5;
        };
        if stdout
            .write_all(&(json.len() as u64).to_be_bytes())
            .is_err()
            || stdout.write_all(&json).is_err()
            || stdout.flush().is_err()
        {
            return 6;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries() {
        let mut s = "héllo wörld".to_owned();
        cut(&mut s, 4);
        assert_eq!(s, "héll");
        let mut short = "ab".to_owned();
        cut(&mut short, 4);
        assert_eq!(short, "ab");
    }

    #[test]
    fn only_formats_that_inflate_or_nest_go_to_a_child() {
        assert!(isolated("a/b.PDF"));
        assert!(isolated("x.htm"));
        assert!(!isolated("notes.md"));
        assert!(!isolated("hours.txt"));
    }
}
