//! Benchmark of the engine on simulated time: runs the reconciler against the in-memory EC2 on
//! tokio's paused clock and prints one `name=value` per line.
//!
//! `cargo run --release --example simulate` (`-- PREFIX`: only the skewed jobs whose figures
//! start with PREFIX, e.g. `quiet_start_`, and nothing else)
//!
//! - `makespan_over_lower_bound`: 60 sources of skewed sizes, `pending_limit` 5, waiting for
//!   completion in one run; the lower bound is max(longest copy, total copy time / 5).
//! - `ec2_calls_per_copy`: every store call of that run divided by 60; `ledger_calls_per_copy`:
//!   the slot ledger's loads and saves (DynamoDB GetItem and PutItem in the deployed stack)
//!   divided by 60. The skewed, burst and backlog runs are the deployed stack's, with its slot
//!   table; `without_slot_table_*`: the first skewed run again counting `pending_limit` with
//!   one DescribeSnapshots per start round instead, as the command line does.
//! - `irregular_*`: the same jobs with copies that stall at 0% for up to 10 minutes and run at
//!   0.5–2× the size-based speed, so progress no longer follows size; the lower bound is then
//!   computed from each copy's real duration (an oracle that knew every speed in advance).
//! - `quiet_start_*`: the same jobs with copies that report 0% for the first 30% of their
//!   duration and take 0.05–1.5× the size-based time (small incremental copies among them);
//!   the lower bound again from each copy's real duration. `quiet_start_60x_*`: the same on
//!   an emulator 60 times faster than EC2, `POLL_INTERVAL_SECONDS` and
//!   `MAX_POLL_INTERVAL_SECONDS` scaled with it (0.25 s, 15 s); `quiet_start_60x_max_poll_900_*`
//!   with the longest poll interval left at 900 s.
//! - `seconds_for_10000_sources`: a 10,000-source request, copies instant.
//! - `pruning_10000_*`: retention deleting 10,000 old copies (10 volumes, each with today's
//!   snapshot and 1,000 older than a week, `retain_days` 7), with their sources still in the
//!   source region and with them gone
//!   (judged by the copies' tags): EC2 calls per deletion (store calls, and the HTTP requests
//!   they are with EC2's paging), Lambda invocations of 15 minutes and simulated seconds at
//!   50 ms per EC2 call, and the wall-clock seconds of the engine's own work (no latency).
//! - `burst_500_events_*`: a night's burst of 500 new-snapshot events over 10 minutes, through
//!   the SQS queue and the queue function as the template sets them up (batches of up to 100,
//!   two in flight, a 600 s visibility timeout, 288 receives before the dead-letter queue),
//!   `pending_limit` 15; with the region's quota held by 20 other copies for 6 hours, and free:
//!   copies made, messages dead-lettered, batch invocations, EC2 and ledger calls per copy, the
//!   most of the deployment's copies pending at once, and the hours from the first event to the
//!   last copy started (EC2 answering in 50 ms and the table in 5 ms, so the two batches in
//!   flight interleave).
//! - `backlog_3000_sources_*`: a first schedule over 3,000 never-copied sources through the
//!   state machine's loop (rounds of `max_wait_seconds` 0, a 300 s Wait between them): rounds,
//!   executions (one per 250 rounds, the continuation bound), simulated days, calls per copy.
//! - `three_targets_*`: the skewed job to three target regions in one request, `pending_limit`
//!   5 in each: makespan over the largest of the targets' own lower bounds, EC2 calls per copy.
//! - `peak_rss_mib`: the benchmark process, whose largest world is the pruning one (20,010
//!   snapshots).

use std::time::Duration;

use copy_snapshots::contract::request::{CopyRequest, FilterPayload, RequestPayload, Settings};
use copy_snapshots::contract::targets::TargetPayload;
use copy_snapshots::engine::{RunLimits, reconcile};
use copy_snapshots::store::simulated::{CopyTimeModel, Irregularity, MemoryLedger, QuietStart, SimulatedEc2};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const SKEWED_SOURCES: usize = 60;
const SKEWED_PENDING_LIMIT: usize = 5;
const SEEDS: u64 = 20;
/// The state machine's Wait between two rounds (the template's StateMachineWaitSeconds).
const STATE_MACHINE_WAIT: Duration = Duration::from_secs(300);
/// Rounds one execution runs before it continues as a new one (the state machine's bound).
const ROUNDS_PER_EXECUTION: usize = 250;
const IRREGULAR: Irregularity =
    Irregularity { max_stall: std::time::Duration::from_secs(600), slowest: 0.5, fastest: 2.0 };
