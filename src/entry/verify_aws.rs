//! `copy-snapshots verify-aws`: the live check a user runs on their own account, because no AWS
//! account is reachable where this project is built and tested. It owns one run end to end:
//! - the setup, with the SDK directly (making volumes is not the function's job): a 1 GiB gp3
//!   volume in the source region's first available zone and a snapshot of it, both tagged with
//!   this run's id ([`RUN_TAG`]) and a Name;
//! - the copy, through the function's own request path (the request the Lambda and the command
//!   line parse, the engine, the SDK store with its PresignedUrl, tags and KMS handling):
//!   `encrypt: true`, `kms_key_id` as the user gave it, `wait_for_completion: true`;
//! - the check: the key reference resolved with kms:DescribeKey in the target region, and the
//!   copy `completed`, `Encrypted`, with a `KmsKeyId` equal to that key ARN exactly;
//! - the cleanup of exactly what this run made (by the ids EC2 answered, and, for a call cut
//!   off by Ctrl-C before its answer arrived, by this run's unique tag), on success, failure,
//!   Ctrl-C or SIGTERM; whatever could not be deleted is printed with its id and region;
//! - the report: each phase's time, how long each thing existed (what it costs), PASS or FAIL.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{self, AvailabilityZoneState, ResourceType, SnapshotState, TagSpecification, VolumeType};
use clap::Args;
use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::contract::event::{Invocation, parse_payload};
use crate::contract::request::Settings;
use crate::contract::response::{Answer, Response};
use crate::engine::progress::{Observer, RunEvent, StopSignal};
use crate::entry::handler::answer_observed;
use crate::entry::terminal::ProgressView;
use crate::ids::{KmsKeyRef, Region};
use crate::store::ec2::Ec2Store;
use crate::store::kms::KeyLookup;
use crate::store::sdk::load_sdk_config;
use crate::store::{SOURCE_SNAPSHOT_TAG, StoreError};

/// The tag on everything a run makes (volume, snapshot, copy), valued with the run's id, so a
/// user can find what a killed run left. Not under `copy-snapshots:`, which the request's
/// `tags` may not use (the function's own tags live there).
pub const RUN_TAG: &str = "copy-snapshots-verify-run";

/// Exit status of a FAIL.
pub const EXIT_FAIL: u8 = 1;
/// Exit status of bad flags.
const EXIT_USAGE: u8 = 2;
/// Exit status after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// The size of the volume, GiB: the smallest EBS allows, so the copy is as cheap as it gets.
const VOLUME_GIB: i32 = 1;

#[derive(Debug, Args, Clone)]
pub struct VerifyAwsArgs {
    /// The region to make the volume and snapshot in, and copy from.
    #[arg(long, alias = "source_region", value_name = "REGION")]
    source_region: String,
    /// The region to copy to.
    #[arg(long, alias = "target_region", value_name = "REGION")]
    target_region: String,
    /// The KMS key in the target region the copy must be encrypted under: key id, key ARN,
    /// alias name or alias ARN.
    #[arg(long, visible_alias = "kms-key-id", alias = "kms_key_id", value_name = "KEY")]
    kms_key: String,
    /// The named profile for credentials.
    #[arg(long)]
    profile: Option<String>,
    /// Give up on the volume, snapshot and copy after this many minutes (then clean up).
    #[arg(long, default_value_t = 60, value_name = "MINUTES")]
    timeout_minutes: u64,
    /// How long the cleanup may keep retrying a deletion EC2 refuses for now (a volume still
    /// being created, a snapshot still pending).
    #[arg(long, default_value_t = 10, value_name = "MINUTES")]
    cleanup_minutes: u64,
    /// Debug logs on stderr.
    #[arg(long)]
    debug: bool,
}

/// What the run was asked to check, validated before anything is made.
struct Plan {
    source: Region,
    target: Region,
    /// The key reference as the user wrote it: what the function is given.
    key: KmsKeyRef,
    timeout: Duration,
    cleanup_budget: Duration,
}

