//! How a store error that ends the run becomes the invocation's error.

use crate::contract::error::CopySnapshotsError;
use crate::contract::response::plural;
use crate::store::StoreError;

/// Maps a store error that ends the invocation to its errorType, saying how far it got.
pub(super) fn fatal(error: StoreError, doing: &str, copies_started: usize) -> CopySnapshotsError {
    let so_far = match copies_started {
        0 => "no copy was started".to_owned(),
        n => format!("{} started before this; calling again with the same request continues", plural(n, "copy")),
    };
    match error {
        StoreError::AccessDenied(message) => {
            CopySnapshotsError::AccessDenied(format!("access denied {doing}: {message}; {so_far}"))
        }
        StoreError::Throttled(message) => {
            CopySnapshotsError::Throttled(format!("EC2 throttled {doing} beyond retries: {message}; {so_far}"))
        }
        StoreError::NotFound(message) => CopySnapshotsError::SourceNotFound(format!("{doing}: {message}; {so_far}")),
        StoreError::NotReady(message) => CopySnapshotsError::SourceNotReady(format!("{doing}: {message}; {so_far}")),
        other => CopySnapshotsError::Ec2Error(format!("EC2 failed {doing}: {other}; {so_far}")),
    }
}
