//! What a run reports while it works, in domain types, to whoever runs the engine: the Lambda
//! logs each event ([`LogObserver`]), the command line draws them. Also the signal that asks a
//! run to stop waiting (Ctrl-C on the command line). No terminal code here.

use tokio::sync::watch;
use tracing::{info, warn};

use crate::ids::SnapshotId;

/// Where a source stands after the look, or would stand in a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceStatus {
    /// A copy an earlier run made serves it (`state` is EC2's: `pending` or `completed`).
    HasCopy { copy: SnapshotId, state: String, progress: Option<u8> },
    /// No copy that serves it: this run copies it. `note` says why an existing copy does not
    /// count (encrypted otherwise), or how many attempts ended in error before.
    ToCopy { note: Option<String> },
    /// Not ready yet (`pending`); a later run copies it.
    NotReady { reason: String },
    /// Never copied by this request (out of retention, archived, in error, a copy this function
    /// made).
    Skipped { reason: String },
    /// Failed: its attempts are used up.
    Failed { reason: String },
}

/// One source as the look found it.
#[derive(Debug, Clone, PartialEq)]
pub struct LookedSource {
    pub source: SnapshotId,
    pub size_gib: u64,
    pub status: SourceStatus,
}

/// Something a run did or saw.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// The look is done: every source the request selects, and where it stands.
    Looked {
        sources: Vec<LookedSource>,
    },
    CopyStarted {
        source: SnapshotId,
        copy: SnapshotId,
        size_gib: u64,
    },
    /// A poll saw a pending copy's progress change.
    CopyProgress {
        source: SnapshotId,
        copy: SnapshotId,
        percent: u8,
    },
    CopyCompleted {
        source: SnapshotId,
        copy: SnapshotId,
    },
    /// A copy ended in `error`: one attempt; the source may be tried again.
    CopyErrored {
        source: SnapshotId,
        copy: SnapshotId,
        message: String,
    },
    /// A CopySnapshot had no definite answer; the copy is looked for before any new attempt.
    StartUnsure {
        source: SnapshotId,
        message: String,
    },
    /// A copy being watched vanished before completing; the source is looked for again.
    CopyVanished {
        source: SnapshotId,
        copy: SnapshotId,
    },
    /// The source will not be copied by this run: its attempts are used up, or EC2 refused.
    SourceFailed {
        source: SnapshotId,
        reason: String,
    },
    /// A second live copy of a source was deleted (duplicates heal).
    DuplicateRemoved {
        source: SnapshotId,
        copy: SnapshotId,
    },
    /// Retention deleted a copy (its source is out of retention, or gone past the orphan grace).
    CopyDeleted {
        source: SnapshotId,
        copy: SnapshotId,
        reason: String,
    },
    /// EC2 refused to delete a copy retention deletes (in use by an AMI, locked, …); it stays,
    /// and the next run tries again.
    DeleteRefused {
        source: SnapshotId,
        copy: SnapshotId,
        error: String,
    },
    /// The run stopped waiting because it was asked to ([`StopSignal`]).
    Stopped,
}

/// Receives a run's events as they happen. Must be cheap: the engine waits for it.
pub trait Observer: Send + Sync {
    fn observe(&self, event: RunEvent);
}

/// The Lambda's observer: each event is a log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogObserver;

impl Observer for LogObserver {
    fn observe(&self, event: RunEvent) {
        match event {
            RunEvent::Looked { sources } => {
                let count = |f: fn(&SourceStatus) -> bool| sources.iter().filter(|s| f(&s.status)).count();
                info!(
                    sources = sources.len(),
                    reused = count(|s| matches!(s, SourceStatus::HasCopy { .. })),
                    to_copy = count(|s| matches!(s, SourceStatus::ToCopy { .. })),
                    not_ready = count(|s| matches!(s, SourceStatus::NotReady { .. })),
                    skipped = count(|s| matches!(s, SourceStatus::Skipped { .. })),
                    failed_before = count(|s| matches!(s, SourceStatus::Failed { .. })),
                    "looked"
                );
            }
            RunEvent::CopyStarted { source, copy, size_gib } => info!(%source, %copy, size_gib, "copy started"),
            RunEvent::CopyProgress { .. } => {}
            RunEvent::CopyCompleted { source, copy } => info!(%source, %copy, "copy completed"),
            RunEvent::CopyErrored { source, copy, message } => {
                warn!(%source, %copy, %message, "copy ended in error");
            }
            RunEvent::StartUnsure { source, message } => {
                warn!(%source, %message, "copy start had no definite answer; will look for the copy");
            }
            RunEvent::CopyVanished { source, copy } => {
                warn!(%source, %copy, "copy vanished before completing; looking for another");
            }
            RunEvent::SourceFailed { source, reason } => warn!(%source, %reason, "source failed"),
            RunEvent::DuplicateRemoved { source, copy } => info!(%source, %copy, "duplicate copy removed"),
            RunEvent::CopyDeleted { source, copy, reason } => info!(%source, %copy, %reason, "copy deleted"),
            RunEvent::DeleteRefused { source, copy, error } => {
                warn!(%source, %copy, %error, "EC2 refused to delete a copy; it stays, the next run tries again");
            }
            RunEvent::Stopped => info!("asked to stop; copies already started go on in EC2"),
        }
    }
}

/// Asks a run to stop waiting: it makes no new call after the one in flight, and answers
/// with what it got to (copies already started go on in EC2). Made with [`stop_signal`].
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

/// Sets its [`StopSignal`].
#[derive(Debug)]
pub struct StopHandle(watch::Sender<bool>);

/// A stop signal and the handle that sets it.
pub fn stop_signal() -> (StopHandle, StopSignal) {
    let (sender, receiver) = watch::channel(false);
    (StopHandle(sender), StopSignal(receiver))
}

impl StopHandle {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl StopSignal {
    /// A signal that is never set.
    pub fn never() -> Self {
        // The receiver keeps the last value after its sender is gone: `false` for good.
        stop_signal().1
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the signal is set (never, if its handle is dropped unset).
    pub async fn wait(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
