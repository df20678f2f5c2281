//! Benchmark of the engine on simulated time: runs the reconciler against the in-memory EC2 on
//! tokio's paused clock and prints one `name=value` per line.
//!
//! `cargo run --release --example simulate`
//!
//! - `makespan_over_lower_bound`: 60 sources of skewed sizes, `pending_limit` 5, waiting for
//!   completion in one run; the lower bound is max(longest copy, total copy time / 5).
//! - `ec2_calls_per_copy`: every store call of that run divided by 60.
//! - `irregular_*`: the same jobs with copies that stall at 0% for up to 10 minutes and run at
//!   0.5–2× the size-based speed, so progress no longer follows size; the lower bound is then
//!   computed from each copy's real duration (an oracle that knew every speed in advance).
//! - `seconds_for_10000_sources`, `peak_rss_mib`: a 10,000-source request, copies instant.

use copy_snapshots::reconcile::{RunLimits, reconcile};
use copy_snapshots::request::{CopyRequest, RequestPayload, Settings};
use copy_snapshots::simulated::{CopyTimeModel, Irregularity, SimulatedEc2};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const SKEWED_SOURCES: usize = 60;
const SKEWED_PENDING_LIMIT: usize = 5;
const SEEDS: u64 = 20;
const IRREGULAR: Irregularity =
    Irregularity { max_stall: std::time::Duration::from_secs(600), slowest: 0.5, fastest: 2.0 };

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");

    for (prefix, irregular) in [("", None), ("irregular_", Some(IRREGULAR))] {
        let first = runtime.block_on(skewed_job(1, irregular));
        println!("{prefix}makespan_over_lower_bound={:.3}", first.ratio);
        println!("{prefix}ec2_calls_per_copy={:.2}", first.calls as f64 / SKEWED_SOURCES as f64);
        println!("{prefix}makespan_seconds={:.0}", first.makespan);
        println!("{prefix}lower_bound_seconds={:.0}", first.lower_bound);
        let mut worst_ratio: f64 = 0.0;
        let mut worst_calls: f64 = 0.0;
        for seed in 1..=SEEDS {
            let run = runtime.block_on(skewed_job(seed, irregular));
            worst_ratio = worst_ratio.max(run.ratio);
            worst_calls = worst_calls.max(run.calls as f64 / SKEWED_SOURCES as f64);
        }
        println!("{prefix}makespan_over_lower_bound_worst_of_{SEEDS}_seeds={worst_ratio:.3}");
        println!("{prefix}ec2_calls_per_copy_worst_of_{SEEDS}_seeds={worst_calls:.2}");
    }

    let wall = std::time::Instant::now();
    let copied = runtime.block_on(many_sources(10_000));
    println!("seconds_for_10000_sources={:.3}", wall.elapsed().as_secs_f64());
    println!("copies_for_10000_sources={copied}");
    println!("peak_rss_mib={:.1}", peak_rss_mib());
}

struct SkewedRun {
    makespan: f64,
    lower_bound: f64,
    ratio: f64,
    calls: usize,
}

/// Sizes in GiB: about two thirds 8–64, a quarter 100–500, the rest 1–2 TiB, shuffled.
fn skewed_sizes(rng: &mut StdRng) -> Vec<u64> {
    let mut sizes: Vec<u64> = (0..SKEWED_SOURCES)
        .map(|i| match i * 12 / SKEWED_SOURCES {
            0..=7 => rng.random_range(8..=64),
            8..=10 => rng.random_range(100..=500),
            _ => rng.random_range(1024..=2048),
        })
        .collect();
    sizes.shuffle(rng);
    sizes
}

async fn skewed_job(seed: u64, irregular: Option<Irregularity>) -> SkewedRun {
    let mut rng = StdRng::seed_from_u64(seed);
    let sizes = skewed_sizes(&mut rng);
    let mut ec2 = SimulatedEc2::new();
    if let Some(irregular) = irregular {
        ec2 = ec2.with_irregular_copies(irregular);
    }
    let ids: Vec<String> = sizes.iter().map(|gib| ec2.add_source(SOURCE, *gib, &[]).to_string()).collect();

    let request = request(ids, SKEWED_PENDING_LIMIT as u32, true);
    let settings = Settings::default();
    let started = tokio::time::Instant::now();
    let limits =
        RunLimits { deadline: None, poll_interval: settings.poll_interval, call_timeout: settings.call_timeout };
    let response = reconcile(&ec2, &request, limits).await.expect("the skewed job succeeds");
    assert!(response.complete, "the skewed job completes");
    let makespan = started.elapsed().as_secs_f64();
    // From the copies' real durations: with regular copies these are the model's,
    // 120 s + 20 s per GiB.
    let durations: Vec<f64> = ec2.copy_durations(TARGET).iter().map(|d| d.as_secs_f64()).collect();
    assert_eq!(durations.len(), SKEWED_SOURCES, "one copy per source");
    let longest = durations.iter().cloned().fold(0.0, f64::max);
    let lower_bound = longest.max(durations.iter().sum::<f64>() / SKEWED_PENDING_LIMIT as f64);
    SkewedRun { makespan, lower_bound, ratio: makespan / lower_bound, calls: ec2.calls().total() }
}

async fn many_sources(count: usize) -> usize {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::INSTANT);
    let ids: Vec<String> = (0..count).map(|i| ec2.add_source(SOURCE, 8 + (i % 100) as u64, &[]).to_string()).collect();
    let request = request(ids, 20, false);
    let limits = RunLimits {
        deadline: None,
        poll_interval: Settings::default().poll_interval,
        call_timeout: Settings::default().call_timeout,
    };
    let response = reconcile(&ec2, &request, limits).await.expect("the large job succeeds");
    assert!(response.complete, "the large job completes");
    response.copies.len()
}

fn request(snapshot_ids: Vec<String>, pending_limit: u32, wait_for_completion: bool) -> CopyRequest {
    let payload = RequestPayload {
        snapshot_ids: Some(snapshot_ids),
        region: Some(SOURCE.to_owned()),
        target_region: Some(TARGET.to_owned()),
        pending_limit: Some(pending_limit),
        wait_for_completion: Some(wait_for_completion),
        ..Default::default()
    };
    CopyRequest::check(payload, &Settings::default()).expect("a valid request")
}

/// Peak resident set size of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
