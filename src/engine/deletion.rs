//! A copy retention deletes ([`Deletion`]) and what became of it ([`DeletionOutcome`]): what
//! `judge` decides, `prune` carries out and `finish` reports.

use crate::ids::SnapshotId;
use crate::store::SnapshotState;

/// How a source without a volume names its group of one in [`volume_group`].
pub(super) const SOURCE_GROUP_PREFIX: &str = "source:";

/// A copy retention deletes.
#[derive(Debug)]
pub(super) struct Deletion {
    pub(super) copy: SnapshotId,
    pub(super) source: SnapshotId,
    pub(super) size_gib: u64,
    /// As the look saw it: a `pending` copy is never deleted (a later run does, once completed).
    pub(super) state: SnapshotState,
    pub(super) reason: String,
    /// The copy's volume (see [`volume_group`]): the newest completed copy of each stays.
    pub(super) group: String,
    /// DescribeVolumes said the source's volume no longer exists: the orphan rule may take
    /// the volume's last copy.
    pub(super) volume_gone: bool,
    pub(super) outcome: DeletionOutcome,
}

/// The group a source's copies are counted in to keep each volume's newest: its volume, or,
/// without one (EC2's placeholder), the source alone.
pub(super) fn volume_group(volume: Option<&str>, source: &SnapshotId) -> String {
    volume.map_or_else(|| format!("{SOURCE_GROUP_PREFIX}{source}"), str::to_owned)
}

#[derive(Debug, PartialEq)]
pub(super) enum DeletionOutcome {
    Due,
    Deleted,
    /// InvalidSnapshot.NotFound: gone before this run deleted it.
    AlreadyGone,
    /// A registered AMI uses it (DescribeImages): never deleted; the AMI's id.
    InUse(String),
    /// EC2 refused (locked, in use, …), with its answer.
    Refused(String),
    /// AccessDenied / UnauthorizedOperation: the role may not delete it (CopiesNotDeleted).
    Denied(String),
    /// No definite answer (timeout, 5xx): the next run sees whether it went.
    Unsure,
}
