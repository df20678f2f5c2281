//! The Lambda bootstrap: logging, settings from the environment, one AWS configuration, and
//! the runtime loop over [`handle_lambda_event`]. Unchanged by the command line: the binary
//! comes here whenever Lambda starts it.

use lambda_runtime::{Error, LambdaEvent, service_fn};

use crate::Settings;
use crate::ec2::{Ec2Store, load_sdk_config};
use crate::handler::{Payload, handle_lambda_event};
use crate::logging;

/// The environment variable Lambda sets for the runtime API; its presence means "in Lambda".
pub const RUNTIME_API_VARIABLE: &str = "AWS_LAMBDA_RUNTIME_API";

/// Serves invocations until Lambda stops the process.
pub async fn run() -> Result<(), Error> {
    let log_level = logging::init();
    let settings = Settings::from_env().inspect_err(|e| tracing::error!(error = %e, "bad settings"))?;
    let sdk_config = load_sdk_config(&settings, None, None).await;
    let store = Ec2Store::new(&sdk_config);
    let (settings, store, log_level) = (&settings, &store, &log_level);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Payload>| {
        handle_lambda_event(event, settings, store, log_level)
    }))
    .await
}
