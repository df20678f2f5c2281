//! The Lambda bootstrap: logging, settings from the environment, one AWS configuration, and
//! the runtime loop. Everything else lives in the library.

// The runtime's future nests the whole invocation (handler → engine → SDK calls); computing
// its layout can pass rustc's default query depth of 128, depending on evaluation order
// (seen on a fresh incremental build, not on a warm one).
#![recursion_limit = "256"]

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use copy_snapshots::ec2::Ec2Store;
use copy_snapshots::handler::{Payload, handle_lambda_event};
use copy_snapshots::{Settings, logging};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let log_level = logging::init();
    let settings = Settings::from_env().inspect_err(|e| tracing::error!(error = %e, "bad settings"))?;
    let sdk_config = aws_config::defaults(BehaviorVersion::latest())
        // EC2 throttles per account; generous retries keep a busy account from failing runs.
        .retry_config(RetryConfig::standard().with_max_attempts(8))
        // Bounded calls keep the engine's deadline margin honest.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(settings.call_timeout.min(Duration::from_secs(15)))
                .operation_timeout(settings.call_timeout)
                .build(),
        )
        .load()
        .await;
    let store = Ec2Store::new(&sdk_config);
    let (settings, store, log_level) = (&settings, &store, &log_level);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Payload>| {
        handle_lambda_event(event, settings, store, log_level)
    }))
    .await
}
