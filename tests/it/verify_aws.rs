//! `copy-snapshots verify-aws` through the built binary against the fault-injecting EC2 (which
//! checks the PresignedUrl and reports a copy's KmsKeyId as EC2 does, the key's ARN): it passes
//! with each of KMS's four key forms and leaves nothing behind, and nothing it did not make is
//! touched; a key that does not exist fails before anything is made; a copy EC2 made under
//! another key fails, naming both keys; Ctrl-C mid-copy still deletes everything; what it may
//! not delete is named with its region, and fails the run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use serde_json::json;

use crate::support::fault_ec2::FaultEc2;

const SOURCE: &str = "us-east-1";
const TARGET: &str = "eu-west-1";
const RUN_TAG: &str = copy_snapshots::entry::verify_aws::RUN_TAG;

/// The binary as a user runs it, pointed at `emulator`.
fn verify_aws(emulator: &FaultEc2, key: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_copy-snapshots"));
    command
        .args(["verify-aws", "--source-region", SOURCE, "--target-region", TARGET, "--kms-key", key])
        .env("AWS_ENDPOINT_URL", emulator.endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", SOURCE)
        .env("POLL_INTERVAL_SECONDS", "0.05")
        .env("EC2_CALL_TIMEOUT_SECONDS", "5")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env_remove("TARGET_REGION")
        .env_remove("KMS_KEY_ID")
        .env_remove("RUST_LOG")
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::null());
    command
}

fn run(emulator: &FaultEc2, key: &str) -> (i32, String, String) {
    let Output { status, stdout, stderr } = verify_aws(emulator, key).output().expect("the binary runs");
    (status.code().unwrap_or(-1), String::from_utf8_lossy(&stdout).into(), String::from_utf8_lossy(&stderr).into())
}

/// An emulator where the caller may delete what it made (a person's rights, not the role's).
fn emulator(time_scale: f64) -> FaultEc2 {
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": time_scale, "role_regions": null}));
    emulator
}

async fn config(emulator: &FaultEc2) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(emulator.endpoint()).load().await
}

async fn ec2(emulator: &FaultEc2, region: &str) -> Client {
    let config = config(emulator).await;
    Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&config).region(aws_sdk_ec2::config::Region::new(region.to_owned())).build(),
    )
}

/// A new key in the target region with `alias`; returns its ARN.
async fn kms_key(emulator: &FaultEc2, alias: &str) -> String {
    let kms = emulator.kms_in(TARGET).await;
    let key = kms.create_key().send().await.unwrap().key_metadata().unwrap().arn().unwrap().to_owned();
    kms.create_alias().alias_name(alias).target_key_id(&key).send().await.unwrap();
    key
}

/// Every volume and owner-self snapshot in `region`, by id.
async fn everything_in(emulator: &FaultEc2, region: &str) -> (Vec<String>, Vec<String>) {
    let ec2 = ec2(emulator, region).await;
    let volumes = ec2.describe_volumes().send().await.unwrap();
    let snapshots = ec2.describe_snapshots().owner_ids("self").send().await.unwrap();
    let mut volumes: Vec<String> = volumes.volumes().iter().filter_map(|v| v.volume_id().map(str::to_owned)).collect();
    let mut snapshots: Vec<String> =
        snapshots.snapshots().iter().filter_map(|s| s.snapshot_id().map(str::to_owned)).collect();
    volumes.sort();
    snapshots.sort();
    (volumes, snapshots)
}

/// What is in both regions: (source volumes, source snapshots, target snapshots).
async fn world(emulator: &FaultEc2) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (source_volumes, source_snapshots) = everything_in(emulator, SOURCE).await;
    let (_, target_snapshots) = everything_in(emulator, TARGET).await;
    (source_volumes, source_snapshots, target_snapshots)
}

/// Things the run did not make and must not touch: a snapshot and its volume in the source
/// region, and in the target region a copy of this project tagged as another verify run's.
fn decoys(emulator: &FaultEc2) {
    emulator.tagged_snapshots(SOURCE, &[1], "completed", &json!({RUN_TAG: "another-run", "Name": "keep me"}));
    let tags = json!({RUN_TAG: "another-run", "copy-snapshots:source-snapshot-id": "snap-0123456789abcdef0",
                      "copy-snapshots:source-region": SOURCE});
    emulator.tagged_foreign_copies(TARGET, 1, 0.0, &tags);
}

#[tokio::test]
async fn passes_with_each_form_of_the_key_and_leaves_nothing_behind() {
    let emulator = emulator(0.002);
    let key_arn = kms_key(&emulator, "alias/verify-dr").await;
    let key_id = key_arn.rsplit_once("key/").unwrap().1.to_owned();
    let alias_arn = format!("arn:aws:kms:{TARGET}:123456789012:alias/verify-dr");
    decoys(&emulator);
    let before = world(&emulator).await;

    for key in ["alias/verify-dr", alias_arn.as_str(), key_id.as_str(), key_arn.as_str()] {
        let (code, stdout, stderr) = run(&emulator, key);
        println!("--- verify-aws --kms-key {key}\n{stdout}");
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let verdict = stdout.lines().last().unwrap_or_default();
        assert!(verdict.starts_with("PASS: ") && verdict.contains(&key_arn), "{stdout}");
        for phase in ["key", "volume", "snapshot", "copy", "check", "cleanup", "total"] {
            assert!(stdout.lines().any(|l| l.starts_with(&format!("{phase} "))), "no {phase} time:\n{stdout}");
        }
        assert!(!stdout.contains("NOT DELETED") && !stdout.contains("LEFT BEHIND"), "{stdout}");
        assert_eq!(world(&emulator).await, before, "the run left something, or deleted a decoy:\n{stdout}");
    }

    let record = emulator.record();
    assert_eq!(record.calls("CreateVolume"), 4);
    assert_eq!(record.calls("CopySnapshot"), 4);
    let ours: Vec<_> = record.copies().filter(|c| c["tags"][RUN_TAG].is_string()).collect();
    assert_eq!(ours.len(), 4);
    for copy in ours {
        // The function's own request path: the emulator found its PresignedUrl right.
        assert!(copy["presigned_url_problem"].is_null(), "{copy}");
        assert!(copy["fails_with"].is_null(), "{copy}");
        assert_eq!(copy["kms_key_id"], key_arn.as_str());
        assert_eq!(copy["deleted"], true);
    }
}