/// Something this run made, and when EC2 said it existed.
#[derive(Debug, Clone)]
struct Made {
    kind: Kind,
    id: String,
    region: Region,
    since: Instant,
    gone_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Volume,
    Snapshot,
    Copy,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Self::Volume => "volume",
            Self::Snapshot => "snapshot",
            Self::Copy => "copy",
        }
    }
}

impl Made {
    /// The AWS CLI command that deletes it by hand.
    fn delete_command(&self) -> String {
        match self.kind {
            Kind::Volume => format!("aws ec2 delete-volume --region {} --volume-id {}", self.region, self.id),
            Kind::Snapshot | Kind::Copy => {
                format!("aws ec2 delete-snapshot --region {} --snapshot-id {}", self.region, self.id)
            }
        }
    }
}

/// The run's record, shared with the work that may be cut off by a signal: every id is
/// recorded the moment EC2 names it, and each phase's time as it ends.
#[derive(Default)]
struct Ledger {
    made: Vec<Made>,
    /// Each phase's time, and whether a signal cut it off.
    phases: Vec<(&'static str, Duration, bool)>,
    /// The phase in progress and when it began (for an interrupted run's report).
    current: Option<(&'static str, Instant)>,
    /// The copy's progress display, cleared here when a signal cuts the copy off.
    view: Option<ProgressView>,
}

#[derive(Clone, Default)]
struct SharedLedger(Arc<Mutex<Ledger>>);

impl SharedLedger {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, kind: Kind, id: &str, region: &Region) {
        let mut ledger = self.lock();
        if !ledger.made.iter().any(|m| m.id == id) {
            let made =
                Made { kind, id: id.to_owned(), region: region.clone(), since: Instant::now(), gone_after: None };
            ledger.made.push(made);
        }
    }

    fn ids(&self, kind: Kind) -> Vec<String> {
        self.lock().made.iter().filter(|m| m.kind == kind).map(|m| m.id.clone()).collect()
    }

    fn begin(&self, phase: &'static str) {
        self.lock().current = Some((phase, Instant::now()));
    }

    /// Ends the phase in progress, keeping its time.
    fn end(&self) {
        self.end_phase(false);
    }

    /// Ends the phase in progress where a signal cut it off.
    fn cut_off(&self) {
        self.end_phase(true);
    }

    fn end_phase(&self, cut_off: bool) {
        let mut ledger = self.lock();
        if let Some((phase, began)) = ledger.current.take() {
            ledger.phases.push((phase, began.elapsed(), cut_off));
        }
    }
}

/// Runs one phase of the work, timing it.
async fn phase<T>(ledger: &SharedLedger, name: &'static str, work: impl Future<Output = T>) -> T {
    ledger.begin(name);
    let outcome = work.await;
    ledger.end();
    outcome
}

/// The clients a run uses: EC2 in both regions, KMS in the target region.
struct Aws {
    sdk_config: aws_config::SdkConfig,
    source: aws_sdk_ec2::Client,
    target: aws_sdk_ec2::Client,
    keys: KeyLookup,
}

impl Aws {
    fn new(sdk_config: aws_config::SdkConfig, plan: &Plan) -> Self {
        let ec2 = |region: &Region| {
            let config = aws_sdk_ec2::config::Builder::from(&sdk_config)
                .region(aws_sdk_ec2::config::Region::new(region.as_str().to_owned()))
                .build();
            aws_sdk_ec2::Client::from_conf(config)
        };
        Self { source: ec2(&plan.source), target: ec2(&plan.target), keys: KeyLookup::new(&sdk_config), sdk_config }
    }

    fn ec2(&self, region: &Region, plan: &Plan) -> &aws_sdk_ec2::Client {
        if *region == plan.source { &self.source } else { &self.target }
    }
}

/// An SDK error as one line: the service's code and message when it answered, else the whole
/// chain (timeouts, connection failures).
fn describe_error<E: ProvideErrorMetadata + std::error::Error>(error: &E) -> String {
    match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => DisplayErrorContext(error).to_string(),
    }
}

