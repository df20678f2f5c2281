//! The Lambda bootstrap: logging, settings from the environment, one AWS configuration, and
//! the runtime loop over [`handle_lambda_event`]. Unchanged by the command line: the binary
//! comes here whenever Lambda starts it.

use lambda_runtime::{Error, LambdaEvent, service_fn};

use crate::Settings;
use crate::entry::handler::{Payload, handle_lambda_event};
use crate::entry::logging;
use crate::store::dynamo_slots::DynamoSlotLedger;
use crate::store::ec2::Ec2Store;
use crate::store::sdk::load_sdk_config;

/// The environment variable Lambda sets for the runtime API; its presence means "in Lambda".
pub const RUNTIME_API_VARIABLE: &str = "AWS_LAMBDA_RUNTIME_API";
/// The DynamoDB table of the deployment's slot ledger (the stack's `SlotTable`).
pub const SLOT_TABLE_VARIABLE: &str = "SLOT_TABLE";

/// Serves invocations until Lambda stops the process.
pub async fn run() -> Result<(), Error> {
    let log_level = logging::init();
    let settings = Settings::from_env().inspect_err(|e| tracing::error!(error = %e, "bad settings"))?;
    let sdk_config = load_sdk_config(settings.call_timeout, None, None).await;
    let store = Ec2Store::new(&sdk_config);
    // Only the deployed stack sets SLOT_TABLE: there `pending_limit` is reserved atomically in
    // the table; without it (a function deployed by hand) the engine counts with EC2.
    let store = match std::env::var(SLOT_TABLE_VARIABLE).ok().filter(|t| !t.trim().is_empty()) {
        Some(table) => {
            tracing::info!(%table, "pending_limit is reserved in the slot table");
            store.with_slot_ledger(DynamoSlotLedger::new(&sdk_config, table.trim()))
        }
        None => store,
    };
    let (settings, store, log_level) = (&settings, &store, &log_level);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Payload>| {
        handle_lambda_event(event, settings, store, log_level)
    }))
    .await
}