#[tokio::test]
async fn a_key_that_does_not_exist_fails_before_anything_is_made() {
    let emulator = emulator(0.002);
    kms_key(&emulator, "alias/verify-dr").await;
    let before = world(&emulator).await;
    let (code, stdout, stderr) = run(&emulator, "alias/no-such-key");
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let verdict = stdout.lines().last().unwrap_or_default();
    assert!(verdict.starts_with("FAIL: ") && verdict.contains("alias/no-such-key"), "{stdout}");
    assert!(verdict.contains("does not exist in eu-west-1") && verdict.contains("nothing was made"), "{stdout}");
    assert_eq!(emulator.record().calls("CreateVolume"), 0);
    assert_eq!(world(&emulator).await, before);
}

#[tokio::test]
async fn a_copy_under_another_key_fails_naming_both_keys() {
    let emulator = emulator(0.002);
    emulator.configure(json!({"ignore_kms_key": true}));
    let key_arn = kms_key(&emulator, "alias/verify-dr").await;
    let before = world(&emulator).await;
    let (code, stdout, stderr) = run(&emulator, "alias/verify-dr");
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let verdict = stdout.lines().last().unwrap_or_default();
    let default_key =
        emulator.record().copies().next().map(|c| c["kms_key_id"].as_str().unwrap_or_default().to_owned());
    let default_key = default_key.expect("a copy was made");
    assert_ne!(default_key, key_arn);
    assert!(verdict.starts_with("FAIL: "), "{stdout}");
    assert!(verdict.contains(&key_arn) && verdict.contains(&default_key), "both keys named:\n{stdout}");
    assert_eq!(world(&emulator).await, before, "the failed run left something:\n{stdout}");
}

#[tokio::test]
async fn ctrl_c_mid_copy_deletes_everything_it_made() {
    // A 1 GiB copy takes (120 s + 20 s) × 0.1 = 14 s here.
    let emulator = emulator(0.1);
    kms_key(&emulator, "alias/verify-dr").await;
    decoys(&emulator);
    let before = world(&emulator).await;
    let mut child = verify_aws(&emulator, "alias/verify-dr")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let started = Instant::now();
    let mut progress = Vec::new();
    loop {
        let line =
            seen.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no copy started: {progress:?}"));
        progress.push(line.clone());
        if line.starts_with("started ") {
            break;
        }
    }
    let interrupt = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(interrupt.success());
    let output = child.wait_with_output().expect("the binary ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    progress.extend(seen.try_iter());
    assert!(started.elapsed() < Duration::from_secs(14), "the copy finished before the interrupt: {progress:?}");
    assert_eq!(output.status.code(), Some(130), "{stdout}\n{progress:?}");
    assert!(stdout.lines().last().unwrap_or_default().starts_with("FAIL: interrupted by Ctrl-C"), "{stdout}");
    let copy_phase = stdout.lines().find(|l| l.starts_with("copy ")).unwrap_or_default();
    assert!(copy_phase.ends_with("(cut off)"), "the interrupted phase is timed:\n{stdout}");
    let record = emulator.record();
    assert_eq!(record.pending_deletes(), 1, "the pending copy was deleted (so cancelled)");
    assert!(record.copies().filter(|c| c["tags"][RUN_TAG].is_string()).all(|c| c["deleted"] == true));
    assert_eq!(world(&emulator).await, before, "the interrupted run left something, or deleted a decoy:\n{stdout}");
}

#[tokio::test]
async fn what_it_cannot_delete_is_named_with_its_region_and_the_run_fails() {
    // The deployed role's rights, not a person's: DeleteSnapshot only on this project's copies
    // in the target region, so the source snapshot cannot be deleted.
    let emulator = FaultEc2::start();
    emulator.configure(json!({"time_scale": 0.002}));
    kms_key(&emulator, "alias/verify-dr").await;
    let (code, stdout, stderr) = run(&emulator, "alias/verify-dr");
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let left: Vec<&str> = stdout.lines().filter(|l| l.starts_with("LEFT BEHIND: ")).collect();
    let (_, source_snapshots, target_snapshots) = world(&emulator).await;
    assert_eq!(source_snapshots.len(), 1, "{stdout}");
    let snapshot = &source_snapshots[0];
    assert_eq!(left.len(), 1, "{stdout}");
    assert!(
        left[0].starts_with(&format!("LEFT BEHIND: snapshot {snapshot} in {SOURCE}: UnauthorizedOperation")),
        "{stdout}"
    );
    assert!(
        left[0].ends_with(&format!("aws ec2 delete-snapshot --region {SOURCE} --snapshot-id {snapshot}")),
        "{stdout}"
    );
    let verdict = stdout.lines().last().unwrap_or_default();
    assert!(verdict.starts_with("FAIL: ") && verdict.contains("but 1 left behind"), "{stdout}");
    assert!(target_snapshots.is_empty() && world(&emulator).await.0.is_empty(), "the rest is deleted:\n{stdout}");
}
