//! The command line through the built binary (not under a Lambda runtime) against the
//! fault-injecting EC2: its `--json` answer is the Lambda's, `plan` copies nothing and says
//! why for each source, the reference's snake_case command line works, bad flags exit 2,
//! Ctrl-C stops cleanly and the same command resumes without duplicates, and output to a pipe
//! carries no terminal escape codes.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fault_ec2::FaultEc2;
use crate::support::runtime_api::LambdaHarness;

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
/// Simulated copy time is (120 s + 20 s/GiB) × this: a 50 GiB copy takes 2.2 s.
const TIME_SCALE: f64 = 0.002;

/// The binary as a user runs it from a shell, pointed at `emulator`.
fn cli(emulator: &FaultEc2, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_copy-snapshots"));
    command
        .args(args)
        .env("AWS_ENDPOINT_URL", emulator.endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", SOURCE)
        .env("POLL_INTERVAL_SECONDS", "0.05")
        .env("EC2_CALL_TIMEOUT_SECONDS", "2")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env_remove("TARGET_REGION")
        .env_remove("RUST_LOG")
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::null());
    command
}

fn run(emulator: &FaultEc2, args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cli(emulator, args).output().expect("the binary runs");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned());
    (status.code().unwrap_or(-1), stdout, stderr)
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("stdout is not only JSON ({e}):\n{stdout}"))
}

/// The JSON's shape: every object's keys, recursively, with arrays by their first element.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => Value::Null,
    }
}

#[tokio::test]
async fn json_answer_is_the_lambdas() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let ids = emulator.sources(SOURCE, &[8, 20, 12]);
    let mut args = vec!["--snapshot-ids"];
    args.extend(ids.iter().map(String::as_str));
    args.extend(["--target-region", TARGET, "--wait", "--json"]);
    let (code, stdout, stderr) = run(&emulator, &args);
    assert_eq!(code, 0, "{stderr}");
    let from_cli = json_of(&stdout);
    assert_eq!(from_cli["complete"], true);
    assert!(from_cli["copies"].as_array().unwrap().iter().all(|c| c["reused"] == false && c["state"] == "completed"));

    // The same request to the function, as Lambda runs it: it reuses every copy the CLI made.
    let endpoint = emulator.endpoint();
    let mut lambda = LambdaHarness::start(&[
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", SOURCE),
        ("POLL_INTERVAL_SECONDS", "0.05"),
    ])
    .await;
    let request = json!({"snapshot_ids": ids, "target_region": TARGET, "wait_for_completion": true});
    let from_lambda = lambda.invoke(&request, Duration::from_secs(60)).await.response();
    assert_eq!(shape(&from_cli), shape(&from_lambda));
    assert_eq!(from_cli["snapshot_ids"], from_lambda["snapshot_ids"]);
    assert!(from_lambda["copies"].as_array().unwrap().iter().all(|c| c["reused"] == true));
    assert_eq!(emulator.record().calls("CopySnapshot"), 3);
}

#[test]
fn plan_lists_each_source_and_copies_nothing() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let daily = json!({"Backup": "daily"});
    let copied = emulator.tagged_snapshots(SOURCE, &[10], "completed", &daily);
    let uncopied = emulator.tagged_snapshots(SOURCE, &[10, 40, 10], "completed", &daily);
    let not_ready = emulator.tagged_snapshots(SOURCE, &[7], "pending", &daily);
    // One source copied before, by the CLI itself.
    let (code, _, stderr) = run(&emulator, &["--snapshot-ids", &copied[0], "--target-region", TARGET, "--wait"]);
    assert_eq!(code, 0, "{stderr}");
    let copies_before = emulator.record().calls("CopySnapshot");

    let args = ["plan", "--filter", "tag:Backup=daily", "--target-region", TARGET, "--pending-limit", "2", "--json"];
    let (code, stdout, stderr) = run(&emulator, &args);
    assert_eq!(code, 0, "{stderr}");
    let plan = json_of(&stdout);
    let action = |id: &str| {
        let source = plan["sources"].as_array().unwrap().iter().find(|s| s["source_snapshot_id"] == id);
        source.unwrap_or_else(|| panic!("{id} is not in the plan: {plan}")).clone()
    };
    assert_eq!(action(&copied[0])["action"], "has_copy");
    assert_eq!(action(&copied[0])["state"], "completed");
    assert!(action(&copied[0])["snapshot_id"].as_str().unwrap().starts_with("snap-"));
    assert_eq!(action(&uncopied[0])["action"], "copy");
    assert_eq!(action(&uncopied[1])["action"], "copy");
    assert_eq!(action(&uncopied[2])["action"], "copy");
    assert_eq!(action(&not_ready[0])["action"], "not_ready");
    assert_eq!(plan["copies_to_make"], 3);
    assert_eq!(plan["gib_to_copy"], 60);
    // Two slots, 120 s + 20 s/GiB a copy, largest first: 40 GiB in one slot (920 s), the two
    // 10 GiB copies after each other in the other (640 s). In request order it would be 1240 s.
    assert_eq!(plan["estimated_seconds"], 920);

    // The table says the same to a person; `--dry-run` is `plan`.
    let (code, table, _) = run(
        &emulator,
        &["--dry-run", "--filter", "tag:Backup=daily", "--target-region", TARGET, "--pending-limit", "2"],
    );
    assert_eq!(code, 0);
    for (id, word) in [(&copied[0], "has_copy"), (&uncopied[0], "copy"), (&not_ready[0], "not_ready")] {
        let line = table.lines().find(|l| l.starts_with(id.as_str())).unwrap_or_else(|| panic!("{id}:\n{table}"));
        assert!(line.split_whitespace().any(|w| w == word), "{line}");
    }
    assert!(table.contains("3 copies to make in eu-west-1, 60 GiB; about 16 min with pending_limit 2"), "{table}");
    let record = emulator.record();
    assert_eq!(record.calls("CopySnapshot"), copies_before, "plan made a copy");
    assert_eq!(record.calls("DeleteSnapshot"), 0);
}

