//! The command line: the same request as the Lambda's, as flags (kebab-case, with the
//! reference's snake_case spellings as aliases), run by the same engine from a terminal with
//! the caller's own credentials. `plan` (or `--dry-run`) looks without copying. Flags become
//! the request's JSON, so validation and its messages are the Lambda's own.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};
use tokio::signal::unix::{SignalKind, signal};

use crate::contract::error::CopySnapshotsError;
use crate::contract::event::{Invocation, parse_payload};
use crate::contract::request::Settings;
use crate::contract::response::Answer;
use crate::engine::plan;
use crate::engine::plan::Plan;
use crate::engine::progress::stop_signal;
use crate::entry::handler::answer_observed;
use crate::entry::terminal::{ProgressView, plan_table, result_table};
use crate::store::copy_time::CopyTimeModel;
use crate::store::ec2::Ec2Store;
use crate::store::sdk::load_sdk_config;

/// Exit status for a run that left sources for a later run (not ready, or not started).
pub const EXIT_INCOMPLETE: u8 = 3;
/// Exit status after Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit status for bad flags (clap's own) or an unreadable `--request` file.
pub const EXIT_USAGE: u8 = 2;

/// The exit status of each errorType.
pub fn exit_code(error: &CopySnapshotsError) -> u8 {
    match error {
        CopySnapshotsError::InvalidRequest(_) => 10,
        CopySnapshotsError::SourceNotFound(_) => 11,
        CopySnapshotsError::SourceNotReady(_) => 12,
        CopySnapshotsError::AccessDenied(_) => 13,
        CopySnapshotsError::Throttled(_) => 14,
        CopySnapshotsError::Ec2Error(_) => 15,
        CopySnapshotsError::CopyFailed { .. } => 16,
        CopySnapshotsError::SourcesPending { .. } => 17,
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "copy-snapshots",
    version,
    about = "Copies EBS snapshots to another region, idempotently: running the same command again \
             continues the work and never duplicates a copy.",
    args_conflicts_with_subcommands = true,
    after_help = "Exit status: 0 done; 3 sources left for a later run; 130 interrupted; 2 bad flags; \
                  10 InvalidRequest, 11 SourceNotFound, 12 SourceNotReady, 13 AccessDenied, 14 Throttled, \
                  15 Ec2Error, 16 CopyFailed, 17 SourcesPending."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy (the default when no command is given).
    Copy(RunArgs),
    /// Show what a copy would do and how long it would take; copies nothing.
    Plan(RunArgs),
    /// The live check on your own account: makes a 1 GiB volume and snapshot, copies it
    /// encrypted under --kms-key with this function, checks the copy, deletes all it made.
    VerifyAws(crate::entry::verify_aws::VerifyAwsArgs),
}

/// Everything a run takes: the request and how to show it.
#[derive(Debug, Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// Run this JSON payload (a request or an EventBridge event, as in events/) instead of the
    /// request flags.
    #[arg(long = "request", value_name = "FILE", conflicts_with = "request_flags")]
    request_file: Option<PathBuf>,
    /// The named profile for credentials (the reference's `session`).
    #[arg(long, alias = "session")]
    profile: Option<String>,
    /// Print only the JSON answer on stdout (the Lambda's; the plan's with `plan`).
    #[arg(long)]
    json: bool,
    /// Debug logs on stderr.
    #[arg(long)]
    debug: bool,
    /// Plan only, as `plan` does.
    #[arg(long)]
    dry_run: bool,
    /// The copy speed the plan's estimate assumes, in GiB per hour per copy (plus 2 minutes of
    /// start-up each). EC2 publishes none.
    #[arg(long, value_name = "GIB_PER_HOUR", default_value_t = 180.0, value_parser = gib_per_hour)]
    assume_gib_per_hour: f64,
}

