//! The real binary, driven as an operator would: a server process with its own data dir and
//! environment, the CLI's admin-token command, the Azure OpenAI simulator.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sophia");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn command(dir: &std::path::Path, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SOPHIA_DATA_DIR", dir)
        .env("SOPHIA_PORT", port.to_string())
        .env("SOPHIA_BCRYPT_COST", "4");
    cmd
}

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub log: std::path::PathBuf,
}

impl Server {
    pub fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = dir.join(format!("stdout-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = command(dir, port);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let err = std::fs::File::create(dir.join(format!("stderr-{port}.log"))).unwrap();
        let child = cmd.stdout(file).stderr(err).spawn().unwrap();
        let mut server = Self { child, port, log };
        server.wait_ready();
        server
    }

    /// Polls `GET /` (bounded) until the server answers.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                let stderr = std::fs::read_to_string(
                    self.log.with_file_name(format!("stderr-{}.log", self.port)),
                )
                .unwrap_or_default();
                panic!("server exited ({status}) before it was ready:\n{stderr}");
            }
            if let Ok(resp) = reqwest::blocking::get(self.url("/"))
                && resp.status().is_success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("server did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        #[cfg(unix)]
        sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr =
            std::fs::read_to_string(self.log.with_file_name(format!("stderr-{}.log", self.port)))
                .unwrap_or_default();
        (
            status,
            std::fs::read_to_string(&self.log).unwrap() + &stderr,
        )
    }
}

#[cfg(unix)]
pub fn sigterm(pid: u32) {
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
}

/// Starts `sophia simulator` accepting `key`; returns the process and its base URL once it
/// answers (bounded wait).
pub fn start_simulator(key: &str) -> (Child, String) {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["simulator", "--port", &port.to_string(), "--key", key])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::blocking::get(format!("{url}/")).is_err() {
        assert!(Instant::now() < deadline, "simulator did not start");
        std::thread::sleep(Duration::from_millis(25));
    }
    (child, url)
}

/// Creates an instance through the admin API (asserting 201) and exchanges its one-time key;
/// returns the created body and a service token.
pub fn create_and_exchange(
    server: &Server,
    admin: &str,
    body: &serde_json::Value,
) -> (serde_json::Value, String) {
    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(admin)
        .json(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: serde_json::Value = resp.json().unwrap();
    let token: serde_json::Value = client
        .post(server.url("/agents/auth/token"))
        .json(&serde_json::json!({"companyId": body["companyId"], "agentAccessKey": created["agentAccessKey"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    (created, token)
}

pub fn admin_token(dir: &std::path::Path, args: &[&str]) -> String {
    admin_token_with(dir, &[], args)
}

/// `sophia admin-token` with extra environment (the server's admin settings).
pub fn admin_token_with(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut cmd = command(dir, 0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.arg("admin-token").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
