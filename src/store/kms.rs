//! The key a request names, resolved with aws-sdk-kms (kms:DescribeKey in the target region;
//! and a source's key, whether AWS manages it):
//! one client per region, from the same loaded configuration as EC2's, and KMS's errors sorted
//! into the engine's [`StoreError`]s. Used by [`Ec2Store`](crate::store::ec2::Ec2Store).

use aws_sdk_kms::Client;

use crate::ids::Region;
use crate::store::sdk::{RegionalClients, store_error};
use crate::store::{KeyDescription, StoreError};

/// kms:DescribeKey, one client per region.
#[derive(Debug)]
pub struct KeyLookup {
    clients: RegionalClients<Client>,
}

impl KeyLookup {
    /// Clients with the configuration's credentials, retries, timeouts and any
    /// `AWS_ENDPOINT_URL[_KMS]`, with the region set per call.
    pub fn new(sdk_config: &aws_config::SdkConfig) -> Self {
        let base = aws_sdk_kms::config::Builder::from(sdk_config).build();
        let clients = RegionalClients::new(move |region: &Region| {
            let region = aws_sdk_kms::config::Region::new(region.as_str().to_owned());
            Client::from_conf(base.to_builder().region(region).build())
        });
        Self { clients }
    }

    /// The key `key` names in `region`. DescribeKey accepts all four forms a request may use
    /// (key id, key ARN, alias name, alias ARN) and always answers with the key's ARN.
    pub async fn describe(&self, region: &Region, key: &str) -> Result<KeyDescription, StoreError> {
        let output = self.clients.get(region).describe_key().key_id(key).send().await.map_err(store_error)?;
        let Some(metadata) = output.key_metadata() else {
            return Err(StoreError::Unknown(format!("kms:DescribeKey answered without the metadata of {key}")));
        };
        let Some(arn) = metadata.arn().filter(|arn| !arn.is_empty()) else {
            return Err(StoreError::Unknown(format!("kms:DescribeKey answered without the ARN of {key}")));
        };
        Ok(KeyDescription {
            arn: arn.to_owned(),
            state: metadata.key_state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            spec: metadata.key_spec().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            aws_managed: metadata.key_manager() == Some(&aws_sdk_kms::types::KeyManagerType::Aws),
        })
    }
}
