//! The offline Azure rig: the Cosmos DB emulator (`rig/cosmos.js`, npm
//! `@vercel/cosmosdb-server` behind a small front), started once per test process.
//!
//! `rig/node_modules` is installed by `.ci/run`; when it is missing (a fresh clone running
//! `cargo test`), the first test that needs it runs `npm ci --prefix rig` itself.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

fn rig_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rig")
}

/// Installs the rig's npm packages once (guarded by a lock file across test processes).
fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = rig_dir();
        let markers = [
            dir.join("node_modules/@vercel/cosmosdb-server/package.json"),
            dir.join("node_modules/azurite/package.json"),
        ];
        let installed = || markers.iter().all(|m| m.exists());
        if installed() {
            return;
        }
        let lock = dir.join(".install.lock");
        // Another test process may be installing: wait for its lock to go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(_) => break,
                Err(_) if std::time::Instant::now() < deadline => {
                    if installed() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => panic!("waiting for {}: {e}", lock.display()),
            }
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&lock);
        match status {
            Ok(s) if s.success() => {}
            other => panic!(
                "the test rig needs Node.js and npm: `npm ci --prefix rig` failed ({other:?})"
            ),
        }
    });
}

/// A rig process; it is killed when dropped (and exits by itself with the test process).
pub struct Running {
    child: Child,
    pub url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `node rig/<script>` and waits for its `READY <url>` line.
fn start(script: &str) -> Running {
    ensure_installed();
    let mut child = Command::new("node")
        .arg(rig_dir().join(script))
        .args(["--port", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting node {script} (is Node.js installed?): {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the rig's READY line");
    let url = line
        .trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("{script} did not start: {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    Running { child, url }
}

/// The Cosmos DB emulator's endpoint (`http://127.0.0.1:PORT`), shared by the process's tests.
/// It exits when the test process does (it watches its stdin).
pub fn cosmos_endpoint() -> String {
    static COSMOS: OnceLock<Mutex<Running>> = OnceLock::new();
    COSMOS
        .get_or_init(|| Mutex::new(start("cosmos.js")))
        .lock()
        .map(|r| r.url.clone())
        .unwrap_or_else(|e| e.into_inner().url.clone())
}

/// A Cosmos DB emulator of the caller's own (for tests that inject faults).
pub fn private_cosmos() -> Running {
    start("cosmos.js")
}

/// Azurite's Blob and Queue endpoints (`http://127.0.0.1:PORT`), shared by the process's
/// tests (account `devstoreaccount1`).
pub fn azurite() -> (String, String) {
    static AZURITE: OnceLock<Mutex<Running>> = OnceLock::new();
    let url = AZURITE
        .get_or_init(|| Mutex::new(start("azurite.js")))
        .lock()
        .map(|r| r.url.clone())
        .unwrap_or_else(|e| e.into_inner().url.clone());
    let mut parts = url.split_whitespace();
    let blob = parts.next().unwrap_or_default().to_owned();
    let queue = parts.next().unwrap_or_default().to_owned();
    (blob, queue)
}

/// A database name no other test uses.
pub fn fresh_database() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}