/// The request's fields as flags. Each is left out of the request when not given, so the
/// environment's defaults (TARGET_REGION, PENDING_LIMIT, …) apply as in Lambda.
#[derive(Debug, Args, Clone)]
#[group(id = "request_flags", multiple = true)]
struct RequestArgs {
    /// Snapshots to copy.
    #[arg(long, alias = "snapshot_ids", num_args = 1.., value_name = "SNAPSHOT_ID")]
    snapshot_ids: Vec<String>,
    /// Copy the snapshots a DescribeSnapshots filter selects: NAME=VALUE[,VALUE…]
    /// (`tag:Backup=daily`, `volume-id=vol-1,vol-2`). Repeatable; all must match.
    #[arg(long = "filter", alias = "filters", value_name = "NAME=VALUES", value_parser = parse_filter)]
    filters: Vec<(String, Vec<String>)>,
    /// The source region (default: the profile's or AWS_REGION).
    #[arg(long)]
    region: Option<String>,
    /// The region to copy to (default: TARGET_REGION).
    #[arg(long, alias = "target_region", conflicts_with = "targets")]
    target_region: Option<String>,
    /// A target, repeatable (up to 5): `REGION[,FIELD=VALUE…]` with the fields encrypt,
    /// kms_key_id, pending_limit, retain_days, retain_count (and role_arn), or the target as
    /// JSON; a field a target leaves out comes from the other flags.
    #[arg(long = "target", value_name = "REGION[,FIELD=VALUE…]", value_parser = parse_target)]
    targets: Vec<Value>,
    /// At most this many of this request's copies pending at once (default 20, AWS's quota).
    #[arg(long, alias = "pending_limit")]
    pending_limit: Option<u32>,
    /// Encrypt the copies (with --kms-key-id, or the target region's AWS managed key).
    #[arg(long)]
    encrypt: bool,
    /// The KMS key for encrypted copies: key id, key ARN, alias name or alias ARN.
    #[arg(long, alias = "kms_key_id")]
    kms_key_id: Option<String>,
    /// Copy the source's tags onto its copy.
    #[arg(long, alias = "copy_tags")]
    copy_tags: bool,
    /// A tag for every copy: KEY=VALUE. Repeatable.
    #[arg(long = "tag", alias = "tags", value_name = "KEY=VALUE", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Time-based copy: EC2 completes each copy within this many minutes (15–2880, by 15).
    #[arg(long, alias = "completion_duration_minutes", value_name = "MINUTES")]
    completion_duration_minutes: Option<u32>,
    /// Wait until every copy is completed, not only started.
    #[arg(long, alias = "wait_for_completion")]
    wait: bool,
    /// Retention: sources started within the last DAYS days are kept (copied; copies of older
    /// ones are deleted). Only this flag asks for it: RETAIN_DAYS in the shell is ignored.
    #[arg(long, alias = "retain_days", value_name = "DAYS")]
    retain_days: Option<u32>,
    /// Retention: the COUNT newest sources of each volume are kept. Only this flag asks for it:
    /// RETAIN_COUNT in the shell is ignored.
    #[arg(long, alias = "retain_count", value_name = "COUNT")]
    retain_count: Option<u32>,
    /// Delete a copy whose source is gone once the source is more than DAYS days old. Only this
    /// flag asks for it: DELETE_ORPHANS_AFTER_DAYS in the shell is ignored.
    #[arg(long, alias = "delete_orphans_after_days", value_name = "DAYS")]
    delete_orphans_after_days: Option<u32>,
    /// Let a retention delete more than the deletion breaker allows (more than 20 and more than
    /// a quarter of the copies it manages). Look with --dry-run first.
    #[arg(long, alias = "allow_mass_deletion")]
    allow_mass_deletion: bool,
}

fn parse_filter(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, values) = text
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE[,VALUE…], such as tag:Backup=daily"))?;
    Ok((name.to_owned(), values.split(',').map(str::to_owned).collect()))
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE, such as Purpose=dr"))?;
    Ok((key.to_owned(), value.to_owned()))
}

fn gib_per_hour(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|v| (1.0..=1_000_000.0).contains(v))
        .ok_or_else(|| format!("`{text}` is not a speed from 1 to 1000000 GiB per hour"))
}

