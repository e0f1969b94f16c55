//! The limit check's cost on the hot path — what a turn does for its limits: the `has_room`
//! pre-check, `Limiter::admit`, the settlement and the six `x-ratelimit-*` headers — for a
//! company with all four limits set and a warm window (no store call), beside the same calls
//! for a company without limits (the baseline: what every request paid before limits
//! existed), in one run.
//! Prints ns per request and the difference, and appends them to BENCHMARKS.md.
//!
//! Run: `cargo bench --bench limits`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use sophia::domain::TenantId;
use sophia::domain::settings::Limits;
use sophia::limits::Limiter;
use sophia::store::sqlite::SqliteStore;

const ROUNDS: u32 = 200_000;

/// CPU time of this thread (µs), from `/proc/thread-self/stat`.
fn thread_cpu_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks * 1e6 / 100.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = SqliteStore::open_in_memory().unwrap();
    let limiter = Limiter::default();
    let limited = TenantId::parse("acme").unwrap();
    let free = TenantId::parse("beta").unwrap();
    let limits = Limits {
        requests_per_minute: Some(1_000_000_000),
        tokens_per_minute: Some(1_000_000_000_000),
        tokens_per_day: Some(1_000_000_000_000),
        tokens_per_month: Some(1_000_000_000_000),
    };
    let run = |tenant: &TenantId, limits: Limits| {
        rt.block_on(async {
            // Warm: the first admission reads the window from the store.
            limiter
                .admit(&store, tenant, limits, 50)
                .await
                .unwrap()
                .settle(80);
            let (wall, cpu) = (Instant::now(), thread_cpu_us());
            let mut headers = 0usize;
            for _ in 0..ROUNDS {
                limiter.has_room(&store, tenant, limits).await.unwrap();
                let r = limiter.admit(&store, tenant, limits, 50).await.unwrap();
                r.settle(80);
                let mut map = http::HeaderMap::new();
                r.standing.write_headers(&mut map);
                headers += map.len();
            }
            std::hint::black_box(headers);
            (
                wall.elapsed().as_nanos() as f64 / f64::from(ROUNDS),
                (thread_cpu_us() - cpu) * 1000.0 / f64::from(ROUNDS),
            )
        })
    };
    let (base_wall, base_cpu) = run(&free, Limits::default());
    let (wall, cpu) = run(&limited, limits);
    let when = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let profile = if cfg!(debug_assertions) {
        "debug build (`--profile dev`): an upper bound"
    } else {
        "release build"
    };
    let table = format!(
        "\n## Limit check on the hot path ({when})\n\n`cargo bench --bench limits`, {profile}: {ROUNDS} turns' limit work (pre-check, admission, settlement, headers) on one thread, warm window.\n\n\
| company | ns/request (wall) | ns/request (CPU) |\n|---|---|---|\n\
| without limits (baseline) | {base_wall:.0} | {base_cpu:.0} |\n\
| with all four limits | {wall:.0} | {cpu:.0} |\n\
| **cost of the check** | **{:.0}** | **{:.0}** (goal ≤ 5,000) |\n",
        wall - base_wall,
        cpu - base_cpu,
    );
    println!("{table}");
    if std::env::var_os("BENCH_NO_APPEND").is_none() {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"))
            .unwrap();
        f.write_all(table.as_bytes()).unwrap();
    }
}
