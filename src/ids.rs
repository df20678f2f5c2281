//! Identifiers this function accepts from users and events — snapshot ids, region names, KMS
//! key references, snapshot ARNs — each parsed once into a type that can only hold a valid
//! value, with an error text that says what would have been valid.

use std::fmt;

use serde::Serialize;

/// What a valid snapshot id looks like, for error messages.
pub const SNAPSHOT_ID_FORMAT: &str = "`snap-` followed by 8 or 17 lowercase hex digits";
/// What a valid region name looks like, for error messages.
pub const REGION_FORMAT: &str = "a region name such as `us-east-1` or `eu-west-2`";
/// What a valid KMS key reference looks like, for error messages.
pub const KMS_KEY_FORMAT: &str = "a key id (`1234abcd-12ab-34cd-56ef-1234567890ab` or `mrk-…`), \
     a key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`), an alias name (`alias/NAME`) \
     or an alias ARN (`arn:aws:kms:REGION:ACCOUNT:alias/NAME`)";

/// An EBS snapshot id, `snap-` + 8 or 17 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SnapshotId(String);

impl SnapshotId {
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid = text.strip_prefix("snap-").is_some_and(|hex| {
            (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("`{}` is not a snapshot id; valid: {SNAPSHOT_ID_FORMAT}", shorten(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An AWS region name such as `us-east-1`, `us-gov-west-1` or `cn-north-1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Region(String);

impl Region {
    pub fn parse(text: &str) -> Result<Self, String> {
        // Shape, not a list: new regions appear every year and a list would go stale.
        // area-[qualifier-]direction-number, e.g. ap-southeast-2, us-gov-west-1, us-isob-east-1.
        let parts: Vec<&str> = text.split('-').collect();
        let letters = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
        let valid = (3..=4).contains(&parts.len())
            && parts[0].len() == 2
            && letters(parts[0])
            && parts[1..parts.len() - 1].iter().all(|p| letters(p))
            && parts.last().is_some_and(|n| (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()));
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("`{}` is not a region name; valid: {REGION_FORMAT}", shorten(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference to a KMS key in one of the four forms CopySnapshot accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsKeyRef {
    /// A key id: a UUID, or `mrk-` + 32 hex digits for a multi-Region key.
    KeyId(String),
    /// `arn:PARTITION:kms:REGION:ACCOUNT:key/KEY-ID`.
    KeyArn { region: Region, key_id: String, arn: String },
    /// `alias/NAME`.
    AliasName(String),
    /// `arn:PARTITION:kms:REGION:ACCOUNT:alias/NAME`.
    AliasArn { region: Region, arn: String },
}

impl KmsKeyRef {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("`{}` is not a KMS key reference; valid: {KMS_KEY_FORMAT}", shorten(text));
        if let Some(rest) = text.strip_prefix("arn:") {
            // partition:kms:region:account:resource
            let fields: Vec<&str> = rest.splitn(5, ':').collect();
            let [partition, service, region, account, resource] = fields[..] else {
                return Err(invalid());
            };
            if !partition.starts_with("aws")
                || service != "kms"
                || account.len() != 12
                || !account.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid());
            }
            let region = Region::parse(region).map_err(|_| invalid())?;
            if let Some(key_id) = resource.strip_prefix("key/") {
                if is_key_id(key_id) {
                    return Ok(Self::KeyArn { region, key_id: key_id.to_owned(), arn: text.to_owned() });
                }
            } else if let Some(alias) = resource.strip_prefix("alias/")
                && is_alias_name(alias)
            {
                return Ok(Self::AliasArn { region, arn: text.to_owned() });
            }
            return Err(invalid());
        }
        if let Some(alias) = text.strip_prefix("alias/") {
            return if is_alias_name(alias) { Ok(Self::AliasName(text.to_owned())) } else { Err(invalid()) };
        }
        if is_key_id(text) { Ok(Self::KeyId(text.to_owned())) } else { Err(invalid()) }
    }

    /// The text to hand to EC2, exactly as the user wrote it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::KeyId(id) | Self::AliasName(id) => id,
            Self::KeyArn { arn, .. } | Self::AliasArn { arn, .. } => arn,
        }
    }

    /// The region an ARN names; ids and alias names resolve in the target region.
    pub fn region(&self) -> Option<&Region> {
        match self {
            Self::KeyArn { region, .. } | Self::AliasArn { region, .. } => Some(region),
            Self::KeyId(_) | Self::AliasName(_) => None,
        }
    }

    /// The account an ARN names the key in (`None` for a key id or an alias name, which the
    /// caller's account resolves).
    pub fn account(&self) -> Option<&str> {
        match self {
            Self::KeyArn { arn, .. } | Self::AliasArn { arn, .. } => arn.split(':').nth(4),
            Self::KeyId(_) | Self::AliasName(_) => None,
        }
    }

    /// Whether a copy encrypted with `copy_key` (EC2 reports a key ARN) used this key. Aliases
    /// cannot be resolved without a KMS call, so for them any key counts: the copy is
    /// encrypted, which is what the request can check.
    pub fn matches(&self, copy_key: Option<&str>) -> bool {
        let copy_key_id = copy_key.map(|k| k.rsplit_once("key/").map_or(k, |(_, id)| id));
        match self {
            Self::KeyId(id) | Self::KeyArn { key_id: id, .. } => copy_key_id == Some(id.as_str()),
            Self::AliasName(_) | Self::AliasArn { .. } => true,
        }
    }
}

fn is_key_id(text: &str) -> bool {
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(mrk) = text.strip_prefix("mrk-") {
        return hex(mrk, 32);
    }
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, len)| hex(g, len))
}

fn is_alias_name(name: &str) -> bool {
    // KMS: 1–256 characters of [a-zA-Z0-9/_-]; `alias/` is part of the 256.
    !name.is_empty()
        && name.len() <= 250
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
}

/// A snapshot named by an EventBridge event: its ARN carries the source region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotArn {
    pub region: Region,
    pub snapshot_id: SnapshotId,
}

impl SnapshotArn {
    /// Accepts both spellings EBS events use: `arn:aws:ec2::REGION:snapshot/snap-…` and
    /// `arn:aws:ec2:REGION::snapshot/snap-…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "`{}` is not a snapshot ARN; valid: `arn:aws:ec2::REGION:snapshot/snap-…` \
                 or `arn:aws:ec2:REGION::snapshot/snap-…`",
                shorten(text)
            )
        };
        let fields: Vec<&str> = text.splitn(6, ':').collect();
        let ["arn", partition, "ec2", first, second, resource] = fields[..] else {
            return Err(invalid());
        };
        if !partition.starts_with("aws") {
            return Err(invalid());
        }
        let region = match (first.is_empty(), second.is_empty()) {
            (true, false) => second,
            (false, true) => first,
            // A full ARN carries the account in the fifth field; EBS events never do.
            (false, false) if second.len() == 12 && second.bytes().all(|b| b.is_ascii_digit()) => first,
            _ => return Err(invalid()),
        };
        let region = Region::parse(region).map_err(|_| invalid())?;
        let id = resource.strip_prefix("snapshot/").ok_or_else(invalid)?;
        let snapshot_id = SnapshotId::parse(id)?;
        Ok(Self { region, snapshot_id })
    }
}

/// What a role ARN looks like, for messages.
pub const ROLE_ARN_FORMAT: &str = "an IAM role ARN such as `arn:aws:iam::111122223333:role/copy-snapshots-target` (a 12-digit account, `role/`, \
     an optional path, the role's name)";

/// An IAM role in a target account, which the function assumes to copy there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleArn {
    arn: String,
    account: String,
}

impl RoleArn {
    /// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`: IAM is global, so the region field is
    /// empty; names are 1–64 characters of `[\w+=,.@-]`, the path up to 512 with `/`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("`{}` is not an IAM role ARN; valid: {ROLE_ARN_FORMAT}", shorten(text));
        let fields: Vec<&str> = text.splitn(6, ':').collect();
        let ["arn", partition, "iam", "", account, resource] = fields[..] else {
            return Err(invalid());
        };
        let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
        let Some(path_and_name) = resource.strip_prefix("role/") else { return Err(invalid()) };
        let (path, name) = path_and_name.rsplit_once('/').unwrap_or(("", path_and_name));
        let name_char = |b: u8| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b);
        let name_ok = (1..=64).contains(&name.len()) && name.bytes().all(name_char);
        let path_ok = path.len() <= 510 && path.bytes().all(|b| b == b'/' || name_char(b));
        if !partition.starts_with("aws") || !account_ok || !name_ok || !path_ok {
            return Err(invalid());
        }
        Ok(Self { arn: text.to_owned(), account: account.to_owned() })
    }

    pub fn as_str(&self) -> &str {
        &self.arn
    }

    /// The account the role is in: where the copies are made.
    pub fn account(&self) -> &str {
        &self.account
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

/// Where copies are made: a region of this account, or of another account through a role
/// there. Each place has its own quota of concurrent copies, its own copies and its own keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    pub region: Region,
    /// The role to assume in the other account; `None`: this account.
    pub role: Option<RoleArn>,
}

