//! What the SDK adapters share: the loaded AWS configuration (credentials, retries, timeouts),
//! one client per region, and an SDK error sorted into the engine's [`StoreError`]s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tracing::debug;

use crate::ids::Region;
use crate::store::StoreError;

/// Error codes EC2 uses for throttling; the SDK retries them, and what is left is `Throttled`.
pub(crate) const THROTTLING_CODES: &[&str] =
    &["RequestLimitExceeded", "Throttling", "ThrottlingException", "ThrottledException", "EC2ThrottledException"];

/// The AWS configuration both the Lambda and the command line use (`call_timeout`: the
/// longest one call may take, `CALL_TIMEOUT_SECONDS`): the default chain for
/// credentials (`profile` picks a named profile), `region` when given (no look-up then), and
/// retries and timeouts the engine's deadline arithmetic relies on.
pub async fn load_sdk_config(call_timeout: Duration, profile: Option<&str>, region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // EC2 throttles per account; generous retries keep a busy account from failing runs.
        .retry_config(RetryConfig::standard().with_max_attempts(8))
        // Bounded calls keep the engine's deadline margin honest.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(call_timeout.min(Duration::from_secs(15)))
                .operation_timeout(call_timeout)
                .build(),
        );
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    loader.load().await
}

/// One SDK client per region, derived on first use from one configuration (credentials,
/// retries, timeouts, any `AWS_ENDPOINT_URL[_SERVICE]`) and reused across invocations.
pub(crate) struct RegionalClients<C> {
    clients: Mutex<HashMap<Region, C>>,
    make: Box<dyn Fn(&Region) -> C + Send + Sync>,
}

impl<C: Clone> RegionalClients<C> {
    /// `make` builds the client of a region.
    pub(crate) fn new(make: impl Fn(&Region) -> C + Send + Sync + 'static) -> Self {
        Self { clients: Mutex::new(HashMap::new()), make: Box::new(make) }
    }

    pub(crate) fn get(&self, region: &Region) -> C {
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        clients.entry(region.clone()).or_insert_with(|| (self.make)(region)).clone()
    }
}

impl<C> std::fmt::Debug for RegionalClients<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f.debug_struct("RegionalClients").field("regions", &clients.keys().collect::<Vec<_>>()).finish()
    }
}

/// A call that failed before it was sent because its credentials could not be had (for a
/// target in another account: sts:AssumeRole refused or unanswered): nothing reached EC2, so
/// never a call that "may have happened".
fn credentials_failure<E: std::error::Error + 'static>(error: &SdkError<E, HttpResponse>) -> Option<StoreError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(failure) = current.downcast_ref::<CredentialsError>() {
            return Some(credentials_error(failure));
        }
        source = current.source();
    }
    None
}

/// STS's refusals (the role's trust policy, the stack's sts:AssumeRole statement, a region
/// where STS is not enabled): access denied. Anything else that kept credentials away (STS
/// unanswered, throttled, failing) sent nothing and is tried again later, as throttling is.
const CREDENTIAL_REFUSALS: &[&str] =
    &["AccessDenied", "InvalidClientTokenId", "ExpiredToken", "RegionDisabled", "MalformedPolicyDocument"];

/// Sorts a failure to get credentials by what the engine should do about it.
pub(crate) fn credentials_error(failure: &CredentialsError) -> StoreError {
    let text = format!("no credentials for the call: {}", DisplayErrorContext(failure));
    match failure {
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) => {
            StoreError::AccessDenied(text)
        }
        _ if CREDENTIAL_REFUSALS.iter().any(|code| text.contains(code)) => StoreError::AccessDenied(text),
        _ => StoreError::Throttled(text),
    }
}

/// Sorts an SDK error (EC2's, or KMS's for [`crate::store::kms`]) by what the engine should do about it.
pub(crate) fn store_error<E>(error: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = DisplayErrorContext(&error).to_string();
    let code = error.code().unwrap_or_default().to_owned();
    let message = error.message().unwrap_or_default().to_owned();
    let described = if code.is_empty() { text.clone() } else { format!("{code}: {message}") };
    if let Some(credentials) = credentials_failure(&error) {
        return credentials;
    }
    match &error {
        SdkError::ServiceError(_) => {}
        SdkError::ConstructionFailure(_) => {
            return StoreError::Refused { code: "ConstructionFailure".to_owned(), message: text };
        }
        // Timeouts, connection failures, unreadable answers: the call may have taken effect.
        _ => return StoreError::Unknown(text),
    }
    debug!(%code, %message, "EC2 error");
    match code.as_str() {
        "ResourceLimitExceeded" => StoreError::NoSlot(described),
        // KMS's NotFoundException: DescribeKey of a key or alias that does not exist.
        "InvalidSnapshot.NotFound" | "InvalidVolume.NotFound" | "NotFoundException" => StoreError::NotFound(described),
        "IncorrectState" => StoreError::NotReady(described),
        c if THROTTLING_CODES.contains(&c) => StoreError::Throttled(described),
        // KMS's own failures (before the KMS* refusals below): no definite answer.
        "KMSInternalException" | "DependencyTimeoutException" => StoreError::Unknown(described),
        c if c == "UnauthorizedOperation"
            || c == "AuthFailure"
            // Credentials a service does not accept (KMS's codes; EC2's is AuthFailure).
            || c.starts_with("ExpiredToken")
            || c == "UnrecognizedClientException"
            || c == "InvalidClientTokenId"
            || c == "InvalidSignatureException"
            || c == "OptInRequired"
            || c.contains("AccessDenied")
            || c.starts_with("KMS")
            || c.contains("KmsKey")
            || c.contains("KMSKey") =>
        {
            StoreError::AccessDenied(described)
        }
        "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => StoreError::Unknown(described),
        // Any other server-side failure may have taken effect; a 4xx is a definite refusal.
        _ if error.raw_response().is_some_and(|raw| raw.status().is_server_error()) => StoreError::Unknown(described),
        _ => StoreError::Refused { code, message },
    }
}
