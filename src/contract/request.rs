//! The request: its JSON shape (avtomat-aws's parameter names), the defaults the environment
//! supplies, and validation into a [`CopyRequest`] that the engine can trust. Every rejection is
//! an `InvalidRequest` naming the field and what would be valid, decided before any AWS call.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::contract::error::CopySnapshotsError;
use crate::contract::response::ResponseFormat;
use crate::contract::retention::Retention;
use crate::contract::targets::{
    Target, TargetDefaults, TargetEnvironment, TargetPayload, check_targets, parse_targets_variable,
};
use crate::ids::{KmsKeyRef, Region, SnapshotId, shorten};
use crate::store::{Filter, MAX_FILTER_VALUES, OWN_TAGS, RESERVED_TAG_PREFIX, SourceSelector, Tag};

/// Default for `pending_limit`: AWS's concurrent-copy quota per destination region.
pub const DEFAULT_PENDING_LIMIT: u32 = 20;
/// Default for `POLL_INTERVAL_SECONDS`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(15);
/// Default for `MAX_POLL_INTERVAL_SECONDS`: 15 minutes, also the longest a Lambda invocation
/// lives.
pub const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(900);
/// The most `MAX_POLL_INTERVAL_SECONDS` may be: a day (beyond it, a wait would only hide a
/// mistake, and the clock's arithmetic must not overflow).
const LONGEST_MAX_POLL_INTERVAL_SECONDS: f64 = 86_400.0;
/// EC2 allows 50 tags per snapshot; five are this function's (`copy-snapshots:*`).
pub const MAX_USER_TAGS: usize = 50 - OWN_TAGS;
/// Default for `EC2_CALL_TIMEOUT_SECONDS`: the longest one EC2 call (with the SDK's retries)
/// may take.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// The request as it arrives (manual invoke, Step Functions, schedule Input).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestPayload {
    pub snapshot_ids: Option<Vec<String>>,
    pub filters: Option<Vec<FilterPayload>>,
    pub target_region: Option<String>,
    pub targets: Option<Vec<TargetPayload>>,
    pub region: Option<String>,
    pub pending_limit: Option<u32>,
    pub encrypt: Option<bool>,
    pub kms_key_id: Option<String>,
    pub copy_tags: Option<bool>,
    pub tags: Option<BTreeMap<String, String>>,
    pub completion_duration_minutes: Option<u32>,
    pub wait_for_completion: Option<bool>,
    pub max_wait_seconds: Option<u64>,
    pub debug: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    pub retain_days: Option<u32>,
    pub retain_count: Option<u32>,
    pub delete_orphans_after_days: Option<u32>,
    pub dry_run: Option<bool>,
    pub allow_mass_deletion: Option<bool>,
}

/// One `filters` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterPayload {
    pub name: String,
    pub values: Vec<String>,
}

/// What each field accepts, for messages about wrong JSON types.
fn valid_values(field: &str) -> &'static str {
    match field {
        "snapshot_ids" => "a list of snapshot ids (`snap-` + 8 or 17 lowercase hex digits)",
        "filters" => "a list of {\"name\": \"…\", \"values\": [\"…\"]} objects",
        "name" => "a filter name such as `tag:Backup`",
        "values" => "a list of strings",
        "target_region" | "region" => crate::ids::REGION_FORMAT,
        "targets" => {
            "a list of 1 to 5 {\"region\": …} objects, each with optional role_arn, encrypt, kms_key_id, \
                      pending_limit, retain_days and retain_count"
        }
        "pending_limit" => "an integer ≥ 1",
        "encrypt" | "copy_tags" | "wait_for_completion" | "debug" | "dry_run" | "allow_mass_deletion" => {
            "true or false"
        }
        "kms_key_id" => crate::ids::KMS_KEY_FORMAT,
        "tags" => "an object of string keys to string values",
        "completion_duration_minutes" => "an integer from 15 to 2880, a multiple of 15",
        "max_wait_seconds" => "an integer ≥ 0",
        "retain_days" => crate::contract::retention::RETAIN_DAYS_VALID,
        "retain_count" => crate::contract::retention::RETAIN_COUNT_VALID,
        "delete_orphans_after_days" => {
            "an integer ≥ 0: days after its source's start that a copy whose source is gone is deleted"
        }
        "response_format" => "\"full\" (every copy listed) or \"summary\" (counts and the first failures)",
        _ => "see the request table in the README",
    }
}