impl Place {
    /// `region` in this account.
    pub fn here(region: Region) -> Self {
        Self { region, role: None }
    }

    /// The other account's id, when the place is in another account.
    pub fn account(&self) -> Option<&str> {
        self.role.as_ref().map(RoleArn::account)
    }

    /// The place as one key (the slot ledger's record): the region in this account,
    /// `REGION@ACCOUNT` in another, so two accounts' quotas are never counted together.
    pub fn key(&self) -> String {
        match self.account() {
            None => self.region.to_string(),
            Some(account) => format!("{}@{account}", self.region),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.account() {
            None => write!(f, "{}", self.region),
            Some(account) => write!(f, "{} (account {account})", self.region),
        }
    }
}

/// Quotes user input in an error message without echoing megabytes of it back.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}… ({} characters)", text.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids() {
        assert!(SnapshotId::parse("snap-0123abcd").is_ok());
        assert!(SnapshotId::parse("snap-0123456789abcdef0").is_ok());
        for bad in
            ["", "snap-", "snap-0123ABCD", "snap-0123abc", "vol-0123abcd", "snap-0123456789abcdef", " snap-0123abcd"]
        {
            let err = SnapshotId::parse(bad).unwrap_err();
            assert!(err.contains(SNAPSHOT_ID_FORMAT), "{err}");
        }
    }

    #[test]
    fn regions() {
        for good in [
            "us-east-1",
            "eu-west-2",
            "ap-southeast-2",
            "us-gov-west-1",
            "cn-north-1",
            "us-isob-east-1",
            "il-central-1",
        ] {
            assert!(Region::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "us-east", "US-EAST-1", "useast1", "us-east-1a", "eu-west-123", "us--1", "x-east-1"] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kms_keys() {
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(KmsKeyRef::parse(id), Ok(KmsKeyRef::KeyId(id.into())));
        assert!(KmsKeyRef::parse("mrk-1234abcd12ab34cd56ef1234567890ab").is_ok());
        assert!(KmsKeyRef::parse("alias/dr-key").is_ok());
        let arn = format!("arn:aws:kms:eu-west-1:123456789012:key/{id}");
        let key = KmsKeyRef::parse(&arn).unwrap();
        assert_eq!(key.region().map(Region::as_str), Some("eu-west-1"));
        assert!(key.matches(Some(&arn)));
        assert!(KmsKeyRef::KeyId(id.into()).matches(Some(&arn)));
        assert!(!KmsKeyRef::KeyId(id.into()).matches(Some("arn:aws:kms:eu-west-1:123456789012:key/other")));
        assert!(!KmsKeyRef::KeyId(id.into()).matches(None));
        assert!(KmsKeyRef::parse("arn:aws:kms:eu-west-1:123456789012:alias/dr").is_ok());
        for bad in [
            "",
            "alias/",
            "my-key",
            "arn:aws:kms:eu-west-1:1234:key/x",
            "arn:aws:s3:::bucket",
            "1234abcd-12ab-34cd-56ef-1234567890",
        ] {
            let err = KmsKeyRef::parse(bad).unwrap_err();
            assert!(err.contains("alias ARN"), "{err}");
        }
    }

    #[test]
    fn snapshot_arns_in_both_spellings() {
        for arn in ["arn:aws:ec2::us-west-2:snapshot/snap-01234567", "arn:aws:ec2:us-west-2::snapshot/snap-01234567"] {
            let parsed = SnapshotArn::parse(arn).unwrap();
            assert_eq!(parsed.region.as_str(), "us-west-2");
            assert_eq!(parsed.snapshot_id.as_str(), "snap-01234567");
        }
        assert!(SnapshotArn::parse("arn:aws:ec2:::snapshot/snap-01234567").is_err());
        assert!(SnapshotArn::parse("arn:aws:ec2::us-west-2:volume/vol-01234567").is_err());
        assert!(SnapshotArn::parse("snap-01234567").is_err());
    }

    #[test]
    fn long_input_is_shortened_in_messages() {
        let err = SnapshotId::parse(&"x".repeat(10_000)).unwrap_err();
        assert!(err.len() < 300, "{err}");
    }

    #[test]
    fn role_arns() {
        let role = RoleArn::parse("arn:aws:iam::111122223333:role/dr/copy-snapshots-target").expect("valid");
        assert_eq!(role.account(), "111122223333");
        assert!(RoleArn::parse("arn:aws-us-gov:iam::111122223333:role/x").is_ok());
        for bad in [
            "",
            "arn:aws:iam::111122223333:user/alice",
            "arn:aws:iam::11112222333:role/x",
            "arn:aws:iam:us-east-1:111122223333:role/x",
            "arn:aws:sts::111122223333:assumed-role/x/y",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/has space",
            "111122223333",
        ] {
            let err = RoleArn::parse(bad).unwrap_err();
            assert!(err.contains("is not an IAM role ARN"), "{bad}: {err}");
        }
    }
}
