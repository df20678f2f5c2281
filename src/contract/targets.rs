//! A request's destinations: `target_region` (one, the reference's parameter) or `targets` (one
//! to [`MAX_TARGETS`], each a region with its own encryption, copy limit and retention), each
//! checked into a [`Target`]. A field a target leaves out comes from the request, and one the
//! request leaves out from the environment, as every other field does.

use std::collections::HashMap;

use serde::Deserialize;

use crate::contract::error::CopySnapshotsError;
use crate::contract::retention::{RETAIN_COUNT_VALID, RETAIN_DAYS_VALID, Retention};
use crate::ids::{KmsKeyRef, Place, Region, RoleArn, shorten};

/// The most targets one request may name: AWS Backup's copy actions per rule. Each target is a
/// region (per account) with its own quota of concurrent copies.
pub const MAX_TARGETS: usize = 5;

/// One `targets` entry as it arrives (also the shape of the `TARGETS` environment variable's
/// list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetPayload {
    pub region: String,
    pub role_arn: Option<String>,
    pub encrypt: Option<bool>,
    pub kms_key_id: Option<String>,
    pub pending_limit: Option<u32>,
    pub retain_days: Option<u32>,
    pub retain_count: Option<u32>,
}

/// One destination of a request: the region its copies go to, and the encryption, copy limit
/// and retention they follow. The engine runs one reconciler per target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its region, and the role in another account when the copies go there.
    pub place: Place,
    pub pending_limit: usize,
    pub encrypt: bool,
    /// The key as the request gave it (`kms_key_id`); `None`: the region's default EBS key.
    pub kms_key: Option<KmsKeyRef>,
    pub retention: Retention,
}

impl Target {
    /// The target for messages: its region, and its account when it is another.
    pub fn describe(&self) -> String {
        self.place.to_string()
    }
}

/// What a target leaves out and the request gives: its fields, each still unchecked.
#[derive(Debug, Clone, Default)]
pub struct TargetDefaults {
    pub pending_limit: Option<u32>,
    pub encrypt: Option<bool>,
    pub kms_key_id: Option<String>,
    pub retain_days: Option<u32>,
    pub retain_count: Option<u32>,
    pub delete_orphans_after_days: Option<u32>,
}

/// What the environment (the stack's parameters) says of targets: the defaults of a request
/// that names none, and the bounds every target keeps.
#[derive(Debug, Clone, Copy)]
pub struct TargetEnvironment<'a> {
    /// `TARGET_REGION`.
    pub target_region: Option<&'a Region>,
    /// `TARGETS`.
    pub targets: Option<&'a [TargetPayload]>,
    /// `PENDING_LIMIT`, or the default.
    pub pending_limit: u32,
    /// `PENDING_LIMIT` when set: no target may ask for more.
    pub pending_limit_ceiling: Option<u32>,
    /// `ENCRYPT`.
    pub encrypt: bool,
    /// `KMS_KEY_ID`.
    pub kms_key: Option<&'a KmsKeyRef>,
    /// `ALLOWED_TARGET_REGIONS`.
    pub allowed_target_regions: Option<&'a [Region]>,
    /// `RETAIN_DAYS`, `RETAIN_COUNT`, `DELETE_ORPHANS_AFTER_DAYS`.
    pub retention: Retention,
}

fn invalid(message: String) -> CopySnapshotsError {
    CopySnapshotsError::InvalidRequest(message)
}