/// Settings from the environment (the SAM template's parameters); they fill only the fields a
/// payload leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `AWS_REGION`: the source region when the request names none.
    pub source_region: Option<Region>,
    /// `TARGET_REGION`.
    pub target_region: Option<Region>,
    /// `TARGETS` (a JSON list of targets, instead of `TARGET_REGION`): each still checked per
    /// request, with the request's and the environment's other defaults.
    pub targets: Option<Vec<TargetPayload>>,
    /// `PENDING_LIMIT`.
    pub pending_limit: u32,
    /// `PENDING_LIMIT` when the environment sets it: the deployment's share of the target
    /// region's copy quota, which a request may lower but not raise (the stack leaves the rest
    /// to Data Lifecycle Manager and AWS Backup).
    pub pending_limit_ceiling: Option<u32>,
    /// `ENCRYPT`.
    pub encrypt: bool,
    /// `KMS_KEY_ID`, used only for encrypted copies.
    pub kms_key: Option<KmsKeyRef>,
    /// `COPY_TAGS`.
    pub copy_tags: bool,
    /// `POLL_INTERVAL_SECONDS`: the shortest wait between two polls.
    pub poll_interval: Duration,
    /// `MAX_POLL_INTERVAL_SECONDS`: the longest wait between two polls, however far progress
    /// says the next completion is (an emulator running at a faster pace scales it down).
    pub max_poll_interval: Duration,
    /// `EC2_CALL_TIMEOUT_SECONDS`: the SDK's operation timeout, which the engine also uses to
    /// start no call that could end after the invocation's deadline.
    pub call_timeout: Duration,
    /// `ALLOWED_SOURCE_REGIONS` (comma-separated): the only source regions a request may name,
    /// because the deployment's role may copy only from them. `None`: any.
    pub allowed_source_regions: Option<Vec<Region>>,
    /// `ALLOWED_TARGET_REGIONS` (comma-separated): the only target regions a request may name.
    /// `None`: any.
    pub allowed_target_regions: Option<Vec<Region>>,
    /// `RETAIN_DAYS`, `RETAIN_COUNT`, `DELETE_ORPHANS_AFTER_DAYS`: the retention of requests
    /// that set none of the three themselves.
    pub retention: Retention,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            source_region: None,
            target_region: None,
            targets: None,
            pending_limit: DEFAULT_PENDING_LIMIT,
            pending_limit_ceiling: None,
            encrypt: false,
            kms_key: None,
            copy_tags: false,
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_poll_interval: DEFAULT_MAX_POLL_INTERVAL,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            allowed_source_regions: None,
            allowed_target_regions: None,
            retention: Retention::default(),
        }
    }
}