async fn kms_key(emulator: &FaultEc2) -> String {
    let kms = emulator.kms_in(TARGET).await;
    kms.create_key().send().await.unwrap().key_metadata().unwrap().arn().unwrap().to_owned()
}

#[tokio::test]
async fn the_references_snake_case_command_line_works() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let ids = emulator.sources(SOURCE, &[8, 16]);
    let key = kms_key(&emulator).await;
    // `aaws ec2 copy_snapshots` with the program renamed.
    let args = [
        "--snapshot_ids",
        &ids[0],
        &ids[1],
        "--region",
        SOURCE,
        "--target_region",
        TARGET,
        "--encrypt",
        "--kms_key_id",
        &key,
        "--pending_limit",
        "1",
    ];
    let (code, stdout, stderr) = run(&emulator, &args);
    assert_eq!(code, 0, "{stderr}");
    // One slot: the second copy starts once the first completes, then the command returns.
    assert!(stdout.contains("2 copies (") && stdout.contains("0 not started, 0 failed; complete: true"), "{stdout}");
    let record = emulator.record();
    assert_eq!(record.calls("CopySnapshot"), 2);
    let under_the_key = |c: &Value| c["encrypted"] == true && c["kms_key_id"] == key.as_str();
    assert!(record.copies().all(under_the_key), "{:?}", record.0["copies"]);
    assert_eq!(record.max_pending(TARGET), 1, "--pending_limit 1 was not kept");
}

#[test]
fn a_request_file_runs_under_a_named_profile() {
    let emulator = FaultEc2::start();
    // The emulator verifies each PresignedUrl's signature: it must be the profile's key.
    emulator.configure(json!({"time_scale": TIME_SCALE, "secrets": {"AKIDDR": "secret"}}));
    let ids = emulator.sources(SOURCE, &[8]);
    let home = std::env::temp_dir().join(format!("copy-snapshots-cli-home-{}", std::process::id()));
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    let credentials = "[dr]\naws_access_key_id = AKIDDR\naws_secret_access_key = secret\n";
    std::fs::write(home.join(".aws/credentials"), credentials).unwrap();
    let request = home.join("request.json");
    let payload = json!({"snapshot_ids": ids, "target_region": TARGET, "wait_for_completion": true});
    std::fs::write(&request, payload.to_string()).unwrap();
    let request = request.to_string_lossy().into_owned();
    // No credentials but the profile's.
    let with_profile = |profile: &str, json: bool| {
        let mut args = vec!["--request", request.as_str(), "--profile", profile];
        if json {
            args.push("--json");
        }
        let mut command = cli(&emulator, &args);
        command.env("HOME", &home).env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
        command.output().unwrap()
    };
    let output = with_profile("dr", true);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(json_of(&String::from_utf8_lossy(&output.stdout))["complete"], true);
    let missing = with_profile("nosuch", false);
    let _ = std::fs::remove_dir_all(&home);
    assert_ne!(missing.status.code(), Some(0), "a profile that does not exist worked");
    assert_eq!(emulator.record().calls("CopySnapshot"), 1);
    assert_eq!(
        emulator.record().presigned_url_problems(),
        [],
        "the PresignedUrl was not signed with the profile's key"
    );
}

