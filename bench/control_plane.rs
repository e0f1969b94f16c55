//! Control-plane benchmark: start-up time to the first `GET /` answer, idle RSS, and
//! token-exchange latency at the default bcrypt cost beside the bare bcrypt verify time.
//! Prints a table and appends it to BENCHMARKS.md. Run: `cargo bench --bench control_plane`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sophia");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &std::path::Path, port: u16, extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("SOPHIA_DATA_DIR", dir)
        .env("SOPHIA_PORT", port.to_string())
        .env("SOPHIA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// One raw HTTP/1.1 `GET /`; true on a 200.
fn probe(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

/// Time from spawn to the first 200 on `GET /` (polling every 200 µs, bounded).
fn time_to_ready(dir: &std::path::Path, extra: &[(&str, &str)]) -> (Duration, Child, u16) {
    let port = free_port();
    let started = Instant::now();
    let child = spawn(dir, port, extra);
    while !probe(port) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    (started.elapsed(), child, port)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. Start-up: a fresh data dir (creates keys, schema) and an existing one.
    let mut fresh = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let (t, child, _) = time_to_ready(dir.path(), &[]);
        fresh.push(t);
        stop(child);
        let (t, child, _) = time_to_ready(dir.path(), &[]);
        warm.push(t);
        stop(child);
    }
    fresh.sort();
    warm.sort();
    rows.push((
        "start-up to first GET /, new data dir (p50 / max of 10)".into(),
        format!(
            "{} / {} ms",
            ms(pct(&fresh, 0.5)),
            ms(*fresh.last().unwrap())
        ),
    ));
    rows.push((
        "start-up to first GET /, existing data dir (p50 / max of 10)".into(),
        format!("{} / {} ms", ms(pct(&warm, 0.5)), ms(*warm.last().unwrap())),
    ));

    // 2. Idle RSS, then token exchange at the default bcrypt cost (12).
    let dir = tempfile::tempdir().unwrap();
    let limits = [
        ("SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS", "0"),
        ("SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY", "0"),
    ];
    let (_, child, port) = time_to_ready(dir.path(), &limits);
    std::thread::sleep(Duration::from_secs(1));
    rows.push((
        "idle RSS after start-up".into(),
        format!("{:.1} MiB", rss_kib(child.id()) as f64 / 1024.0),
    ));

    let admin = String::from_utf8(
        Command::new(BIN)
            .env_clear()
            .env("SOPHIA_DATA_DIR", dir.path())
            .args(["admin-token", "--role", "PLATFORM_ADMIN"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::new();
    let created: Value = client
        .post(format!("{base}/admin/agent-instances"))
        .bearer_auth(&admin)
        .json(&json!({"companyId": "bench", "agentType": "SOPHIA", "azureProjectId": "p"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = created["agentAccessKey"].as_str().unwrap().to_owned();
    let hash_cost = 12;
    let body = json!({"companyId": "bench", "agentType": "SOPHIA", "agentAccessKey": key});
    // Warm the connection pool.
    assert!(
        client
            .post(format!("{base}/agents/auth/token"))
            .json(&body)
            .send()
            .unwrap()
            .status()
            .is_success()
    );
    let mut exchange = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let resp = client
            .post(format!("{base}/agents/auth/token"))
            .json(&body)
            .send()
            .unwrap();
        assert!(resp.status().is_success());
        let _ = resp.bytes();
        exchange.push(t.elapsed());
    }
    exchange.sort();
    // Concurrent throughput: bcrypt work is bounded by cores, so this shows the ceiling.
    let started = Instant::now();
    let per_thread = 8;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (base, body) = (base.clone(), body.clone());
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                for _ in 0..per_thread {
                    assert!(
                        c.post(format!("{base}/agents/auth/token"))
                            .json(&body)
                            .send()
                            .unwrap()
                            .status()
                            .is_success()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let throughput = (4 * per_thread) as f64 / started.elapsed().as_secs_f64();
    // A failed exchange costs the same bcrypt work (no timing oracle).
    let wrong = json!({"companyId": "bench", "agentType": "SOPHIA", "agentAccessKey": "sph_000000000000000000000000000000000000"});
    let unknown = json!({"companyId": "nobody", "agentType": "SOPHIA", "agentAccessKey": "sph_000000000000000000000000000000000000"});
    let mut fail_wrong = Vec::new();
    let mut fail_unknown = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        assert_eq!(
            client
                .post(format!("{base}/agents/auth/token"))
                .json(&wrong)
                .send()
                .unwrap()
                .status(),
            401
        );
        fail_wrong.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(
            client
                .post(format!("{base}/agents/auth/token"))
                .json(&unknown)
                .send()
                .unwrap()
                .status(),
            401
        );
        fail_unknown.push(t.elapsed());
    }
    fail_wrong.sort();
    fail_unknown.sort();
    rows.push((
        "RSS after 60 token exchanges".into(),
        format!("{:.1} MiB", rss_kib(child.id()) as f64 / 1024.0),
    ));
    stop(child);

    // Bare bcrypt verify at the same cost, in this process.
    let hash = bcrypt::hash(&key, hash_cost).unwrap();
    let mut bare = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        assert!(bcrypt::verify(&key, &hash).unwrap());
        bare.push(t.elapsed());
    }
    bare.sort();
    rows.push((
        format!("bare bcrypt verify, cost {hash_cost} (p50 / p99)"),
        format!("{} / {} ms", ms(pct(&bare, 0.5)), ms(pct(&bare, 0.99))),
    ));
    rows.push((
        format!("token exchange, cost {hash_cost}, sequential (p50 / p99)"),
        format!(
            "{} / {} ms",
            ms(pct(&exchange, 0.5)),
            ms(pct(&exchange, 0.99))
        ),
    ));
    rows.push((
        "token exchange overhead over bare bcrypt (p50)".into(),
        format!(
            "{} ms ({:.3}×)",
            ms(pct(&exchange, 0.5).saturating_sub(pct(&bare, 0.5))),
            pct(&exchange, 0.5).as_secs_f64() / pct(&bare, 0.5).as_secs_f64()
        ),
    ));
    rows.push((
        "token exchange, 4 concurrent clients".into(),
        format!("{throughput:.1} exchanges/s"),
    ));
    rows.push((
        "failed exchange p50: wrong key / unknown company".into(),
        format!(
            "{} / {} ms",
            ms(pct(&fail_wrong, 0.5)),
            ms(pct(&fail_unknown, 0.5))
        ),
    ));

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut table = format!(
        "\n## Control plane — {} ({} cores, release build)\n\n| measure | value |\n|---|---|\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        cores
    );
    for (k, v) in &rows {
        table.push_str(&format!("| {k} | {v} |\n"));
    }
    println!("{table}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let mut existing = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# Benchmarks\n\nResults appended by `cargo bench`; newest last.\n".into()
    });
    existing.push_str(&table);
    std::fs::write(path, existing).unwrap();
}
