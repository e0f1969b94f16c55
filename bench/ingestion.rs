//! Ingestion benchmark: the real binary (release) refreshing one company's folder of 1,000
//! documents (Markdown, text and HTML, ~3 KB each) with embeddings through the simulator
//! (zero latency): documents/s and chunks/s of a first refresh, then the time of a refresh in
//! which nothing changed, against a baseline measured in the same run — reading and hashing
//! the same 1,000 files in this process (what a no-change refresh cannot avoid) — and a
//! refresh after one file changed.
//!
//! Prints a table and appends it to BENCHMARKS.md. Run: `cargo bench --bench ingestion`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[allow(dead_code)]
#[path = "../tests/support/binary.rs"]
mod binary;

use std::time::{Duration, Instant};

use binary::{Server, admin_token, start_simulator};
use reqwest::blocking::Client;
use serde_json::{Value, json};
use sha2::Digest;

const DOCUMENTS: usize = 1_000;
const SIM_KEY: &str = "bench-ingestion-key";

/// A ~3 KB document of one of three types, with its own words so that chunks differ.
fn document(i: usize) -> (String, String) {
    let paragraph = |p: usize| {
        format!(
            "Section {p} of document {i} explains policy {i}-{p}: customers in region {} may \
             return item {} within {} days, and support answers within {} hours on weekdays. \
             Exceptions apply to clearance goods and to orders above {} euros.",
            i % 17,
            i * 7 + p,
            14 + p,
            4 + i % 5,
            500 + i
        )
    };
    let body: Vec<String> = (0..12).map(paragraph).collect();
    match i % 3 {
        0 => (
            format!("policies/doc-{i:04}.md"),
            format!(
                "# Policy {i}\n\n{}\n\n## Details\n\n{}",
                body[..6].join("\n\n"),
                body[6..].join("\n\n")
            ),
        ),
        1 => (format!("notes/doc-{i:04}.txt"), body.join("\n\n")),
        _ => (
            format!("site/doc-{i:04}.html"),
            format!(
                "<html><head><title>Page {i}</title></head><body><h1>Page {i}</h1>{}</body></html>",
                body.iter()
                    .map(|p| format!("<p>{p}</p>"))
                    .collect::<String>()
            ),
        ),
    }
}

fn refresh(client: &Client, server: &Server, token: &str, body: Value) -> (Value, f64) {
    let started = Instant::now();
    let resp = client
        .post(server.url("/refresh"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    loop {
        let job: Value = client
            .get(server.url(&format!("/refresh/{id}")))
            .bearer_auth(token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        match job["status"].as_str() {
            Some("succeeded") => return (job, started.elapsed().as_secs_f64()),
            Some("failed") => panic!("refresh failed: {job}"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "refresh did not finish"
        );
    }
}

fn main() {
    let (mut sim, sim_url) = start_simulator(SIM_KEY);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
            ("SOPHIA_LOG", "warn"),
        ],
    );
    let admin = admin_token(dir.path(), &["--role", "PLATFORM_ADMIN"]);
    let client = Client::new();
    let created: Value = client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(&admin)
        .json(&json!({"companyId": "bench", "agentType": "SOPHIA",
                      "azureOpenaiEndpoint": sim_url, "azureOpenaiDeployment": "gpt-4o",
                      "azureEmbeddingDeployment": "text-embedding-3-small",
                      "credentials": {"azureOpenaiKey": SIM_KEY}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = created["agentAccessKey"].as_str().unwrap();
    let token: Value = client
        .post(server.url("/agents/auth/token"))
        .json(&json!({"companyId": "bench", "agentAccessKey": key}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();

    let folder = dir.path().join("knowledge/bench");
    let mut bytes = 0usize;
    for i in 0..DOCUMENTS {
        let (path, text) = document(i);
        let file = folder.join(&path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        bytes += text.len();
        std::fs::write(file, text).unwrap();
    }

    let (first, first_secs) = refresh(&client, &server, &token, json!({}));
    let chunks = first["counts"]["chunks"].as_u64().unwrap();
    let embed_calls = first["counts"]["embeddingCalls"].as_u64().unwrap();
    assert_eq!(first["counts"]["indexed"].as_u64(), Some(DOCUMENTS as u64));

    // Baseline: read and hash every file here (best of 3, warm page cache).
    let mut baseline = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for i in 0..DOCUMENTS {
            let data = std::fs::read(folder.join(document(i).0)).unwrap();
            std::hint::black_box(sha2::Sha256::digest(&data));
        }
        baseline = baseline.min(started.elapsed().as_secs_f64());
    }
    let mut unchanged = Vec::new();
    for _ in 0..3 {
        let (job, secs) = refresh(&client, &server, &token, json!({}));
        assert_eq!(job["counts"]["unchanged"].as_u64(), Some(DOCUMENTS as u64));
        unchanged.push(secs);
    }
    unchanged.sort_by(f64::total_cmp);
    std::fs::write(
        folder.join(document(0).0),
        "# Policy 0\n\nRewritten: returns within 60 days.",
    )
    .unwrap();
    let (one, one_secs) = refresh(&client, &server, &token, json!({}));
    assert_eq!(one["counts"]["indexed"].as_u64(), Some(1));
    let (_, full_secs) = refresh(&client, &server, &token, json!({"full": true}));
    let rss = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    server.stop();
    let _ = sim.kill();
    let _ = sim.wait();

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let t = &first["timings"];
    let table = format!(
        "\n## Ingestion — {} ({cores} cores, release build; embeddings through the simulator on the same machine)\n\n\
         One company, {DOCUMENTS} documents (⅓ each .md, .txt, .html; {:.1} MB), embedded index (SQLite FTS5 + vectors):\n\n\
         | measure | value |\n|---|---|\n\
         | first refresh (extract, chunk, embed, index) | {first_secs:.2} s |\n\
         | throughput | {:.0} documents/s, {:.0} chunks/s |\n\
         | chunks / embedding calls | {chunks} / {embed_calls} |\n\
         | first refresh phases: fetch / extract / embed / index | {} / {} / {} / {} ms |\n\
         | no-change refresh of {DOCUMENTS} documents (median of 3; POST to finished) | {:.3} s |\n\
         | baseline: read + SHA-256 of the same files in-process | {baseline:.3} s |\n\
         | no-change refresh / baseline | {:.1}× |\n\
         | refresh after one file changed | {one_secs:.3} s |\n\
         | full re-index (`full: true`) | {full_secs:.2} s |\n\
         | server RSS after the runs | {rss:.1} MiB |\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        bytes as f64 / 1e6,
        DOCUMENTS as f64 / first_secs,
        chunks as f64 / first_secs,
        t["fetchMs"],
        t["extractMs"],
        t["embedMs"],
        t["indexMs"],
        unchanged[1],
        unchanged[1] / baseline,
    );
    println!("{table}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let mut existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    existing.push_str(&table);
    std::fs::write(path, existing).unwrap();
}