/// Runs `copy-snapshots verify-aws`; returns the exit status.
pub async fn main(args: VerifyAwsArgs) -> u8 {
    let started = Instant::now();
    crate::entry::logging::init_cli(args.debug);
    let plan = match check_args(&args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("error: {message}");
            return EXIT_USAGE;
        }
    };
    let mut settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    // The check copies one snapshot and deletes nothing but what it made: no retention from
    // the caller's shell.
    settings.retention = crate::contract::retention::Retention::default();
    // Registered before anything is made, so a Ctrl-C at any point reaches the cleanup.
    let mut interrupts = Interrupts::register();
    let sdk_config = load_sdk_config(settings.call_timeout, args.profile.as_deref(), Some(plan.source.as_str())).await;
    let aws = Aws::new(sdk_config, &plan);
    let run_id = new_run_id();
    let ledger = SharedLedger::default();
    note(&format!(
        "verify-aws run {run_id}: {} → {} under {}; everything it makes is tagged {RUN_TAG}={run_id}",
        plan.source,
        plan.target,
        plan.key.as_str()
    ));

    let (outcome, interrupted) = tokio::select! {
        outcome = verify(&aws, &plan, &settings, &run_id, &ledger) => (outcome, false),
        signal = interrupts.recv() => {
            // The work is dropped where it stood; what it made is in the ledger, or findable
            // by the run's tag.
            ledger.cut_off();
            (Err(format!("interrupted by {signal}")), true)
        }
    };
    let view = ledger.lock().view.take();
    if let Some(view) = view {
        view.finish();
    }
    match &outcome {
        Err(reason) if interrupted => {
            note(&format!("{reason}: cleaning up (again to stop the cleanup and list what is left)"));
        }
        Err(reason) => note(&format!("FAIL: {reason}; cleaning up")),
        Ok(_) => {}
    }

    ledger.begin("cleanup");
    let leftovers = tokio::select! {
        leftovers = cleanup(&aws, &plan, &run_id, &ledger) => leftovers,
        signal = interrupts.recv() => {
            ledger.cut_off();
            not_deleted(&ledger, &format!("the cleanup was stopped by a second {signal}"))
        }
    };
    ledger.end();
    let report = report(&plan, &run_id, &ledger, &outcome, &leftovers, started.elapsed());
    let _ = std::io::stdout().lock().write_all(report.as_bytes());
    match (&outcome, leftovers.is_empty()) {
        _ if interrupted => EXIT_INTERRUPTED,
        (Ok(_), true) => 0,
        _ => EXIT_FAIL,
    }
}

/// Everything made and not deleted yet, with why it stays.
fn not_deleted(ledger: &SharedLedger, why: &str) -> Vec<(Made, String)> {
    let ledger = ledger.lock();
    ledger.made.iter().filter(|m| m.gone_after.is_none()).map(|m| (m.clone(), why.to_owned())).collect()
}

fn check_args(args: &VerifyAwsArgs) -> Result<Plan, String> {
    let source = Region::parse(&args.source_region).map_err(|e| format!("--source-region: {e}"))?;
    let target = Region::parse(&args.target_region).map_err(|e| format!("--target-region: {e}"))?;
    if source == target {
        return Err(format!(
            "--source-region and --target-region are both {source}; the check is of a cross-region copy"
        ));
    }
    let key = KmsKeyRef::parse(&args.kms_key).map_err(|e| format!("--kms-key: {e}"))?;
    if args.timeout_minutes == 0 {
        return Err("--timeout-minutes: 0; valid: at least 1".to_owned());
    }
    Ok(Plan {
        source,
        target,
        key,
        timeout: Duration::from_secs(args.timeout_minutes.saturating_mul(60)),
        cleanup_budget: Duration::from_secs(args.cleanup_minutes.saturating_mul(60)),
    })
}

/// A run id unique enough that its tag selects this run's resources only: the time and 32
/// random bits (std's hasher keys are random per process).
fn new_run_id() -> String {
    let seconds = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{seconds}-{:08x}", hasher.finish() as u32)
}

/// A progress line on stderr.
fn note(line: &str) {
    eprintln!("{line}");
}