const QUIET_START: QuietStart = QuietStart { quiet_share: 0.3, shortest: 0.05, longest: 1.5 };

/// How much faster than EC2 the skewed job's world runs: its copies and the poll interval
/// `speedup` times faster, and `MAX_POLL_INTERVAL_SECONDS` too when `max_poll_scaled`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    speedup: f64,
    max_poll_scaled: bool,
}

impl Pace {
    const REAL: Self = Self { speedup: 1.0, max_poll_scaled: true };
}

/// Whether the simulated deployment has the stack's slot table (`SLOT_TABLE`): `pending_limit`
/// reserved in it, as deployed, or counted with one DescribeSnapshots per start round, as the
/// command line does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Deployed,
    None,
}

impl Table {
    fn deploy(self, ec2: SimulatedEc2) -> SimulatedEc2 {
        match self {
            Self::Deployed => ec2.with_slot_ledger(MemoryLedger::new()),
            Self::None => ec2,
        }
    }
}

/// The slot ledger's loads and saves so far (none without a table).
fn ledger_calls(ec2: &SimulatedEc2) -> usize {
    ec2.ledger().map_or(0, |ledger| ledger.calls().total())
}

/// How the skewed job's copies progress.
#[derive(Debug, Clone, Copy)]
enum Progress {
    /// As the copy-time model says, steadily from the start.
    Regular,
    Irregular(Irregularity),
    QuietStart(QuietStart),
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");

    let jobs = [
        ("", Progress::Regular, Pace::REAL),
        ("irregular_", Progress::Irregular(IRREGULAR), Pace::REAL),
        ("quiet_start_", Progress::QuietStart(QUIET_START), Pace::REAL),
        ("quiet_start_60x_", Progress::QuietStart(QUIET_START), Pace { speedup: 60.0, max_poll_scaled: true }),
        (
            "quiet_start_60x_max_poll_900_",
            Progress::QuietStart(QUIET_START),
            Pace { speedup: 60.0, max_poll_scaled: false },
        ),
    ];
    let only = std::env::args().nth(1);
    for (prefix, progress, pace) in jobs {
        if only.as_deref().is_some_and(|only| !prefix.starts_with(only)) {
            continue;
        }
        let per_copy = |calls: usize| calls as f64 / SKEWED_SOURCES as f64;
        let first = runtime.block_on(skewed_job(1, progress, pace, Table::Deployed));
        println!("{prefix}makespan_over_lower_bound={:.3}", first.ratio);
        println!("{prefix}ec2_calls_per_copy={:.2}", per_copy(first.calls));
        println!("{prefix}ledger_calls_per_copy={:.2}", per_copy(first.ledger_calls));
        println!("{prefix}makespan_seconds={:.0}", first.makespan);
        println!("{prefix}lower_bound_seconds={:.0}", first.lower_bound);
        let counted = runtime.block_on(skewed_job(1, progress, pace, Table::None));
        println!("{prefix}without_slot_table_ec2_calls_per_copy={:.2}", per_copy(counted.calls));
        println!("{prefix}without_slot_table_makespan_over_lower_bound={:.3}", counted.ratio);
        let mut worst_ratio: f64 = 0.0;
        let mut worst_calls: f64 = 0.0;
        let mut worst_ledger_calls: f64 = 0.0;
        for seed in 1..=SEEDS {
            let run = runtime.block_on(skewed_job(seed, progress, pace, Table::Deployed));
            worst_ratio = worst_ratio.max(run.ratio);
            worst_calls = worst_calls.max(per_copy(run.calls));
            worst_ledger_calls = worst_ledger_calls.max(per_copy(run.ledger_calls));
        }
        println!("{prefix}makespan_over_lower_bound_worst_of_{SEEDS}_seeds={worst_ratio:.3}");
        println!("{prefix}ec2_calls_per_copy_worst_of_{SEEDS}_seeds={worst_calls:.2}");
        println!("{prefix}ledger_calls_per_copy_worst_of_{SEEDS}_seeds={worst_ledger_calls:.2}");
    }
    if only.as_deref().is_none_or(|only| "three_targets_".starts_with(only)) {
        three_targets_figures(&runtime);
    }
    if only.is_some() {
        return;
    }

