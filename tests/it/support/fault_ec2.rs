//! Starts and drives tests/fault_ec2.py: moto patched with copy timing, the region's copy
//! quota, throttling, failing copies and a record of every call. One emulator per scenario, so
//! scenarios that change its configuration never meet.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use serde_json::{Value, json};

pub struct FaultEc2 {
    child: Child,
    port: u16,
    /// The emulator's stderr, kept for the failure message of a test that panics.
    log: PathBuf,
}

impl FaultEc2 {
    pub fn start() -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let python = format!("{root}/.venv/bin/python");
        assert!(
            std::path::Path::new(&python).exists(),
            "the fault emulator needs moto in .venv: run the tests with `make test`"
        );
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let log = std::env::temp_dir().join(format!("fault_ec2-{}-{port}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("a log file for the emulator");
        let child = Command::new(python)
            .arg(format!("{root}/tests/fault_ec2.py"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the fault emulator starts");
        let mut emulator = Self { child, port, log };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = emulator.child.try_wait() {
                panic!("the fault emulator exited ({status}):\n{}", emulator.log_tail());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the fault emulator did not start:\n{}",
                emulator.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        emulator
    }

    /// The end of the emulator's stderr (Python tracebacks land there).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = body.to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("the emulator answers");
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("a request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("an answer");
        let (_, payload) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {payload}"))
    }

    /// SDK configuration for this emulator's endpoint (EC2, KMS and DynamoDB alike).
    async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await
    }

    /// DynamoDB on this emulator (moto serves it beside EC2), in the stack's region.
    async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config().await)
    }

    /// KMS on this emulator in `region`.
    pub async fn kms_in(&self, region: &str) -> aws_sdk_kms::Client {
        let config = self.sdk_config().await;
        aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(&config)
                .region(aws_sdk_kms::config::Region::new(region.to_owned()))
                .build(),
        )
    }

