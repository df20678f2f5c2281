//! Copies into another account: the source is shared with that account just before its copy
//! starts (a source under an AWS managed key cannot be, and fails in that target with what to
//! do), and the shares this function made are removed once every target of that account has
//! a completed copy. May change: the entries' stages (a source that cannot be shared fails),
//! through the state's methods; the sources' `createVolumePermission` and their
//! `copy-snapshots:shared-with:ACCOUNT` tag.
//!
//! Whose share it is lives in EC2, on the source: before sharing, this function tags it
//! [`SHARED_WITH_TAG_PREFIX`]`ACCOUNT`, and it removes the tag with the share. So a retried
//! start, or a later invocation, still knows the share is this function's; a share without the
//! tag (someone else's) is never removed, whatever happens to the copies.

use std::collections::{BTreeMap, HashMap, HashSet};

use tracing::{debug, warn};

use crate::contract::request::CopyRequest;
use crate::contract::response::plural;
use crate::engine::timeline::Timeline;
use crate::ids::{Place, SnapshotId};
use crate::store::{SHARED_WITH_TAG_PREFIX, SnapshotState, SnapshotStore, StoreError, Tag};

use super::state::Run;

/// The KMS permissions the target account needs on the source's key to copy a snapshot
/// shared with it, as the EBS guide lists them.
pub(super) const TARGET_ACCOUNT_KEY_ACTIONS: &str = "kms:DescribeKey, kms:CreateGrant, kms:GenerateDataKey, kms:GenerateDataKeyWithoutPlaintext, kms:ReEncrypt*, \
     kms:Decrypt";

/// What sharing a source for its copy came to.
pub(super) enum Sharing {
    /// Shared: by this call, or before it (by this function or someone else).
    Shared,
    /// The source cannot be copied into that account: fail it there, for this reason.
    Impossible(String),
    /// Throttled or no definite answer: the source waits for a later round.
    Later(StoreError),
}

impl<S: SnapshotStore> Run<'_, S> {
    /// Shares entry `i`'s source with this target's account, if the target is in another
    /// account (`None`: it is not, nothing to share).
    pub(super) async fn share_for_copy(&mut self, i: usize) -> Option<Sharing> {
        let account = self.target.place.account()?.to_owned();
        let region = &self.request.source_region;
        let (source, encrypted, key) = {
            let source = &self.entries[i].source;
            (source.id.clone(), source.encrypted, source.kms_key_id.clone())
        };
        if encrypted
            && let Some(key) = key
            && let Some(reason) = self.unshareable_key(&key).await
        {
            return Some(Sharing::Impossible(reason));
        }
        let shared_before = match self.timeline.call(self.store.shared_with(region, &source)).await {
            Ok(accounts) => accounts.contains(&account),
            Err(error) => return Some(self.sharing_error(error, &source, &account)),
        };
        if shared_before {
            debug!(%source, %account, "source already shared with the target account");
            return Some(Sharing::Shared);
        }
        // The record first: a share this function makes is never left without it.
        let record = Tag::new(shared_with_tag(&account), "while-copying");
        if let Err(error) = self.timeline.call(self.store.tag_source(region, &source, &record)).await {
            return Some(self.sharing_error(error, &source, &account));
        }
        match self.timeline.call(self.store.share(region, &source, &account)).await {
            Ok(()) => {
                debug!(%source, %account, "source shared with the target account for its copy");
                Some(Sharing::Shared)
            }
            Err(error) => {
                let sharing = self.sharing_error(error, &source, &account);
                if matches!(sharing, Sharing::Impossible(_)) {
                    // No share was made: no record of one (a later share by someone else must
                    // not look like this function's).
                    let untagged = self.timeline.call(self.store.untag_source(region, &source, &record.key)).await;
                    if let Err(error) = untagged {
                        warn!(%error, %source, "could not remove the share record of a source that was not shared");
                    }
                }
                Some(sharing)
            }
        }
    }

    fn sharing_error(&self, error: StoreError, source: &SnapshotId, account: &str) -> Sharing {
        match error {
            StoreError::Throttled(_) | StoreError::Unknown(_) => Sharing::Later(error),
            other => Sharing::Impossible(format!(
                "could not share {source} with account {account} for its copy there \
                 (ec2:DescribeSnapshotAttribute, ec2:CreateTags of its copy-snapshots:shared-with tag and \
                 ec2:ModifySnapshotAttribute on the source): {other}"
            )),
        }
    }

    /// Why a source under `key` cannot be shared, if it cannot: the key is AWS managed (the
    /// default `aws/ebs`), whose policy no other account can be let into. Asked once per key
    /// and run; a key that cannot be described is let through (EC2 then answers for it).
    async fn unshareable_key(&mut self, key: &str) -> Option<String> {
        if !self.source_keys.contains_key(key) {
            let here = Place::here(self.request.source_region.clone());
            let managed = match self.timeline.call_retrying(|| self.store.describe_key(&here, key)).await {
                Ok(found) => Some(found.aws_managed),
                Err(error) => {
                    warn!(%error, key, "could not describe the source's key; sharing it all the same");
                    None
                }
            };
            self.source_keys.insert(key.to_owned(), managed);
        }
        (self.source_keys.get(key).copied().flatten() == Some(true)).then(|| {
            let account = self.target.place.account().unwrap_or("the target account");
            format!(
                "encrypted under the AWS managed key {key} (aws/ebs), which cannot be shared with another account, so \
                 account {account} cannot copy it; re-encrypt the source under a customer managed key in {} whose key \
                 policy lets account {account} use it ({TARGET_ACCOUNT_KEY_ACTIONS}), or take the volume's snapshots \
                 under such a key",
                self.request.source_region
            )
        })
    }
}

