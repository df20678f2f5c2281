//! The slot ledger ([`crate::engine::slots`]) in a DynamoDB table (the stack's `SlotTable`, named by
//! `SLOT_TABLE`): the only module that uses aws-sdk-dynamodb. One item per target region,
//! read with GetItem (strongly consistent) and written whole with PutItem on the condition
//! that its `version` is still the one read, so of two invocations that read the same version
//! only one write lands. The table lives in the stack's region, whatever the target region.
//!
//! The item, readable in the console:
//! `target_region` (S, the partition key: the region, or `REGION@ACCOUNT` for a target in another
//! account, whose quota is its own), `version` (N), `refreshed_at` (N, Unix ms; absent
//! until the first refresh), `updated_at` (N, Unix ms, for people), and `entries` (M): slot
//! key → {`copy_id` (S, once started), `reserved_at` (N), `recorded_at` (N, until a refresh
//! saw the copy listed)}.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use tracing::warn;

use crate::ids::Place;
use crate::store::ledger::{LedgerError, LedgerState, Saved, SlotEntry, SlotKey, SlotLedger, Version};

const PARTITION_KEY: &str = "target_region";
const VERSION: &str = "version";
const REFRESHED_AT: &str = "refreshed_at";
const UPDATED_AT: &str = "updated_at";
const ENTRIES: &str = "entries";
const COPY_ID: &str = "copy_id";
const RESERVED_AT: &str = "reserved_at";
const RECORDED_AT: &str = "recorded_at";

/// Error codes DynamoDB uses for throttling; the SDK retries them, and what is left is a
/// round without a start.
const THROTTLING_CODES: &[&str] =
    &["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded", "Throttling"];

/// The ledger in DynamoDB table `table`.
#[derive(Debug, Clone)]
pub struct DynamoSlotLedger {
    client: Client,
    table: String,
}

impl DynamoSlotLedger {
    /// A client from the function's loaded configuration (credentials, retries, timeouts, any
    /// `AWS_ENDPOINT_URL[_DYNAMODB]`), in its region.
    pub fn new(sdk_config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self { client: Client::new(sdk_config), table: table.into() }
    }

    fn error<E>(&self, operation: &str, error: SdkError<E, HttpResponse>) -> LedgerError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = error.code().unwrap_or_default().to_owned();
        let message = error.message().unwrap_or_default().to_owned();
        let table = &self.table;
        if !matches!(error, SdkError::ServiceError(_)) {
            // Timeouts, connection failures, unreadable answers.
            return LedgerError::Unavailable(format!(
                "{operation} on DynamoDB table {table}: {}",
                DisplayErrorContext(&error)
            ));
        }
        let described = format!("{operation} on DynamoDB table {table}: {code}: {message}");
        match code.as_str() {
            c if THROTTLING_CODES.contains(&c) => LedgerError::Unavailable(described),
            "AccessDeniedException" | "UnrecognizedClientException" | "AccessDenied" => {
                LedgerError::AccessDenied(format!(
                    "{described}; the function's role needs dynamodb:GetItem and dynamodb:PutItem on table {table}"
                ))
            }
            "ResourceNotFoundException" => LedgerError::Misconfigured(format!(
                "{described}; SLOT_TABLE names a table that does not exist in this region (the stack's SlotTable)"
            )),
            _ if error.raw_response().is_some_and(|raw| raw.status().is_server_error()) => {
                LedgerError::Unavailable(described)
            }
            _ => LedgerError::Misconfigured(described),
        }
    }
}

impl SlotLedger for DynamoSlotLedger {
    fn describe(&self) -> String {
        format!("DynamoDB table {}", self.table)
    }

    async fn load(&self, target: &Place) -> Result<(LedgerState, Version), LedgerError> {
        let answer = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(target.key()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", e))?;
        Ok(answer.item().map_or_else(|| (LedgerState::default(), 0), |item| from_item(item, &self.table)))
    }

    async fn save(&self, target: &Place, state: &LedgerState, expected: Version) -> Result<Saved, LedgerError> {
        let mut put =
            self.client.put_item().table_name(&self.table).set_item(Some(to_item(target, state, expected + 1)));
        // DynamoDB refuses a name the condition does not use: each branch names only its own.
        put = if expected == 0 {
            put.condition_expression("attribute_not_exists(#key)").expression_attribute_names("#key", PARTITION_KEY)
        } else {
            put.condition_expression("#version = :expected")
                .expression_attribute_names("#version", VERSION)
                .expression_attribute_values(":expected", AttributeValue::N(expected.to_string()))
        };
        match put.send().await {
            Ok(_) => Ok(Saved::Saved),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                Ok(Saved::Conflict)
            }
            Err(error) => Err(self.error("PutItem", error)),
        }
    }
}

fn millis(time: SystemTime) -> AttributeValue {
    AttributeValue::N(time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis().to_string())
}