/// The request's targets: `target_region` or `targets` (not both), else the environment's
/// `TARGETS` or `TARGET_REGION`.
pub fn check_targets(
    target_region: Option<String>,
    targets: Option<Vec<TargetPayload>>,
    defaults: &TargetDefaults,
    settings: &TargetEnvironment<'_>,
) -> Result<Vec<Target>, CopySnapshotsError> {
    let one = |region: Region| TargetPayload { region: region.to_string(), ..TargetPayload::default() };
    let (listed, prefix) = match (target_region, targets) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "target_region and targets: give one or the other, not both (target_region is one target, targets a \
                 list of them)"
                    .to_owned(),
            ));
        }
        (Some(text), None) => {
            let region = Region::parse(&text).map_err(|e| invalid(format!("target_region: {e}")))?;
            (vec![one(region)], None)
        }
        (None, Some(targets)) => (targets, Some("targets")),
        (None, None) => match (settings.targets, settings.target_region) {
            (Some(targets), _) => (targets.to_vec(), Some("TARGETS")),
            (None, Some(region)) => (vec![one(region.clone())], None),
            (None, None) => {
                return Err(invalid(format!(
                    "target_region: not in the request and TARGET_REGION is not set; valid: {}, or `targets`: a list \
                     of {{\"region\": …}} objects",
                    crate::ids::REGION_FORMAT
                )));
            }
        },
    };
    if let Some(name) = prefix
        && !(1..=MAX_TARGETS).contains(&listed.len())
    {
        return Err(invalid(format!(
            "{name}: {} targets; valid: 1 to {MAX_TARGETS} {{\"region\", \"role_arn\", \"encrypt\", \"kms_key_id\", \
             \"pending_limit\", \"retain_days\", \"retain_count\"}} objects (only region is required)",
            listed.len()
        )));
    }
    if prefix.is_some() {
        // What a listed target takes from the request is checked once, under its own name.
        check_request_defaults(defaults, settings)?;
    }
    let mut seen: HashMap<(Region, Option<String>), usize> = HashMap::new();
    let mut request_key_taken = false;
    let mut checked = Vec::with_capacity(listed.len());
    for (i, payload) in listed.into_iter().enumerate() {
        // `target_region`'s fields keep their names; a listed target's are `targets[i].…`.
        let field = |name: &str| match prefix {
            None if name == "region" => "target_region".to_owned(),
            None => name.to_owned(),
            Some(list) => format!("{list}[{i}].{name}"),
        };
        let takes_request_key = payload.kms_key_id.is_none();
        let target = check_target(payload, &field, defaults, settings)?;
        request_key_taken |= takes_request_key && target.encrypt;
        let account = target.place.account().map(str::to_owned);
        if let Some(first) = seen.insert((target.place.region.clone(), account), i) {
            return Err(invalid(format!(
                "{}: {} is named twice (also {}[{first}]); valid: each region once per account",
                field("region"),
                target.describe(),
                prefix.unwrap_or("targets")
            )));
        }
        checked.push(target);
    }
    if defaults.kms_key_id.is_some() && !request_key_taken {
        return Err(invalid(
            "kms_key_id: no target takes it (each either does not encrypt or names its own kms_key_id); set \
             encrypt to true, or leave kms_key_id out"
                .to_owned(),
        ));
    }
    Ok(checked)
}

/// The request's own `pending_limit`, `retain_days`, `retain_count` and `kms_key_id`, which
/// every listed target that leaves them out takes: checked under their own names, whether a
/// target takes them or not.
fn check_request_defaults(
    defaults: &TargetDefaults,
    settings: &TargetEnvironment<'_>,
) -> Result<(), CopySnapshotsError> {
    let request = |name: &str| name.to_owned();
    if let Some(limit) = defaults.pending_limit {
        check_pending_limit(limit, &request, settings)?;
    }
    check_retention(defaults.retain_days, defaults.retain_count, None, &request, settings)?;
    if let Some(text) = &defaults.kms_key_id {
        KmsKeyRef::parse(text).map_err(|e| invalid(format!("kms_key_id: {e}")))?;
    }
    Ok(())
}

fn check_pending_limit(
    pending_limit: u32,
    field: &dyn Fn(&str) -> String,
    settings: &TargetEnvironment<'_>,
) -> Result<(), CopySnapshotsError> {
    if pending_limit == 0 {
        return Err(invalid(format!("{}: 0 would never start a copy; valid: an integer ≥ 1", field("pending_limit"))));
    }
    if let Some(ceiling) = settings.pending_limit_ceiling.filter(|ceiling| pending_limit > *ceiling) {
        return Err(invalid(format!(
            "{}: {pending_limit} is more than this deployment's PENDING_LIMIT of {ceiling}, its share of the target \
             region's copy quota; valid: an integer from 1 to {ceiling}",
            field("pending_limit")
        )));
    }
    Ok(())
}

fn check_target(
    payload: TargetPayload,
    field: &dyn Fn(&str) -> String,
    defaults: &TargetDefaults,
    settings: &TargetEnvironment<'_>,
) -> Result<Target, CopySnapshotsError> {
    let region = Region::parse(&payload.region).map_err(|e| invalid(format!("{}: {e}", field("region"))))?;
    // Before any call: the deployment's role could not copy elsewhere, and a late AccessDenied
    // would come after other work.
    if let Some(allowed) = settings.allowed_target_regions
        && !allowed.contains(&region)
    {
        let names: Vec<&str> = allowed.iter().map(Region::as_str).collect();
        return Err(invalid(format!(
            "{}: {region} is not allowed by this deployment (its role copies only from the stack's region to its \
             TargetRegion); valid: {} (environment variable ALLOWED_TARGET_REGIONS)",
            field("region"),
            names.join(" or ")
        )));
    }
    let role = payload
        .role_arn
        .map(|text| RoleArn::parse(&text).map_err(|e| invalid(format!("{}: {e}", field("role_arn")))))
        .transpose()?;
    let pending_limit = payload.pending_limit.or(defaults.pending_limit).unwrap_or(settings.pending_limit);
    check_pending_limit(pending_limit, field, settings)?;

    let encrypt = payload.encrypt.or(defaults.encrypt).unwrap_or(settings.encrypt);
    let kms_key = check_key(payload.kms_key_id.as_deref(), encrypt, &region, field, defaults, settings)?;
    // A copy in another account under a key of some other account (this one's, say) would be
    // at that account's mercy: disabling the key would make the recovery copy unusable.
    if let (Some(role), Some(key_account)) = (&role, kms_key.as_ref().and_then(KmsKeyRef::account))
        && key_account != role.account()
    {
        return Err(invalid(format!(
            "{}: the key is in account {key_account}, but {region}'s copies are made in account {} ({}); valid: a key \
             of account {}, or an alias name, which that account resolves",
            field("kms_key_id"),
            role.account(),
            field("role_arn"),
            role.account()
        )));
    }

    let retention = check_retention(
        payload.retain_days.or(defaults.retain_days),
        payload.retain_count.or(defaults.retain_count),
        defaults.delete_orphans_after_days,
        field,
        settings,
    )?;
    Ok(Target { place: Place { region, role }, pending_limit: pending_limit as usize, encrypt, kms_key, retention })
}