/// The tag on a source that records this function's share with `account`.
pub(super) fn shared_with_tag(account: &str) -> String {
    format!("{SHARED_WITH_TAG_PREFIX}{account}")
}

/// Removes the shares this function made whose copies are done: for each other account among
/// the request's targets, the sources shared with it (one DescribeSnapshots by
/// RestorableByUserIds) that carry this function's record of the share and whose copies are
/// completed in every target of that account, none still pending there; then the record.
/// Sources of earlier requests count too, so a copy that completed after its invocation ended
/// is unshared by the next. Nothing here fails the request: a share left is reported and swept
/// next time. Returns why shares were left (account, why), for the notes of that account's
/// targets.
pub(super) async fn sweep_shares<S: SnapshotStore>(
    store: &S,
    request: &CopyRequest,
    timeline: &Timeline,
) -> Vec<(String, String)> {
    let mut by_account: BTreeMap<&str, Vec<&Place>> = BTreeMap::new();
    for target in &request.targets {
        if let Some(account) = target.place.account() {
            by_account.entry(account).or_default().push(&target.place);
        }
    }
    let mut problems: Vec<(String, String)> = Vec::new();
    let region = &request.source_region;
    for (account, places) in by_account {
        if !timeline.may_call() {
            problems.push((
                account.to_owned(),
                format!("no time was left to remove the shares with account {account}; the next run does"),
            ));
            break;
        }
        let record = shared_with_tag(account);
        let shared: Vec<SnapshotId> = match timeline.call(store.sources_shared_with(region, account)).await {
            // Only the shares this function made.
            Ok(shared) => shared.into_iter().filter(|s| s.tag(&record).is_some()).map(|s| s.id).collect(),
            Err(error) => {
                problems.push((
                    account.to_owned(),
                    format!("could not list the sources shared with account {account}: {error}"),
                ));
                continue;
            }
        };
        if shared.is_empty() {
            continue;
        }
        let mut done: HashMap<SnapshotId, (usize, bool)> = HashMap::new();
        let mut looked_everywhere = true;
        for place in &places {
            match timeline.call(store.find_copies(place, region, &shared)).await {
                Ok(copies) => {
                    let mut completed_here = HashSet::new();
                    for copy in copies {
                        let (_, pending) = done.entry(copy.source_id.clone()).or_default();
                        *pending |= copy.state == SnapshotState::Pending;
                        if copy.state == SnapshotState::Completed {
                            completed_here.insert(copy.source_id);
                        }
                    }
                    for source in completed_here {
                        done.entry(source).or_default().0 += 1;
                    }
                }
                Err(error) => {
                    problems.push((account.to_owned(), format!("could not look for the copies in {place}: {error}")));
                    looked_everywhere = false;
                }
            }
        }
        // A target not looked at may still need a share: keep them all.
        if !looked_everywhere {
            continue;
        }
        let mut removed = 0;
        for source in shared {
            let Some(&(completed_in, pending)) = done.get(&source) else { continue };
            if pending || completed_in < places.len() {
                continue;
            }
            if let Err(error) = timeline.call(store.unshare(region, &source, account)).await {
                problems
                    .push((account.to_owned(), format!("could not unshare {source} from account {account}: {error}")));
                continue;
            }
            removed += 1;
            // The record goes with the share; one left behind is harmless until someone shares
            // the source by hand again.
            if let Err(error) = timeline.call(store.untag_source(region, &source, &record)).await {
                problems.push((
                    account.to_owned(),
                    format!("unshared {source}, but could not remove its tag {record}: {error}"),
                ));
            }
        }
        debug!(account, "{} removed", plural(removed, "share"));
    }
    if !problems.is_empty() {
        let whys: Vec<&str> = problems.iter().map(|(_, why)| why.as_str()).collect();
        warn!(problems = %whys.join("; "), "shares left for the next run");
    }
    problems
}