impl Settings {
    /// What the environment says of targets.
    pub fn target_environment(&self) -> TargetEnvironment<'_> {
        TargetEnvironment {
            target_region: self.target_region.as_ref(),
            targets: self.targets.as_deref(),
            pending_limit: self.pending_limit,
            pending_limit_ceiling: self.pending_limit_ceiling,
            encrypt: self.encrypt,
            kms_key: self.kms_key.as_ref(),
            allowed_target_regions: self.allowed_target_regions.as_deref(),
            retention: self.retention,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, CopySnapshotsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`; empty values count as unset, because CloudFormation
    /// passes an unset optional parameter as "".
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, CopySnapshotsError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let invalid = |name: &str, value: &str, valid: &str| {
            CopySnapshotsError::InvalidRequest(format!(
                "environment variable {name}: `{}` is not valid; valid: {valid}",
                shorten(value)
            ))
        };
        let region = |name: &str| {
            get(name).map(|v| Region::parse(&v).map_err(|_| invalid(name, &v, crate::ids::REGION_FORMAT))).transpose()
        };
        let flag = |name: &str| match get(name) {
            None => Ok(false),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(invalid(name, &v, "true or false")),
            },
        };
        let pending_limit_ceiling = get("PENDING_LIMIT")
            .map(|v| {
                v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| invalid("PENDING_LIMIT", &v, "an integer ≥ 1"))
            })
            .transpose()?;
        let pending_limit = pending_limit_ceiling.unwrap_or(DEFAULT_PENDING_LIMIT);
        let poll_interval = match get("POLL_INTERVAL_SECONDS") {
            None => DEFAULT_POLL_INTERVAL,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 900.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    invalid("POLL_INTERVAL_SECONDS", &v, "a number of seconds, more than 0 and at most 900")
                })?,
        };
        let max_poll_interval = match get("MAX_POLL_INTERVAL_SECONDS") {
            None => DEFAULT_MAX_POLL_INTERVAL,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= LONGEST_MAX_POLL_INTERVAL_SECONDS)
                .map(Duration::from_secs_f64)
                .filter(|max| *max >= poll_interval)
                .ok_or_else(|| {
                    invalid(
                        "MAX_POLL_INTERVAL_SECONDS",
                        &v,
                        &format!(
                            "a number of seconds, more than 0, at least POLL_INTERVAL_SECONDS ({}) and at most {}",
                            poll_interval.as_secs_f64(),
                            LONGEST_MAX_POLL_INTERVAL_SECONDS
                        ),
                    )
                })?,
        };
        let call_timeout = match get("EC2_CALL_TIMEOUT_SECONDS") {
            None => DEFAULT_CALL_TIMEOUT,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.5 && *s <= 120.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| invalid("EC2_CALL_TIMEOUT_SECONDS", &v, "a number of seconds from 0.5 to 120"))?,
        };
        let regions = |name: &str| {
            get(name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|r| !r.is_empty())
                        .map(|r| {
                            Region::parse(r).map_err(|_| {
                                invalid(
                                    name,
                                    &v,
                                    &format!("comma-separated regions, each {}", crate::ids::REGION_FORMAT),
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
        };
        let days = |name: &str, min: u32| {
            get(name)
                .map(|v| {
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| *n >= min)
                        .ok_or_else(|| invalid(name, &v, &format!("an integer ≥ {min}")))
                })
                .transpose()
        };
        let retention = Retention {
            days: days("RETAIN_DAYS", 1)?,
            count: days("RETAIN_COUNT", 1)?,
            orphans_after_days: days("DELETE_ORPHANS_AFTER_DAYS", 0)?,
        };
        let kms_key = get("KMS_KEY_ID")
            .map(|v| KmsKeyRef::parse(&v).map_err(|_| invalid("KMS_KEY_ID", &v, crate::ids::KMS_KEY_FORMAT)))
            .transpose()?;
        let target_region = region("TARGET_REGION")?;
        let targets = get("TARGETS").map(|v| parse_targets_variable(&v)).transpose()?;
        if targets.is_some() && target_region.is_some() {
            return Err(CopySnapshotsError::InvalidRequest(
                "environment variables TARGETS and TARGET_REGION: set one or the other, not both".to_owned(),
            ));
        }
        Ok(Self {
            source_region: region("AWS_REGION")?,
            target_region,
            targets,
            pending_limit,
            pending_limit_ceiling,
            encrypt: flag("ENCRYPT")?,
            kms_key,
            copy_tags: flag("COPY_TAGS")?,
            poll_interval,
            max_poll_interval,
            call_timeout,
            allowed_source_regions: regions("ALLOWED_SOURCE_REGIONS")?,
            allowed_target_regions: regions("ALLOWED_TARGET_REGIONS")?,
            retention,
        })
    }
}

/// A request the engine can trust: every field checked, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyRequest {
    pub sources: SourceSelector,
    pub source_region: Region,
    /// Where the copies go: one target or several, each with its own encryption, copy limit
    /// and retention.
    pub targets: Vec<Target>,
    pub copy_tags: bool,
    /// Extra tags for every copy, sorted by key.
    pub tags: Vec<Tag>,
    pub completion_duration_minutes: Option<u32>,
    pub wait_for_completion: bool,
    /// `None`: wait until the invocation's deadline.
    pub max_wait: Option<Duration>,
    pub debug: bool,
    /// Made from an EventBridge event: the invocation fails (`SourcesPending`) while a source
    /// has no copy started, so the event is retried rather than acknowledged.
    pub from_event: bool,
    /// Made from a batch of queued snapshot events: a snapshot gone since its event is skipped
    /// and one not ready yet waits, instead of failing the whole batch; the answer is per
    /// record (batch item failures), never `SourcesPending`.
    pub from_queue: bool,
    pub response_format: ResponseFormat,
    /// Look only: answer what a run would copy, skip and delete, calling neither CopySnapshot
    /// nor DeleteSnapshot.
    pub dry_run: bool,
    /// Lets the run delete more than the deletion breaker allows (a retention turned on over a
    /// backlog), after a dry run showed what goes.
    pub allow_mass_deletion: bool,
}

fn invalid(message: String) -> CopySnapshotsError {
    CopySnapshotsError::InvalidRequest(message)
}

impl CopyRequest {
    /// Whether any target has a retention: the request then deletes copies.
    pub fn has_retention(&self) -> bool {
        self.targets.iter().any(|target| target.retention.is_set())
    }

    /// Parses and checks a direct request payload.
    pub fn from_json(payload: Value, settings: &Settings) -> Result<Self, CopySnapshotsError> {
        if !payload.is_object() {
            return Err(invalid(format!(
                "the payload must be a JSON object (a copy request or an EventBridge event), not {}",
                json_kind(&payload)
            )));
        }
        let parsed: RequestPayload = serde_path_to_error::deserialize(payload).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            if inner.starts_with("unknown field") {
                // The path ends with the unknown name itself; serde's text lists the valid ones.
                let parent = path.rsplit_once('.').map_or("request", |(parent, _)| parent);
                return invalid(format!("{parent}: {inner}"));
            }
            let top = path.split(['.', '[']).next().unwrap_or(&path);
            let last = path.rsplit('.').next().unwrap_or(&path).split('[').next().unwrap_or(top);
            let field = if top == "filters" && matches!(last, "name" | "values") { last } else { top };
            invalid(format!("{path}: {inner}; valid: {}", valid_values(field)))
        })?;
        Self::check(parsed, settings)
    }

    /// Checks a parsed payload and applies the environment's defaults.
    pub fn check(payload: RequestPayload, settings: &Settings) -> Result<Self, CopySnapshotsError> {
        let sources = match (payload.snapshot_ids, payload.filters) {
            (Some(_), Some(_)) => {
                return Err(invalid("snapshot_ids and filters: give one or the other, not both".to_owned()));
            }
            (None, None) => {
                return Err(invalid(
                    "snapshot_ids or filters is required: a list of snapshot ids, or DescribeSnapshots filters such as \
                     [{\"name\": \"tag:Backup\", \"values\": [\"daily\"]}]"
                        .to_owned(),
                ));
            }
            (Some(ids), None) => SourceSelector::Ids(check_snapshot_ids(&ids)?),
            (None, Some(filters)) => SourceSelector::Filters(check_filters(filters)?),
        };

        let source_region = match payload.region {
            Some(text) => Region::parse(&text).map_err(|e| invalid(format!("region: {e}")))?,
            None => settings.source_region.clone().ok_or_else(|| {
                invalid(format!(
                    "region: not in the request and AWS_REGION is not set; valid: {}",
                    crate::ids::REGION_FORMAT
                ))
            })?,
        };
        // Before any call: the deployment's role could not copy elsewhere, and a late
        // AccessDenied would come after other work.
        check_allowed("region", &source_region, settings.allowed_source_regions.as_deref(), "ALLOWED_SOURCE_REGIONS")?;
        let defaults = TargetDefaults {
            pending_limit: payload.pending_limit,
            encrypt: payload.encrypt,
            kms_key_id: payload.kms_key_id,
            retain_days: payload.retain_days,
            retain_count: payload.retain_count,
            delete_orphans_after_days: payload.delete_orphans_after_days,
        };
        let targets = check_targets(payload.target_region, payload.targets, &defaults, &settings.target_environment())?;

        // A copy in another account carries one more tag of this function's (its source account).
        let elsewhere = targets.iter().any(|target| target.place.role.is_some());
        let tags = check_tags(payload.tags.unwrap_or_default(), usize::from(elsewhere))?;

        if let Some(minutes) = payload.completion_duration_minutes
            && (!(15..=2880).contains(&minutes) || minutes % 15 != 0)
        {
            return Err(invalid(format!(
                "completion_duration_minutes: {minutes} is not allowed; valid: {}",
                valid_values("completion_duration_minutes")
            )));
        }

        let allow_mass_deletion = payload.allow_mass_deletion.unwrap_or(false);
        if allow_mass_deletion && !targets.iter().any(|target| target.retention.is_set()) {
            return Err(invalid(
                "allow_mass_deletion: true only lifts the deletion breaker of a retention, and this request has none (retain_days, retain_count, delete_orphans_after_days); valid: leave it out, or set a retention"
                    .to_owned(),
            ));
        }

        Ok(Self {
            sources,
            source_region,
            targets,
            copy_tags: payload.copy_tags.unwrap_or(settings.copy_tags),
            tags,
            completion_duration_minutes: payload.completion_duration_minutes,
            wait_for_completion: payload.wait_for_completion.unwrap_or(false),
            max_wait: payload.max_wait_seconds.map(Duration::from_secs),
            debug: payload.debug.unwrap_or(false),
            from_event: false,
            from_queue: false,
            response_format: payload.response_format.unwrap_or_default(),
            dry_run: payload.dry_run.unwrap_or(false),
            allow_mass_deletion,
        })
    }
}

/// `region` must be one of `allowed`, when the deployment restricts it.
fn check_allowed(
    field: &str,
    region: &Region,
    allowed: Option<&[Region]>,
    variable: &str,
) -> Result<(), CopySnapshotsError> {
    let Some(allowed) = allowed else { return Ok(()) };
    if allowed.contains(region) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(Region::as_str).collect();
    Err(invalid(format!(
        "{field}: {region} is not allowed by this deployment (its role copies only from the stack's region to its \
         TargetRegion); valid: {} (environment variable {variable})",
        names.join(" or ")
    )))
}

fn check_snapshot_ids(ids: &[String]) -> Result<Vec<SnapshotId>, CopySnapshotsError> {
    if ids.is_empty() {
        return Err(invalid(format!("snapshot_ids: the list is empty; valid: {}", valid_values("snapshot_ids"))));
    }
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter()
        .enumerate()
        .map(|(i, text)| {
            let id = SnapshotId::parse(text).map_err(|e| invalid(format!("snapshot_ids[{i}]: {e}")))?;
            if !seen.insert(text.as_str()) {
                return Err(invalid(format!("snapshot_ids[{i}]: `{id}` is listed twice; list each snapshot once")));
            }
            Ok(id)
        })
        .collect()
}

fn check_filters(filters: Vec<FilterPayload>) -> Result<Vec<Filter>, CopySnapshotsError> {
    if filters.is_empty() {
        return Err(invalid(format!("filters: the list is empty; valid: {}", valid_values("filters"))));
    }
    filters
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            if f.name.trim().is_empty() {
                return Err(invalid(format!("filters[{i}].name: empty; valid: {}", valid_values("name"))));
            }
            if f.values.is_empty() {
                return Err(invalid(format!(
                    "filters[{i}].values: empty, which matches nothing; valid: one or more values for `{}`",
                    shorten(&f.name)
                )));
            }
            if f.values.len() > MAX_FILTER_VALUES {
                return Err(invalid(format!(
                    "filters[{i}].values: {} values for `{}`; valid: at most {MAX_FILTER_VALUES} (EC2's limit per filter)",
                    f.values.len(),
                    shorten(&f.name)
                )));
            }
            Ok(Filter { name: f.name, values: f.values })
        })
        .collect()
}

fn check_tags(tags: BTreeMap<String, String>, more_own: usize) -> Result<Vec<Tag>, CopySnapshotsError> {
    let (most, own) = (MAX_USER_TAGS - more_own, OWN_TAGS + more_own);
    if tags.len() > most {
        let elsewhere = if more_own > 0 { ", one more on a copy in another account" } else { "" };
        return Err(invalid(format!(
            "tags: {} tags; valid: at most {most} (EC2 allows 50 per snapshot, {own} are this function's{elsewhere})",
            tags.len()
        )));
    }
    tags.into_iter()
        .map(|(key, value)| {
            let shown = shorten(&key);
            if key.is_empty() || key.chars().count() > 128 {
                return Err(invalid(format!("tags: key `{shown}`; valid: 1 to 128 characters")));
            }
            if key.to_ascii_lowercase().starts_with("aws:") {
                return Err(invalid(format!("tags: key `{shown}` uses the `aws:` prefix, which AWS reserves")));
            }
            if key.starts_with(RESERVED_TAG_PREFIX) {
                return Err(invalid(format!(
                    "tags: key `{shown}` uses the `{RESERVED_TAG_PREFIX}` prefix, which this function sets itself"
                )));
            }
            if value.chars().count() > 256 {
                return Err(invalid(format!(
                    "tags: the value of `{shown}` is too long; valid: at most 256 characters"
                )));
            }
            Ok(Tag { key, value })
        })
        .collect()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