fn time_of(value: Option<&AttributeValue>) -> Option<SystemTime> {
    let ms: u64 = value?.as_n().ok()?.parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

fn to_item(target: &Place, state: &LedgerState, version: Version) -> HashMap<String, AttributeValue> {
    let entries = state
        .entries
        .iter()
        .map(|(key, entry)| {
            let mut fields = HashMap::from([(RESERVED_AT.to_owned(), millis(entry.reserved_at))]);
            if let Some(copy) = &entry.copy_id {
                fields.insert(COPY_ID.to_owned(), AttributeValue::S(copy.clone()));
            }
            if let Some(at) = entry.recorded_at {
                fields.insert(RECORDED_AT.to_owned(), millis(at));
            }
            (key.as_str().to_owned(), AttributeValue::M(fields))
        })
        .collect();
    let mut item = HashMap::from([
        (PARTITION_KEY.to_owned(), AttributeValue::S(target.key())),
        (VERSION.to_owned(), AttributeValue::N(version.to_string())),
        (UPDATED_AT.to_owned(), millis(SystemTime::now())),
        (ENTRIES.to_owned(), AttributeValue::M(entries)),
    ]);
    if let Some(at) = state.refreshed_at {
        item.insert(REFRESHED_AT.to_owned(), millis(at));
    }
    item
}

/// The item as a ledger state and its version. An item someone edited into another shape
/// keeps what reads well and is marked never refreshed, so the next reservation rebuilds it
/// from EC2 (and overwrites it, on its version).
fn from_item(item: &HashMap<String, AttributeValue>, table: &str) -> (LedgerState, Version) {
    let version = item.get(VERSION).and_then(|v| v.as_n().ok()).and_then(|n| n.parse::<Version>().ok());
    let mut whole = version.is_some();
    let mut entries = BTreeMap::new();
    match item.get(ENTRIES).map(AttributeValue::as_m) {
        Some(Ok(stored)) => {
            for (key, value) in stored {
                let fields = value.as_m().ok();
                let field = |name: &str| fields.and_then(|f| f.get(name));
                let Some(reserved_at) = time_of(field(RESERVED_AT)) else {
                    whole = false;
                    continue;
                };
                let copy_id = field(COPY_ID).and_then(|v| v.as_s().ok()).cloned();
                let entry = SlotEntry { copy_id, reserved_at, recorded_at: time_of(field(RECORDED_AT)) };
                entries.insert(SlotKey::stored(key.clone()), entry);
            }
        }
        Some(Err(_)) => whole = false,
        None => {}
    }
    let refreshed_at = if whole { time_of(item.get(REFRESHED_AT)) } else { None };
    if !whole {
        warn!(table, "the slot ledger's item is not as this function writes it; rebuilding it from EC2");
    }
    // An unreadable version cannot be matched by a conditional write: only 0's condition
    // (no item) would be tried, and fail, every time. Read as the largest version instead,
    // whose save fails the same way, so a person must fix or delete the item; say so.
    let version = version.unwrap_or_else(|| {
        warn!(table, "the slot ledger's item has no readable version; delete the item to let the function rebuild it");
        Version::MAX - 1
    });
    (LedgerState { entries, refreshed_at }, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Region, SnapshotId};

    #[test]
    fn an_item_reads_back_as_written() {
        let region = Place::here(Region::parse("eu-west-1").unwrap());
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + s);
        let key = SlotKey::for_copy(
            &Region::parse("us-east-1").unwrap(),
            &SnapshotId::parse("snap-0123456789abcdef0").unwrap(),
            "none",
        );
        let mut state = LedgerState { entries: BTreeMap::new(), refreshed_at: Some(t(5)) };
        state.entries.insert(
            key.clone(),
            SlotEntry {
                copy_id: Some("snap-0fedcba9876543210".to_owned()),
                reserved_at: t(1),
                recorded_at: Some(t(2)),
            },
        );
        state.entries.insert(
            SlotKey::stored("copy/snap-0aaaaaaaaaaaaaaaa"),
            SlotEntry { copy_id: None, reserved_at: t(3), recorded_at: None },
        );
        let item = to_item(&region, &state, 7);
        assert_eq!(from_item(&item, "t"), (state, 7));
    }

    #[test]
    fn an_edited_item_is_rebuilt_not_trusted() {
        let region = Place::here(Region::parse("eu-west-1").unwrap());
        let state = LedgerState { entries: BTreeMap::new(), refreshed_at: Some(SystemTime::now()) };
        let mut item = to_item(&region, &state, 3);
        item.insert(
            ENTRIES.to_owned(),
            AttributeValue::M(HashMap::from([("k".to_owned(), AttributeValue::S("x".to_owned()))])),
        );
        let (read, version) = from_item(&item, "t");
        assert_eq!(version, 3);
        assert_eq!(read.refreshed_at, None, "a ledger read in part must be rebuilt from EC2");
    }
}
