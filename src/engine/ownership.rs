//! Which of this project's copies belong to a request: one rule for adoption, attempts,
//! duplicate healing and retention alike.
//!
//! A copy belongs to a request when it was made for the same ask (its
//! [`ENCRYPTION_TAG`](crate::store::ENCRYPTION_TAG): `none`, `default`, or a key) *and* it is
//! under the key that ask means. Both halves matter. Tags alone are not enough: an alias says
//! nothing about the key a copy is really under, and EC2 may have ignored the key asked for.
//! Keys alone are not enough either: with EBS encryption by default in the recovery region, a
//! plain request's copy and an `encrypt: true` request's copy are both under the default key,
//! and judged by keys each request would take the other's copies for duplicates and delete them.

use crate::store::{CopyStatus, SnapshotState};

/// Whether `text` is a KMS key ARN (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID`), as DescribeKey
/// answers and EC2 reports a copy's key.
fn is_key_arn(text: &str) -> bool {
    text.starts_with("arn:") && text.split(':').nth(5).is_some_and(|resource| resource.starts_with("key/"))
}

/// Whether two copies of one source were made for the same ask and are under the same key:
/// only such copies are duplicates of each other. Copies tagged differently (a copy from
/// before the tag, a key tag written as an alias) may be claimed by a request and still be
/// another request's too: deleting one would take that request's copy.
pub fn same_ask_and_key(a: &CopyStatus, b: &CopyStatus) -> bool {
    a.requested_encryption == b.requested_encryption && a.encrypted == b.encrypted && a.kms_key_id == b.kms_key_id
}

/// What a request asks for its copies' encryption, with its key resolved (kms:DescribeKey) to
/// the key ARN EC2 reports on a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskedEncryption {
    /// `encrypt: false`: EC2 decides (an encrypted source, or encryption by default, encrypts).
    Plain,
    /// `encrypt: true` without a key: the target region's default EBS key, whichever it is.
    DefaultKey,
    /// `encrypt: true` with `kms_key_id`: `given` as the request wrote it, `arn` what it names.
    Key { given: String, arn: String },
}

/// How a copy found by this project's tracking tags stands towards a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The request's copy: adopted, counted as an attempt when in `error`, judged by its
    /// retention, a duplicate of the request's other copies of the source.
    Ours,
    /// Made for another ask (another request's): never touched, never counted.
    Foreign,
    /// Made for this ask but not under the key it means (EC2 ignored the key, or the alias
    /// was moved): never adopted, counted as a failed attempt, never deleted by this request.
    WrongKey { actual: Option<String> },
}

/// The [`ENCRYPTION_TAG`](crate::store::ENCRYPTION_TAG) values of the two asks without a key.
const PLAIN_TAG: &str = "none";
const DEFAULT_KEY_TAG: &str = "default";

impl AskedEncryption {
    /// The value new copies carry in their encryption tag: for a key, its ARN, so requests
    /// naming one key in different forms (alias, id, ARN) ask alike.
    pub fn tag_value(&self) -> &str {
        match self {
            Self::Plain => PLAIN_TAG,
            Self::DefaultKey => DEFAULT_KEY_TAG,
            Self::Key { arn, .. } => arn,
        }
    }

    /// The key ARN copies must be under, when the ask names one.
    pub fn key_arn(&self) -> Option<&str> {
        match self {
            Self::Key { arn, .. } => Some(arn),
            Self::Plain | Self::DefaultKey => None,
        }
    }

