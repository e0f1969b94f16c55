//! Data-plane benchmark: the same chat-completion requests straight to the simulator (zero
//! latency) and through SOPHIA (warm tenant cache), at several concurrencies, with `hey` as the
//! load generator; streaming time-to-first-byte both ways; cold-tenant first-request latency;
//! RSS idle and with 10,000 tenants cached. Prints a table and appends it to BENCHMARKS.md.
//!
//! Run: `cargo bench --bench data_plane` (needs `hey`: `apt-get install hey`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sophia");
const SIM_KEY: &str = "bench-sim-key";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_ready(url: &str) {
    let started = Instant::now();
    while reqwest::blocking::get(url)
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{url} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

struct HeyResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: bool,
}

/// Runs `hey` for `secs` at concurrency `c`; parses requests/s and the latency distribution.
fn hey(url: &str, headers: &[(&str, &str)], body: &str, c: usize, secs: u64) -> HeyResult {
    let mut cmd = Command::new("hey");
    cmd.args([
        "-z",
        &format!("{secs}s"),
        "-c",
        &c.to_string(),
        "-m",
        "POST",
        "-T",
        "application/json",
        "-d",
        body,
    ]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("hey is installed (apt-get install hey)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let grab = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().find_map(|w| w.parse::<f64>().ok()))
            .unwrap_or(f64::NAN)
    };
    let pct = |p: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{p}% in")))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|s| s * 1000.0)
            .unwrap_or(f64::NAN)
    };
    let status_ok = text
        .lines()
        .filter(|l| l.contains("responses"))
        .all(|l| l.trim_start().starts_with("[200]"));
    HeyResult {
        rps: grab("Requests/sec:"),
        p50_ms: pct("50"),
        p99_ms: pct("99"),
        errors: !status_ok || text.contains("Error distribution"),
    }
}

/// Time to the first body byte of a streamed request, `n` times; (p50, p99) in ms.
fn ttfb(
    client: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
    n: usize,
) -> (f64, f64) {
    use std::io::Read;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = client.post(url).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let started = Instant::now();
        let mut resp = req.send().unwrap();
        assert!(resp.status().is_success());
        let mut byte = [0u8; 1];
        resp.read_exact(&mut byte).unwrap();
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        let mut rest = Vec::new();
        let _ = resp.read_to_end(&mut rest);
    }
    samples.sort_by(f64::total_cmp);
    (samples[n / 2], samples[(n * 99 / 100).min(n - 1)])
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