/// The target's key: its own `kms_key_id`, else the request's, else the environment's; a key
/// given without encryption is a mistake wherever it is given, except the request's for a
/// target that turns encryption off.
fn check_key(
    own_key: Option<&str>,
    encrypt: bool,
    region: &Region,
    field: &dyn Fn(&str) -> String,
    defaults: &TargetDefaults,
    settings: &TargetEnvironment<'_>,
) -> Result<Option<KmsKeyRef>, CopySnapshotsError> {
    // The target's own key, else the request's, else the environment's; a key given without
    // encryption is a mistake wherever it is given.
    let (key_text, key_field) = match (own_key, &defaults.kms_key_id) {
        (Some(text), _) => (Some(text.to_owned()), field("kms_key_id")),
        (None, Some(text)) => (Some(text.clone()), "kms_key_id".to_owned()),
        (None, None) => (None, field("kms_key_id")),
    };
    let inherited = key_field != field("kms_key_id");
    let kms_key = match key_text {
        // The request's key is for its encrypted targets: one that does not encrypt takes
        // none (a request key that no target uses is refused once all are checked).
        Some(_) if !encrypt && inherited => None,
        Some(_) if !encrypt => {
            return Err(invalid(format!(
                "{key_field}: given without `encrypt: true`{}; set encrypt to true, or leave kms_key_id out",
                if inherited { format!(" for {}", field("region")) } else { String::new() }
            )));
        }
        Some(text) => Some(KmsKeyRef::parse(&text).map_err(|e| invalid(format!("{key_field}: {e}")))?),
        None if encrypt => settings.kms_key.cloned(),
        None => None,
    };
    // Named as the caller gave it: the target's field, the request's, or the environment's.
    // (A `target_region` request names it as it always did.)
    let listed = field("region") != "target_region";
    let from_environment = listed && own_key.is_none() && defaults.kms_key_id.is_none();
    let (key_field, inherited) =
        if from_environment { ("KMS_KEY_ID (environment)".to_owned(), true) } else { (key_field, inherited) };
    if let Some(key_region) = kms_key.as_ref().and_then(KmsKeyRef::region)
        && key_region != region
    {
        let whose = if inherited { format!(" (for {region})") } else { String::new() };
        return Err(invalid(format!(
            "{key_field}{whose}: the key is in {key_region} but the copies are made in {region}; valid: a key in the \
             target region {region}{}",
            if whose.is_empty() { "" } else { ", given as that target's own kms_key_id, or an alias name" }
        )));
    }
    Ok(kms_key)
}

/// The target's retention, each field filled from the environment when neither the target
/// nor the request sets it.
fn check_retention(
    days: Option<u32>,
    count: Option<u32>,
    orphans_after_days: Option<u32>,
    field: &dyn Fn(&str) -> String,
    settings: &TargetEnvironment<'_>,
) -> Result<Retention, CopySnapshotsError> {
    for (name, value, valid) in [("retain_days", days, RETAIN_DAYS_VALID), ("retain_count", count, RETAIN_COUNT_VALID)]
    {
        if value == Some(0) {
            return Err(invalid(format!(
                "{}: 0 is not a retention (the newest source of each volume is kept whatever the rule, so 0 would \
                 mean 1); valid: {valid}",
                field(name)
            )));
        }
    }
    Ok(Retention {
        days: days.or(settings.retention.days),
        count: count.or(settings.retention.count),
        orphans_after_days: orphans_after_days.or(settings.retention.orphans_after_days),
    })
}

/// Parses the `TARGETS` environment variable: a JSON list of target objects.
pub fn parse_targets_variable(value: &str) -> Result<Vec<TargetPayload>, CopySnapshotsError> {
    serde_json::from_str(value).map_err(|e| {
        invalid(format!(
            "environment variable TARGETS: `{}` is not valid ({e}); valid: a JSON list of 1 to {MAX_TARGETS} \
             {{\"region\": …}} objects, each with optional role_arn, encrypt, kms_key_id, pending_limit, retain_days \
             and retain_count",
            shorten(value)
        ))
    })
}
