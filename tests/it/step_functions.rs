//! The Step Functions loop: within Step Functions' payload and history quotas, on 10,000
//! sources and on jobs longer than one execution may run.
//!
//! Step Functions fails an execution when a task's result, a state's input or output, or the
//! execution's output passes 262,144 bytes (`States.DataLimitExceeded`, which no Catch
//! catches); for a Lambda task the limit applies to the raw `lambda:invoke` result, before
//! ResultSelector. A Standard execution also fails when its history reaches 25,000 events, so
//! the loop continues as a new execution before that. These tests run the state machine
//! definition itself, as Step Functions would, over real answers of the function (the engine on
//! the in-memory EC2, on tokio's paused clock, so a Wait state lets copies progress): the Pass,
//! Task, Choice, Wait and Fail states with their Parameters, ResultSelector, ResultPath,
//! OutputPath, Retry and Catch; the Task resources `lambda:invoke`,
//! `aws-sdk:sfn:listExecutions` and `states:startExecution` (the other executions are a small
//! model: which are RUNNING, which names are taken); the context object (`$$.Execution.Id`,
//! `$$.Execution.Name`, `$$.StateMachine.Id`); and the intrinsic functions the definition uses,
//! nested as it nests them. Every history event is counted as Step Functions records it
//! (ExecutionStarted; <Type>StateEntered and <Type>StateExited; TaskScheduled, TaskStarted and
//! TaskSucceeded or TaskFailed for each attempt of a task; ExecutionSucceeded or ExecutionFailed),
//! and the interpreter fails the test at the 25,000th. A form, field, state type, resource or
//! function this interpreter does not know fails the test, so the definition cannot drift out of
//! what is checked here. Retry delays are not modelled (the clock moves only in Wait states).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use copy_snapshots::contract::request::Settings;
use copy_snapshots::entry::handler::handle_answer;
use copy_snapshots::store::SnapshotState;
use copy_snapshots::store::simulated::{CopyTimeModel, SimulatedEc2};
use serde_json::{Map, Value, json};

/// Step Functions' quota for a task result, a state's input or output, an execution's output.
const QUOTA: usize = 262_144;
/// A Standard execution's history quota: the execution fails at this many events.
const HISTORY_QUOTA: usize = 25_000;
/// The longest `cause` an execution keeps (ExecutionFailedEventDetails).
const CAUSE_QUOTA: usize = 32_768;
const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const SOURCES: usize = 10_000;
const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:111122223333:function:copy-snapshots";
/// The state machine's ARN, as its Name (the stack's name) makes it.
const STATE_MACHINE_ARN: &str = "arn:aws:states:us-east-1:111122223333:stateMachine:copy-snapshots";
/// The StateMachineWaitSeconds this file substitutes.
const WAIT_SECONDS: u64 = 300;

const LAMBDA_INVOKE: &str = "arn:${Partition}:states:::lambda:invoke";
const LIST_EXECUTIONS: &str = "arn:${Partition}:states:::aws-sdk:sfn:listExecutions";
const START_EXECUTION: &str = "arn:${Partition}:states:::states:startExecution";