#[test]
fn bad_flags_are_usage_errors_and_bad_values_the_lambdas_invalid_request() {
    let emulator = FaultEc2::start();
    let (code, _, stderr) = run(&emulator, &["--snapshot-ids", "snap-1", "--pending-limit", "many"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("invalid value 'many' for '--pending-limit"), "{stderr}");
    let (code, _, stderr) = run(&emulator, &["--snapshots", "snap-1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unexpected argument '--snapshots'"), "{stderr}");
    // A value clap accepts but the request does not: the Lambda's own message and errorType.
    let (code, stdout, _) = run(&emulator, &["--snapshot-ids", "snap-1", "--target-region", TARGET, "--json"]);
    assert_eq!(code, 10);
    let error = json_of(&stdout);
    assert_eq!(error["errorType"], "InvalidRequest");
    assert!(error["errorMessage"].as_str().unwrap().contains("snap-1"), "{error}");
    assert_eq!(emulator.record().all_calls(), 0, "bad input reached EC2");
}

fn interrupt(child: &Child) {
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
}

#[test]
fn ctrl_c_stops_waiting_and_the_same_command_resumes_without_duplicates() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let ids = emulator.sources(SOURCE, &[200, 150, 100, 80, 60, 40]);
    let mut args = vec!["--snapshot-ids"];
    args.extend(ids.iter().map(String::as_str));
    args.extend(["--target-region", TARGET, "--pending-limit", "2", "--wait"]);

    let mut child = cli(&emulator, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("it starts");
    // Once the first copies are under way (the largest takes 8.2 s), press Ctrl-C.
    let started = Instant::now();
    while emulator.record().calls("CopySnapshot") < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "no copy started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    interrupt(&child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("a status").is_none() {
        assert!(Instant::now() < deadline, "Ctrl-C did not stop the command");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("its output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("running the same command again resumes"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("complete: false"), "{stdout}");
    let started_before = emulator.record().calls("CopySnapshot");
    assert!(started_before < ids.len(), "the run was not interrupted: {started_before} copies started");

    let (code, stdout, stderr) = run(&emulator, &args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("complete: true"), "{stdout}");
    let record = emulator.record();
    for id in &ids {
        assert_eq!(record.good_copies_of(id), 1, "{id}: {:?}", record.0["copies"]);
    }
    assert_eq!(record.calls("CopySnapshot"), ids.len(), "a copy was made twice");
    println!("scenario=cli_ctrl_c copies_before_ctrl_c={started_before} copies={}", ids.len());
}

#[test]
fn output_to_a_pipe_is_plain_lines_without_escape_codes() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let ids = emulator.sources(SOURCE, &[8, 30]);
    let (code, stdout, stderr) =
        run(&emulator, &["--snapshot-ids", &ids[0], &ids[1], "--target-region", TARGET, "--wait"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'), "escape codes in:\n{stdout}\n{stderr}");
    assert!(stderr.starts_with("2 sources: 2 to copy; 38 GiB to copy\n"), "{stderr}");
    for id in &ids {
        assert!(stderr.lines().any(|l| l.starts_with("started") && l.contains(id.as_str())), "{stderr}");
        assert!(stderr.lines().any(|l| l.starts_with("completed") && l.contains(id.as_str())), "{stderr}");
    }
    let header = stdout.lines().next().unwrap_or_default();
    assert_eq!(header.split_whitespace().collect::<Vec<_>>(), ["SOURCE", "COPY", "STATE", "SIZE", "REUSED"]);
    assert!(stdout.contains("2 copies (2 completed, 0 reused), 0 not started, 0 failed; complete: true"), "{stdout}");
}

/// RETAIN_DAYS, RETAIN_COUNT and DELETE_ORPHANS_AFTER_DAYS are the deployment's settings: in
/// the caller's shell they never turn a copy command into a prune. Only the flags ask for it.
#[tokio::test]
async fn retention_settings_in_the_shell_delete_nothing() {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": TIME_SCALE}));
    let (ids, _) = emulator.volume_snapshots(SOURCE, 8, &[0.0, 1.0, 2.0, 3.0], &json!({"Backup": "cli"}));
    let copy = ["--filter", "tag:Backup=cli", "--target-region", TARGET, "--wait", "--json"];
    let (code, stdout, stderr) = run(&emulator, &copy);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json_of(&stdout)["copies"].as_array().unwrap().len(), 4);

    let output = cli(&emulator, &copy)
        .env("RETAIN_DAYS", "1")
        .env("RETAIN_COUNT", "1")
        .env("DELETE_ORPHANS_AFTER_DAYS", "0")
        .output()
        .expect("the binary runs");
    let answer = json_of(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(answer["deleted"].is_null() && answer["skipped"].is_null(), "{answer}");
    assert_eq!(emulator.record().calls("DeleteSnapshot"), 0, "the shell's settings deleted copies");

    // The flag asks for it.
    let mut prune = copy.to_vec();
    prune.extend(["--retain-count", "1"]);
    let (code, stdout, stderr) = run(&emulator, &prune);
    assert_eq!(code, 0, "{stderr}");
    let answer = json_of(&stdout);
    let deleted: Vec<&str> =
        answer["deleted"].as_array().unwrap().iter().map(|d| d["source_snapshot_id"].as_str().unwrap()).collect();
    assert_eq!(deleted.len(), 3, "{answer}");
    assert!(!deleted.contains(&ids[0].as_str()));
}
