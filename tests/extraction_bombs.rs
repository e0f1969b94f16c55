//! Hostile documents against the real binary: a PDF whose 0.8 MB inflate to 768 MiB and an
//! HTML page nested 200,000 deep sit in a company's knowledge folder next to good documents.
//! The server survives, its peak RSS (sampled from `/proc/<pid>/status`) stays bounded, both
//! files are reported failed with a reason, and the good documents are indexed and answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::binary::*;

/// A one-page PDF whose content stream (FlateDecode) inflates to `inflated` bytes of spaces.
fn pdf_bomb(inflated: usize) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![b' '; 1 << 20];
    for _ in 0..inflated / block.len() {
        z.write_all(&block).unwrap();
    }
    let data = z.finish().unwrap();
    let mut objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".to_vec(),
    ];
    let mut stream = format!(
        "<< /Length {} /Filter /FlateDecode >>\nstream\n",
        data.len()
    )
    .into_bytes();
    stream.extend_from_slice(&data);
    stream.extend_from_slice(b"\nendstream");
    objects.push(stream);
    support::pdf::assemble(&objects)
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn decompression_and_nesting_bombs_fail_alone_and_the_process_survives() {
    let (mut sim, sim_url) = start_simulator("key-acme");
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("knowledge").join("acme");
    std::fs::create_dir_all(&folder).unwrap();
    let bomb = pdf_bomb(768 << 20);
    assert!(bomb.len() < 1 << 20, "{} bytes on disk", bomb.len());
    std::fs::write(folder.join("bomb.pdf"), &bomb).unwrap();
    let nested = format!(
        "<html><body>{}deep{}</body></html>",
        "<div>".repeat(200_000),
        "</div>".repeat(200_000)
    );
    std::fs::write(folder.join("nested.html"), nested).unwrap();
    std::fs::write(
        folder.join("refunds.md"),
        "# Refunds\n\nRefunds are accepted within 30 days of purchase.",
    )
    .unwrap();
    std::fs::write(
        folder.join("hours.pdf"),
        support::pdf::pdf(&[&["The shop opens at nine and closes at six."]]),
    )
    .unwrap();
    std::fs::write(
        folder.join("parking.html"),
        "<html><head><title>Parking</title></head><body><p>Parking is free on weekends.</p></body></html>",
    )
    .unwrap();

    let server = Server::start(
        dir.path(),
        &[
            ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
            ("SOPHIA_EXTRACT_MEMORY_MB", "256"),
            ("SOPHIA_EXTRACT_TIMEOUT_SECS", "5"),
        ],
    );
    let pid = server.child.id();
    let admin = admin_token(dir.path(), &["--role", "PLATFORM_ADMIN"]);
    let client = reqwest::blocking::Client::new();
    let (_, token) = create_and_exchange(
        &server,
        &admin,
        &json!({"companyId": "acme", "agentType": "SOPHIA", "azureOpenaiEndpoint": sim_url,
                "azureOpenaiDeployment": "gpt-4o", "credentials": {"azureOpenaiKey": "key-acme"}}),
    );
    let (_, baseline_peak) = memory_kib(pid);

    let job: Value = client
        .post(server.url("/refresh"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let path = format!("/refresh/{}", job["jobId"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut highest_rss = 0;
    let job = loop {
        let (rss, _) = memory_kib(pid);
        highest_rss = highest_rss.max(rss);
        let job: Value = client
            .get(server.url(&path))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        if matches!(job["status"].as_str(), Some("succeeded" | "failed")) {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "the refresh did not finish: {job}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (_, peak) = memory_kib(pid);

    // The process is alive and its memory never came near the bomb's 768 MiB.
    assert!(
        client
            .get(server.url("/"))
            .send()
            .unwrap()
            .status()
            .is_success(),
        "the server died"
    );
    assert!(
        peak < baseline_peak + 100 * 1024,
        "peak RSS {peak} KiB (before the refresh {baseline_peak} KiB, highest sampled {highest_rss} KiB)"
    );
    // Both bombs are reported with a reason; the good documents are indexed.
    assert_eq!(job["counts"]["failed"], 2, "{job}");
    assert_eq!(job["counts"]["indexed"], 3, "{job}");
    let errors: Vec<(String, String)> = job["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["documentId"].as_str().unwrap().to_owned(),
                e["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let reason = |doc: &str| {
        errors
            .iter()
            .find(|(d, _)| d == doc)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| panic!("{doc} not reported: {errors:?}"))
    };
    assert!(
        reason("bomb.pdf").contains("256 MiB"),
        "{}",
        reason("bomb.pdf")
    );
    assert!(
        reason("nested.html").contains("stopped"),
        "{}",
        reason("nested.html")
    );
    for (question, document) in [
        ("How many days for refunds?", "refunds.md"),
        ("When does the shop open and close?", "hours.pdf"),
        ("Is parking free on weekends?", "parking.html"),
    ] {
        let answer: Value = client
            .post(server.url("/chat"))
            .bearer_auth(&token)
            .json(&json!({ "message": question }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            answer["citations"][0]["documentId"], document,
            "{question}: {answer}"
        );
    }
    server.stop();
    let _ = sim.kill();
    let _ = sim.wait();
}
