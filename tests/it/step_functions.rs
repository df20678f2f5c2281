//! The Step Functions loop on 10,000 sources stays within Step Functions' payload quota.
//!
//! Step Functions fails an execution when a task's result, a state's input or output, or the
//! execution's output passes 262,144 bytes (`States.DataLimitExceeded`, which no Catch
//! catches); for a Lambda task the limit applies to the raw `lambda:invoke` result, before
//! ResultSelector. These tests run the state machine definition itself, as Step Functions
//! would, over real answers of the function (the engine on the in-memory EC2): the Pass, Task,
//! Choice, Wait and Fail states with their Parameters, ResultSelector, ResultPath, OutputPath and
//! Catch, and every JSONPath and intrinsic form the definition uses. A form this interpreter
//! does not know fails the test, so the definition cannot drift out of what is checked here.

use copy_snapshots::handler::handle_answer;
use copy_snapshots::request::Settings;
use copy_snapshots::simulated::{CopyTimeModel, SimulatedEc2};
use copy_snapshots::store::SnapshotState;
use serde_json::{Map, Value, json};

/// Step Functions' quota for a task result, a state's input or output, an execution's output.
const QUOTA: usize = 262_144;
/// The longest `cause` an execution keeps (ExecutionFailedEventDetails).
const CAUSE_QUOTA: usize = 32_768;
const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const SOURCES: usize = 10_000;
const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:111122223333:function:copy-snapshots";

