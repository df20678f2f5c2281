//! CopySnapshot's `PresignedUrl`, as every other AWS SDK sends it (botocore's
//! `inject_presigned_url_ec2`, Java v2's `GeneratePreSignUrlInterceptor`, Ruby's
//! `CopyEncryptedSnapshot`, …) and aws-sdk-ec2 does not: a CopySnapshot request for the
//! *source* region's EC2 endpoint, presigned with SigV4 in the query string.
//!
//! Pure: the endpoint, the credentials and the time come in (src/ec2.rs resolves them from the
//! client's configuration); no I/O, no SDK client. Signing is aws-sigv4's, the signer
//! aws-sdk-ec2 itself uses.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// The EC2 API version aws-sdk-ec2 speaks, and the one the URL's request names.
pub const EC2_API_VERSION: &str = "2016-11-15";

/// How long the URL stays valid, as the other SDKs sign it (EC2 uses it at once).
pub const EXPIRES_IN: Duration = Duration::from_secs(3600);

/// The CopySnapshot parameters the URL carries: the ones that say what is copied where and
/// under which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySnapshotUrl<'a> {
    pub source_region: &'a str,
    pub source_snapshot_id: &'a str,
    /// The region the CopySnapshot call goes to.
    pub destination_region: &'a str,
    /// Sent as `Encrypted=true` when true; absent otherwise, as on the call itself.
    pub encrypted: bool,
    pub kms_key_id: Option<&'a str>,
}

/// Why no URL could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not presign CopySnapshot for the source region: {0}")]
pub struct PresignError(String);

impl CopySnapshotUrl<'_> {
    /// The query parameters of the presigned request, before signing, in the order the URL
    /// lists them.
    fn params(&self) -> Vec<(&str, &str)> {
        let mut params = vec![
            ("Action", "CopySnapshot"),
            ("Version", EC2_API_VERSION),
            ("SourceRegion", self.source_region),
            ("SourceSnapshotId", self.source_snapshot_id),
            ("DestinationRegion", self.destination_region),
        ];
        if self.encrypted {
            params.push(("Encrypted", "true"));
        }
        if let Some(key) = self.kms_key_id {
            params.push(("KmsKeyId", key));
        }
        params
    }

    /// The presigned URL: `GET {endpoint}/?Action=CopySnapshot&…`, signed with SigV4 in the
    /// query string for service `ec2` in the source region, only `host` signed, the payload
    /// hash of the empty body, `X-Amz-Security-Token` when the credentials carry one.
    /// `endpoint` is the source region's EC2 endpoint (`https://ec2.us-east-1.amazonaws.com`).
    pub fn presign(
        &self,
        endpoint: &str,
        credentials: &Credentials,
        time: SystemTime,
        expires_in: Duration,
    ) -> Result<String, PresignError> {
        let base = format!("{}/?{}", endpoint.trim_end_matches('/'), encode_query(self.params().into_iter()));
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires_in);
        let identity = credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.source_region)
            .name("ec2")
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| PresignError(e.to_string()))?
            .into();
        // No headers: the signer adds `host` from the URL and signs only that.
        let request = SignableRequest::new("GET", &base, std::iter::empty(), SignableBody::Bytes(&[]))
            .map_err(|e| PresignError(e.to_string()))?;
        let (instructions, _signature) = sign(request, &params).map_err(|e| PresignError(e.to_string()))?.into_parts();
        let (_headers, signed) = instructions.into_parts();
        Ok(format!("{base}&{}", encode_query(signed.iter().map(|(k, v)| (*k, v.as_ref())))))
    }
}