    let wall = std::time::Instant::now();
    let copied = runtime.block_on(many_sources(10_000));
    println!("seconds_for_10000_sources={:.3}", wall.elapsed().as_secs_f64());
    println!("copies_for_10000_sources={copied}");
    for (name, gone) in [("sources_present", false), ("sources_gone", true)] {
        let run = runtime.block_on(prune_10000(gone, Duration::from_millis(50)));
        println!("pruning_10000_{name}_deleted={}", run.deleted);
        println!("pruning_10000_{name}_ec2_calls_per_deletion={:.4}", run.calls as f64 / run.deleted as f64);
        println!("pruning_10000_{name}_ec2_requests_per_deletion={:.4}", run.requests as f64 / run.deleted as f64);
        println!("pruning_10000_{name}_invocations={}", run.invocations);
        println!("pruning_10000_{name}_simulated_seconds_at_50ms_a_call={:.0}", run.simulated_seconds);
        let fast = runtime.block_on(prune_10000(gone, Duration::ZERO));
        println!("pruning_10000_{name}_engine_seconds={:.3}", fast.wall_seconds);
    }
    scale_figures(&runtime);
    println!("peak_rss_mib={:.1}", peak_rss_mib());
}

struct PruneRun {
    deleted: usize,
    calls: usize,
    requests: usize,
    invocations: usize,
    simulated_seconds: f64,
    wall_seconds: f64,
}

/// 10 volumes with a snapshot of today and 1,000 older than a week, all copied before any
/// retention; then `retain_days: 7` until done, in invocations of 15 minutes, each EC2 call
/// taking `latency`. With `gone`, the old snapshots have left the source region (Data Lifecycle
/// Manager), so only the copies' tags say their volume and age.
async fn prune_10000(gone: bool, latency: Duration) -> PruneRun {
    const DAY: Duration = Duration::from_secs(86_400);
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::INSTANT);
    let mut old = Vec::new();
    for volume in 0..10 {
        let volume = format!("vol-{volume:017x}");
        ec2.add_volume_snapshot(SOURCE, &volume, 8, Duration::ZERO, &[("Backup", "daily")]);
        // Daily snapshots from 8 days ago back: all out of `retain_days: 7`.
        for age in 8..1008u32 {
            old.push(ec2.add_volume_snapshot(SOURCE, &volume, 8, DAY * age, &[("Backup", "daily")]));
        }
    }
    let settings = Settings::default();
    let limits = |deadline| RunLimits {
        deadline,
        poll_interval: settings.poll_interval,
        max_poll_interval: settings.max_poll_interval,
        call_timeout: settings.call_timeout,
    };
    let copy_all = by_filter(None, 1000);
    let response = reconcile(&ec2, &copy_all, limits(None)).await.expect("the copies are made");
    assert_eq!(response.copies.len(), 10_010, "every source copied");
    if gone {
        for id in &old {
            ec2.remove_snapshot(SOURCE, id);
        }
    }
    let ec2 = ec2.with_latency(latency);
    let before = ec2.calls();
    let prune = by_filter(Some(7), 20);
    let (started, wall) = (tokio::time::Instant::now(), std::time::Instant::now());
    let mut deleted = 0;
    let mut invocations = 0;
    loop {
        invocations += 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
        let response = reconcile(&ec2, &prune, limits(Some(deadline))).await.expect("pruning succeeds");
        deleted += response.deleted.len();
        if response.complete {
            break;
        }
        assert!(invocations < 20, "pruning does not converge");
    }
    assert_eq!(deleted, 10_000, "every old copy deleted");
    let after = ec2.calls();
    PruneRun {
        deleted,
        calls: after.total() - before.total(),
        requests: after.requests - before.requests,
        invocations,
        simulated_seconds: started.elapsed().as_secs_f64(),
        wall_seconds: wall.elapsed().as_secs_f64(),
    }
}

/// The schedule's request (tag:Backup=daily), with `retain_days` when given.
fn by_filter(retain_days: Option<u32>, pending_limit: u32) -> CopyRequest {
    let payload = RequestPayload {
        filters: Some(vec![FilterPayload { name: "tag:Backup".to_owned(), values: vec!["daily".to_owned()] }]),
        region: Some(SOURCE.to_owned()),
        target_region: Some(TARGET.to_owned()),
        pending_limit: Some(pending_limit),
        retain_days,
        // Turning a retention on over a backlog of 10,000 old copies is the mass deletion the
        // breaker holds back unless the request says so.
        allow_mass_deletion: retain_days.map(|_| true),
        ..Default::default()
    };
    CopyRequest::check(payload, &Settings::default()).expect("a valid request")
}

