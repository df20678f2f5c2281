//! One invocation, end to end: payload → request → reconcile → response. `handle` is the
//! runtime-free core the tests call; `handle_answer` also shapes the answer as the request's
//! `response_format` asks; `handle_lambda_event` adds what Lambda hands over (the deadline), the
//! per-invocation debug switch and the metrics line, which always counts the full response.

use std::time::{Duration, SystemTime};

use aws_lambda_events::sqs::SqsBatchResponse;
use lambda_runtime::LambdaEvent;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::contract::error::CopySnapshotsError;
use crate::contract::error::respond;
use crate::contract::event::{Invocation, parse_payload};
use crate::contract::metrics;
use crate::contract::request::{CopyRequest, Settings};
use crate::contract::response::{Answer, Response, ResponseFormat};
use crate::contract::targets::Target;
use crate::engine::progress::{LogObserver, Observer, StopSignal};
use crate::engine::{RunLimits, reconcile_observed};
use crate::entry::batch::{handle_batch, is_sqs_event};
use crate::entry::logging::LogLevel;
use crate::store::SnapshotStore;

/// An invocation's payload as the runtime hands it over: JSON, or why it is not. Taking
/// unreadable input here, instead of letting the runtime's deserializer fail, turns garbage
/// and too-deep nesting into an `InvalidRequest` like any other bad input.
#[derive(Debug)]
pub enum Payload {
    Json(Value),
    Unreadable(String),
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer) {
            Ok(value) => Self::Json(value),
            Err(e) => Self::Unreadable(e.to_string()),
        })
    }
}

/// The longest a Lambda invocation can run.
const LAMBDA_MAX_DURATION: Duration = Duration::from_secs(900);

/// Handles one payload. Bad input is rejected before `store` is called at all.
pub async fn handle<S: SnapshotStore>(
    payload: Value,
    settings: &Settings,
    store: &S,
    deadline: Option<Instant>,
) -> Result<Response, CopySnapshotsError> {
    run(parse_payload(payload, settings)?, settings, store, deadline, &LogObserver, StopSignal::never()).await
}

/// Handles one payload and answers in the request's `response_format`, as the function does
/// in Lambda (without the logging and metrics of [`handle_lambda_event`]).
pub async fn handle_answer<S: SnapshotStore>(
    payload: Value,
    settings: &Settings,
    store: &S,
    deadline: Option<Instant>,
) -> Result<Answer, CopySnapshotsError> {
    answer_observed(parse_payload(payload, settings)?, settings, store, deadline, &LogObserver, StopSignal::never())
        .await
}

/// Runs an invocation already parsed (the command line's), telling `observer` what the engine
/// does and stopping its waits once `stop` is set; answers in the request's `response_format`.
pub async fn answer_observed<S: SnapshotStore>(
    invocation: Invocation,
    settings: &Settings,
    store: &S,
    deadline: Option<Instant>,
    observer: &dyn Observer,
    stop: StopSignal,
) -> Result<Answer, CopySnapshotsError> {
    let (format, target_region) = answer_shape(&invocation);
    respond(run(invocation, settings, store, deadline, observer, stop).await, format, &target_region)
}

/// How the invocation wants its answer, and the target region its messages name.
fn answer_shape(invocation: &Invocation) -> (ResponseFormat, String) {
    match invocation {
        Invocation::Copy(request) => (request.response_format, target_regions(request)),
        Invocation::Ignore { .. } => (ResponseFormat::Full, String::new()),
    }
}

/// The deployment's (first) target region: where a request rejected before its targets were
/// known is counted, where the alarms look.
fn default_target_region(settings: &Settings) -> Option<String> {
    let listed = settings.targets.as_ref().and_then(|targets| targets.first()).map(|target| target.region.clone());
    settings.target_region.as_ref().map(ToString::to_string).or(listed)
}

/// The request's target regions, for messages and the metrics' dimension.
fn target_regions(request: &CopyRequest) -> String {
    request.targets.iter().map(Target::describe).collect::<Vec<_>>().join(", ")
}

/// What the function returns to Lambda: the answer to a request or event, or, for a batch
/// from the SQS queue, the records to deliver again.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LambdaAnswer {
    Copy(Box<Answer>),
    Batch(SqsBatchResponse),
}

/// Handles one Lambda invocation ([`answer_lambda_event`], or [`answer_sqs_batch`] for a batch
/// from the queue) and prints its metrics line.
pub async fn handle_lambda_event<S: SnapshotStore>(
    event: LambdaEvent<Payload>,
    settings: &Settings,
    store: &S,
    log_level: &LogLevel,
) -> Result<LambdaAnswer, CopySnapshotsError> {
    let (answer, metrics) = match &event.payload {
        Payload::Json(payload) if is_sqs_event(payload) => {
            let (answer, metrics) = answer_sqs_batch(event, settings, store).await;
            (answer.map(LambdaAnswer::Batch), metrics)
        }
        _ => {
            let (answer, metrics) = answer_lambda_event(event, settings, store, log_level).await;
            (answer.map(|a| LambdaAnswer::Copy(Box::new(a))), metrics)
        }
    };
    // Straight to stdout, not through tracing: CloudWatch extracts metrics only from a line
    // that is the EMF document itself.
    for line in metrics::lines(&metrics) {
        println!("{line}");
    }
    answer
}

