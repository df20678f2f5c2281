//! An SQS standard queue with Lambda's event source mapping in front of the function, on tokio's
//! clock, for the tests and the benchmark (feature `simulated`): messages arrive when sent,
//! a receive hides a message for the visibility timeout and counts the receive, batches of up
//! to `batch_size` go to at most `max_concurrency` invocations at once, the records a batch
//! answers as failures come back after their visibility timeout, and a message received
//! `max_receive_count` times that fails again goes to the dead-letter queue. Each batch runs
//! [`handle_batch`], the function's own code, with the function's timeout as its deadline.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::contract::request::Settings;
use crate::entry::batch::handle_batch;
use crate::store::SnapshotStore;

/// The queue's and the event source mapping's settings (the template's values by default).
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub visibility_timeout: Duration,
    pub max_receive_count: u32,
    pub batch_size: usize,
    /// How long the poller gathers messages before it invokes with fewer than `batch_size`.
    pub batching_window: Duration,
    pub max_concurrency: usize,
    /// The queue function's timeout: each batch's deadline.
    pub function_timeout: Duration,
}

impl QueueSettings {
    /// The template's CopyQueue and CopyQueueFunction.
    pub const TEMPLATE: Self = Self {
        visibility_timeout: Duration::from_secs(600),
        max_receive_count: 288,
        batch_size: 100,
        batching_window: Duration::from_secs(20),
        max_concurrency: 2,
        function_timeout: Duration::from_secs(60),
    };
}

#[derive(Debug, Clone)]
struct Message {
    id: String,
    body: String,
    visible_at: Instant,
    receives: u32,
}

/// What the queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub invocations: usize,
    /// The most batches that were in flight at once.
    pub max_in_flight: usize,
    pub records_delivered: usize,
    pub dead_lettered: Vec<String>,
    /// Messages acknowledged (done or dropped).
    pub deleted: usize,
}

/// The queue, its messages and its dead-letter queue.
#[derive(Debug)]
pub struct SimulatedQueue {
    settings: QueueSettings,
    messages: Vec<Message>,
    next_id: u64,
    pub stats: QueueStats,
}

impl SimulatedQueue {
    pub fn new(settings: QueueSettings) -> Self {
        Self { settings, messages: Vec::new(), next_id: 0, stats: QueueStats::default() }
    }

    /// Sends one message now (as EventBridge does for each matching event).
    pub fn send(&mut self, body: &Value) {
        self.next_id += 1;
        let id = format!("message-{:06}", self.next_id);
        self.messages.push(Message { id, body: body.to_string(), visible_at: Instant::now(), receives: 0 });
    }

    /// Messages neither acknowledged nor dead-lettered.
    pub fn in_queue(&self) -> usize {
        self.messages.len()
    }

    /// Lets the event source mapping work until `until` or until the queue is empty: batches
    /// of visible messages, up to `max_concurrency` in flight together, each handled by the
    /// function's code on `store`.
    pub async fn work_until<S: SnapshotStore>(&mut self, store: &S, settings: &Settings, until: Instant) {
        while !self.messages.is_empty() && Instant::now() < until {
            let now = Instant::now();
            let mut batches = Vec::new();
            for _ in 0..self.settings.max_concurrency {
                let batch = self.receive(now);
                if batch.is_empty() {
                    break;
                }
                batches.push(batch);
            }
            if batches.is_empty() {
                let next = self.messages.iter().map(|m| m.visible_at).min().unwrap_or(until);
                // The poller gathers for its batching window once something is visible.
                tokio::time::sleep_until(next.min(until)).await;
                continue;
            }
            self.stats.max_in_flight = self.stats.max_in_flight.max(batches.len());
            let deadline = now + self.settings.function_timeout;
            let handled = batches.iter().map(|batch| {
                let payload = sqs_event(batch);
                async move { handle_batch(payload, settings, store, Some(deadline)).await }
            });
            let outcomes = futures::future::join_all(handled).await;
            for (batch, outcome) in batches.iter().zip(outcomes) {
                self.stats.invocations += 1;
                let failed: Vec<String> = outcome.failed_message_ids().into_iter().map(str::to_owned).collect();
                for message in batch {
                    if failed.contains(&message.id) {
                        if message.receives >= self.settings.max_receive_count {
                            self.stats.dead_lettered.push(message.id.clone());
                            self.messages.retain(|m| m.id != message.id);
                        }
                    } else {
                        self.stats.deleted += 1;
                        self.messages.retain(|m| m.id != message.id);
                    }
                }
            }
            // The next receive comes after the batching window, as the poller's does.
            tokio::time::sleep(self.settings.batching_window).await;
        }
    }

    /// Receives up to a batch of visible messages: hidden for the visibility timeout, counted.
    fn receive(&mut self, now: Instant) -> Vec<Message> {
        let hide_until = now + self.settings.visibility_timeout;
        let mut batch = Vec::new();
        for message in self.messages.iter_mut().filter(|m| m.visible_at <= now).take(self.settings.batch_size) {
            message.visible_at = hide_until;
            message.receives += 1;
            batch.push(message.clone());
        }
        self.stats.records_delivered += batch.len();
        batch
    }
}

/// The event Lambda's SQS poller hands the function for `batch`.
fn sqs_event(batch: &[Message]) -> Value {
    let records: Vec<Value> = batch
        .iter()
        .map(|m| {
            json!({
                "messageId": m.id,
                "receiptHandle": format!("handle-{}", m.id),
                "body": m.body,
                "attributes": {"ApproximateReceiveCount": m.receives.to_string()},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:111122223333:copy-snapshots-queue",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}