/// `k=v&…`, each part encoded as SigV4 encodes it (RFC 3986: everything but unreserved
/// characters as `%XX`), so the URL sent is the one that was signed.
fn encode_query<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    pairs.map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stamp: &str) -> SystemTime {
        let time = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").unwrap().and_utc();
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(time.timestamp()).unwrap())
    }

    fn query_of(url: &str) -> Vec<(String, String)> {
        let (_, query) = url.split_once('?').unwrap();
        query
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
        query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// aws-sdk-java-v2, GeneratePreSignUrlInterceptorTest: its URL carries only Action,
    /// Version, DestinationRegion, SourceRegion and SourceSnapshotId, and the default expiry
    /// of its presigner (7 days).
    #[test]
    fn reproduces_the_java_v2_sdk_test_vector() {
        let url = CopySnapshotUrl {
            source_region: "us-west-2",
            source_snapshot_id: "SNAPSHOT_ID",
            destination_region: "us-east-1",
            encrypted: false,
            kms_key_id: None,
        };
        let credentials = Credentials::new("akid", "skid", None, None, "test");
        let signed = url
            .presign(
                "https://ec2.us-west-2.amazonaws.com",
                &credentials,
                at("20200107T205609Z"),
                Duration::from_secs(604_800),
            )
            .unwrap();
        let query = query_of(&signed);
        assert_eq!(
            param(&query, "X-Amz-Signature"),
            Some("c1f5e34834292a86ff2b46b5e97cebaf2967b09641b4e2e60a382a37d137a03b"),
            "{signed}"
        );
        assert!(signed.starts_with("https://ec2.us-west-2.amazonaws.com/?Action=CopySnapshot&"), "{signed}");
        assert_eq!(param(&query, "X-Amz-Credential"), Some("akid%2F20200107%2Fus-west-2%2Fec2%2Faws4_request"));
        assert_eq!(param(&query, "X-Amz-SignedHeaders"), Some("host"));
        assert_eq!(param(&query, "X-Amz-Expires"), Some("604800"));
        assert_eq!(param(&query, "X-Amz-Security-Token"), None);
    }

    /// aws-sdk-ruby, the EC2 client spec for CopySnapshot: encrypted under a given key.
    #[test]
    fn reproduces_the_ruby_sdk_test_vector() {
        let url = CopySnapshotUrl {
            source_region: "us-east-1",
            source_snapshot_id: "snap-1234567890abcdef0",
            destination_region: "us-west-2",
            encrypted: true,
            kms_key_id: Some("238f8ec9-420a-0690-8ec9-009f34fc3ef5"),
        };
        let credentials = Credentials::new("akid", "secret", None, None, "test");
        let signed = url
            .presign("https://ec2.us-east-1.amazonaws.com", &credentials, at("20230124T000000Z"), EXPIRES_IN)
            .unwrap();
        let query = query_of(&signed);
        assert_eq!(
            param(&query, "X-Amz-Signature"),
            Some("c34b30736cc5cd6a10af02c1edb50aed3d7424577644fb912f676846a65311cf"),
            "{signed}"
        );
        assert_eq!(param(&query, "Encrypted"), Some("true"));
        assert_eq!(param(&query, "KmsKeyId"), Some("238f8ec9-420a-0690-8ec9-009f34fc3ef5"));
        assert_eq!(param(&query, "X-Amz-Expires"), Some("3600"));
    }

    #[test]
    fn temporary_credentials_send_their_session_token_signed() {
        let url = CopySnapshotUrl {
            source_region: "us-east-1",
            source_snapshot_id: "snap-1234567890abcdef0",
            destination_region: "eu-west-1",
            encrypted: false,
            kms_key_id: None,
        };
        let time = at("20230124T000000Z");
        let plain = Credentials::new("akid", "secret", None, None, "test");
        let temporary = Credentials::new("akid", "secret", Some("tok+en/with=odd chars".to_owned()), None, "test");
        let endpoint = "https://ec2.us-east-1.amazonaws.com";
        let with_token = url.presign(endpoint, &temporary, time, EXPIRES_IN).unwrap();
        let without = url.presign(endpoint, &plain, time, EXPIRES_IN).unwrap();
        let query = query_of(&with_token);
        assert_eq!(param(&query, "X-Amz-Security-Token"), Some("tok%2Ben%2Fwith%3Dodd%20chars"));
        // The token is part of the signed request, not appended afterwards.
        assert_ne!(param(&query, "X-Amz-Signature"), param(&query_of(&without), "X-Amz-Signature"));
    }

    #[test]
    fn values_are_encoded_as_sigv4_encodes_them() {
        assert_eq!(encode("alias/dr key+1~._-"), "alias%2Fdr%20key%2B1~._-");
        assert_eq!(encode("arn:aws:kms:eu-west-1:1:key/k"), "arn%3Aaws%3Akms%3Aeu-west-1%3A1%3Akey%2Fk");
    }
}