/// Ctrl-C and SIGTERM (a CI job's timeout, `kill`), registered once for the whole run.
struct Interrupts {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Interrupts {
    fn register() -> Self {
        let register = |kind| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "a signal handler could not be registered; that signal ends the run without cleanup");
                None
            }
        };
        Self { interrupt: register(SignalKind::interrupt()), terminate: register(SignalKind::terminate()) }
    }

    /// Resolves with the signal's name when one arrives; never when none could be registered.
    async fn recv(&mut self) -> &'static str {
        async fn next(signal: &mut Option<Signal>) {
            if let Some(signal) = signal
                && signal.recv().await.is_some()
            {
                return;
            }
            std::future::pending().await
        }
        tokio::select! {
            () = next(&mut self.interrupt) => "Ctrl-C",
            () = next(&mut self.terminate) => "SIGTERM",
        }
    }
}

/// The check itself, up to the verdict; cleanup is the caller's. Ok: what passed.
async fn verify(
    aws: &Aws,
    plan: &Plan,
    settings: &Settings,
    run_id: &str,
    ledger: &SharedLedger,
) -> Result<String, String> {
    let deadline = Instant::now() + plan.timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    // The request is checked before anything is made: a request the function would refuse
    // would otherwise cost a volume and a snapshot first.
    copy_invocation(plan, settings, "snap-00000000000000000", run_id)
        .map_err(|e| format!("the function refuses the request: {e}"))?;
    let key_arn = phase(ledger, "key", resolve_key(aws, plan)).await?;
    note(&format!("key       {} is {key_arn}", plan.key.as_str()));
    let volume = phase(ledger, "volume", make_volume(aws, plan, run_id, ledger, remaining())).await?;
    let snapshot = phase(ledger, "snapshot", make_snapshot(aws, plan, run_id, &volume, ledger, remaining())).await?;
    let copy =
        phase(ledger, "copy", copy_with_the_function(aws, plan, settings, run_id, &snapshot, ledger, deadline)).await?;
    phase(ledger, "check", check_copy(aws, &copy, &key_arn, plan)).await?;
    Ok(format!(
        "{snapshot} copied from {} to {} as {copy} by the function; completed, encrypted under {key_arn} (asked as {})",
        plan.source,
        plan.target,
        plan.key.as_str()
    ))
}

/// The key reference → the key's ARN, with kms:DescribeKey in the target region, and whether
/// EBS can use that key at all (enabled, symmetric, for encryption).
async fn resolve_key(aws: &Aws, plan: &Plan) -> Result<String, String> {
    let asked = plan.key.as_str();
    // The function's own lookup (src/kms.rs): the ARN the engine compares copies with.
    let found = aws.keys.describe(&plan.target, asked).await.map_err(|error| {
        let why = match &error {
            StoreError::NotFound(_) => format!("does not exist in {}", plan.target),
            StoreError::AccessDenied(_) => "cannot be described: kms:DescribeKey denied".to_owned(),
            _ => "could not be described".to_owned(),
        };
        format!("the KMS key {asked} {why} ({error}); nothing was made")
    })?;
    if let Some(reason) = found.unusable_reason() {
        return Err(format!("the KMS key {asked} ({}) {reason}; nothing was made", found.arn));
    }
    Ok(found.arn)
}

/// Tags for something this run makes: the run's tag and a Name saying what it is.
fn run_tags(resource: ResourceType, run_id: &str) -> TagSpecification {
    let tag = |key: &str, value: &str| types::Tag::builder().key(key).value(value).build();
    TagSpecification::builder()
        .resource_type(resource)
        .tags(tag(RUN_TAG, run_id))
        .tags(tag("Name", &format!("copy-snapshots verify-aws {run_id}")))
        .build()
}