impl RequestArgs {
    /// The request's JSON, with only the fields given.
    fn payload(&self, debug: bool) -> Value {
        let mut payload = Map::new();
        if !self.snapshot_ids.is_empty() {
            payload.insert("snapshot_ids".into(), json!(self.snapshot_ids));
        }
        if !self.filters.is_empty() {
            let filters: Vec<Value> =
                self.filters.iter().map(|(name, values)| json!({"name": name, "values": values})).collect();
            payload.insert("filters".into(), Value::Array(filters));
        }
        let mut set = |field: &str, value: Option<Value>| {
            if let Some(value) = value {
                payload.insert(field.into(), value);
            }
        };
        set("region", self.region.as_ref().map(|r| json!(r)));
        set("target_region", self.target_region.as_ref().map(|r| json!(r)));
        set("targets", (!self.targets.is_empty()).then(|| Value::Array(self.targets.clone())));
        set("pending_limit", self.pending_limit.map(|n| json!(n)));
        set("encrypt", self.encrypt.then_some(json!(true)));
        set("kms_key_id", self.kms_key_id.as_ref().map(|k| json!(k)));
        set("copy_tags", self.copy_tags.then_some(json!(true)));
        if !self.tags.is_empty() {
            let tags: BTreeMap<&str, &str> = self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            set("tags", Some(json!(tags)));
        }
        set("completion_duration_minutes", self.completion_duration_minutes.map(|m| json!(m)));
        set("wait_for_completion", self.wait.then_some(json!(true)));
        set("retain_days", self.retain_days.map(|d| json!(d)));
        set("retain_count", self.retain_count.map(|n| json!(n)));
        set("delete_orphans_after_days", self.delete_orphans_after_days.map(|d| json!(d)));
        set("allow_mass_deletion", self.allow_mass_deletion.then_some(json!(true)));
        set("debug", debug.then_some(json!(true)));
        Value::Object(payload)
    }
}

/// `--target`: `REGION[,FIELD=VALUE…]` or a JSON object, as one `targets` entry (its fields are
/// checked with the request, as the Lambda checks them).
fn parse_target(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| format!("not a JSON target object: {e}"));
    }
    let mut parts = text.split(',');
    let region = parts.next().unwrap_or_default().trim();
    if region.is_empty() || region.contains('=') {
        return Err("valid: REGION[,FIELD=VALUE…], e.g. `us-west-2,kms_key_id=alias/dr,retain_days=30`".to_owned());
    }
    let mut target = serde_json::Map::new();
    target.insert("region".into(), json!(region));
    for part in parts {
        let Some((field, value)) = part.split_once('=') else {
            return Err(format!("`{part}` is not FIELD=VALUE"));
        };
        let field = field.trim().replace('-', "_");
        let value = match field.as_str() {
            "encrypt" => json!(value.parse::<bool>().map_err(|_| format!("encrypt={value}: valid: true or false"))?),
            "pending_limit" | "retain_days" | "retain_count" => {
                json!(value.parse::<u32>().map_err(|_| format!("{field}={value}: valid: an integer ≥ 0"))?)
            }
            "kms_key_id" | "role_arn" => json!(value),
            _ => {
                return Err(format!(
                    "`{field}` is not a target field; valid: encrypt, kms_key_id, pending_limit, retain_days, \
                     retain_count, role_arn"
                ));
            }
        };
        target.insert(field, value);
    }
    Ok(Value::Object(target))
}

/// Runs the command line; returns the process's exit status.
pub async fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    let (args, planning) = match cli.command {
        Some(Command::Plan(args)) => (args, true),
        Some(Command::Copy(args)) => (args, false),
        Some(Command::VerifyAws(args)) => return ExitCode::from(crate::entry::verify_aws::main(args).await),
        None => (cli.run, false),
    };
    let planning = planning || args.dry_run;
    ExitCode::from(run(args, planning, started).await)
}

async fn run(args: RunArgs, planning: bool, started: Instant) -> u8 {
    let payload = match &args.request_file {
        Some(path) => match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("not JSON: {e}")))
        {
            Ok(payload) => payload,
            Err(reason) => {
                eprintln!("error: --request {}: {reason}", path.display());
                return EXIT_USAGE;
            }
        },
        None => args.request.payload(args.debug),
    };
    let debug = args.debug || payload.get("debug").and_then(Value::as_bool).unwrap_or(false);
    crate::entry::logging::init_cli(debug);

    let mut settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => return fail(&error, args.json),
    };
    // Deletion is asked for on the command line (flags, or --request FILE), never by what the
    // caller's shell happens to export: RETAIN_DAYS, RETAIN_COUNT and DELETE_ORPHANS_AFTER_DAYS
    // are the deployment's settings, and apply only inside Lambda.
    settings.retention = crate::contract::retention::Retention::default();
    let region = payload.get("region").and_then(Value::as_str).map(str::to_owned);
    let sdk_config = load_sdk_config(settings.call_timeout, args.profile.as_deref(), region.as_deref()).await;
    // As the reference's `region`: the session's region when the request names none.
    if settings.source_region.is_none() {
        settings.source_region = sdk_config.region().and_then(|r| crate::ids::Region::parse(r.as_ref()).ok());
    }
    let invocation = match parse_payload(payload, &settings) {
        Ok(invocation) => invocation,
        Err(error) => return fail(&error, args.json),
    };
    let store = Ec2Store::new(&sdk_config);
    tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "ready for the first EC2 call");

    if planning {
        return run_plan(invocation, &store, &args).await;
    }
    run_copy(invocation, &settings, &store, args.json).await
}