fn main() {
    if Command::new("hey").arg("-h").output().is_err() {
        eprintln!("data_plane bench needs `hey` (apt-get install hey)");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let (sim_port, port) = (free_port(), free_port());
    let sim = Command::new(BIN)
        .args([
            "simulator",
            "--port",
            &sim_port.to_string(),
            "--key",
            SIM_KEY,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Command::new(BIN)
        .env_clear()
        .env("SOPHIA_DATA_DIR", dir.path())
        .env("SOPHIA_PORT", port.to_string())
        .env("SOPHIA_LOG", "warn")
        .env("SOPHIA_BCRYPT_COST", "4")
        .env("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")
        .env("SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS", "0")
        .env("SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (sim_base, base) = (
        format!("http://127.0.0.1:{sim_port}"),
        format!("http://127.0.0.1:{port}"),
    );
    wait_ready(&format!("{sim_base}/"));
    wait_ready(&format!("{base}/"));
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_mib(server.id());

    let admin = String::from_utf8(
        Command::new(BIN)
            .env_clear()
            .env("SOPHIA_DATA_DIR", dir.path())
            .args(["admin-token", "--role", "PLATFORM_ADMIN", "--ttl", "36000"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let client = reqwest::blocking::Client::new();
    let create = |company: &str| -> String {
        let created: Value = client
            .post(format!("{base}/admin/agent-instances"))
            .bearer_auth(&admin)
            .json(
                &json!({"companyId": company, "agentType": "SOPHIA", "azureProjectId": "p",
                           "azureOpenaiEndpoint": sim_base, "azureOpenaiDeployment": "gpt-4o",
                           "credentials": {"azureOpenaiKey": SIM_KEY}, "settings": {"topK": 1}}),
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        let key = created["agentAccessKey"].as_str().unwrap().to_owned();
        let token: Value = client
            .post(format!("{base}/agents/auth/token"))
            .json(&json!({"companyId": company, "agentAccessKey": key}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        token["access_token"].as_str().unwrap().to_owned()
    };
    let token = create("bench");
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello, how are you today?"}]});
    let body_text = body.to_string();
    let direct_url =
        format!("{sim_base}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21");
    let sophia_url = format!("{base}/v1/chat/completions");
    let bearer = format!("Bearer {token}");
    let direct_headers = [("api-key", SIM_KEY)];
    let sophia_headers = [("Authorization", bearer.as_str())];
    // Warm both paths (connection pools, tenant cache).
    hey(&direct_url, &direct_headers, &body_text, 4, 2);
    hey(&sophia_url, &sophia_headers, &body_text, 4, 2);

    let mut rows: Vec<String> = Vec::new();
    rows.push("| concurrency | direct RPS | direct p50 / p99 ms | SOPHIA RPS | SOPHIA p50 / p99 ms | overhead p50 / p99 ms |".into());
    rows.push("|---|---|---|---|---|---|".into());
    for c in [1, 8, 32, 64] {
        let d = hey(&direct_url, &direct_headers, &body_text, c, 5);
        let s = hey(&sophia_url, &sophia_headers, &body_text, c, 5);
        let flag = if d.errors || s.errors {
            " (non-200 seen)"
        } else {
            ""
        };
        rows.push(format!(
            "| {c} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2}{flag} |",
            d.rps,
            d.p50_ms,
            d.p99_ms,
            s.rps,
            s.p50_ms,
            s.p99_ms,
            s.p50_ms - d.p50_ms,
            s.p99_ms - d.p99_ms
        ));
    }

    // Streaming time to first byte.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let (d50, d99) = ttfb(&client, &direct_url, &direct_headers, &stream_body, 200);
    let (s50, s99) = ttfb(&client, &sophia_url, &sophia_headers, &stream_body, 200);

    // Cold tenants: the first request of a tenant loads its runtime (store + secret reads).
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..30 {
        let t = create(&format!("cold-{i}"));
        let send = || {
            let started = Instant::now();
            let r = client
                .post(&sophia_url)
                .bearer_auth(&t)
                .json(&body)
                .send()
                .unwrap();
            assert!(r.status().is_success());
            let _ = r.bytes();
            started.elapsed().as_secs_f64() * 1000.0
        };
        cold.push(send());
        warm.push(send());
    }
    cold.sort_by(f64::total_cmp);
    warm.sort_by(f64::total_cmp);

    // 10,000 tenants cached.
    let started = Instant::now();
    for i in 0..10_000 {
        let t = create(&format!("t{i:05}"));
        let r = client
            .post(&sophia_url)
            .bearer_auth(&t)
            .json(&body)
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let health: Value = client
        .get(format!("{base}/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let cached = health["tenantCache"]["entries"].as_u64().unwrap_or(0);
    let rss_10k = rss_mib(server.id());
    stop(server);
    stop(sim);

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut table = format!(
        "\n## Data plane — {} ({cores} cores, release build; load generator `hey` on the same machine)\n\nNon-streamed chat completions, the same body straight to the simulator (zero latency) and through SOPHIA's `/v1/chat/completions` (service-token check, warm tenant runtime, knowledge lookup, usage recording):\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    for r in &rows {
        table.push_str(r);
        table.push('\n');
    }
    table.push_str(&format!(
        "\n| measure | value |\n|---|---|\n\
         | streaming TTFB direct p50 / p99 | {d50:.2} / {d99:.2} ms |\n\
         | streaming TTFB through SOPHIA p50 / p99 | {s50:.2} / {s99:.2} ms |\n\
         | streaming TTFB overhead p50 / p99 | {:.2} / {:.2} ms |\n\
         | cold tenant first request p50 / max (30 tenants) | {:.2} / {:.2} ms |\n\
         | same tenants, second request p50 | {:.2} ms |\n\
         | RSS idle | {idle_rss:.1} MiB |\n\
         | RSS with {cached} tenants cached | {rss_10k:.1} MiB |\n\
         | creating + first chat of 10,000 tenants | {fill_secs:.1} s |\n",
        s50 - d50,
        s99 - d99,
        cold[cold.len() / 2],
        cold[cold.len() - 1],
        warm[warm.len() / 2],
    ));
    println!("{table}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let mut existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    existing.push_str(&table);
    std::fs::write(path, existing).unwrap();
}