/// A 1 GiB gp3 volume in the source region's first available zone, available.
async fn make_volume(
    aws: &Aws,
    plan: &Plan,
    run_id: &str,
    ledger: &SharedLedger,
    max_wait: Duration,
) -> Result<String, String> {
    let zones = aws
        .source
        .describe_availability_zones()
        .send()
        .await
        .map_err(|e| format!("ec2:DescribeAvailabilityZones in {}: {}", plan.source, describe_error(&e)))?;
    // Local and Wavelength zones need an opt-in and are not where a user's volumes usually live.
    let mut names: Vec<&str> = zones
        .availability_zones()
        .iter()
        .filter(|z| z.state() == Some(&AvailabilityZoneState::Available))
        .filter(|z| z.zone_type().is_none_or(|t| t == "availability-zone"))
        .filter_map(|z| z.zone_name())
        .collect();
    names.sort_unstable();
    let zone = names.first().ok_or_else(|| format!("{} has no available availability zone", plan.source))?;
    let made = aws
        .source
        .create_volume()
        .availability_zone(*zone)
        .size(VOLUME_GIB)
        .volume_type(VolumeType::Gp3)
        .tag_specifications(run_tags(ResourceType::Volume, run_id))
        .send()
        .await
        .map_err(|e| format!("ec2:CreateVolume in {zone}: {}", describe_error(&e)))?;
    let volume = made.volume_id().ok_or("ec2:CreateVolume answered without a volume id")?.to_owned();
    ledger.record(Kind::Volume, &volume, &plan.source);
    note(&format!("volume    {volume} ({VOLUME_GIB} GiB gp3) in {zone}; waiting until available"));
    aws.source
        .wait_until_volume_available()
        .volume_ids(&volume)
        .wait(max_wait)
        .await
        .map_err(|e| format!("volume {volume} did not become available: {}", DisplayErrorContext(&e)))?;
    Ok(volume)
}

/// A snapshot of `volume`, completed.
async fn make_snapshot(
    aws: &Aws,
    plan: &Plan,
    run_id: &str,
    volume: &str,
    ledger: &SharedLedger,
    max_wait: Duration,
) -> Result<String, String> {
    let made = aws
        .source
        .create_snapshot()
        .volume_id(volume)
        .description(format!("copy-snapshots verify-aws {run_id}: delete me if this run left me"))
        .tag_specifications(run_tags(ResourceType::Snapshot, run_id))
        .send()
        .await
        .map_err(|e| format!("ec2:CreateSnapshot of {volume}: {}", describe_error(&e)))?;
    let snapshot = made.snapshot_id().ok_or("ec2:CreateSnapshot answered without a snapshot id")?.to_owned();
    ledger.record(Kind::Snapshot, &snapshot, &plan.source);
    note(&format!("snapshot  {snapshot} of {volume}; waiting until completed"));
    aws.source
        .wait_until_snapshot_completed()
        .snapshot_ids(&snapshot)
        .wait(max_wait)
        .await
        .map_err(|e| format!("snapshot {snapshot} did not complete: {}", DisplayErrorContext(&e)))?;
    Ok(snapshot)
}

/// The request the function is given: the Lambda's own fields, parsed by its own parser.
fn copy_invocation(plan: &Plan, settings: &Settings, snapshot: &str, run_id: &str) -> Result<Invocation, String> {
    let payload = json!({
        "snapshot_ids": [snapshot],
        "region": plan.source.as_str(),
        "target_region": plan.target.as_str(),
        "encrypt": true,
        "kms_key_id": plan.key.as_str(),
        "wait_for_completion": true,
        "tags": {RUN_TAG: run_id},
    });
    parse_payload(payload, settings).map_err(|e| format!("{} ({})", e, e.error_type()))
}

/// Records every copy the engine starts the moment it says so, and shows its progress.
struct Recording<'a> {
    ledger: &'a SharedLedger,
    target: &'a Region,
    view: ProgressView,
}

impl Observer for Recording<'_> {
    fn observe(&self, event: RunEvent) {
        if let RunEvent::CopyStarted { copy, .. } | RunEvent::CopyCompleted { copy, .. } = &event {
            self.ledger.record(Kind::Copy, copy.as_str(), self.target);
        }
        self.view.observe(event);
    }
}