async fn run_plan(invocation: Invocation, store: &Ec2Store, args: &RunArgs) -> u8 {
    let Invocation::Copy(request) = invocation else {
        out(if args.json { "{}\n" } else { "This event asks for no copy.\n" });
        return 0;
    };
    let model = CopyTimeModel::at_gib_per_hour(args.assume_gib_per_hour);
    match plan(store, &request, model).await {
        Ok(plans) => {
            print_plans(&plans, args.json);
            0
        }
        Err(error) => fail(&error, args.json),
    }
}

/// One target's plan as it is; several as a JSON list, or one table per target.
fn print_plans(plans: &[Plan], json: bool) {
    if json {
        let text = match plans {
            [plan] => serde_json::to_string_pretty(plan),
            plans => serde_json::to_string_pretty(plans),
        };
        out(&format!("{}\n", text.unwrap_or_default()));
    } else {
        let tables: Vec<String> = plans.iter().map(plan_table).collect();
        out(&tables.join("\n"));
    }
}

/// Writes to stdout; a reader that went away (`| head`) is not an error of ours.
fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

async fn run_copy(invocation: Invocation, settings: &Settings, store: &Ec2Store, json: bool) -> u8 {
    let view = ProgressView::new(std::io::stderr().is_terminal());
    let (stop_handle, stop) = stop_signal();
    let interrupted = Arc::new(AtomicBool::new(false));
    // Registered now, not when the watcher first runs, so an early Ctrl-C is not lost.
    let mut interrupts = match signal(SignalKind::interrupt()) {
        Ok(interrupts) => Some(interrupts),
        Err(error) => {
            tracing::warn!(%error, "Ctrl-C will stop the command at once, not cleanly");
            None
        }
    };
    let watcher = {
        let (interrupted, view) = (interrupted.clone(), view.clone());
        tokio::spawn(async move {
            let Some(interrupts) = interrupts.as_mut() else { return };
            if interrupts.recv().await.is_none() {
                return;
            }
            interrupted.store(true, Ordering::SeqCst);
            view.note("Stopping after the call in flight (Ctrl-C again to quit at once) …");
            stop_handle.stop();
            if interrupts.recv().await.is_some() {
                view.finish();
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        })
    };
    let result = answer_observed(invocation, settings, store, None, &view, stop).await;
    watcher.abort();
    view.finish();
    let interrupted = interrupted.load(Ordering::SeqCst);
    let code = match &result {
        Ok(answer) => {
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(answer).unwrap_or_default()));
            } else {
                out(&result_table(answer, &view.sizes()));
            }
            let complete = match answer {
                Answer::Full(response) => response.complete,
                Answer::Summary(summary) => summary.complete,
            };
            if complete { 0 } else { EXIT_INCOMPLETE }
        }
        Err(error) => {
            // What was done before the error (CopyFailed, SourcesPending carry it).
            if let (false, Some(response)) = (json, error.response()) {
                out(&result_table(&Answer::Full(response.clone()), &view.sizes()));
            }
            // Stopped by Ctrl-C, an event's sources left unstarted are not a failure of the run.
            if interrupted && matches!(error, CopySnapshotsError::SourcesPending { .. }) {
                if json {
                    out(&error_json(error));
                }
                EXIT_INTERRUPTED
            } else {
                fail(error, json)
            }
        }
    };
    if interrupted {
        eprintln!(
            "Interrupted. Copies already started go on in EC2; running the same command again resumes without \
             duplicating any."
        );
        return EXIT_INTERRUPTED;
    }
    code
}