fn definition() -> Value {
    let path = format!("{}/statemachine/copy-snapshots.asl.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // The substitutions SAM makes (DefinitionSubstitutions in template.yaml).
    let text = text.replace("${CopySnapshotsFunctionArn}", FUNCTION_ARN).replace("${WaitSeconds}", "300");
    serde_json::from_str(&text).expect("the definition is JSON")
}

/// The size Step Functions measures: the JSON text in UTF-8.
fn size(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// Sizes seen during one execution.
#[derive(Debug, Default)]
struct Record {
    largest: usize,
    largest_what: String,
    invocations: usize,
}

impl Record {
    fn fits(&mut self, what: &str, value: &Value) {
        let bytes = size(value);
        assert!(bytes <= QUOTA, "{what} is {bytes} bytes, over Step Functions' {QUOTA}: States.DataLimitExceeded");
        if bytes > self.largest {
            self.largest = bytes;
            self.largest_what = what.to_owned();
        }
    }
}

/// How an execution ended.
#[derive(Debug)]
enum Outcome {
    Succeeded(Value),
    Failed {
        error: String,
        cause: String,
    },
    /// Still looping after the allowed number of invocations; the state before the next Wait.
    Running(Value),
}

/// A reference path (`$`, `$.a.b`) read from `value`. A missing field is a States.Runtime
/// error in Step Functions, so it fails the test.
fn read_path(value: &Value, path: &str) -> Value {
    if path == "$" {
        return value.clone();
    }
    let rest = path.strip_prefix("$.").unwrap_or_else(|| panic!("unsupported path {path}"));
    let mut at = value;
    for key in rest.split('.') {
        assert!(!key.contains(['[', '*', '?', '@']), "unsupported path {path}: extend this interpreter");
        at = at.get(key).unwrap_or_else(|| panic!("States.Runtime: {path} is not in {}", short(value)));
    }
    at.clone()
}

/// `state` with `result` placed at the reference path `path` (ResultPath).
fn place(state: &Value, path: &str, result: Value) -> Value {
    if path == "$" {
        return result;
    }
    let rest = path.strip_prefix("$.").unwrap_or_else(|| panic!("unsupported ResultPath {path}"));
    let mut out = state.clone();
    let mut at = &mut out;
    let keys: Vec<&str> = rest.split('.').collect();
    for (i, key) in keys.iter().enumerate() {
        let object = at.as_object_mut().unwrap_or_else(|| panic!("ResultPath {path} goes through a non-object"));
        if i + 1 == keys.len() {
            object.insert((*key).to_owned(), result);
            break;
        }
        at = object.entry((*key).to_owned()).or_insert_with(|| json!({}));
    }
    out
}

/// The one literal argument of `States.StringToJson('…')`.
fn string_to_json(expression: &str) -> Option<Value> {
    let literal = expression.strip_prefix("States.StringToJson('")?.strip_suffix("')")?;
    assert!(!literal.contains('\''), "unsupported escape in {expression}");
    // In an intrinsic's string literal, `\"` is the JSON text's quote once the definition's
    // own JSON escaping is undone (already done by serde_json).
    Some(serde_json::from_str(literal).unwrap_or_else(|e| panic!("States.StringToJson of {literal}: {e}")))
}

/// A `.$` field's value: a path, or the intrinsic forms the definition uses.
fn evaluate(expression: &str, input: &Value) -> Value {
    if expression.starts_with('$') {
        return read_path(input, expression);
    }
    if let Some(value) = string_to_json(expression) {
        return value;
    }
    if let Some(args) = expression.strip_prefix("States.JsonMerge(").and_then(|e| e.strip_suffix(", false)")) {
        let (first, second) = args.split_once(", ").unwrap_or_else(|| panic!("unsupported {expression}"));
        let (Value::Object(mut merged), Value::Object(other)) = (evaluate(first, input), evaluate(second, input))
        else {
            panic!("States.JsonMerge needs two objects: {expression}");
        };
        // Shallow merge (deep = false): the second object's fields win.
        merged.extend(other);
        return Value::Object(merged);
    }
    panic!("unsupported expression {expression}: extend this interpreter");
}

/// A Parameters or ResultSelector template applied to `input`.
fn apply_template(template: &Value, input: &Value) -> Value {
    match template {
        Value::Object(fields) => {
            let mut out = Map::new();
            for (key, value) in fields {
                match (key.strip_suffix(".$"), value) {
                    (Some(name), Value::String(expression)) => {
                        out.insert(name.to_owned(), evaluate(expression, input));
                    }
                    (Some(_), other) => panic!("{key} must be a string, not {other}"),
                    (None, value) => {
                        out.insert(key.clone(), apply_template(value, input));
                    }
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    text.chars().take(300).collect()
}

/// What `lambda:invoke` returns around the function's answer (Lambda's Invoke response and
/// the SDK's metadata), so the raw result is measured as Step Functions measures it.
fn invoke_result(payload: Value) -> Value {
    json!({
        "ExecutedVersion": "$LATEST",
        "Payload": payload,
        "SdkHttpMetadata": {
            "AllHttpHeaders": {
                "X-Amz-Executed-Version": ["$LATEST"],
                "x-amzn-Remapped-Content-Length": ["0"],
                "Connection": ["keep-alive"],
                "x-amzn-RequestId": ["8f6f3a50-1111-2222-3333-444455556666"],
                "Content-Length": ["0"],
                "Date": ["Wed, 25 Nov 2026 10:00:00 GMT"],
                "X-Amzn-Trace-Id": ["Root=1-00000000-000000000000000000000000;Sampled=0"],
                "Content-Type": ["application/json"]
            },
            "HttpHeaders": {
                "Connection": "keep-alive",
                "Content-Length": "0",
                "Content-Type": "application/json",
                "Date": "Wed, 25 Nov 2026 10:00:00 GMT",
                "X-Amz-Executed-Version": "$LATEST",
                "x-amzn-Remapped-Content-Length": "0",
                "x-amzn-RequestId": "8f6f3a50-1111-2222-3333-444455556666",
                "X-Amzn-Trace-Id": "Root=1-00000000-000000000000000000000000;Sampled=0"
            },
            "HttpStatusCode": 200
        },
        "SdkResponseMetadata": {"RequestId": "8f6f3a50-1111-2222-3333-444455556666"},
        "StatusCode": 200
    })
}

/// Runs the state machine on `input`, invoking the function (on `ec2`) at most
/// `max_invocations` times. Every value that crosses a state boundary is measured.
async fn execute(ec2: &SimulatedEc2, settings: &Settings, input: Value, max_invocations: usize) -> (Outcome, Record) {
    let asl = definition();
    let mut record = Record::default();
    record.fits("the execution's input", &input);
    let mut name = asl["StartAt"].as_str().expect("StartAt").to_owned();
    let mut data = input;
    loop {
        let state = &asl["States"][&name];
        record.fits(&format!("{name}'s input"), &data);
        let kind = state["Type"].as_str().unwrap_or_else(|| panic!("{name} has no Type"));
        for field in ["InputPath", "Result", "ItemsPath", "Variable"] {
            assert!(kind == "Choice" || state.get(field).is_none(), "{name}: {field} is not interpreted here");
        }
        let output = match kind {
            "Pass" => {
                let result = match state.get("Parameters") {
                    Some(parameters) => apply_template(parameters, &data),
                    None => data.clone(),
                };
                let placed = place(&data, state.get("ResultPath").and_then(Value::as_str).unwrap_or("$"), result);
                state.get("OutputPath").and_then(Value::as_str).map_or(placed.clone(), |p| read_path(&placed, p))
            }
            "Task" => {
                assert_eq!(state["Resource"], "arn:${Partition}:states:::lambda:invoke", "{name}");
                let parameters = apply_template(&state["Parameters"], &data);
                assert_eq!(parameters["FunctionName"], FUNCTION_ARN);
                let payload = parameters.get("Payload").cloned().expect("a Payload");
                record.fits(&format!("{name}'s payload"), &payload);
                if record.invocations == max_invocations {
                    return (Outcome::Running(data), record);
                }
                record.invocations += 1;
                match handle_answer(payload, settings, ec2, None).await {
                    Ok(answer) => {
                        let raw = invoke_result(serde_json::to_value(&answer).expect("an answer serializes"));
                        record.fits(&format!("{name}'s raw lambda:invoke result"), &raw);
                        let selected = match state.get("ResultSelector") {
                            Some(selector) => apply_template(selector, &raw),
                            None => raw,
                        };
                        let placed =
                            place(&data, state.get("ResultPath").and_then(Value::as_str).unwrap_or("$"), selected);
                        state
                            .get("OutputPath")
                            .and_then(Value::as_str)
                            .map_or(placed.clone(), |p| read_path(&placed, p))
                    }
                    Err(error) => {
                        // A Lambda function error: Error is the errorType, Cause the error
                        // document as a JSON string.
                        let error_type = error.error_type().to_owned();
                        let cause = json!({"errorType": error_type, "errorMessage": error.to_string()}).to_string();
                        let catcher = state["Catch"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|c| {
                                c["ErrorEquals"]
                                    .as_array()
                                    .is_some_and(|e| e.iter().any(|n| n == "States.ALL" || n == error_type.as_str()))
                            })
                            .unwrap_or_else(|| panic!("{name}: {error_type} is not caught"));
                        let caught = json!({"Error": error_type, "Cause": cause});
                        let placed =
                            place(&data, catcher.get("ResultPath").and_then(Value::as_str).unwrap_or("$"), caught);
                        record.fits(&format!("{name}'s Catch output"), &placed);
                        name = catcher["Next"].as_str().expect("Catch Next").to_owned();
                        data = placed;
                        continue;
                    }
                }
            }
            "Choice" => {
                let next = state["Choices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|choice| {
                        let variable = choice["Variable"].as_str().expect("Variable");
                        let expected = choice.get("BooleanEquals").unwrap_or_else(|| panic!("only BooleanEquals here"));
                        &read_path(&data, variable) == expected
                    })
                    .map_or(&state["Default"], |choice| &choice["Next"]);
                name = next.as_str().expect("a Choice's Next").to_owned();
                continue;
            }
            "Wait" => {
                let seconds = read_path(&data, state["SecondsPath"].as_str().expect("SecondsPath"));
                assert!(seconds.as_u64().is_some_and(|s| s > 0), "{name}: wait {seconds}");
                data.clone()
            }
            "Fail" => {
                let error = read_path(&data, state["ErrorPath"].as_str().expect("ErrorPath"));
                let cause = read_path(&data, state["CausePath"].as_str().expect("CausePath"));
                let (error, cause) = (error.as_str().unwrap_or("").to_owned(), cause.as_str().unwrap_or("").to_owned());
                assert!(
                    cause.len() <= CAUSE_QUOTA,
                    "the execution's cause is {} bytes, over {CAUSE_QUOTA}",
                    cause.len()
                );
                return (Outcome::Failed { error, cause }, record);
            }
            other => panic!("{name}: state type {other} is not interpreted here"),
        };
        record.fits(&format!("{name}'s output"), &output);
        if state.get("End").and_then(Value::as_bool) == Some(true) {
            record.fits("the execution's output", &output);
            return (Outcome::Succeeded(output), record);
        }
        name = state["Next"].as_str().unwrap_or_else(|| panic!("{name} has no Next")).to_owned();
        data = output;
    }
}

fn settings() -> Settings {
    Settings { source_region: copy_snapshots::ids::Region::parse(SOURCE).ok(), ..Settings::default() }
}

/// The execution's input: every snapshot tagged Backup=daily, all started in one invocation.
fn input(extra: Value) -> Value {
    let mut input = json!({
        "filters": [{"name": "tag:Backup", "values": ["daily"]}],
        "target_region": TARGET,
        "pending_limit": SOURCES,
    });
    if let (Some(input), Some(extra)) = (input.as_object_mut(), extra.as_object()) {
        input.extend(extra.clone());
    }
    input
}

fn world() -> SimulatedEc2 {
    SimulatedEc2::new().with_copy_time(CopyTimeModel::INSTANT).with_region_copy_limit(SOURCES)
}

fn tagged_sources(ec2: &SimulatedEc2) -> Vec<copy_snapshots::ids::SnapshotId> {
    (0..SOURCES).map(|i| ec2.add_source(SOURCE, 8 + (i as u64) % 50, &[("Backup", "daily")])).collect()
}

#[tokio::test(start_paused = true)]
async fn a_full_answer_for_ten_thousand_sources_would_not_fit() {
    // What the loop kept before it asked for a summary: the whole answer, far over the quota
    // (about 1,600 sources fit).
    let ec2 = world();
    tagged_sources(&ec2);
    let full = copy_snapshots::handle(input(json!({"max_wait_seconds": 0})), &settings(), &ec2, None)
        .await
        .expect("the first round starts every copy");
    let full = serde_json::to_value(&full).expect("serializes");
    assert!(size(&full) > QUOTA, "a full answer of {SOURCES} copies is only {} bytes", size(&full));
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_sources_stay_within_the_payload_quota() {
    let ec2 = world();
    tagged_sources(&ec2);
    let (outcome, record) = execute(&ec2, &settings(), input(json!({"wait_for_completion": true})), 5).await;
    let Outcome::Succeeded(output) = outcome else { panic!("{outcome:?}") };
    assert_eq!(output["complete"], true);
    let summary = &output["summary"];
    assert_eq!(summary["sources"], SOURCES);
    assert_eq!(summary["copies"], SOURCES);
    assert_eq!(summary["completed"], SOURCES, "{summary}");
    assert_eq!(summary["failed"], 0);
    assert!(record.invocations >= 2, "the loop went round: {record:?}");
    assert!(record.largest < 16 * 1024, "largest: {} bytes ({})", record.largest, record.largest_what);
    println!(
        "ten_thousand_sources largest={} ({}) invocations={}",
        record.largest, record.largest_what, record.invocations
    );
}

/// EC2 refuses every copy with a long message: the failures in state, and in the error that
/// ends the execution, are bounded.
#[tokio::test(start_paused = true)]
async fn ten_thousand_failures_stay_within_the_payload_quota() {
    const ROUNDS: usize = 3;
    let message = format!("The key is not usable for this copy: {}", "x".repeat(2_000));
    for with_pending_source in [true, false] {
        let ec2 = world();
        for id in tagged_sources(&ec2) {
            for _ in 0..ROUNDS {
                ec2.refuse_next_copy_of(&id, "InvalidParameterValue", &message);
            }
        }
        if with_pending_source {
            // Not completed yet: the answers stay `complete: false`, so every round keeps the
            // 10,000 failures in its answer instead of ending in CopyFailed.
            ec2.add_snapshot(SOURCE, 8, SnapshotState::Pending, false, &[("Backup", "daily")]);
        }
        let (outcome, record) = execute(&ec2, &settings(), input(json!({})), ROUNDS).await;
        match (with_pending_source, &outcome) {
            (true, Outcome::Running(state)) => {
                let summary = &state["result"]["summary"];
                assert_eq!(summary["failed"], SOURCES, "{}", short(summary));
                assert_eq!(summary["pending_sources"], 1);
                let listed = summary["failures"].as_array().expect("failures");
                assert!(!listed.is_empty() && listed.len() < 100, "{} failures listed", listed.len());
                assert!(listed.iter().all(|f| f["error"].as_str().is_some_and(|e| e.chars().count() <= 301)));
            }
            (false, Outcome::Failed { error, cause }) => {
                assert_eq!(error, "CopyFailed");
                assert!(cause.contains(&format!("{SOURCES} of {SOURCES} sources failed")), "{}", &cause[..200]);
            }
            (_, other) => panic!("with_pending_source={with_pending_source}: {other:?}"),
        }
        assert!(record.largest < 32 * 1024, "largest: {} bytes ({})", record.largest, record.largest_what);
        println!(
            "ten_thousand_failures pending_source={with_pending_source} largest={} ({}) invocations={}",
            record.largest, record.largest_what, record.invocations
        );
    }
}