/// The copy, made by the function's request path and engine, waited for until completed.
async fn copy_with_the_function(
    aws: &Aws,
    plan: &Plan,
    settings: &Settings,
    run_id: &str,
    snapshot: &str,
    ledger: &SharedLedger,
    deadline: Instant,
) -> Result<String, String> {
    let invocation = copy_invocation(plan, settings, snapshot, run_id)?;
    let store = Ec2Store::new(&aws.sdk_config);
    let view = ProgressView::new(std::io::stderr().is_terminal());
    ledger.lock().view = Some(view.clone());
    let observer = Recording { ledger, target: &plan.target, view: view.clone() };
    let engine_deadline = tokio::time::Instant::now() + deadline.saturating_duration_since(Instant::now());
    note(&format!("copy      {snapshot} → {} through the function's engine", plan.target));
    let answer =
        answer_observed(invocation, settings, &store, Some(engine_deadline), &observer, StopSignal::never()).await;
    view.finish();
    let response = match answer {
        Ok(Answer::Full(response)) => response,
        Ok(Answer::Summary(_)) => return Err("the function answered a summary, not the copies".to_owned()),
        Err(error) => {
            if let Some(response) = error.response() {
                record_copies(ledger, response, &plan.target);
            }
            return Err(format!("the function failed ({}): {error}", error.error_type()));
        }
    };
    record_copies(ledger, &response, &plan.target);
    let copy = response.copies.iter().find(|c| c.source_snapshot_id == snapshot).ok_or_else(|| {
        format!("the function made no copy of {snapshot}: {}", serde_json::to_string(&response).unwrap_or_default())
    })?;
    if copy.state != "completed" {
        return Err(format!(
            "the copy {} is {} after the timeout ({}); the function reported complete: {}",
            copy.snapshot_id,
            copy.state,
            copy.progress.as_deref().unwrap_or("no progress"),
            response.complete
        ));
    }
    Ok(copy.snapshot_id.clone())
}

/// Every copy an answer names, failed attempts included.
fn record_copies(ledger: &SharedLedger, response: &Response, target: &Region) {
    for copy in &response.copies {
        ledger.record(Kind::Copy, &copy.snapshot_id, target);
    }
    for failure in &response.failed {
        for id in failure.snapshot_id.iter().chain(&failure.error_snapshot_ids) {
            ledger.record(Kind::Copy, id, target);
        }
    }
}

/// The copy as EC2 reports it now: completed, encrypted, under exactly `key_arn`.
async fn check_copy(aws: &Aws, copy: &str, key_arn: &str, plan: &Plan) -> Result<(), String> {
    let answer =
        aws.target.describe_snapshots().snapshot_ids(copy).send().await.map_err(|e| {
            format!("ec2:DescribeSnapshots of the copy {copy} in {}: {}", plan.target, describe_error(&e))
        })?;
    let snapshot = answer
        .snapshots()
        .iter()
        .find(|s| s.snapshot_id() == Some(copy))
        .ok_or_else(|| format!("the copy {copy} is not in {}", plan.target))?;
    let state = snapshot.state().map_or("unknown", SnapshotState::as_str);
    if snapshot.state() != Some(&SnapshotState::Completed) {
        let message = snapshot.state_message().unwrap_or_default();
        return Err(format!("the copy {copy} is {state}, not completed {message}").trim_end().to_owned());
    }
    if snapshot.encrypted() != Some(true) {
        return Err(format!("the copy {copy} is not encrypted; asked: encrypted under {key_arn}"));
    }
    match snapshot.kms_key_id() {
        Some(actual) if actual == key_arn => Ok(()),
        Some(actual) => Err(format!(
            "the copy {copy} is encrypted under {actual}, not the key asked for, {key_arn} (asked as {})",
            plan.key.as_str()
        )),
        None => Err(format!("the copy {copy} names no KMS key; asked: {key_arn}")),
    }
}

/// Deletes everything this run made: the copies in the target region first (a pending one is
/// cancelled so), then the snapshot, then the volume. Returns what could not be deleted.
async fn cleanup(aws: &Aws, plan: &Plan, run_id: &str, ledger: &SharedLedger) -> Vec<(Made, String)> {
    let until = Instant::now() + plan.cleanup_budget;
    let mut problems = find_unrecorded(aws, plan, run_id, ledger).await;
    let made: Vec<Made> = {
        let ledger = ledger.lock();
        let order = [Kind::Copy, Kind::Snapshot, Kind::Volume];
        order.iter().flat_map(|kind| ledger.made.iter().filter(move |m| m.kind == *kind).cloned()).collect()
    };
    for item in made {
        match delete(aws, plan, &item, until).await {
            Ok(gone) => {
                note(&format!("deleted   {} {} in {}{}", item.kind.noun(), item.id, item.region, gone));
                let mut ledger = ledger.lock();
                if let Some(m) = ledger.made.iter_mut().find(|m| m.id == item.id) {
                    m.gone_after = Some(m.since.elapsed());
                }
            }
            Err(error) => problems.push((item, error)),
        }
    }
    problems
}