fn definition() -> Value {
    let path = format!("{}/statemachine/copy-snapshots.asl.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // The substitutions SAM makes (DefinitionSubstitutions in template.yaml); ${Partition} is
    // left in the Task resources, which are matched as written.
    let text =
        text.replace("${CopySnapshotsFunctionArn}", FUNCTION_ARN).replace("${WaitSeconds}", &WAIT_SECONDS.to_string());
    let leftover = text.replace("${Partition}", "");
    assert!(
        !leftover.contains("${"),
        "a substitution this file does not make: {}",
        &leftover[leftover.find("${").unwrap_or(0)..][..40]
    );
    serde_json::from_str(&text).expect("the definition is JSON")
}

/// The size Step Functions measures: the JSON text in UTF-8.
fn size(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

fn execution_arn(name: &str) -> String {
    format!("arn:aws:states:us-east-1:111122223333:execution:copy-snapshots:{name}")
}

/// One execution to interpret: its name and input.
#[derive(Debug, Clone)]
struct Execution {
    name: String,
    input: Value,
}

impl Execution {
    fn new(name: &str, input: Value) -> Self {
        Self { name: name.to_owned(), input }
    }

    /// As the schedule starts it (CopyScheduleRule's Input; scripts/check-iam.py checks that
    /// the template writes exactly this form).
    fn scheduled(name: &str, request: Value) -> Self {
        Self::new(name, json!({"loop": {"kind": "schedule", "generation": 0}, "request": request}))
    }

    /// The context object's fields the definition reads.
    fn context(&self) -> Value {
        json!({
            "Execution": {"Id": execution_arn(&self.name), "Name": self.name, "Input": self.input},
            "StateMachine": {"Id": STATE_MACHINE_ARN, "Name": "copy-snapshots"},
        })
    }
}

/// Step Functions around the interpreted execution: the other executions of the state machine
/// and the StartExecution calls made.
#[derive(Debug, Default)]
struct Sfn {
    /// Names of the other executions RUNNING now, newest first.
    running: Vec<String>,
    /// How many of `running` started after this execution: listExecutions (newest first)
    /// lists them, then this one, then the rest.
    newer: usize,
    /// Executions started with StartExecution, in order.
    started: Vec<Execution>,
    /// Every execution name in use (unique for 90 days): StartExecution of a taken name fails
    /// with ExecutionAlreadyExists.
    names: HashSet<String>,
}

/// Errors the interpreter makes tasks meet before their real call, to use up Retry policies:
/// each time a task is entered, its first attempts fail with these, in order.
#[derive(Debug, Default, Clone)]
struct Faults {
    invoke: Vec<String>,
    list_executions: Vec<String>,
    start_execution: Vec<String>,
}

/// What one execution did: sizes, invocations, its history.
#[derive(Debug, Default)]
struct Record {
    largest: usize,
    largest_what: String,
    invocations: usize,
    /// The history's event types, in order.
    history: Vec<&'static str>,
    /// (state, history length when it was entered), in order.
    entered: Vec<(String, usize)>,
    /// The payload of the last invocation.
    last_payload: Value,
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

    /// One history event. Step Functions fails the execution when its history reaches the quota.
    fn event(&mut self, kind: &'static str) {
        assert!(
            self.history.len() < HISTORY_QUOTA,
            "the history reached {HISTORY_QUOTA} events at {kind}, after {} invocations: the execution fails",
            self.invocations
        );
        self.history.push(kind);
    }

    /// Events from one entry of `state` to the next, for every pair of entries.
    fn events_between_entries_of(&self, state: &str) -> Vec<usize> {
        let at: Vec<usize> = self.entered.iter().filter(|(s, _)| s == state).map(|(_, i)| *i).collect();
        at.windows(2).map(|w| w[1] - w[0]).collect()
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
    /// Still looping after the allowed number of invocations; the state before the next one.
    Running(Value),
}

/// A reference path (`$`, `$.a.b`, `$$.a.b` in the context object) read from `value`, or
/// None when a field on the way is missing.
fn try_read_path(value: &Value, context: &Value, path: &str) -> Option<Value> {
    let (root, rest) = if let Some(rest) = path.strip_prefix("$$.") {
        (context, rest)
    } else if path == "$" {
        return Some(value.clone());
    } else {
        (value, path.strip_prefix("$.").unwrap_or_else(|| panic!("unsupported path {path}")))
    };
    let mut at = root;
    for key in rest.split('.') {
        assert!(!key.contains(['[', '*', '?', '@']), "unsupported path {path}: extend this interpreter");
        at = at.get(key)?;
    }
    Some(at.clone())
}

/// A missing field is a States.Runtime error in Step Functions, so it fails the test.
fn read_path(value: &Value, context: &Value, path: &str) -> Value {
    try_read_path(value, context, path).unwrap_or_else(|| panic!("States.Runtime: {path} is not in {}", short(value)))
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

/// An intrinsic function's argument, or a call.
#[derive(Debug)]
enum Term {
    Text(String),
    Number(serde_json::Number),
    /// true, false, null.
    Literal(Value),
    Path(String),
    Call(String, Vec<Term>),
}

/// Parses the intrinsic expression `text` (`States.X(arg, …)`, nested as the definition nests
/// them; arguments are '…' strings, numbers, true/false/null, paths or calls).
fn parse_intrinsic(text: &str) -> Term {
    fn term(chars: &[char], at: &mut usize, text: &str) -> Term {
        while chars.get(*at) == Some(&' ') {
            *at += 1;
        }
        match chars.get(*at) {
            Some('\'') => {
                *at += 1;
                let mut literal = String::new();
                loop {
                    match chars.get(*at) {
                        // A backslash escapes the reserved ' { } \ in a string literal.
                        Some('\\') => {
                            literal.push(*chars.get(*at + 1).unwrap_or_else(|| panic!("dangling \\ in {text}")));
                            *at += 2;
                        }
                        Some('\'') => {
                            *at += 1;
                            break Term::Text(literal);
                        }
                        Some(c) => {
                            literal.push(*c);
                            *at += 1;
                        }
                        None => panic!("unterminated string in {text}"),
                    }
                }
            }
            Some('$') => {
                let start = *at;
                while chars.get(*at).is_some_and(|c| !matches!(c, ',' | ')' | ' ')) {
                    *at += 1;
                }
                Term::Path(chars[start..*at].iter().collect())
            }
            Some(c) if c.is_ascii_digit() || *c == '-' => {
                let start = *at;
                while chars.get(*at).is_some_and(|c| c.is_ascii_digit() || matches!(c, '-' | '.')) {
                    *at += 1;
                }
                let number: String = chars[start..*at].iter().collect();
                Term::Number(serde_json::from_str(&number).unwrap_or_else(|e| panic!("{number} in {text}: {e}")))
            }
            Some(_) => {
                let start = *at;
                while chars.get(*at).is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.') {
                    *at += 1;
                }
                let name: String = chars[start..*at].iter().collect();
                match name.as_str() {
                    "true" => return Term::Literal(json!(true)),
                    "false" => return Term::Literal(json!(false)),
                    "null" => return Term::Literal(Value::Null),
                    _ => {}
                }
                assert!(name.starts_with("States.") && chars.get(*at) == Some(&'('), "unsupported expression {text}");
                *at += 1;
                let mut args = Vec::new();
                loop {
                    while chars.get(*at) == Some(&' ') {
                        *at += 1;
                    }
                    if chars.get(*at) == Some(&')') {
                        *at += 1;
                        break;
                    }
                    args.push(term(chars, at, text));
                    while chars.get(*at) == Some(&' ') {
                        *at += 1;
                    }
                    match chars.get(*at) {
                        Some(',') => *at += 1,
                        Some(')') => {}
                        other => panic!("expected , or ) at {other:?} in {text}"),
                    }
                }
                Term::Call(name, args)
            }
            None => panic!("empty expression {text}"),
        }
    }
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let parsed = term(&chars, &mut at, text);
    assert_eq!(at, chars.len(), "trailing text in {text}");
    parsed
}

/// MD5 (RFC 1321), for States.Hash: the continuation's name is derived from this execution's.
fn md5_hex(data: &[u8]) -> String {
    const SHIFTS: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    let table: Vec<u32> = (0..64).map(|i| ((f64::from(i) + 1.0).sin().abs() * 4_294_967_296.0) as u32).collect();
    let mut state = [0x6745_2301_u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&(data.len() as u64).wrapping_mul(8).to_le_bytes());
    for block in message.chunks(64) {
        let words: Vec<u32> = block.chunks(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(table[i]).wrapping_add(words[g]);
            (a, d, c) = (d, c, b);
            b = b.wrapping_add(f.rotate_left(SHIFTS[(i / 16) * 4 + i % 4]));
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(v);
        }
    }
    state.iter().flat_map(|w| w.to_le_bytes()).map(|b| format!("{b:02x}")).collect()
}

fn integer(value: &Value, what: &str) -> i64 {
    value.as_i64().unwrap_or_else(|| panic!("{what} needs an integer, not {value}"))
}

fn evaluate_term(term: &Term, input: &Value, context: &Value) -> Value {
    match term {
        Term::Text(text) => Value::String(text.clone()),
        Term::Number(number) => Value::Number(number.clone()),
        Term::Literal(value) => value.clone(),
        Term::Path(path) => read_path(input, context, path),
        Term::Call(name, args) => {
            let values: Vec<Value> = args.iter().map(|a| evaluate_term(a, input, context)).collect();
            match (name.as_str(), values.as_slice()) {
                ("States.StringToJson", [Value::String(text)]) => {
                    serde_json::from_str(text).unwrap_or_else(|e| panic!("States.StringToJson of {text}: {e}"))
                }
                ("States.JsonMerge", [Value::Object(first), Value::Object(second), Value::Bool(false)]) => {
                    // Shallow merge (deep = false): the second object's fields win.
                    let mut merged = first.clone();
                    merged.extend(second.clone());
                    Value::Object(merged)
                }
                ("States.MathAdd", [a, b]) => {
                    let sum = integer(a, name) + integer(b, name);
                    assert!(i32::try_from(sum).is_ok(), "States.MathAdd: {sum} is out of its range");
                    json!(sum)
                }
                ("States.ArrayLength", [Value::Array(items)]) => json!(items.len()),
                ("States.ArrayGetItem", [Value::Array(items), index]) => {
                    let index = integer(index, name);
                    // Out of range is a States.Runtime error.
                    usize::try_from(index).ok().and_then(|i| items.get(i)).cloned().unwrap_or_else(|| {
                        panic!("States.Runtime: States.ArrayGetItem index {index} of {} items", items.len())
                    })
                }
                ("States.Format", [Value::String(template), rest @ ..]) => {
                    let pieces: Vec<&str> = template.split("{}").collect();
                    assert_eq!(
                        pieces.len() - 1,
                        rest.len(),
                        "States.Format: {template} takes {} arguments",
                        pieces.len() - 1
                    );
                    let mut out = pieces[0].to_owned();
                    for (value, piece) in rest.iter().zip(&pieces[1..]) {
                        match value {
                            Value::String(text) => out.push_str(text),
                            Value::Number(_) | Value::Bool(_) => out.push_str(&value.to_string()),
                            other => panic!("States.Format of {other}"),
                        }
                        out.push_str(piece);
                    }
                    Value::String(out)
                }
                ("States.Hash", [Value::String(data), Value::String(algorithm)]) if algorithm == "MD5" => {
                    Value::String(md5_hex(data.as_bytes()))
                }
                _ => panic!("unsupported intrinsic {name} of {values:?}: extend this interpreter"),
            }
        }
    }
}

/// A `.$` field's value: a path, or an intrinsic function.
fn evaluate(expression: &str, input: &Value, context: &Value) -> Value {
    if expression.starts_with('$') {
        return read_path(input, context, expression);
    }
    evaluate_term(&parse_intrinsic(expression), input, context)
}

/// A Parameters or ResultSelector template applied to `input`.
fn apply_template(template: &Value, input: &Value, context: &Value) -> Value {
    match template {
        Value::Object(fields) => {
            let mut out = Map::new();
            for (key, value) in fields {
                match (key.strip_suffix(".$"), value) {
                    (Some(name), Value::String(expression)) => {
                        out.insert(name.to_owned(), evaluate(expression, input, context));
                    }
                    (Some(_), other) => panic!("{key} must be a string, not {other}"),
                    (None, value) => {
                        out.insert(key.clone(), apply_template(value, input, context));
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

/// What the SDK adds around every service answer, so raw results are measured as Step
/// Functions measures them.
fn sdk_metadata(mut answer: Value) -> Value {
    if let Some(object) = answer.as_object_mut() {
        object.insert(
            "SdkHttpMetadata".to_owned(),
            json!({
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
            }),
        );
        object.insert("SdkResponseMetadata".to_owned(), json!({"RequestId": "8f6f3a50-1111-2222-3333-444455556666"}));
    }
    answer
}

/// What `lambda:invoke` returns around the function's answer (Lambda's Invoke response and
/// the SDK's metadata).
fn invoke_result(payload: Value) -> Value {
    sdk_metadata(json!({"ExecutedVersion": "$LATEST", "Payload": payload, "StatusCode": 200}))
}

/// Does an ErrorEquals list name `error`? States.ALL names every error, States.TaskFailed every
/// one but States.Timeout.
fn names_error(list: &Value, error: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|name| name == error || name == "States.ALL" || (name == "States.TaskFailed" && error != "States.Timeout"))
}

/// Whether the state's Retry retries `error` once more: the first retrier naming it decides
/// (MaxAttempts, default 3, counted per retrier); none naming it, or its attempts used up, means
/// no retry.
fn retries(state: &Value, error: &str, attempts: &mut [u64]) -> bool {
    for (i, retrier) in state["Retry"].as_array().into_iter().flatten().enumerate() {
        for field in retrier.as_object().expect("a retrier").keys() {
            assert!(
                [
                    "ErrorEquals",
                    "IntervalSeconds",
                    "MaxAttempts",
                    "BackoffRate",
                    "MaxDelaySeconds",
                    "JitterStrategy",
                    "Comment"
                ]
                .contains(&field.as_str()),
                "retrier field {field} is not interpreted here"
            );
        }
        if names_error(&retrier["ErrorEquals"], error) {
            if attempts[i] < retrier.get("MaxAttempts").and_then(Value::as_u64).unwrap_or(3) {
                attempts[i] += 1;
                return true;
            }
            return false;
        }
    }
    false
}

/// A task's real call. Err is (error, cause), as Step Functions names a task's failure.
async fn call(
    resource: &str,
    parameters: &Value,
    execution: &Execution,
    sfn: &mut Sfn,
    ec2: &SimulatedEc2,
    settings: &Settings,
    record: &mut Record,
) -> Result<Value, (String, String)> {
    let allowed: &[&str] = match resource {
        LAMBDA_INVOKE => &["FunctionName", "Payload"],
        LIST_EXECUTIONS => &["StateMachineArn", "StatusFilter", "MaxResults"],
        START_EXECUTION => &["StateMachineArn", "Name", "Input"],
        other => panic!("Task resource {other} is not interpreted here"),
    };
    for key in parameters.as_object().expect("Parameters").keys() {
        assert!(allowed.contains(&key.as_str()), "{resource}: parameter {key} is not interpreted here");
    }
    match resource {
        LAMBDA_INVOKE => {
            assert_eq!(parameters["FunctionName"], FUNCTION_ARN);
            let payload = parameters.get("Payload").cloned().expect("a Payload");
            record.fits("the lambda:invoke payload", &payload);
            record.last_payload = payload.clone();
            record.invocations += 1;
            match handle_answer(payload, settings, ec2, None).await {
                Ok(answer) => {
                    let raw = invoke_result(serde_json::to_value(&answer).expect("an answer serializes"));
                    record.fits("the raw lambda:invoke result", &raw);
                    Ok(raw)
                }
                // A Lambda function error: Error is the errorType, Cause the error document
                // as a JSON string.
                Err(error) => {
                    let error_type = error.error_type().to_owned();
                    let cause = json!({"errorType": error_type, "errorMessage": error.to_string()}).to_string();
                    Err((error_type, cause))
                }
            }
        }
        LIST_EXECUTIONS => {
            assert_eq!(parameters["StateMachineArn"], STATE_MACHINE_ARN, "listExecutions of another state machine");
            assert_eq!(parameters["StatusFilter"], "RUNNING", "only RUNNING executions are modelled");
            let max = parameters.get("MaxResults").and_then(Value::as_u64).unwrap_or(100) as usize;
            assert!((1..=1000).contains(&max), "MaxResults {max}");
            // This execution is RUNNING too; the newest first.
            let newer = sfn.newer.min(sfn.running.len());
            let executions: Vec<Value> = sfn.running[..newer]
                .iter()
                .chain(std::iter::once(&execution.name))
                .chain(&sfn.running[newer..])
                .take(max)
                .map(|name| {
                    json!({"executionArn": execution_arn(name), "name": name, "stateMachineArn": STATE_MACHINE_ARN,
                           "status": "RUNNING", "startDate": "2026-11-25T10:00:00Z"})
                })
                .collect();
            Ok(sdk_metadata(json!({"Executions": executions})))
        }
        START_EXECUTION => {
            assert_eq!(parameters["StateMachineArn"], STATE_MACHINE_ARN, "StartExecution of another state machine");
            let name = parameters["Name"].as_str().expect("a Name").to_owned();
            assert!(
                !name.is_empty()
                    && name.len() <= 80
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "StartExecution: invalid execution name {name:?} (1-80 of A-Z a-z 0-9 - _)"
            );
            let input = match &parameters["Input"] {
                Value::String(text) => serde_json::from_str(text).expect("Input is JSON"),
                other => other.clone(),
            };
            record.fits("StartExecution's Input", &input);
            if !sfn.names.insert(name.clone()) {
                let cause = format!("Execution Already Exists: '{}'", execution_arn(&name));
                return Err(("StepFunctions.ExecutionAlreadyExistsException".to_owned(), cause));
            }
            sfn.started.push(Execution { name: name.clone(), input });
            Ok(sdk_metadata(json!({"ExecutionArn": execution_arn(&name), "StartDate": "2026-11-25T10:00:00Z"})))
        }
        _ => unreachable!(),
    }
}

/// Runs the state machine on `execution`, invoking the function (on `ec2`) at most
/// `max_invocations` times. Every value that crosses a state boundary is measured, every
/// history event counted.
async fn execute(
    ec2: &SimulatedEc2,
    settings: &Settings,
    sfn: &mut Sfn,
    execution: &Execution,
    faults: &Faults,
    max_invocations: usize,
) -> (Outcome, Record) {
    const FIELDS: [&str; 16] = [
        "Type",
        "Comment",
        "Next",
        "End",
        "Parameters",
        "ResultSelector",
        "ResultPath",
        "OutputPath",
        "Resource",
        "Retry",
        "Catch",
        "Choices",
        "Default",
        "SecondsPath",
        "ErrorPath",
        "CausePath",
    ];
    let asl = definition();
    let context = execution.context();
    sfn.names.insert(execution.name.clone());
    let mut record = Record::default();
    record.fits("the execution's input", &execution.input);
    record.event("ExecutionStarted");
    let mut name = asl["StartAt"].as_str().expect("StartAt").to_owned();
    let mut data = execution.input.clone();
    loop {
        let state = &asl["States"][&name];
        record.fits(&format!("{name}'s input"), &data);
        let kind = state["Type"].as_str().unwrap_or_else(|| panic!("{name} has no Type"));
        for field in state.as_object().expect("a state").keys() {
            assert!(FIELDS.contains(&field.as_str()), "{name}: {field} is not interpreted here");
        }
        let (entered, exited) = match kind {
            "Pass" => ("PassStateEntered", "PassStateExited"),
            "Task" => ("TaskStateEntered", "TaskStateExited"),
            "Choice" => ("ChoiceStateEntered", "ChoiceStateExited"),
            "Wait" => ("WaitStateEntered", "WaitStateExited"),
            "Fail" => ("FailStateEntered", "ExecutionFailed"),
            other => panic!("{name}: state type {other} is not interpreted here"),
        };
        record.entered.push((name.clone(), record.history.len()));
        record.event(entered);
        let result_path = state.get("ResultPath").and_then(Value::as_str).unwrap_or("$");
        let output_path = |placed: Value| {
            state.get("OutputPath").and_then(Value::as_str).map_or(placed.clone(), |p| read_path(&placed, &context, p))
        };
        let output = match kind {
            "Pass" => {
                let result = match state.get("Parameters") {
                    Some(parameters) => apply_template(parameters, &data, &context),
                    None => data.clone(),
                };
                output_path(place(&data, result_path, result))
            }
            "Task" => {
                let resource = state["Resource"].as_str().expect("Resource");
                let parameters = apply_template(&state["Parameters"], &data, &context);
                let mut injected: VecDeque<&String> = match resource {
                    LAMBDA_INVOKE => faults.invoke.iter().collect(),
                    LIST_EXECUTIONS => faults.list_executions.iter().collect(),
                    START_EXECUTION => faults.start_execution.iter().collect(),
                    other => panic!("Task resource {other} is not interpreted here"),
                };
                let mut attempts = vec![0; state["Retry"].as_array().map_or(0, Vec::len)];
                let result = loop {
                    if resource == LAMBDA_INVOKE && injected.is_empty() && record.invocations == max_invocations {
                        return (Outcome::Running(data), record);
                    }
                    record.event("TaskScheduled");
                    record.event("TaskStarted");
                    let attempt = match injected.pop_front() {
                        Some(error) => Err((error.clone(), format!("injected {error}"))),
                        None => call(resource, &parameters, execution, sfn, ec2, settings, &mut record).await,
                    };
                    match attempt {
                        Ok(raw) => {
                            record.event("TaskSucceeded");
                            break Ok(raw);
                        }
                        Err((error, cause)) => {
                            record.event("TaskFailed");
                            if !retries(state, &error, &mut attempts) {
                                break Err((error, cause));
                            }
                        }
                    }
                };
                match result {
                    Ok(raw) => {
                        let selected = match state.get("ResultSelector") {
                            Some(selector) => apply_template(selector, &raw, &context),
                            None => raw,
                        };
                        output_path(place(&data, result_path, selected))
                    }
                    Err((error, cause)) => {
                        let Some(catcher) = state["Catch"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|c| names_error(&c["ErrorEquals"], &error))
                        else {
                            record.event("ExecutionFailed");
                            return (Outcome::Failed { error, cause }, record);
                        };
                        let caught = json!({"Error": error, "Cause": cause});
                        let placed =
                            place(&data, catcher.get("ResultPath").and_then(Value::as_str).unwrap_or("$"), caught);
                        record.fits(&format!("{name}'s Catch output"), &placed);
                        record.event(exited);
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
                        let rules: Vec<&String> = choice
                            .as_object()
                            .expect("a rule")
                            .keys()
                            .filter(|k| *k != "Variable" && *k != "Next")
                            .collect();
                        assert_eq!(rules.len(), 1, "one comparison a rule here: {choice}");
                        let expected = &choice[rules[0].as_str()];
                        if rules[0] == "IsPresent" {
                            return try_read_path(&data, &context, variable).is_some() == (expected == &json!(true));
                        }
                        let actual = read_path(&data, &context, variable);
                        match rules[0].as_str() {
                            "BooleanEquals" | "StringEquals" => &actual == expected,
                            "StringEqualsPath" => {
                                let other = read_path(&data, &context, expected.as_str().expect("a path"));
                                assert!(
                                    actual.is_string() && other.is_string(),
                                    "StringEqualsPath of {actual} and {other}"
                                );
                                actual == other
                            }
                            "NumericEquals" => {
                                actual.as_f64().expect("a number") == expected.as_f64().expect("a number")
                            }
                            "NumericGreaterThan" => {
                                actual.as_f64().expect("a number") > expected.as_f64().expect("a number")
                            }
                            "NumericGreaterThanEquals" => {
                                actual.as_f64().expect("a number") >= expected.as_f64().expect("a number")
                            }
                            other => panic!("Choice rule {other} is not interpreted here"),
                        }
                    })
                    .map_or(&state["Default"], |choice| &choice["Next"]);
                record.event(exited);
                name = next.as_str().expect("a Choice's Next").to_owned();
                continue;
            }
            "Wait" => {
                let seconds = read_path(&data, &context, state["SecondsPath"].as_str().expect("SecondsPath"));
                let seconds = seconds.as_u64().filter(|s| *s > 0).unwrap_or_else(|| panic!("{name}: wait {seconds}"));
                // The copies go on meanwhile (tokio's paused clock jumps ahead).
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                data.clone()
            }
            "Fail" => {
                let error = read_path(&data, &context, state["ErrorPath"].as_str().expect("ErrorPath"));
                let cause = read_path(&data, &context, state["CausePath"].as_str().expect("CausePath"));
                let (error, cause) = (error.as_str().unwrap_or("").to_owned(), cause.as_str().unwrap_or("").to_owned());
                assert!(
                    cause.len() <= CAUSE_QUOTA,
                    "the execution's cause is {} bytes, over {CAUSE_QUOTA}",
                    cause.len()
                );
                record.event(exited);
                return (Outcome::Failed { error, cause }, record);
            }
            _ => unreachable!(),
        };
        record.fits(&format!("{name}'s output"), &output);
        record.event(exited);
        if state.get("End").and_then(Value::as_bool) == Some(true) {
            record.fits("the execution's output", &output);
            record.event("ExecutionSucceeded");
            return (Outcome::Succeeded(output), record);
        }
        name = state["Next"].as_str().unwrap_or_else(|| panic!("{name} has no Next")).to_owned();
        data = output;
    }
}

/// A manual StartExecution with a plain request, as before the schedule started the loop.
async fn run_manual(ec2: &SimulatedEc2, input: Value, max_invocations: usize) -> (Outcome, Record) {
    execute(
        ec2,
        &settings(),
        &mut Sfn::default(),
        &Execution::new("manual", input),
        &Faults::default(),
        max_invocations,
    )
    .await
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
    let (outcome, record) = run_manual(&ec2, input(json!({"wait_for_completion": true})), 5).await;
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
        let (outcome, record) = run_manual(&ec2, input(json!({})), ROUNDS).await;
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

/// The round bound of the definition: after this many invocations, it continues as new.
fn round_bound() -> usize {
    let asl = definition();
    let rule = &asl["States"]["Round limit?"]["Choices"][0];
    assert_eq!(rule["Variable"], "$.loop.round");
    assert_eq!(rule["Next"], "Continue as new");
    rule["NumericGreaterThanEquals"].as_u64().expect("a number") as usize
}

/// Every retry `state`'s Retry allows, as errors that use each retrier up in turn (a retrier
/// naming States.TaskFailed gets an error no earlier retrier names). MaxAttempts 0 retries none.
fn every_retry_of(state: &str) -> Vec<String> {
    let asl = definition();
    let mut errors = Vec::new();
    for retrier in asl["States"][state]["Retry"].as_array().expect("a Retry") {
        let name = retrier["ErrorEquals"][0].as_str().expect("an error name");
        let error = if name.starts_with("States.") { "Injected.TransientError" } else { name };
        let attempts = retrier.get("MaxAttempts").and_then(Value::as_u64).unwrap_or(3) as usize;
        errors.extend(std::iter::repeat_n(error.to_owned(), attempts));
    }
    errors
}

fn tagged_request(extra: Value) -> Value {
    let mut request = json!({"filters": [{"name": "tag:Backup", "values": ["daily"]}], "target_region": TARGET});
    if let (Some(request), Some(extra)) = (request.as_object_mut(), extra.as_object()) {
        request.extend(extra.clone());
    }
    request
}

/// `request` as the loop hands it to the function every round.
fn as_invoked(request: &Value) -> Value {
    let mut invoked = request.clone();
    invoked["max_wait_seconds"] = json!(0);
    invoked["response_format"] = json!("summary");
    invoked
}

#[test]
fn md5_matches_rfc_1321() {
    assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        md5_hex(b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"),
        "57edf4a22be3c955ac49da2e2107b67a"
    );
}

/// 600 sources whose copies take an hour each, 20 at a time, polled every 5 minutes: about 30
/// hours and 360 rounds, more than one execution runs. The first execution hands the same
/// request to a continuation (StartExecution of itself) after the round bound, far below the
/// history quota; the continuation, started while its predecessor still counts as RUNNING,
/// carries the job to completion, and every source is copied once.
#[tokio::test(start_paused = true)]
async fn a_long_job_continues_as_a_new_execution_and_finishes() {
    const JOB: usize = 600;
    let ec2 =
        SimulatedEc2::new().with_copy_time(CopyTimeModel { fixed: Duration::from_secs(3600), per_gib: Duration::ZERO });
    for i in 0..JOB {
        ec2.add_source(SOURCE, 8 + (i as u64) % 50, &[("Backup", "daily")]);
    }
    let request = tagged_request(json!({"pending_limit": 20}));
    let mut sfn = Sfn::default();
    let first = Execution::new("seeding", request.clone());
    let (outcome, record) = execute(&ec2, &settings(), &mut sfn, &first, &Faults::default(), usize::MAX).await;
    let Outcome::Succeeded(output) = outcome else { panic!("{outcome:?}") };
    let bound = round_bound();
    assert_eq!(record.invocations, bound, "hands over after {bound} rounds");
    assert_eq!(output["complete"], false, "{output}");
    assert_eq!(sfn.started.len(), 1, "one continuation: {:?}", sfn.started);
    let continuation = sfn.started[0].clone();
    assert_eq!(output["continued_as"]["execution_arn"], json!(execution_arn(&continuation.name)));
    assert!(continuation.name.starts_with("continuation-1-"), "{}", continuation.name);
    // The same request, exactly as the function got it each round (the caller's request and the
    // loop's two fields, nothing of the loop's bookkeeping).
    assert_eq!(record.last_payload, as_invoked(&request));
    assert_eq!(continuation.input["request"], record.last_payload);
    assert_eq!(continuation.input["loop"], json!({"kind": "continuation", "generation": 1}));
    assert_eq!(continuation.input["AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID"], json!(execution_arn("seeding")));
    let per_round = record.events_between_entries_of("Copy");
    assert!(per_round.iter().all(|n| *n == 13), "events per round: {per_round:?}");
    assert!(record.history.len() < HISTORY_QUOTA);
    let copied = ec2.tracked_copies(TARGET).len();
    assert!(copied < JOB, "the job outlasts one execution ({copied} copies started in it)");

    // The predecessor is still RUNNING while its continuation starts.
    sfn.running = vec![first.name.clone()];
    let (outcome, second) = execute(&ec2, &settings(), &mut sfn, &continuation, &Faults::default(), usize::MAX).await;
    let Outcome::Succeeded(output) = outcome else { panic!("{outcome:?}") };
    assert_eq!(output["complete"], true, "{output}");
    assert_eq!(output["summary"]["copies"], JOB, "{output}");
    assert_eq!(sfn.started.len(), 1, "the continuation finished without handing over again");
    assert!(second.invocations >= 1 && second.invocations < bound, "{} rounds", second.invocations);
    assert_eq!(second.last_payload, as_invoked(&request), "the continuation runs the same request");
    let copies = ec2.tracked_copies(TARGET);
    assert_eq!(copies.len(), JOB, "every source copied once");
    println!(
        "continuation rounds={}+{} history={}+{} events copies={}",
        record.invocations,
        second.invocations,
        record.history.len(),
        second.history.len(),
        copies.len()
    );
}

/// The worst history an execution can reach before it hands over: a scheduled execution whose
/// every round uses up every Retry of the Copy task before succeeding, and whose check and
/// StartExecution use up theirs, all while the region's quota stays full (nothing completes).
/// It must still hand over before the 25,000th event (the interpreter fails the test there).
#[tokio::test(start_paused = true)]
async fn the_hand_over_comes_before_the_history_quota_even_when_every_retry_is_used() {
    let ec2 = SimulatedEc2::new();
    ec2.add_source(SOURCE, 8, &[("Backup", "daily")]);
    ec2.add_foreign_pending(TARGET, 20, Duration::from_secs(60 * 86_400));
    let faults = Faults {
        invoke: every_retry_of("Copy"),
        list_executions: every_retry_of("Already running?"),
        start_execution: every_retry_of("Continue as new"),
    };
    let mut sfn = Sfn::default();
    let tick = Execution::scheduled("tick", tagged_request(json!({})));
    let (outcome, record) = execute(&ec2, &settings(), &mut sfn, &tick, &faults, usize::MAX).await;
    let Outcome::Succeeded(output) = outcome else { panic!("{outcome:?}") };
    assert_eq!(record.invocations, round_bound());
    assert!(output["continued_as"]["execution_arn"].is_string(), "{output}");
    assert_eq!(sfn.started.len(), 1);
    // A round: 13 events, and 3 (TaskFailed, TaskScheduled, TaskStarted) for each retry.
    let per_round = record.events_between_entries_of("Copy");
    let worst = 13 + 3 * faults.invoke.len();
    assert!(per_round.iter().all(|n| *n == worst), "events per round: {per_round:?}, expected {worst}");
    assert!(record.history.len() < HISTORY_QUOTA);
    println!(
        "worst-case hand-over: {} rounds of {worst} events, history {} of {HISTORY_QUOTA}",
        record.invocations,
        record.history.len()
    );
}

/// A StartExecution retried after its first try did start the continuation (the answer was
/// lost) must not start a second loop: the continuation's name comes from this execution, so
/// the retry finds the name taken and the execution ends as handed over.
#[tokio::test(start_paused = true)]
async fn a_retried_hand_over_does_not_start_a_second_continuation() {
    let ec2 = SimulatedEc2::new();
    ec2.add_source(SOURCE, 8, &[("Backup", "daily")]);
    ec2.add_foreign_pending(TARGET, 20, Duration::from_secs(60 * 86_400));
    let mut sfn = Sfn::default();
    let run = Execution::new("long-run", tagged_request(json!({})));
    let (first, _) = execute(&ec2, &settings(), &mut sfn, &run, &Faults::default(), usize::MAX).await;
    assert!(matches!(first, Outcome::Succeeded(_)), "{first:?}");
    assert_eq!(sfn.started.len(), 1);
    let name = sfn.started[0].name.clone();
    assert!(name.len() <= 80, "{name}");
    // The same execution's StartExecution once more (as a retry would send it).
    let (again, _) = execute(&ec2, &settings(), &mut sfn, &run, &Faults::default(), usize::MAX).await;
    let Outcome::Succeeded(output) = again else { panic!("{again:?}") };
    assert_eq!(sfn.started.len(), 1, "a second continuation: {:?}", sfn.started);
    assert_eq!(output["continued_as"]["Error"], "StepFunctions.ExecutionAlreadyExistsException", "{output}");
    assert!(output["continued_as"]["Cause"].as_str().is_some_and(|c| c.contains(&name)), "{output}");
}

/// The schedule's executions are not doubled: one that finds an older execution RUNNING ends at
/// once, without invoking the function; with none running it runs the request it carries. Of
/// two ticks running together (EventBridge delivered the tick twice), the older goes ahead and
/// the newer skips, so the day is not lost. A continuation (its predecessor RUNNING for a moment
/// more) and a manual execution are never stopped by the check.
#[tokio::test(start_paused = true)]
async fn a_scheduled_execution_ends_at_once_while_another_runs() {
    let ec2 = SimulatedEc2::new().with_copy_time(CopyTimeModel::INSTANT);
    for _ in 0..3 {
        ec2.add_source(SOURCE, 8, &[("Backup", "daily")]);
    }
    let request = tagged_request(json!({}));

    let mut sfn = Sfn { running: vec!["yesterdays-tick".to_owned()], ..Sfn::default() };
    let tick = Execution::scheduled("todays-tick", request.clone());
    let (outcome, record) = execute(&ec2, &settings(), &mut sfn, &tick, &Faults::default(), usize::MAX).await;
    let Outcome::Succeeded(output) = outcome else { panic!("{outcome:?}") };
    assert_eq!(output["complete"], false, "{output}");
    assert!(output["skipped"].is_string(), "{output}");
    assert_eq!(record.invocations, 0, "the function was invoked");
    assert_eq!(ec2.calls().total(), 0, "EC2 was called");
    assert!(sfn.started.is_empty());

    // Nothing else running: the scheduled execution runs the request it carries, unwrapped.
    let mut sfn = Sfn::default();
    let tick = Execution::scheduled("next-tick", request.clone());
    let (outcome, record) = execute(&ec2, &settings(), &mut sfn, &tick, &Faults::default(), usize::MAX).await;
    let Outcome::Succeeded(output) = outcome else { panic!("{outcome:?}") };
    assert_eq!(output["complete"], true, "{output}");
    assert_eq!(output["summary"]["copies"], 3, "{output}");
    assert_eq!(record.last_payload, as_invoked(&request));

    // A continuation whose predecessor is still RUNNING, and a manual execution beside a
    // running one, both run.
    let continuation = Execution::new(
        "continuation-1-0123456789abcdef0123456789abcdef",
        json!({"loop": {"kind": "continuation", "generation": 1}, "request": as_invoked(&request),
               "AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID": execution_arn("next-tick")}),
    );
    let manual = Execution::new("by-hand", request.clone());
    for execution in [continuation, manual] {
        let mut sfn = Sfn { running: vec!["next-tick".to_owned()], ..Sfn::default() };
        let (outcome, record) = execute(&ec2, &settings(), &mut sfn, &execution, &Faults::default(), usize::MAX).await;
        let Outcome::Succeeded(output) = outcome else { panic!("{}: {outcome:?}", execution.name) };
        assert_eq!(output["complete"], true, "{}: {output}", execution.name);
        assert_eq!(record.invocations, 1, "{}", execution.name);
        assert_eq!(record.last_payload, as_invoked(&request), "{}", execution.name);
    }

    // Two ticks delivered together, both RUNNING (ListExecutions: newest first). The newer
    // skips; the older, which sees the newer listed before it, goes ahead.
    let mut sfn = Sfn { running: vec!["tick-first".to_owned()], ..Sfn::default() };
    let newer = Execution::scheduled("tick-second", request.clone());
    let (outcome, record) = execute(&ec2, &settings(), &mut sfn, &newer, &Faults::default(), usize::MAX).await;
    let Outcome::Succeeded(output) = outcome else { panic!("{outcome:?}") };
    assert!(output["skipped"].is_string(), "the newer tick went ahead: {output}");
    assert_eq!(record.invocations, 0, "the newer tick invoked the function");
    let mut sfn = Sfn { running: vec!["tick-second".to_owned()], newer: 1, ..Sfn::default() };
    let older = Execution::scheduled("tick-first", request.clone());
    let (outcome, record) = execute(&ec2, &settings(), &mut sfn, &older, &Faults::default(), usize::MAX).await;
    let Outcome::Succeeded(output) = outcome else { panic!("{outcome:?}") };
    assert_eq!(output["complete"], true, "the older tick did not go ahead: {output}");
    assert_eq!(record.invocations, 1);
    assert_eq!(record.last_payload, as_invoked(&request));
    let check = &definition()["States"]["Already running?"]["Parameters"];
    assert_eq!(check["MaxResults"], 100, "the check lists fewer than 100 RUNNING executions");
}
