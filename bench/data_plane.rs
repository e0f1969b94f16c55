//! Data-plane benchmark. First the floor: at c=32, the same chat-completion request against a
//! fixed-answer nginx upstream directly, through nginx as a plain keep-alive reverse proxy
//! (the physical cost of one extra hop), and through SOPHIA's `/v1/chat/completions` — req/s,
//! p50/p99, and CPU µs per request of the hop (SOPHIA's and nginx's, from `/proc/<pid>/stat`),
//! with SOPHIA's ratio to the nginx hop. Then, against the simulator (zero latency): direct vs
//! SOPHIA at several concurrencies, streaming time-to-first-byte, cold-tenant first requests,
//! RSS idle and with 10,000 tenants cached. Prints the tables and appends them to
//! BENCHMARKS.md.
//!
//! Run: `cargo bench --bench data_plane` (needs `hey` and `nginx`: `apt-get install hey
//! nginx-light`). `BENCH_FLOOR_ONLY=1` runs the floor alone and appends nothing; `BENCH_LIMITS_ONLY=1`
//! runs the limit-check comparison alone, `BENCH_TELEMETRY_ONLY=1` the paired telemetry one
//! (`BENCH_BLOCKS` blocks of fresh servers, default 5, × `BENCH_PAIRS` rounds, default 4;
//! `BENCH_BASELINE_BIN=<another build's sophia>` compares that build with this one at sampling
//! 1.0 in the same run).
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
    hey_at(url, headers, body, c, secs, None)
}

/// `hey`, each worker held to `qps` requests a second when given (a fixed load).
fn hey_at(
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    c: usize,
    secs: u64,
    qps: Option<u32>,
) -> HeyResult {
    let mut cmd = Command::new("hey");
    if let Some(q) = qps {
        cmd.args(["-q", &q.to_string()]);
    }
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

/// CPU time (user + system) a process and its reaped children have used, in µs.
fn cpu_us(pid: u32) -> f64 {
    cpu_us_of(&format!("/proc/{pid}/stat"))
}

/// The user + system CPU of a `/proc/…/stat` file, in µs.
fn cpu_us_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks * 1_000_000.0 / clock_ticks()
}

/// CPU time of a process in µs, to the nanosecond: the sum of its threads' run times
/// (`/proc/<pid>/task/*/schedstat`), with the thread ids it was taken over. `/proc/<pid>/stat`
/// counts in clock ticks (10 ms: 2.5 µs per request over a 4,000-request round) but keeps the
/// time of threads that have ended; [`cpu_between`] uses this when the threads stayed the same.
fn precise_cpu(pid: u32) -> (f64, Vec<u32>) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0.0, Vec::new());
    };
    let mut tids: Vec<u32> = tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| t.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    tids.sort_unstable();
    let ns: f64 = tids
        .iter()
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .sum();
    (ns / 1000.0, tids)
}

/// A process's CPU at one moment, both ways (see [`precise_cpu`]).
#[derive(Clone)]
struct CpuMark {
    ticks_us: f64,
    precise_us: f64,
    tids: Vec<u32>,
}

fn cpu_mark(pid: u32) -> CpuMark {
    let (precise_us, tids) = precise_cpu(pid);
    CpuMark {
        ticks_us: cpu_us(pid),
        precise_us,
        tids,
    }
}

/// The CPU µs between two marks: to the nanosecond when no thread came or went.
fn cpu_between(before: &CpuMark, after: &CpuMark) -> f64 {
    if before.tids == after.tids && !after.tids.is_empty() {
        after.precise_us - before.precise_us
    } else {
        after.ticks_us - before.ticks_us
    }
}

/// CPU time of the threads of `pid` named `name` (the telemetry exporter's), in µs, to the
/// nanosecond.
fn thread_cpu_us(pid: u32, name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|ns| ns / 1000.0)
        .sum()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The pids of an nginx master's worker processes.