/// Things this run made whose id it never heard: a create or copy call cut off (Ctrl-C, a
/// lost answer) after EC2 acted. Looked for by this run's tag only (plus the snapshot's and
/// volume's ids it came from), never by anything broader. A look that fails is reported
/// as a possible leftover.
async fn find_unrecorded(aws: &Aws, plan: &Plan, run_id: &str, ledger: &SharedLedger) -> Vec<(Made, String)> {
    let filter = |name: &str, value: &str| types::Filter::builder().name(name).values(value).build();
    let run = filter(&format!("tag:{RUN_TAG}"), run_id);
    let mut problems = Vec::new();
    let unlooked = |kind: Kind, region: &Region, what: String| {
        let made = Made {
            kind,
            id: format!("({RUN_TAG}={run_id})"),
            region: region.clone(),
            since: Instant::now(),
            gone_after: None,
        };
        (made, what)
    };
    let volumes = ledger.ids(Kind::Volume);
    if volumes.is_empty() {
        match aws.source.describe_volumes().filters(run.clone()).send().await {
            Ok(found) => {
                for id in found.volumes().iter().filter_map(|v| v.volume_id()) {
                    ledger.record(Kind::Volume, id, &plan.source);
                }
            }
            Err(e) => {
                problems.push(unlooked(Kind::Volume, &plan.source, format!("could not look: {}", describe_error(&e))))
            }
        }
    }
    for volume in ledger.ids(Kind::Volume) {
        if !ledger.ids(Kind::Snapshot).is_empty() {
            break;
        }
        let look = aws
            .source
            .describe_snapshots()
            .owner_ids("self")
            .filters(run.clone())
            .filters(filter("volume-id", &volume));
        match look.send().await {
            Ok(found) => {
                for id in found.snapshots().iter().filter_map(|s| s.snapshot_id()) {
                    ledger.record(Kind::Snapshot, id, &plan.source);
                }
            }
            Err(e) => {
                problems.push(unlooked(
                    Kind::Snapshot,
                    &plan.source,
                    format!("could not look: {}", describe_error(&e)),
                ));
            }
        }
    }
    for snapshot in ledger.ids(Kind::Snapshot) {
        let look = aws
            .target
            .describe_snapshots()
            .owner_ids("self")
            .filters(run.clone())
            .filters(filter(&format!("tag:{SOURCE_SNAPSHOT_TAG}"), &snapshot));
        match look.send().await {
            Ok(found) => {
                for id in found.snapshots().iter().filter_map(|s| s.snapshot_id()) {
                    ledger.record(Kind::Copy, id, &plan.target);
                }
            }
            Err(e) => {
                problems.push(unlooked(Kind::Copy, &plan.target, format!("could not look: {}", describe_error(&e))))
            }
        }
    }
    problems
}

/// Deletes one thing, retrying while EC2 says "not now" (a volume still being created, a
/// snapshot in use by its pending copy) until `until`. Ok: how it went (already gone, or
/// nothing).
async fn delete(aws: &Aws, plan: &Plan, item: &Made, until: Instant) -> Result<&'static str, String> {
    let ec2 = aws.ec2(&item.region, plan);
    let mut pause = Duration::from_millis(500);
    loop {
        let error = match item.kind {
            Kind::Volume => ec2
                .delete_volume()
                .volume_id(&item.id)
                .send()
                .await
                .err()
                .map(|e| (e.code().map(str::to_owned), describe_error(&e))),
            Kind::Snapshot | Kind::Copy => ec2
                .delete_snapshot()
                .snapshot_id(&item.id)
                .send()
                .await
                .err()
                .map(|e| (e.code().map(str::to_owned), describe_error(&e))),
        };
        let Some((code, text)) = error else { return Ok("") };
        match code.as_deref() {
            Some("InvalidVolume.NotFound" | "InvalidSnapshot.NotFound") => return Ok(" (already gone)"),
            Some("IncorrectState" | "VolumeInUse" | "InvalidSnapshot.InUse" | "IncorrectInstanceState")
                if Instant::now() + pause < until =>
            {
                tracing::debug!(id = %item.id, %text, "not deletable yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(15));
            }
            _ => return Err(text),
        }
    }
}