/// One batch from the SQS queue ([`handle_batch`]): an error only when the event itself does
/// not parse (Lambda then hands the whole batch back), so otherwise Lambda deletes exactly the
/// records not listed as failures. Returns the answer and the EMF document.
pub async fn answer_sqs_batch<S: SnapshotStore>(
    event: LambdaEvent<Payload>,
    settings: &Settings,
    store: &S,
) -> (Result<SqsBatchResponse, CopySnapshotsError>, Value) {
    let deadline = Instant::now() + remaining_time(&event.context);
    let Payload::Json(payload) = event.payload else {
        let error = CopySnapshotsError::InvalidRequest("the SQS event is not readable JSON".to_owned());
        return (Err(error), Value::Null);
    };
    let outcome = handle_batch(payload, settings, store, Some(deadline)).await;
    let now = SystemTime::now();
    let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    let metrics = metrics::emf_of(&outcome.result, default_target_region(settings).as_deref(), now, now_ms);
    if outcome.envelope_unreadable {
        let error = outcome
            .result
            .err()
            .unwrap_or_else(|| CopySnapshotsError::InvalidRequest("the SQS event does not parse".to_owned()));
        return (Err(error), metrics);
    }
    (Ok(outcome.answer), metrics)
}

/// The time Lambda's context leaves, or Lambda's longest when a local emulator sends no
/// deadline in the future.
fn remaining_time(context: &lambda_runtime::Context) -> Duration {
    let remaining = context.deadline().duration_since(SystemTime::now()).unwrap_or_default();
    if remaining.is_zero() {
        warn!("the runtime gave no deadline in the future; assuming Lambda's longest, 15 minutes");
        return LAMBDA_MAX_DURATION;
    }
    remaining
}

/// One Lambda invocation: the deadline comes from the context, `debug: true` raises this
/// invocation's logs, and a failure is logged with its errorType. Returns the answer and the
/// EMF document, which counts the full response whatever format the answer takes.
pub async fn answer_lambda_event<S: SnapshotStore>(
    event: LambdaEvent<Payload>,
    settings: &Settings,
    store: &S,
    log_level: &LogLevel,
) -> (Result<Answer, CopySnapshotsError>, Value) {
    let remaining = remaining_time(&event.context);
    let deadline = Instant::now() + remaining;
    let mut target_region = None;
    let mut format = ResponseFormat::Full;
    let result = async {
        let payload = match event.payload {
            Payload::Json(value) => value,
            Payload::Unreadable(reason) => {
                return Err(CopySnapshotsError::InvalidRequest(format!(
                    "the payload is not readable JSON ({reason}); valid: a JSON object, a copy request or an EventBridge event"
                )));
            }
        };
        let invocation = parse_payload(payload, settings)?;
        if let Invocation::Copy(request) = &invocation {
            target_region = request.targets.first().map(|target| target.place.region.to_string());
        }
        format = answer_shape(&invocation).0;
        let _debug = match &invocation {
            Invocation::Copy(request) => log_level.debug_for_invocation(request.debug),
            Invocation::Ignore { .. } => None,
        };
        debug!(?invocation, remaining_ms = remaining.as_millis(), "request");
        run(invocation, settings, store, Some(deadline), &LogObserver, StopSignal::never()).await
    }
    .await;
    if let Err(e) = &result {
        error!(error_type = e.error_type(), error_message = %e, "invocation failed");
    }
    // A request rejected before its target region was known is still counted under the
    // deployment's default, where the alarms look.
    let target_region = target_region.or_else(|| default_target_region(settings));
    let now = SystemTime::now();
    let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    let metrics = metrics::emf_of(&result, target_region.as_deref(), now, now_ms);
    (respond(result, format, target_region.as_deref().unwrap_or("the target region")), metrics)
}

async fn run<S: SnapshotStore>(
    invocation: Invocation,
    settings: &Settings,
    store: &S,
    deadline: Option<Instant>,
    observer: &dyn Observer,
    stop: StopSignal,
) -> Result<Response, CopySnapshotsError> {
    match invocation {
        Invocation::Ignore { reason } => {
            info!(%reason, "nothing to copy");
            Ok(Response::nothing_to_do())
        }
        Invocation::Copy(request) => {
            if let [target] = &request.targets[..] {
                info!(
                    source_region = %request.source_region,
                    target_region = %target.place.region,
                    pending_limit = target.pending_limit,
                    encrypt = target.encrypt,
                    retention = %target.retention.describe(),
                    orphans_after_days = target.retention.orphans_after_days,
                    dry_run = request.dry_run,
                    "copy request"
                );
            } else {
                info!(
                    source_region = %request.source_region,
                    targets = %target_regions(&request),
                    pending_limit = ?request.targets.iter().map(|t| t.pending_limit).collect::<Vec<_>>(),
                    encrypt = ?request.targets.iter().map(|t| t.encrypt).collect::<Vec<_>>(),
                    retention = ?request.targets.iter().map(|t| t.retention.describe()).collect::<Vec<_>>(),
                    dry_run = request.dry_run,
                    "copy request"
                );
            }
            let limits = RunLimits {
                deadline,
                poll_interval: settings.poll_interval,
                max_poll_interval: settings.max_poll_interval,
                call_timeout: settings.call_timeout,
            };
            reconcile_observed(store, &request, limits, observer, stop).await
        }
    }
}