    /// The ask as a person reads it, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Plain => "unencrypted (or as EC2 encrypts by default)".to_owned(),
            Self::DefaultKey => "encrypted under the region's default EBS key".to_owned(),
            Self::Key { given, arn } if given == arn => format!("encrypted under {arn}"),
            Self::Key { given, arn } => format!("encrypted under {given} ({arn})"),
        }
    }

    /// Whether `copy` is a copy made for this ask, by its tag; copies made before the tag
    /// existed by what EC2 reports of them.
    ///
    /// A key tag is the key's ARN on copies made since keys are resolved. Before, it was the
    /// key as its request wrote it (an alias, a key id): such a tag is read by the key the copy
    /// is really under, never by comparing spellings, so two requests naming one key
    /// differently (`alias/dr`, its ARN) claim the same copies, and neither takes the other's
    /// for a duplicate to delete, forever.
    fn asked_alike(&self, copy: &CopyStatus) -> bool {
        let under_arn = |arn: &str| copy.kms_key_id.as_deref() == Some(arn);
        match (&copy.requested_encryption, self) {
            (Some(tag), Self::Plain) => tag == PLAIN_TAG,
            (Some(tag), Self::DefaultKey) => tag == DEFAULT_KEY_TAG,
            (Some(tag), _) if tag == PLAIN_TAG || tag == DEFAULT_KEY_TAG => false,
            (Some(tag), Self::Key { arn, .. }) if is_key_arn(tag) => tag == arn,
            // An older tag (alias or key id): by the key; an `error` copy has none to go by.
            (Some(tag), Self::Key { given, arn }) => {
                under_arn(arn) || (copy.state == SnapshotState::Error && tag == given)
            }
            (None, Self::Plain) => true,
            (None, Self::DefaultKey) => copy.encrypted,
            (None, Self::Key { arn, .. }) => under_arn(arn),
        }
    }

    /// Whether `copy` is under the key this ask means. A copy in `error` never became one, so
    /// only its tag says whose attempt it was. A pending copy whose key EC2 does not report
    /// (yet) is undecided, so taken as under it: the poll that sees it completed decides.
    fn under_the_asked_key(&self, copy: &CopyStatus) -> bool {
        match self {
            Self::Plain => true,
            Self::DefaultKey => copy.encrypted,
            Self::Key { arn, .. } => match copy.kms_key_id.as_deref() {
                Some(actual) => copy.encrypted && actual == arn,
                None => copy.state == SnapshotState::Pending,
            },
        }
    }

    /// How `copy` stands towards a request asking this.
    pub fn claim(&self, copy: &CopyStatus) -> Claim {
        if !self.asked_alike(copy) {
            return Claim::Foreign;
        }
        if copy.state == SnapshotState::Error || self.under_the_asked_key(copy) {
            Claim::Ours
        } else {
            Claim::WrongKey { actual: copy.kms_key_id.clone() }
        }
    }

    /// Why a copy made for this ask does not serve it.
    pub fn wrong_key_reason(&self, copy: &CopyStatus, actual: Option<&str>) -> String {
        let asked = self.key_arn().unwrap_or("the region's default EBS key");
        match actual {
            Some(actual) => format!("copy {} is under key {actual}, not the asked {asked}", copy.id),
            None => format!("copy {} is not encrypted, though {asked} was asked for", copy.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SnapshotId;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const EBS_DEFAULT: &str = "arn:aws:kms:eu-west-1:111122223333:key/ffffffff-12ab-34cd-56ef-1234567890ab";

    fn copy(tag: Option<&str>, key: Option<&str>, state: SnapshotState) -> CopyStatus {
        CopyStatus {
            id: SnapshotId::parse("snap-0123456789abcdef0").expect("an id"),
            source_id: SnapshotId::parse("snap-00000000000000001").expect("an id"),
            state,
            progress: None,
            encrypted: key.is_some(),
            kms_key_id: key.map(str::to_owned),
            state_message: None,
            start_time: None,
            requested_encryption: tag.map(str::to_owned),
            source_volume_id: None,
            source_start_time: None,
            size_gib: 8,
        }
    }

    fn keyed() -> AskedEncryption {
        AskedEncryption::Key { given: "alias/dr".to_owned(), arn: ARN.to_owned() }
    }

    #[test]
    fn plain_and_default_key_copies_under_encryption_by_default_are_not_each_others() {
        // Encryption by default: both requests' copies are under the region's default key.
        let plain = copy(Some("none"), Some(EBS_DEFAULT), SnapshotState::Completed);
        let default = copy(Some("default"), Some(EBS_DEFAULT), SnapshotState::Completed);
        assert_eq!(AskedEncryption::Plain.claim(&plain), Claim::Ours);
        assert_eq!(AskedEncryption::Plain.claim(&default), Claim::Foreign);
        assert_eq!(AskedEncryption::DefaultKey.claim(&default), Claim::Ours);
        assert_eq!(AskedEncryption::DefaultKey.claim(&plain), Claim::Foreign);
    }

    #[test]
    fn an_alias_matches_only_the_key_it_names() {
        let under_ebs = copy(Some(ARN), Some(EBS_DEFAULT), SnapshotState::Completed);
        assert_eq!(keyed().claim(&under_ebs), Claim::WrongKey { actual: Some(EBS_DEFAULT.to_owned()) });
        let under_key = copy(Some("alias/dr"), Some(ARN), SnapshotState::Pending);
        assert_eq!(keyed().claim(&under_key), Claim::Ours);
        let tagged_by_arn = copy(Some(ARN), Some(ARN), SnapshotState::Completed);
        assert_eq!(keyed().claim(&tagged_by_arn), Claim::Ours);
        let other_request = copy(Some("default"), Some(ARN), SnapshotState::Completed);
        assert_eq!(keyed().claim(&other_request), Claim::Foreign);
    }

    #[test]
    fn a_key_tag_written_as_an_alias_is_read_by_the_key_the_copy_is_under() {
        // Tagged before keys were resolved: both spellings of the key claim it, alike.
        let old = copy(Some("alias/dr"), Some(ARN), SnapshotState::Completed);
        let by_arn = AskedEncryption::Key { given: ARN.to_owned(), arn: ARN.to_owned() };
        assert_eq!(keyed().claim(&old), Claim::Ours);
        assert_eq!(by_arn.claim(&old), Claim::Ours);
        // A copy tagged with another key's ARN is another request's, whatever key it is under.
        let other_arn = copy(Some(EBS_DEFAULT), Some(ARN), SnapshotState::Completed);
        assert_eq!(keyed().claim(&other_arn), Claim::Foreign);
        // An old alias tag under another key is not the request's copy.
        let moved = copy(Some("alias/dr"), Some(EBS_DEFAULT), SnapshotState::Completed);
        assert_eq!(by_arn.claim(&moved), Claim::Foreign);
    }

    #[test]
    fn a_pending_copy_whose_key_is_not_reported_yet_is_undecided_until_it_completes() {
        let pending = copy(Some(ARN), None, SnapshotState::Pending);
        let pending = CopyStatus { encrypted: true, ..pending };
        assert_eq!(keyed().claim(&pending), Claim::Ours);
        let completed = CopyStatus { state: SnapshotState::Completed, ..pending };
        assert_eq!(keyed().claim(&completed), Claim::WrongKey { actual: None });
    }

    #[test]
    fn only_copies_of_one_ask_under_one_key_are_duplicates() {
        let tagged = copy(Some("none"), Some(EBS_DEFAULT), SnapshotState::Completed);
        let untagged = copy(None, Some(EBS_DEFAULT), SnapshotState::Completed);
        assert!(same_ask_and_key(&tagged, &tagged.clone()));
        assert!(!same_ask_and_key(&tagged, &untagged));
        let under_dr = copy(Some("none"), Some(ARN), SnapshotState::Completed);
        assert!(!same_ask_and_key(&tagged, &under_dr));
    }

    #[test]
    fn an_error_copy_is_an_attempt_of_the_ask_its_tag_names() {
        let failed = copy(Some("alias/dr"), None, SnapshotState::Error);
        assert_eq!(keyed().claim(&failed), Claim::Ours);
        assert_eq!(AskedEncryption::Plain.claim(&failed), Claim::Foreign);
    }

    #[test]
    fn copies_from_before_the_tag_are_judged_by_what_ec2_reports() {
        let legacy = copy(None, Some(ARN), SnapshotState::Completed);
        assert_eq!(keyed().claim(&legacy), Claim::Ours);
        assert_eq!(AskedEncryption::Plain.claim(&legacy), Claim::Ours);
        assert_eq!(AskedEncryption::DefaultKey.claim(&legacy), Claim::Ours);
        let legacy_plain = copy(None, None, SnapshotState::Completed);
        assert_eq!(keyed().claim(&legacy_plain), Claim::Foreign);
        assert_eq!(AskedEncryption::DefaultKey.claim(&legacy_plain), Claim::Foreign);
    }

    #[test]
    fn a_default_key_copy_that_came_out_unencrypted_is_wrong() {
        let unencrypted = copy(Some("default"), None, SnapshotState::Completed);
        assert_eq!(AskedEncryption::DefaultKey.claim(&unencrypted), Claim::WrongKey { actual: None });
    }
}