    /// A DynamoDB table for the slot ledger, as the template's `SlotTable` declares it (on the
    /// same endpoint: moto serves DynamoDB beside EC2); returns its name.
    pub async fn create_slot_table(&self) -> String {
        let name = "copy-snapshots-SlotTable-test".to_owned();
        let dynamodb = self.dynamodb().await;
        let key = "target_region";
        dynamodb
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(key)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("an attribute definition"),
            )
            .key_schema(KeySchemaElement::builder().attribute_name(key).key_type(KeyType::Hash).build().expect("a key"))
            .send()
            .await
            .expect("the emulator creates the table");
        name
    }

    /// The slot ledger's item for `target_region` in `table`, as stored.
    pub async fn slot_item(&self, table: &str, target_region: &str) -> Option<HashMap<String, AttributeValue>> {
        let dynamodb = self.dynamodb().await;
        let key = AttributeValue::S(target_region.to_owned());
        let answer = dynamodb.get_item().table_name(table).key("target_region", key).send().await.expect("GetItem");
        answer.item().cloned()
    }

    pub fn configure(&self, config: Value) {
        self.call("POST", "/_fault/config", &config);
    }

    /// Completed source snapshots of these sizes; returns their ids.
    pub fn sources(&self, region: &str, sizes: &[u64]) -> Vec<String> {
        self.snapshots(region, sizes, "completed")
    }

    pub fn snapshots(&self, region: &str, sizes: &[u64], state: &str) -> Vec<String> {
        self.tagged_snapshots(region, sizes, state, &json!({}))
    }

    /// Snapshots in `state` carrying `tags` (an object of keys to values).
    pub fn tagged_snapshots(&self, region: &str, sizes: &[u64], state: &str, tags: &Value) -> Vec<String> {
        self.made_snapshots(&json!({"region": region, "sizes": sizes, "state": state, "tags": tags}))
    }

    /// The ids of the snapshots `/_fault/sources` makes as `body` says.
    pub fn made_snapshots(&self, body: &Value) -> Vec<String> {
        let made = self.call("POST", "/_fault/sources", body);
        made["snapshot_ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("an id").to_owned()).collect()
    }

    /// Completed snapshots that account `owner_id` owns (and shares with this one, so they are
    /// visible to it), carrying `tags`: DescribeSnapshots lists them only for that owner, or
    /// for no owner filter at all.
    pub fn snapshots_owned_by(&self, region: &str, sizes: &[u64], owner_id: &str, tags: &Value) -> Vec<String> {
        self.made_snapshots(&json!({"region": region, "sizes": sizes, "tags": tags, "owner_id": owner_id}))
    }

    /// Completed snapshots of one new volume, started `ages_days` ago, carrying `tags`; returns
    /// their ids and the volume's.
    pub fn volume_snapshots(&self, region: &str, size: u64, ages_days: &[f64], tags: &Value) -> (Vec<String>, String) {
        let body = json!({"region": region, "sizes": vec![size; ages_days.len()], "ages_days": ages_days,
                          "one_volume": true, "tags": tags});
        let made = self.call("POST", "/_fault/sources", &body);
        let ids = made["snapshot_ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("an id").to_owned());
        (ids.collect(), made["volume_ids"][0].as_str().expect("a volume").to_owned())
    }

    /// DeleteSnapshot of `snapshot_id` is refused from now on: `how` is `in-use` (an AMI uses
    /// it) or `locked`.
    pub fn refuse_delete(&self, snapshot_id: &str, how: &str) {
        self.call("POST", "/_fault/refuse_delete", &json!({"snapshot_ids": {snapshot_id: how}}));
    }

    /// Removes snapshots from `region` as Data Lifecycle Manager would, whatever their tags.
    pub fn forget(&self, region: &str, snapshot_ids: &[&str]) {
        self.call("POST", "/_fault/forget", &json!({"region": region, "snapshot_ids": snapshot_ids}));
    }

    pub fn foreign_copies(&self, region: &str, count: usize, seconds: f64) {
        self.call("POST", "/_fault/foreign", &json!({"region": region, "count": count, "seconds": seconds}));
    }

    /// Pending snapshots in `region` for `seconds`, carrying `tags`: with this project's
    /// tracking tag, copies another deployment (or invocation) of it started.
    pub fn tagged_foreign_copies(&self, region: &str, count: usize, seconds: f64, tags: &Value) {
        self.call(
            "POST",
            "/_fault/foreign",
            &json!({"region": region, "count": count, "seconds": seconds, "tags": tags}),
        );
    }

    /// CopySnapshot of each source in `denied` (id to message) is answered 403
    /// UnauthorizedOperation from now on, as EC2 answers an SCP's or IAM's explicit deny.
    pub fn deny_copies(&self, denied: &Value) {
        self.configure(json!({"denied_sources": denied}));
    }

    /// The next `calls` EC2 calls (of `actions` only, when given) are throttled, one after the
    /// other: more than the SDK's 8 attempts outlasts its retries.
    pub fn throttle_streak(&self, calls: usize, actions: Option<&[&str]>) {
        self.configure(json!({"throttle_streak": calls, "throttle_actions": actions}));
    }

    pub fn record(&self) -> Record {
        Record(self.call("GET", "/_fault/record", &json!({})))
    }
}

impl Drop for FaultEc2 {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- fault emulator stderr (last lines) ---\n{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// What the emulator saw.
pub struct Record(pub Value);

impl Record {
    pub fn calls(&self, action: &str) -> usize {
        self.0["calls"].as_array().map_or(0, |c| c.iter().filter(|c| c["action"] == action).count())
    }

    pub fn all_calls(&self) -> usize {
        self.0["calls"].as_array().map_or(0, Vec::len)
    }

    pub fn throttled(&self) -> usize {
        self.0["calls"].as_array().map_or(0, |c| c.iter().filter(|c| c["throttled"] == true).count())
    }

    pub fn max_pending(&self, region: &str) -> u64 {
        self.0["max_pending"][region].as_u64().unwrap_or(0)
    }

    pub fn no_slot_answers(&self) -> u64 {
        self.0["no_slot_answers"].as_u64().unwrap_or(0)
    }

    /// CopySnapshot calls of `source` denied (403 UnauthorizedOperation).
    pub fn denied_copies_of(&self, source: &str) -> usize {
        self.0["denied_copies"].as_array().map_or(0, |d| d.iter().filter(|d| d["source_snapshot_id"] == source).count())
    }

    /// Calls the configured throttle streak answered RequestLimitExceeded, and how many of it are left.
    pub fn streak_throttled(&self) -> (u64, u64) {
        (self.0["streak_throttled"].as_u64().unwrap_or(0), self.0["throttle_streak_left"].as_u64().unwrap_or(0))
    }

    /// The DescribeSnapshots calls made in `region`, each with its filters (name to values) and
    /// OwnerIds.
    pub fn describe_calls(&self, region: &str) -> Vec<&Value> {
        let calls = self.0["calls"].as_array().into_iter().flatten();
        calls.filter(|c| c["action"] == "DescribeSnapshots" && c["region"] == region).collect()
    }

    /// Copies of `source` that did not fail and were not deleted.
    pub fn good_copies_of(&self, source: &str) -> usize {
        self.live_copies().filter(|c| c["source_snapshot_id"] == source).count()
    }

    /// Copies of `source` that ended in `error` (the emulator fails them on purpose).
    pub fn error_copies_of(&self, source: &str) -> usize {
        self.copies().filter(|c| c["source_snapshot_id"] == source && !c["fails_with"].is_null()).count()
    }

    fn live_copies(&self) -> impl Iterator<Item = &Value> {
        self.copies().filter(|c| c["fails_with"].is_null() && c["deleted"] != true)
    }

    /// Copies deleted (by this function only: duplicates, and retention's).
    pub fn deleted(&self) -> usize {
        self.copies().filter(|c| c["deleted"] == true).count()
    }

    /// DeleteSnapshot calls the emulator refused (in use, locked).
    pub fn refused_deletes(&self) -> u64 {
        self.0["refused_deletes"].as_u64().unwrap_or(0)
    }

    /// DeleteSnapshot calls on a copy that was still pending.
    pub fn pending_deletes(&self) -> u64 {
        self.0["pending_deletes"].as_u64().unwrap_or(0)
    }

    /// CopySnapshot calls that sent `Encrypted=false`, which the API reference says cannot be set.
    pub fn explicit_encrypted_false(&self) -> u64 {
        self.0["explicit_encrypted_false"].as_u64().unwrap_or(0)
    }

    /// What the emulator found wrong with each CopySnapshot's PresignedUrl (those copies end in
    /// `error`), by source.
    pub fn presigned_url_problems(&self) -> Vec<(String, String)> {
        self.copies()
            .filter_map(|c| {
                let problem = c["presigned_url_problem"].as_str()?;
                Some((c["source_snapshot_id"].as_str().unwrap_or_default().to_owned(), problem.to_owned()))
            })
            .collect()
    }

    /// CopySnapshot calls that made a copy and answered with a 500.
    pub fn lost_answers(&self) -> u64 {
        self.0["lost_answers"].as_u64().unwrap_or(0)
    }

    pub fn copies(&self) -> impl Iterator<Item = &Value> {
        self.0["copies"].as_array().into_iter().flatten()
    }

    /// Sources with more than one good copy left.
    pub fn duplicates(&self) -> usize {
        let mut counts = std::collections::HashMap::new();
        for copy in self.live_copies() {
            *counts.entry(copy["source_snapshot_id"].as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
        }
        counts.values().filter(|n| **n > 1).count()
    }
}