struct SkewedRun {
    makespan: f64,
    lower_bound: f64,
    ratio: f64,
    calls: usize,
    /// Slot ledger loads and saves (DynamoDB calls in the deployed stack).
    ledger_calls: usize,
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

async fn skewed_job(seed: u64, progress: Progress, pace: Pace, table: Table) -> SkewedRun {
    let mut rng = StdRng::seed_from_u64(seed);
    let sizes = skewed_sizes(&mut rng);
    let model = CopyTimeModel {
        fixed: CopyTimeModel::DEFAULT.fixed.div_f64(pace.speedup),
        per_gib: CopyTimeModel::DEFAULT.per_gib.div_f64(pace.speedup),
    };
    let ec2 = match progress {
        Progress::Regular => SimulatedEc2::new(),
        Progress::Irregular(irregular) => SimulatedEc2::new().with_irregular_copies(irregular),
        Progress::QuietStart(quiet) => SimulatedEc2::new().with_quiet_start_copies(quiet),
    }
    .with_copy_time(model);
    let ec2 = table.deploy(ec2);
    let ids: Vec<String> = sizes.iter().map(|gib| ec2.add_source(SOURCE, *gib, &[]).to_string()).collect();

    let request = request(ids, SKEWED_PENDING_LIMIT as u32, true);
    let settings = Settings::default();
    let started = tokio::time::Instant::now();
    let limits = RunLimits {
        deadline: None,
        poll_interval: settings.poll_interval.div_f64(pace.speedup),
        max_poll_interval: if pace.max_poll_scaled {
            settings.max_poll_interval.div_f64(pace.speedup)
        } else {
            settings.max_poll_interval
        },
        call_timeout: settings.call_timeout,
    };
    let response = reconcile(&ec2, &request, limits).await.expect("the skewed job succeeds");
    assert!(response.complete, "the skewed job completes");
    let makespan = started.elapsed().as_secs_f64();
    SkewedRun::of(&ec2, makespan, lower_bound(&ec2, TARGET))
}

/// `region`'s lower bound on the skewed job's makespan, from its copies' real durations (with
/// regular copies these are the model's, 120 s + 20 s per GiB): its longest copy, or its work
/// over `pending_limit`.
fn lower_bound(ec2: &SimulatedEc2, region: &str) -> f64 {
    let durations: Vec<f64> = ec2.copy_durations(region).iter().map(|d| d.as_secs_f64()).collect();
    assert_eq!(durations.len(), SKEWED_SOURCES, "one copy per source in {region}");
    let longest = durations.iter().cloned().fold(0.0, f64::max);
    longest.max(durations.iter().sum::<f64>() / SKEWED_PENDING_LIMIT as f64)
}

impl SkewedRun {
    fn of(ec2: &SimulatedEc2, makespan: f64, lower_bound: f64) -> Self {
        Self {
            makespan,
            lower_bound,
            ratio: makespan / lower_bound,
            calls: ec2.calls().total(),
            ledger_calls: ledger_calls(ec2),
        }
    }
}

/// The target regions of the several-targets job.
const TARGETS: [&str; 3] = ["eu-west-1", "us-west-2", "ap-southeast-2"];

/// The skewed job to three target regions at once, `pending_limit` 5 in each: makespan over
/// the largest of the targets' own lower bounds, and EC2 calls per copy made.
fn three_targets_figures(runtime: &tokio::runtime::Runtime) {
    let prefix = "three_targets_";
    let copies = (SKEWED_SOURCES * TARGETS.len()) as f64;
    let first = runtime.block_on(three_targets_job(1));
    println!("{prefix}makespan_over_lower_bound={:.3}", first.ratio);
    println!("{prefix}ec2_calls_per_copy={:.2}", first.calls as f64 / copies);
    println!("{prefix}ledger_calls_per_copy={:.2}", first.ledger_calls as f64 / copies);
    println!("{prefix}makespan_seconds={:.0}", first.makespan);
    println!("{prefix}lower_bound_seconds={:.0}", first.lower_bound);
    let (mut worst_ratio, mut worst_calls): (f64, f64) = (0.0, 0.0);
    for seed in 1..=SEEDS {
        let run = runtime.block_on(three_targets_job(seed));
        worst_ratio = worst_ratio.max(run.ratio);
        worst_calls = worst_calls.max(run.calls as f64 / copies);
    }
    println!("{prefix}makespan_over_lower_bound_worst_of_{SEEDS}_seeds={worst_ratio:.3}");
    println!("{prefix}ec2_calls_per_copy_worst_of_{SEEDS}_seeds={worst_calls:.2}");
}

async fn three_targets_job(seed: u64) -> SkewedRun {
    let mut rng = StdRng::seed_from_u64(seed);
    let sizes = skewed_sizes(&mut rng);
    let ec2 = Table::Deployed.deploy(SimulatedEc2::new().with_copy_time(CopyTimeModel::DEFAULT));
    let ids: Vec<String> = sizes.iter().map(|gib| ec2.add_source(SOURCE, *gib, &[]).to_string()).collect();
    let payload = RequestPayload {
        snapshot_ids: Some(ids),
        region: Some(SOURCE.to_owned()),
        targets: Some(
            TARGETS.iter().map(|region| TargetPayload { region: (*region).to_owned(), ..Default::default() }).collect(),
        ),
        pending_limit: Some(SKEWED_PENDING_LIMIT as u32),
        wait_for_completion: Some(true),
        ..Default::default()
    };
    let request = CopyRequest::check(payload, &Settings::default()).expect("a valid request");
    let settings = Settings::default();
    let limits = RunLimits {
        deadline: None,
        poll_interval: settings.poll_interval,
        max_poll_interval: settings.max_poll_interval,
        call_timeout: settings.call_timeout,
    };
    let started = tokio::time::Instant::now();
    let response = reconcile(&ec2, &request, limits).await.expect("the three-target job succeeds");
    assert!(response.complete, "the three-target job completes");
    let makespan = started.elapsed().as_secs_f64();
    // Each target's own bound; the job's is the largest of them.
    let bound = TARGETS.iter().map(|region| lower_bound(&ec2, region)).fold(0.0, f64::max);
    SkewedRun::of(&ec2, makespan, bound)
}

async fn many_sources(count: usize) -> usize {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::INSTANT);
    let ids: Vec<String> = (0..count).map(|i| ec2.add_source(SOURCE, 8 + (i % 100) as u64, &[]).to_string()).collect();
    let request = request(ids, 20, false);
    let limits = RunLimits {
        deadline: None,
        poll_interval: Settings::default().poll_interval,
        max_poll_interval: Settings::default().max_poll_interval,
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

/// The night's burst: 500 `EBS Snapshot Notification`s over 10 minutes into the SQS queue, the
/// queue function consuming it as the template configures it, while 20 copies of Data
/// Lifecycle Manager or AWS Backup hold the region's quota for `held` (none: a free quota).
struct BurstRun {
    copied: usize,
    dead_lettered: usize,
    invocations: usize,
    calls_per_copy: f64,
    ledger_calls_per_copy: f64,
    /// The most of this deployment's copies pending at once (`pending_limit` 15).
    max_pending: usize,
    hours_to_last_start: f64,
}

async fn burst_500(held: Option<Duration>) -> BurstRun {
    use copy_snapshots::entry::simulated_queue::{QueueSettings, SimulatedQueue};
    use copy_snapshots::ids::Region;
    const EVENTS: usize = 500;
    // EC2 answering in 50 ms, the table in 5 ms: the two batches in flight interleave.
    let ec2 = Table::Deployed.deploy(SimulatedEc2::new().with_latency(Duration::from_millis(50)));
    if let Some(held) = held {
        ec2.add_foreign_pending(TARGET, 20, held);
    }
    let settings = Settings {
        source_region: Region::parse(SOURCE).ok(),
        target_region: Region::parse(TARGET).ok(),
        pending_limit: 15,
        ..Settings::default()
    };
    let mut queue = SimulatedQueue::new(QueueSettings::TEMPLATE);
    let started = tokio::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(7);
    for _minute in 0..10 {
        for _ in 0..EVENTS / 10 {
            let id = ec2.add_source(SOURCE, rng.random_range(8..=200), &[]);
            queue.send(&snapshot_notification(id.as_str()));
        }
        let next = tokio::time::Instant::now() + Duration::from_secs(60);
        queue.work_until(&ec2, &settings, next).await;
        tokio::time::sleep_until(next).await;
    }
    queue.work_until(&ec2, &settings, started + Duration::from_secs(7 * 86_400)).await;
    let copied = ec2.tracked_copies(TARGET).len();
    BurstRun {
        copied,
        dead_lettered: queue.stats.dead_lettered.len(),
        invocations: queue.stats.invocations,
        calls_per_copy: ec2.calls().total() as f64 / copied.max(1) as f64,
        ledger_calls_per_copy: ledger_calls(&ec2) as f64 / copied.max(1) as f64,
        max_pending: ec2.max_tracked_pending(TARGET),
        hours_to_last_start: ec2.last_copy_started_after(TARGET, started).as_secs_f64() / 3600.0,
    }
}

/// An `EBS Snapshot Notification` for snapshot `id` in the source region.
fn snapshot_notification(id: &str) -> serde_json::Value {
    serde_json::json!({
        "version": "0", "id": format!("event-{id}"), "detail-type": "EBS Snapshot Notification",
        "source": "aws.ec2", "account": "111122223333", "time": "2026-11-25T03:00:00Z", "region": SOURCE,
        "resources": [format!("arn:aws:ec2::{SOURCE}:snapshot/{id}")],
        "detail": {"event": "createSnapshot", "result": "succeeded", "cause": "",
                   "snapshot_id": format!("arn:aws:ec2::{SOURCE}:snapshot/{id}"),
                   "source": format!("arn:aws:ec2::{SOURCE}:volume/vol-01234567")}
    })
}

/// A first schedule over a backlog: 3,000 sources never copied, through the state machine's
/// loop (the function with `max_wait_seconds` 0, then the state machine's free Wait, until
/// `complete`), continuing as a new execution every `ROUNDS_PER_EXECUTION` rounds.
struct BacklogRun {
    rounds: usize,
    executions: usize,
    days: f64,
    calls_per_copy: f64,
    ledger_calls_per_copy: f64,
}

async fn backlog_3000() -> BacklogRun {
    const SOURCES: usize = 3_000;
    let ec2 = Table::Deployed.deploy(SimulatedEc2::new());
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..SOURCES {
        ec2.add_source(SOURCE, rng.random_range(8..=200), &[("Backup", "daily")]);
    }
    let payload = RequestPayload {
        filters: Some(vec![FilterPayload { name: "tag:Backup".to_owned(), values: vec!["daily".to_owned()] }]),
        region: Some(SOURCE.to_owned()),
        target_region: Some(TARGET.to_owned()),
        pending_limit: Some(15),
        max_wait_seconds: Some(0),
        ..Default::default()
    };
    let request = CopyRequest::check(payload, &Settings::default()).expect("a valid request");
    let settings = Settings::default();
    let started = tokio::time::Instant::now();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
        let limits = RunLimits {
            deadline: Some(deadline),
            poll_interval: settings.poll_interval,
            max_poll_interval: settings.max_poll_interval,
            call_timeout: settings.call_timeout,
        };
        let response = reconcile(&ec2, &request, limits).await.expect("a round succeeds");
        if response.complete {
            break;
        }
        assert!(rounds < 100_000, "the backlog does not converge");
        tokio::time::sleep(STATE_MACHINE_WAIT).await;
    }
    BacklogRun {
        rounds,
        executions: rounds.div_ceil(ROUNDS_PER_EXECUTION),
        days: started.elapsed().as_secs_f64() / 86_400.0,
        calls_per_copy: ec2.calls().total() as f64 / SOURCES as f64,
        ledger_calls_per_copy: ledger_calls(&ec2) as f64 / SOURCES as f64,
    }
}

fn scale_figures(runtime: &tokio::runtime::Runtime) {
    for (name, held) in [("quota_held_6h", Some(Duration::from_secs(6 * 3600))), ("quota_free", None)] {
        let run = runtime.block_on(burst_500(held));
        println!("burst_500_events_{name}_copied={}", run.copied);
        println!("burst_500_events_{name}_dead_lettered={}", run.dead_lettered);
        println!("burst_500_events_{name}_invocations={}", run.invocations);
        println!("burst_500_events_{name}_ec2_calls_per_copy={:.2}", run.calls_per_copy);
        println!("burst_500_events_{name}_ledger_calls_per_copy={:.2}", run.ledger_calls_per_copy);
        println!("burst_500_events_{name}_max_pending={}", run.max_pending);
        println!("burst_500_events_{name}_hours_to_last_start={:.1}", run.hours_to_last_start);
    }
    let backlog = runtime.block_on(backlog_3000());
    println!("backlog_3000_sources_rounds={}", backlog.rounds);
    println!("backlog_3000_sources_executions={}", backlog.executions);
    println!("backlog_3000_sources_days={:.2}", backlog.days);
    println!("backlog_3000_sources_ec2_calls_per_copy={:.2}", backlog.calls_per_copy);
    println!("backlog_3000_sources_ledger_calls_per_copy={:.2}", backlog.ledger_calls_per_copy);
}