/// The error as Lambda returns it: `{errorType, errorMessage}`, one line.
fn error_json(error: &CopySnapshotsError) -> String {
    format!("{}\n", json!({"errorType": error.error_type(), "errorMessage": error.to_string()}))
}

/// Reports an error as the Lambda would (`--json`: its error object on stdout) and returns the
/// errorType's exit status.
fn fail(error: &CopySnapshotsError, json: bool) -> u8 {
    if json {
        out(&error_json(error));
    } else {
        eprintln!("error ({}): {error}", error.error_type());
    }
    exit_code(error)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_become_the_requests_fields() {
        let cli = Cli::parse_from([
            "copy-snapshots",
            "--snapshot_ids",
            "snap-1",
            "snap-2",
            "--region",
            "eu-west-2",
            "--target_region",
            "us-east-1",
            "--encrypt",
            "--kms_key_id",
            "alias/dr",
            "--filter",
            "tag:Backup=daily,weekly",
            "--tag",
            "Purpose=dr",
            "--pending-limit",
            "5",
            "--wait",
            "--retain_days",
            "7",
            "--retain-count",
            "3",
            "--debug",
        ]);
        assert_eq!(
            cli.run.request.payload(cli.run.debug),
            json!({
                "snapshot_ids": ["snap-1", "snap-2"],
                "filters": [{"name": "tag:Backup", "values": ["daily", "weekly"]}],
                "region": "eu-west-2",
                "target_region": "us-east-1",
                "pending_limit": 5,
                "encrypt": true,
                "kms_key_id": "alias/dr",
                "tags": {"Purpose": "dr"},
                "wait_for_completion": true,
                "retain_days": 7,
                "retain_count": 3,
                "debug": true,
            })
        );
    }

    #[test]
    fn flags_not_given_are_left_to_the_environment() {
        let cli = Cli::parse_from(["copy-snapshots", "plan", "--snapshot-ids", "snap-1"]);
        let Some(Command::Plan(args)) = cli.command else { panic!("a plan") };
        assert_eq!(args.request.payload(args.debug), json!({"snapshot_ids": ["snap-1"]}));
    }

    #[test]
    fn a_request_file_excludes_the_request_flags() {
        let both = Cli::try_parse_from(["copy-snapshots", "--request", "a.json", "--snapshot-ids", "snap-1"]);
        assert!(both.is_err());
    }

    #[test]
    fn every_error_type_has_its_own_exit_status() {
        let errors = [
            CopySnapshotsError::InvalidRequest(String::new()),
            CopySnapshotsError::SourceNotFound(String::new()),
            CopySnapshotsError::SourceNotReady(String::new()),
            CopySnapshotsError::AccessDenied(String::new()),
            CopySnapshotsError::Throttled(String::new()),
            CopySnapshotsError::Ec2Error(String::new()),
            CopySnapshotsError::CopyFailed { message: String::new(), response: Box::default() },
            CopySnapshotsError::SourcesPending { message: String::new(), response: Box::default() },
        ];
        let mut codes: Vec<u8> = errors.iter().map(exit_code).collect();
        codes.extend([0, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED]);
        let count = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), count, "exit statuses collide: {codes:?}");
    }

    #[test]
    fn a_target_flag_is_a_region_with_fields_or_a_json_object() {
        assert_eq!(
            parse_target("us-west-2,kms_key_id=alias/dr,retain-days=30,encrypt=true").expect("valid"),
            json!({"region": "us-west-2", "kms_key_id": "alias/dr", "retain_days": 30, "encrypt": true})
        );
        assert_eq!(parse_target(r#"{"region": "eu-west-1"}"#).expect("valid"), json!({"region": "eu-west-1"}));
        for bad in ["", "retain_days=3", "eu-west-1,retain=3", "eu-west-1,encrypt=yes", "eu-west-1,pending_limit"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from([
            "copy-snapshots",
            "copy",
            "--snapshot-ids",
            "snap-0123abcd",
            "--target",
            "eu-west-1",
            "--target",
            "us-west-2,pending_limit=3",
        ]);
        let Ok(Cli { command: Some(Command::Copy(args)), .. }) = cli else { panic!("parses") };
        assert_eq!(
            args.request.payload(false)["targets"],
            json!([{"region": "eu-west-1"}, {"region": "us-west-2", "pending_limit": 3}])
        );
    }
}