/// The end of a run on stdout: each phase's time, how long each thing existed, what is left,
/// and the verdict.
fn report(
    plan: &Plan,
    run_id: &str,
    ledger: &SharedLedger,
    outcome: &Result<String, String>,
    leftovers: &[(Made, String)],
    total: Duration,
) -> String {
    let ledger = ledger.lock();
    let mut out = String::new();
    let _ = writeln!(out, "verify-aws {run_id}: {} → {}, key {}", plan.source, plan.target, plan.key.as_str());
    let _ = writeln!(out, "PHASE     SECONDS");
    for (phase, took, cut_off) in &ledger.phases {
        let note = if *cut_off { "  (cut off)" } else { "" };
        let _ = writeln!(out, "{phase:<9} {:>7.1}{note}", took.as_secs_f64());
    }
    let _ = writeln!(out, "{:<9} {:>7.1}", "total", total.as_secs_f64());
    for made in &ledger.made {
        let existed = made.gone_after.unwrap_or_else(|| made.since.elapsed()).as_secs_f64();
        let status = if made.gone_after.is_some() { "deleted" } else { "NOT DELETED" };
        let _ = writeln!(out, "{} {} in {}: existed {existed:.1} s, {status}", made.kind.noun(), made.id, made.region);
    }
    for (made, error) in leftovers {
        let _ = writeln!(
            out,
            "LEFT BEHIND: {} {} in {}: {error}; delete it by hand: {}",
            made.kind.noun(),
            made.id,
            made.region,
            if made.id.starts_with('(') {
                format!("look for {RUN_TAG}={run_id} in {}", made.region)
            } else {
                made.delete_command()
            }
        );
    }
    match (outcome, leftovers.is_empty()) {
        (Ok(passed), true) => {
            let _ = writeln!(out, "PASS: {passed}; everything this run made is deleted");
        }
        (Ok(passed), false) => {
            let _ = writeln!(out, "FAIL: {passed}, but {} left behind (above)", leftovers.len());
        }
        (Err(reason), _) => {
            let _ = writeln!(out, "FAIL: {reason}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(source: &str, target: &str, key: &str) -> VerifyAwsArgs {
        VerifyAwsArgs {
            source_region: source.to_owned(),
            target_region: target.to_owned(),
            kms_key: key.to_owned(),
            profile: None,
            timeout_minutes: 60,
            cleanup_minutes: 10,
            debug: false,
        }
    }

    #[test]
    fn bad_flags_are_refused_before_any_call() {
        assert!(check_args(&args("us-east-1", "eu-west-1", "alias/dr")).is_ok());
        let same = check_args(&args("us-east-1", "us-east-1", "alias/dr")).err().unwrap_or_default();
        assert!(same.contains("both us-east-1"), "{same}");
        let key = check_args(&args("us-east-1", "eu-west-1", "dr")).err().unwrap_or_default();
        assert!(key.contains("--kms-key"), "{key}");
        let region = check_args(&args("nowhere", "eu-west-1", "alias/dr")).err().unwrap_or_default();
        assert!(region.contains("--source-region"), "{region}");
    }

    #[test]
    fn run_ids_differ() {
        assert_ne!(new_run_id(), new_run_id());
    }

    #[test]
    fn the_request_is_the_functions() {
        let plan = check_args(&args("us-east-1", "eu-west-1", "alias/dr")).expect("valid");
        let invocation = copy_invocation(&plan, &Settings::default(), "snap-0123456789abcdef0", "1-2");
        let Ok(Invocation::Copy(request)) = invocation else { panic!("a copy request: {invocation:?}") };
        assert!(request.targets[0].encrypt && request.wait_for_completion);
        assert_eq!(request.targets[0].kms_key.as_ref().map(KmsKeyRef::as_str), Some("alias/dr"));
    }
}