fn workers(master: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A fixed-answer upstream (`upstream_port`) and a keep-alive reverse proxy to it
/// (`proxy_port`), in one nginx with two workers (SOPHIA has two cores too).
fn nginx(dir: &std::path::Path, upstream_port: u16, proxy_port: u16, ingest_port: u16) -> Child {
    let answer = json!({"id": "chatcmpl-fixed", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "I am fine, thank you."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}})
    .to_string();
    let conf = format!(
        "worker_processes 2;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
           keepalive_requests 1000000;\n\
           upstream fixed {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n\
           server {{ listen 127.0.0.1:{upstream_port}; location / {{ default_type application/json; return 200 '{answer}'; }} }}\n\
           server {{ listen 127.0.0.1:{proxy_port}; location / {{ proxy_pass http://fixed; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
           server {{ listen 127.0.0.1:{ingest_port}; client_max_body_size 64m; location / {{ default_type application/json; return 200 '{{\"itemsReceived\":0,\"itemsAccepted\":0,\"errors\":[]}}'; }} }}\n\
         }}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    Command::new("nginx")
        .args(["-p", &dir.display().to_string(), "-c"])
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed (apt-get install nginx-light)")
}

/// Starts SOPHIA on `dir` and `port` with the bench settings and `extra`.
fn spawn_sophia(dir: &std::path::Path, port: u16, extra: &[(&str, &str)]) -> Child {
    spawn_binary(BIN, dir, port, extra)
}

/// [`spawn_sophia`] with another build of SOPHIA (a baseline to compare with).
fn spawn_binary(bin: &str, dir: &std::path::Path, port: u16, extra: &[(&str, &str)]) -> Child {
    let mut server = Command::new(bin);
    server.env_clear();
    // Allocator tuning under test (e.g. MIMALLOC_PURGE_DELAY) reaches the server.
    for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("MIMALLOC_")) {
        server.env(k, v);
    }
    for (k, v) in extra {
        server.env(k, v);
    }
    server
        .env("SOPHIA_DATA_DIR", dir)
        .env("SOPHIA_PORT", port.to_string())
        .env("SOPHIA_LOG", "warn")
        .env("SOPHIA_BCRYPT_COST", "4")
        .env("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")
        .env("SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS", "0")
        .env("SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A platform admin token for the SOPHIA on `dir`.
fn admin_token(dir: &std::path::Path) -> String {
    String::from_utf8(
        Command::new(BIN)
            .env_clear()
            .env("SOPHIA_DATA_DIR", dir)
            .args(["admin-token", "--role", "PLATFORM_ADMIN", "--ttl", "36000"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned()
}

/// Creates `company`'s instance on `upstream` through SOPHIA at `base`; its service token.
fn tenant(
    client: &reqwest::blocking::Client,
    base: &str,
    admin: &str,
    company: &str,
    upstream: &str,
) -> String {
    let created: Value = client
        .post(format!("{base}/admin/agent-instances"))
        .bearer_auth(admin)
        .json(
            &json!({"companyId": company, "agentType": "SOPHIA", "azureProjectId": "p",
                       "azureOpenaiEndpoint": upstream, "azureOpenaiDeployment": "gpt-4o",
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
}

/// The limit check in the data plane: `plain` (a company without limits, its bearer and the
/// server's pid) against a company with `requestsPerMinute`, `tokensPerMinute`, `tokensPerDay`
/// and `tokensPerMonth` set (never reached), in turns at 32 workers × 100 req/s, 10 pairs of
/// 4 s (alternating which goes first): SOPHIA's CPU per request, the median difference.
fn limits_rows(
    client: &reqwest::blocking::Client,
    (base, admin): (&str, &str),
    sim_base: &str,
    (url, plain_bearer, pid): (&str, &str, u32),
    body_text: &str,
) -> String {
    let limited = tenant(client, base, admin, "limited", sim_base);
    let instances: Value = client
        .get(format!("{base}/admin/agent-instances?companyId=limited"))
        .bearer_auth(admin)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = instances["items"][0]["id"].as_str().unwrap().to_owned();
    let patched = client
        .patch(format!("{base}/admin/agent-instances/{id}"))
        .bearer_auth(admin)
        .json(
            &json!({"settings": {"requestsPerMinute": 1_000_000_000_000u64,
            "tokensPerMinute": 1_000_000_000_000u64, "tokensPerDay": 1_000_000_000_000u64,
            "tokensPerMonth": 1_000_000_000_000u64}}),
        )
        .send()
        .unwrap();
    assert!(patched.status().is_success(), "{}", patched.text().unwrap());
    let limited_bearer = format!("Bearer {limited}");
    hey(url, &[("Authorization", &limited_bearer)], body_text, 4, 2);
    let secs = 4;
    let one = |bearer: &str| {
        let before = cpu_us(pid);
        let r = hey_at(
            url,
            &[("Authorization", bearer)],
            body_text,
            32,
            secs,
            Some(100),
        );
        assert!(!r.errors, "a limited request was refused or failed");
        ((cpu_us(pid) - before) / (r.rps * secs as f64), r.p99_ms)
    };
    // Pairs of the paired comparison (`BENCH_PAIRS`, default 10).
    let pair_count: usize = std::env::var("BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // Warm the limited company's windows (its first sync) before measuring.
    one(&limited_bearer);
    let mut pairs = Vec::new();
    for k in 0..pair_count {
        // Alternating which goes first, so a drift during a pair cancels over the run.
        let (plain, with) = if k % 2 == 0 {
            let plain = one(plain_bearer);
            (plain, one(&limited_bearer))
        } else {
            let with = one(&limited_bearer);
            (one(plain_bearer), with)
        };
        pairs.push((plain, with));
    }
    let mut deltas: Vec<f64> = pairs.iter().map(|(p, w)| w.0 - p.0).collect();
    deltas.sort_by(f64::total_cmp);
    let mut plains: Vec<f64> = pairs.iter().map(|(p, _)| p.0).collect();
    plains.sort_by(f64::total_cmp);
    let mut p99s: Vec<f64> = pairs.iter().map(|(p, w)| w.1 - p.1).collect();
    p99s.sort_by(f64::total_cmp);
    format!(
        "Limits vs none, paired at a fixed 3200 req/s on `/v1/chat/completions` ({pair_count} pairs of {secs} s, alternating which goes first): median {:+.1} µs CPU per request (pairs {}), on a plain median of {:.1} µs; p99 change median {:+.2} ms.",
        deltas[deltas.len() / 2],
        pairs
            .iter()
            .map(|(p, w)| format!("{:+.1}", w.0 - p.0))
            .collect::<Vec<_>>()
            .join(", "),
        plains[plains.len() / 2],
        p99s[p99s.len() / 2],
    )
}

/// One SOPHIA of the telemetry comparison: started, given the `floor` company, stopped with
/// its block.
struct Role {
    child: Child,
    _dir: tempfile::TempDir,
    base: String,
    bearer: String,
}

impl Role {
    fn start(
        client: &reqwest::blocking::Client,
        fixed_base: &str,
        bin: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = spawn_binary(bin, dir.path(), port, env);
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{base}/"));
        let token = tenant(client, &base, &admin_token(dir.path()), "floor", fixed_base);
        Self {
            child,
            _dir: dir,
            base,
            bearer: format!("Bearer {token}"),
        }
    }
}

/// Telemetry's whole cost, paired at a fixed load on the floor upstream: SOPHIA with export
/// off (`[0]`) against App Insights export at sampling 1.0 (`[1]`: every request and model
/// call exported; its CPU split into the request threads and the exporter thread) and at
/// sampling 0 (`[2]`: failures only), and an A/A control (`[3]`: another server with export
/// off), in rounds that load all four **at once**, 800 req/s each: this VM's speed drifts by
/// ±20 % over seconds, so servers measured one after another (as before 2026-12-07) differed
/// by that much more than by what they did; measured together, they share it. And a process
/// keeps its own luck for its life (where its memory and threads landed: an A/A pair of
/// long-lived servers differed by up to 8 µs for a whole run), so the four are started afresh
/// for each block of rounds (`BENCH_BLOCKS`, default 5, of `BENCH_PAIRS` rounds, default 4),
/// in a rotating order, the two compared servers trading load slots every other block. Each
/// telemetry server is compared with the mean of the two export-off servers of its round; the
/// difference between those two is the A/A control, whose spread gives the error of the means.
///
/// `BENCH_BASELINE_BIN=<another build's sophia binary>` puts that build at sampling 1.0 in the
/// sampling-0 server's place: the two builds' full-export cost, paired per round, is then a
/// code change's effect measured in the same run (two runs of one build differ by up to 4 µs).
fn telemetry_rows(
    client: &reqwest::blocking::Client,
    body_text: &str,
    fixed_base: &str,
    connection: &str,
) -> String {
    let secs = 5;
    // (CPU µs per request, the exporter thread's share, p99 ms)
    let one = |(url, bearer, pid): (&str, &str, u32)| {
        let before = cpu_mark(pid);
        let export_before = thread_cpu_us(pid, "sophia-telemetr");
        let r = hey_at(
            url,
            &[("Authorization", bearer)],
            body_text,
            32,
            secs,
            Some(25),
        );
        assert!(!r.errors, "a request failed");
        let n = r.rps * secs as f64;
        // What the exporter still has to post belongs to this run.
        std::thread::sleep(Duration::from_millis(1500));
        (
            cpu_between(&before, &cpu_mark(pid)) / n,
            (thread_cpu_us(pid, "sophia-telemetr") - export_before) / n,
            r.p99_ms,
        )
    };
    let count = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(default)
    };
    let (blocks, per_block) = (count("BENCH_BLOCKS", 5), count("BENCH_PAIRS", 4));
    let baseline = std::env::var("BENCH_BASELINE_BIN")
        .ok()
        .filter(|b| !b.is_empty());
    let full: &[(&str, &str)] = &[("APPLICATIONINSIGHTS_CONNECTION_STRING", connection)];
    let envs: [&[(&str, &str)]; 4] = [
        &[],
        full,
        match baseline {
            Some(_) => full,
            None => &[
                ("APPLICATIONINSIGHTS_CONNECTION_STRING", connection),
                ("SOPHIA_TELEMETRY_SAMPLING", "0"),
            ],
        },
        &[],
    ];
    let bins = [BIN, BIN, baseline.as_deref().unwrap_or(BIN), BIN];
    let mut rows: Vec<[(f64, f64, f64); 4]> = Vec::new();
    let (mut exported, mut dropped, mut failed) = (0u64, 0u64, 0u64);
    for block in 0..blocks {
        // Which role each load slot serves: the two compared servers trade slots every other
        // block (a slot's hey and its place in the round carry a bias of their own).
        let role_of: [usize; 4] = if block % 2 == 1 {
            [0, 2, 1, 3]
        } else {
            [0, 1, 2, 3]
        };
        let slot_of = |role: usize| role_of.iter().position(|&r| r == role).unwrap();
        let mut started: Vec<Option<Role>> = (0..4).map(|_| None).collect();
        for k in 0..4 {
            let i = (block + k) % 4;
            let r = role_of[i];
            started[i] = Some(Role::start(client, fixed_base, bins[r], envs[r]));
        }
        let roles: Vec<Role> = started.into_iter().map(|r| r.unwrap()).collect();
        let urls: Vec<String> = roles
            .iter()
            .map(|r| format!("{}/v1/chat/completions", r.base))
            .collect();
        let together = || {
            std::thread::scope(|scope| {
                let runs: Vec<_> = (0..4)
                    .map(|i| {
                        let t = (
                            urls[i].as_str(),
                            roles[i].bearer.as_str(),
                            roles[i].child.id(),
                        );
                        scope.spawn(move || one(t))
                    })
                    .collect();
                let got: Vec<_> = runs
                    .into_iter()
                    .map(|r| r.join().expect("a round ran"))
                    .collect();
                // By role, whatever slot served it.
                [0, 1, 2, 3].map(|role| got[slot_of(role)])
            })
        };
        // A warm-up round, not counted.
        together();
        rows.extend((0..per_block).map(|_| together()));
        let health: Value = client
            .get(format!("{}/health", roles[slot_of(1)].base))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let stat = |k: &str| health["telemetry"][k].as_u64().unwrap_or(0);
        exported += stat("exported");
        dropped += stat("dropped");
        failed += stat("failed");
        for role in roles {
            stop(role.child);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Against the mean of the two export-off servers (half the baseline's own noise); the
    // control is the difference between those two.
    let off = |r: &[(f64, f64, f64); 4], k: usize| match k {
        0 => (r[0].0 + r[3].0) / 2.0,
        _ => (r[0].2 + r[3].2) / 2.0,
    };
    let delta = |i: usize| -> Vec<f64> {
        rows.iter()
            .map(|r| {
                if i == 3 {
                    r[3].0 - r[0].0
                } else {
                    r[i].0 - off(r, 0)
                }
            })
            .collect()
    };
    let p99 = |i: usize| median(rows.iter().map(|r| r[i].2 - off(r, 2)).collect());
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    // The standard error of a mean of the rounds, from the control's spread.
    let aa = delta(3);
    let spread = (aa
        .iter()
        .map(|d| (d - mean(aa.clone())).powi(2))
        .sum::<f64>()
        / (aa.len().max(2) - 1) as f64)
        .sqrt();
    let error = spread / (aa.len() as f64).sqrt();
    let full_export = median(rows.iter().map(|r| r[1].1).collect());
    let list = |v: &[f64]| {
        v.iter()
            .map(|d| format!("{d:+.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(baseline) = &baseline {
        // This build against the baseline, both at sampling 1.0, paired per round.
        let paired: Vec<f64> = rows.iter().map(|r| r[1].0 - r[2].0).collect();
        let m = mean(paired.clone());
        let sd = (paired.iter().map(|d| (d - m).powi(2)).sum::<f64>()
            / (paired.len().max(2) - 1) as f64)
            .sqrt();
        return format!(
            "Telemetry at sampling 1.0, this build against {baseline}, four servers loaded at once at a fixed 800 req/s each on the floor upstream ({blocks} blocks of fresh servers × {per_block} rounds of {secs} s), against the mean of the two export-off servers (this build): this build median {:+.1} µs CPU per request (mean {:+.1}; exporter thread {:.1}), p99 {:+.2} ms; the baseline median {:+.1} µs (mean {:+.1}; exporter thread {:.1}), p99 {:+.2} ms; this build − the baseline, paired per round: median {:+.1} µs, mean {m:+.1} ± {:.1} (rounds {}); A/A control median {:+.1} µs (a round's spread {spread:.1} µs, a mean's ±{error:.1}); off median {:.1} µs. Exported {exported}, dropped {dropped}, failed {failed}.",
            median(delta(1)),
            mean(delta(1)),
            full_export,
            p99(1),
            median(delta(2)),
            mean(delta(2)),
            median(rows.iter().map(|r| r[2].1).collect()),
            p99(2),
            median(paired.clone()),
            sd / (paired.len() as f64).sqrt(),
            list(&paired),
            median(delta(3)),
            median(rows.iter().map(|r| r[0].0).collect()),
        );
    }
    format!(
        "Telemetry vs off, four servers loaded at once at a fixed 800 req/s each on the floor upstream ({blocks} blocks of fresh servers × {per_block} rounds of {secs} s): against the mean of the two servers with export off: sampling 1.0 median {:+.1} µs CPU per request (mean {:+.1}; rounds {}; exporter thread {:.1} µs of it), p99 {:+.2} ms; sampling 0 median {:+.1} µs (mean {:+.1}; rounds {}), p99 {:+.2} ms; A/A control (one export-off server against the other) median {:+.1} µs (rounds {}; a round's spread {spread:.1} µs, a mean's ±{error:.1}); off median {:.1} µs. Exported {exported}, dropped {dropped}, failed {failed}.",
        median(delta(1)),
        mean(delta(1)),
        list(&delta(1)),
        full_export,
        p99(1),
        median(delta(2)),
        mean(delta(2)),
        list(&delta(2)),
        p99(2),
        median(delta(3)),
        list(&delta(3)),
        median(rows.iter().map(|r| r[0].0).collect()),
    )
}

/// A `foundry` company on the simulator's Foundry project (its managed identity from the
/// simulator's identity endpoint), measured at c=32 for 10 s: the stand-in's own answer to the
/// agent's Responses call, SOPHIA's `/v1/chat/completions` on that company, and the same two
/// for the `sophia` runtime (the simulator's chat completions, SOPHIA on a `sophia` company).
fn foundry_rows(
    client: &reqwest::blocking::Client,
    sim_base: &str,
    (sophia_url, sophia_bearer, sophia_pid): (&str, &str, u32),
    body_text: &str,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let identity = format!("{sim_base}/msi/token");
    let server = spawn_sophia(
        dir.path(),
        port,
        &[
            ("SOPHIA_AZURE_CREDENTIAL", "managed_identity"),
            ("IDENTITY_ENDPOINT", identity.as_str()),
            ("IDENTITY_HEADER", "bench"),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/"));
    let client_id = "12121212-1212-4121-8121-121212121212";
    let created: Value = client
        .post(format!("{base}/admin/agent-instances"))
        .bearer_auth(admin_token(dir.path()))
        .json(
            &json!({"companyId": "fbench", "agentType": "SOPHIA", "azureOpenaiDeployment": "gpt-4o",
                      "azureProjectEndpoint": format!("{sim_base}/api/projects/bench"),
                      "settings": {"runtime": "foundry", "authMode": "managedIdentity",
                                   "managedIdentityClientId": client_id}}),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(created["status"], "ACTIVE", "{created}");
    let agent = created["azureAgentId"].as_str().unwrap().to_owned();
    let (name, version) = agent.split_once(':').unwrap();
    let token: Value = client
        .post(format!("{base}/agents/auth/token"))
        .json(&json!({"companyId": "fbench", "agentAccessKey": created["agentAccessKey"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let entra: Value = client
        .get(format!(
            "{identity}?api-version=2019-08-01&resource=https://ai.azure.com&client_id={client_id}"
        ))
        .header("x-identity-header", "bench")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let entra = format!("Bearer {}", entra["access_token"].as_str().unwrap());
    let agent_body =
        json!({"agent_reference": {"type": "agent_reference", "name": name, "version": version},
        "input": [{"role": "user", "content": "Hello, how are you today?"}],
        "include": ["file_search_call.results"]})
        .to_string();
    let foundry_direct = format!("{sim_base}/api/projects/bench/openai/v1/responses");
    let foundry_sophia = format!("{base}/v1/chat/completions");
    let chat_direct =
        format!("{sim_base}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21");
    hey(
        &foundry_direct,
        &[("Authorization", &entra)],
        &agent_body,
        4,
        2,
    );
    hey(
        &foundry_sophia,
        &[("Authorization", &bearer)],
        body_text,
        4,
        2,
    );
    let measure = |url: &str, auth: (&str, &str), body: &str, pid: Option<u32>| {
        std::thread::sleep(Duration::from_secs(1));
        let before = pid.map(cpu_us);
        let r = hey(url, &[auth], body, 32, 10);
        let cpu = match (pid, before) {
            (Some(pid), Some(b)) => (cpu_us(pid) - b) / (r.rps * 10.0),
            _ => 0.0,
        };
        (r, cpu)
    };
    let (fd, _) = measure(
        &foundry_direct,
        ("Authorization", &entra),
        &agent_body,
        None,
    );
    let (fs, fcpu) = measure(
        &foundry_sophia,
        ("Authorization", &bearer),
        body_text,
        Some(server.id()),
    );
    let (cd, _) = measure(&chat_direct, ("api-key", SIM_KEY), body_text, None);
    let (cs, ccpu) = measure(
        sophia_url,
        ("Authorization", sophia_bearer),
        body_text,
        Some(sophia_pid),
    );
    stop(server);
    format!(
        "Runtimes against the simulator (c=32, 10 s each; the simulator shares the two cores): \
         `foundry` — the stand-in's own agent turn {:.0} req/s, p50 {:.2} ms; through SOPHIA \
         {:.0} req/s, p50 {:.2} ms ({:+.2} ms), SOPHIA {:.0} µs CPU per request. `sophia` — the \
         simulator's chat completion {:.0} req/s, p50 {:.2} ms; through SOPHIA {:.0} req/s, p50 \
         {:.2} ms ({:+.2} ms), SOPHIA {:.0} µs CPU per request.",
        fd.rps,
        fd.p50_ms,
        fs.rps,
        fs.p50_ms,
        fs.p50_ms - fd.p50_ms,
        fcpu,
        cd.rps,
        cd.p50_ms,
        cs.rps,
        cs.p50_ms,
        cs.p50_ms - cd.p50_ms,
        ccpu,
    )
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

fn main() {
    for tool in ["hey", "nginx"] {
        if Command::new(tool).arg("-h").output().is_err() {
            eprintln!("data_plane bench needs `{tool}` (apt-get install hey nginx-light)");
            std::process::exit(1);
        }
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
    let server = spawn_sophia(dir.path(), port, &[]);
    let (sim_base, base) = (
        format!("http://127.0.0.1:{sim_port}"),
        format!("http://127.0.0.1:{port}"),
    );
    wait_ready(&format!("{sim_base}/"));
    wait_ready(&format!("{base}/"));
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_mib(server.id());

    let admin = admin_token(dir.path());
    let client = reqwest::blocking::Client::new();
    let create_on =
        |company: &str, upstream: &str| tenant(&client, &base, &admin, company, upstream);
    let create = |company: &str| create_on(company, &sim_base);
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

    let telemetry_only = std::env::var_os("BENCH_TELEMETRY_ONLY").is_some();
    let (foundry_line, limited_line) = if telemetry_only {
        (String::new(), String::new())
    } else {
        // The `foundry` runtime beside the `sophia` one, both against the simulator: a Foundry
        // agent's turn straight to the stand-in's project, then through SOPHIA.
        let foundry_line = foundry_rows(
            &client,
            &sim_base,
            (&sophia_url, &bearer, server.id()),
            &body_text,
        );
        println!("{foundry_line}");
        if std::env::var_os("BENCH_FOUNDRY_ONLY").is_some() {
            stop(server);
            stop(sim);
            return;
        }

        // The limit check's cost in the whole request: a company with all four limits (high
        // enough never to refuse) against one without, paired at a fixed load on one server.
        let limited_line = limits_rows(
            &client,
            (&base, &admin),
            &sim_base,
            (&sophia_url, &bearer, server.id()),
            &body_text,
        );
        println!("{limited_line}");
        if std::env::var_os("BENCH_LIMITS_ONLY").is_some() {
            stop(server);
            stop(sim);
            return;
        }
        (foundry_line, limited_line)
    };

    // The floor: a fixed-answer nginx upstream, directly, through an nginx hop, through SOPHIA.
    let nginx_dir = tempfile::tempdir().unwrap();
    let (fixed_port, hop_port, ingest_port) = (free_port(), free_port(), free_port());
    let proxy = nginx(nginx_dir.path(), fixed_port, hop_port, ingest_port);
    let fixed_base = format!("http://127.0.0.1:{fixed_port}");
    wait_ready(&format!("{fixed_base}/"));
    let floor_token = create_on("floor", &fixed_base);
    let floor_bearer = format!("Bearer {floor_token}");
    // The same SOPHIA with Application Insights export on (every request and model call kept,
    // sampling 1.0), posting to an accept-all ingestion endpoint in the same nginx.
    let otel_dir = tempfile::tempdir().unwrap();
    let otel_port = free_port();
    let connection = format!(
        "InstrumentationKey=00000000-0000-4000-8000-000000000000;IngestionEndpoint=http://127.0.0.1:{ingest_port}/"
    );
    let otel_server = spawn_sophia(
        otel_dir.path(),
        otel_port,
        &[("APPLICATIONINSIGHTS_CONNECTION_STRING", connection.as_str())],
    );
    let otel_base = format!("http://127.0.0.1:{otel_port}");
    wait_ready(&format!("{otel_base}/"));
    let otel_token = tenant(
        &client,
        &otel_base,
        &admin_token(otel_dir.path()),
        "floor",
        &fixed_base,
    );
    let otel_bearer = format!("Bearer {otel_token}");
    // And with sampling 0: every span is still built, only failures leave; what remains over
    // the plain row is the cost on the request threads alone.
    let hot_dir = tempfile::tempdir().unwrap();
    let hot_port = free_port();
    let hot_server = spawn_sophia(
        hot_dir.path(),
        hot_port,
        &[
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", connection.as_str()),
            ("SOPHIA_TELEMETRY_SAMPLING", "0"),
        ],
    );
    let hot_base = format!("http://127.0.0.1:{hot_port}");
    wait_ready(&format!("{hot_base}/"));
    let hot_token = tenant(
        &client,
        &hot_base,
        &admin_token(hot_dir.path()),
        "floor",
        &fixed_base,
    );
    let hot_bearer = format!("Bearer {hot_token}");
    if telemetry_only {
        // Servers of its own, started afresh for each block of rounds.
        for child in [otel_server, hot_server, server] {
            stop(child);
        }
        println!(
            "{}",
            telemetry_rows(&client, &body_text, &fixed_base, &connection)
        );
        for child in [proxy, sim] {
            stop(child);
        }
        return;
    }
    let fixed_path = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
    // The Responses API on the same upstream (translated to the same chat completion): not
    // stored, then stored (each turn also writes a conversation).
    let responses_url = format!("{base}/v1/responses");
    let responses_body =
        json!({"model": "gpt-4o", "input": "Hello, how are you today?", "store": false})
            .to_string();
    let stored_body = json!({"model": "gpt-4o", "input": "Hello, how are you today?"}).to_string();
    let targets = [
        (
            "direct to the upstream",
            format!("{fixed_base}{fixed_path}"),
            vec![("api-key", SIM_KEY)],
            None,
            body_text.as_str(),
        ),
        (
            "nginx reverse-proxy hop",
            format!("http://127.0.0.1:{hop_port}{fixed_path}"),
            vec![("api-key", SIM_KEY)],
            Some(proxy.id()),
            body_text.as_str(),
        ),
        (
            "SOPHIA `/v1/chat/completions`",
            sophia_url.clone(),
            vec![("Authorization", floor_bearer.as_str())],
            Some(server.id()),
            body_text.as_str(),
        ),
        (
            "SOPHIA, App Insights on, sampling 0 (failures only leave)",
            format!("{hot_base}/v1/chat/completions"),
            vec![("Authorization", hot_bearer.as_str())],
            Some(hot_server.id()),
            body_text.as_str(),
        ),
        (
            "SOPHIA, App Insights export on (sampling 1.0)",
            format!("{otel_base}/v1/chat/completions"),
            vec![("Authorization", otel_bearer.as_str())],
            Some(otel_server.id()),
            body_text.as_str(),
        ),
        (
            "SOPHIA `/v1/responses` (`store: false`)",
            responses_url.clone(),
            vec![("Authorization", floor_bearer.as_str())],
            Some(server.id()),
            responses_body.as_str(),
        ),
        (
            "SOPHIA `/v1/responses` (stored: a conversation write per turn)",
            responses_url.clone(),
            vec![("Authorization", floor_bearer.as_str())],
            Some(server.id()),
            stored_body.as_str(),
        ),
    ];
    let mut floor_rows = Vec::new();
    // The exporter thread's share of each row's CPU (µs per request).
    let mut export_cpu = Vec::new();
    for (_, url, headers, _, body) in &targets {
        hey(url, headers, body, 8, 2);
    }
    let floor_rss_before = rss_mib(server.id());
    for (name, url, headers, cpu_of, body) in &targets {
        // The previous row's leftovers (an exporter's backlog) are done before this one.
        std::thread::sleep(Duration::from_secs(2));
        let pids: Vec<u32> = match cpu_of {
            Some(pid) if *pid == proxy.id() => workers(*pid),
            Some(pid) => vec![*pid],
            None => vec![],
        };
        let cpu_before: f64 = pids.iter().map(|p| cpu_us(*p)).sum();
        let export_before: f64 = pids
            .iter()
            .map(|p| thread_cpu_us(*p, "sophia-telemetr"))
            .sum();
        let r = hey(url, headers, body, 32, 10);
        let cpu_after: f64 = pids.iter().map(|p| cpu_us(*p)).sum();
        let export_after: f64 = pids
            .iter()
            .map(|p| thread_cpu_us(*p, "sophia-telemetr"))
            .sum();
        let cpu = (!pids.is_empty()).then(|| (cpu_after - cpu_before) / (r.rps * 10.0));
        export_cpu.push((export_after - export_before) / (r.rps * 10.0));
        floor_rows.push((name.to_string(), r, cpu));
    }
    // Telemetry's cost on the request threads, paired: plain and sampling-0 SOPHIA in turns,
    // at the same fixed load (32 workers × 150 req/s, below either's capacity), so the
    // machine's drift during the run and a load-dependent kernel share cancel out.
    let pair_secs = 4;
    let mut pairs = Vec::new();
    for _ in 0..5 {
        let one = |url: &str, bearer: &str, pid: u32| {
            let before = cpu_us(pid);
            let r = hey_at(
                url,
                &[("Authorization", bearer)],
                &body_text,
                32,
                pair_secs,
                Some(150),
            );
            (cpu_us(pid) - before) / (r.rps * pair_secs as f64)
        };
        let plain = one(&sophia_url, &floor_bearer, server.id());
        let hot = one(
            &format!("{hot_base}/v1/chat/completions"),
            &hot_bearer,
            hot_server.id(),
        );
        pairs.push((plain, hot));
    }
    let mut deltas: Vec<f64> = pairs.iter().map(|(p, h)| h - p).collect();
    deltas.sort_by(f64::total_cmp);
    let mut plains: Vec<f64> = pairs.iter().map(|(p, _)| *p).collect();
    plains.sort_by(f64::total_cmp);
    let paired_line = format!(
        "Sampling 0 vs off, paired at a fixed 4800 req/s (5 pairs of {pair_secs} s, plain first): median {:+.1} µs CPU per request (pairs {}), on a plain median of {:.1} µs.",
        deltas[deltas.len() / 2],
        pairs
            .iter()
            .map(|(p, h)| format!("{:+.1}", h - p))
            .collect::<Vec<_>>()
            .join(", "),
        plains[plains.len() / 2],
    );
    let floor_rss_after = rss_mib(server.id());
    let otel_rss = rss_mib(otel_server.id());
    let otel_health: Value = client
        .get(format!("{otel_base}/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let otel_stats = &otel_health["telemetry"];
    let cpu = |i: usize| floor_rows[i].2.unwrap_or(f64::NAN);
    let telemetry_line = format!(
        "Telemetry on vs off (rows 5 and 3): {:+.1} µs CPU per request ({:+.1} on the request threads, {:.1} on the exporter thread), p99 {:+.2} ms, req/s × {:.2}; exported {}, dropped {} (queue full), failed {}; RSS {otel_rss:.1} MiB. Sampling 0 vs off (rows 4 and 3, the request threads' share alone): {:+.1} µs CPU per request, p99 {:+.2} ms.",
        cpu(4) - cpu(2),
        cpu(4) - export_cpu[4] - cpu(2),
        export_cpu[4],
        floor_rows[4].1.p99_ms - floor_rows[2].1.p99_ms,
        floor_rows[4].1.rps / floor_rows[2].1.rps,
        otel_stats["exported"],
        otel_stats["dropped"],
        otel_stats["failed"],
        cpu(3) - cpu(2),
        floor_rows[3].1.p99_ms - floor_rows[2].1.p99_ms,
    );
    let responses_line = format!(
        "`/v1/responses` vs `/v1/chat/completions` (rows 6 and 3, the same upstream answer): {:+.1} µs CPU per request, p99 {:+.2} ms, req/s × {:.2}; stored (row 7): {:+.1} µs, p99 {:+.2} ms, req/s × {:.2}.",
        cpu(5) - cpu(2),
        floor_rows[5].1.p99_ms - floor_rows[2].1.p99_ms,
        floor_rows[5].1.rps / floor_rows[2].1.rps,
        cpu(6) - cpu(2),
        floor_rows[6].1.p99_ms - floor_rows[2].1.p99_ms,
        floor_rows[6].1.rps / floor_rows[2].1.rps,
    );
    stop(otel_server);
    stop(hot_server);
    stop(proxy);
    if std::env::var_os("BENCH_FLOOR_ONLY").is_some() {
        // Quick iteration on the hot path: the floor table only, not appended anywhere.
        for (name, r, cpu) in &floor_rows {
            println!(
                "{name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, CPU {} µs/request, × hop {:.2}",
                r.rps,
                r.p50_ms,
                r.p99_ms,
                cpu.map(|c| format!("{c:.0}")).unwrap_or_else(|| "—".into()),
                r.rps / floor_rows[1].1.rps
            );
        }
        println!("SOPHIA RSS {floor_rss_before:.1} → {floor_rss_after:.1} MiB");
        println!("{telemetry_line}");
        println!("{paired_line}");
        println!("{responses_line}");
        stop(server);
        stop(sim);
        return;
    }

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
    let hop = &floor_rows[1].1;
    let (hop_rps, hop_p99) = (hop.rps, hop.p99_ms);
    table.push_str(
        "The floor at c=32, 10 s each: a fixed-answer nginx upstream (2 workers) straight, through nginx as a keep-alive reverse proxy (2 workers), and through SOPHIA (CPU: the hop's own processes, user + system, per request):\n\n\
         | path | req/s | p50 / p99 ms | × nginx hop req/s | p99 over the nginx hop | hop CPU µs / request |\n|---|---|---|---|---|---|\n"
    );
    for (name, r, cpu) in &floor_rows {
        let flag = if r.errors { " (non-200 seen)" } else { "" };
        table.push_str(&format!(
            "| {name}{flag} | {:.0} | {:.2} / {:.2} | {:.2} | {:+.2} ms | {} |\n",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.rps / hop_rps,
            r.p99_ms - hop_p99,
            cpu.map(|c| format!("{c:.0}")).unwrap_or_else(|| "—".into()),
        ));
    }
    table.push_str(&format!(
        "\n{telemetry_line}\n\n{paired_line}\n\n{responses_line}\n\n{foundry_line}\n\n{limited_line}\n\nSOPHIA's RSS {floor_rss_before:.1} MiB before the floor runs, {floor_rss_after:.1} MiB after.\n\n\
         Against the simulator (zero latency), several concurrencies:\n\n"
    ));
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
