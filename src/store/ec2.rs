//! The [`SnapshotStore`] on aws-sdk-ec2 (with [`crate::store::kms`] for the one KMS call and
//! [`crate::store::dynamo_slots`] for the slot ledger): the only modules that touch an SDK client. It
//! translates domain types to EC2 calls and back, keeps one client per region (derived from one loaded
//! configuration and reused across invocations), and sorts EC2's error codes into the
//! engine's [`StoreError`]s.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::endpoint::{self, ResolveEndpoint};
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::copy_snapshot::CopySnapshotError;
use aws_sdk_ec2::operation::describe_snapshots::builders::DescribeSnapshotsFluentBuilder;
use aws_sdk_ec2::types::{self, ResourceType, StorageTier, TagSpecification};
use tracing::warn;

use crate::ids::{Place, Region, RoleArn, SnapshotId};
use crate::store::dynamo_slots::DynamoSlotLedger;
use crate::store::kms::KeyLookup;
use crate::store::presign::{CopySnapshotUrl, EXPIRES_IN};
use crate::store::sdk::{RegionalClients, THROTTLING_CODES, credentials_error, store_error};
use crate::store::{
    CopySpec, CopyStatus, DeleteOutcome, ENCRYPTION_TAG, KeyDescription, MAX_FILTER_VALUES, SOURCE_ACCOUNT_TAG,
    SOURCE_REGION_TAG, SOURCE_SNAPSHOT_TAG, SnapshotState, SnapshotStore, SourceSelector, SourceSnapshot, StoreError,
    Tag, find_tag, is_copy_from, real_volume, source_origin,
};

/// The largest page DescribeSnapshots returns.
const PAGE_SIZE: i32 = 1000;

/// EC2 through aws-sdk-ec2, one client per region and account.
#[derive(Debug)]
pub struct Ec2Store {
    /// This account's clients: the configuration's own credentials.
    here: Arc<AccountClients>,
    /// The configuration other accounts' credentials are assumed with.
    sdk_config: SdkConfig,
    /// Other accounts' clients, made on first use of each role and kept: the assumed
    /// credentials are cached and refreshed by the SDK, across invocations.
    others: Mutex<HashMap<RoleArn, Arc<AccountClients>>>,
    /// The deployment's slot ledger, when `SLOT_TABLE` names one (see
    /// [`SnapshotStore::slot_ledger`]).
    ledger: Option<DynamoSlotLedger>,
    /// This account's id (sts:GetCallerIdentity, asked once), for [`SOURCE_ACCOUNT_TAG`].
    own_account: tokio::sync::OnceCell<String>,
}

/// One account's clients: EC2 per region, the presigner and KMS, all signing with the same
/// credentials.
#[derive(Debug)]
struct AccountClients {
    clients: RegionalClients<Client>,
    presigner: Presigner,
    keys: KeyLookup,
}

impl AccountClients {
    fn new(sdk_config: &SdkConfig) -> Self {
        let base = aws_sdk_ec2::config::Builder::from(sdk_config).build();
        Self {
            clients: RegionalClients::new(move |region| {
                let region = aws_sdk_ec2::config::Region::new(region.as_str().to_owned());
                Client::from_conf(base.to_builder().region(region).build())
            }),
            presigner: Presigner::new(sdk_config),
            keys: KeyLookup::new(sdk_config),
        }
    }
}

impl Ec2Store {
    /// Clients derived from one loaded configuration (credentials, retries, timeouts and any
    /// `AWS_ENDPOINT_URL[_EC2]`), with the region set per call. Tests hand in a configuration
    /// pointed at an emulator.
    pub fn new(sdk_config: &aws_config::SdkConfig) -> Self {
        Self {
            here: Arc::new(AccountClients::new(sdk_config)),
            sdk_config: sdk_config.clone(),
            others: Mutex::new(HashMap::new()),
            ledger: None,
            own_account: tokio::sync::OnceCell::new(),
        }
    }

    /// This store with the deployment's slot ledger: `pending_limit` is then reserved in it.
    pub fn with_slot_ledger(mut self, ledger: DynamoSlotLedger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// The clients of the place's account: this account's, or those that assume its role.
    async fn account(&self, place: &Place) -> Arc<AccountClients> {
        let Some(role) = &place.role else { return Arc::clone(&self.here) };
        if let Some(clients) = self.others.lock().unwrap_or_else(|p| p.into_inner()).get(role) {
            return Arc::clone(clients);
        }
        let config = assume_role_config(&self.sdk_config, role).await;
        let made = Arc::new(AccountClients::new(&config));
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(others.entry(role.clone()).or_insert(made))
    }

    async fn client(&self, place: &Place) -> Client {
        self.account(place).await.clients.get(&place.region)
    }

    /// This account's id: what copies in another account carry as [`SOURCE_ACCOUNT_TAG`].
    async fn own_account(&self) -> Result<&str, StoreError> {
        let id =
            self.own_account
                .get_or_try_init(|| async {
                    let answer = aws_sdk_sts::Client::new(&self.sdk_config).get_caller_identity().send().await;
                    let answer = answer.map_err(store_error)?;
                    answer.account().filter(|a| !a.is_empty()).map(str::to_owned).ok_or_else(|| {
                        StoreError::Unknown("sts:GetCallerIdentity answered without the account".to_owned())
                    })
                })
                .await?;
        Ok(id)
    }

    /// The filter that keeps, in another account, this account's copies only (none here: a
    /// copy here carrying [`SOURCE_ACCOUNT_TAG`] is another account's, made into this one, and
    /// [`is_own_here`] leaves it out, EC2 having no filter for a tag's absence).
    async fn own_copies_filter(&self, place: &Place) -> Result<Option<types::Filter>, StoreError> {
        if place.role.is_none() {
            return Ok(None);
        }
        let account = self.own_account().await?;
        Ok(Some(ec2_filter(&format!("tag:{SOURCE_ACCOUNT_TAG}"), [account])))
    }

    /// One paginated DescribeSnapshots of this deployment's snapshots in `place` (owner self,
    /// the place's account; [`own_copies_filter`](Self::own_copies_filter) and
    /// [`is_own_here`] keep another account's copies out).
    async fn describe_own(
        &self,
        place: &Place,
        customize: impl FnOnce(DescribeSnapshotsFluentBuilder) -> DescribeSnapshotsFluentBuilder,
    ) -> Result<Vec<types::Snapshot>, StoreError> {
        let own = self.own_copies_filter(place).await?;
        let mut found =
            self.describe(place, |r| own.into_iter().fold(customize(r.owner_ids("self")), |r, f| r.filters(f))).await?;
        found.retain(|s| is_own_here(place, &tags_of(s)));
        Ok(found)
    }

    /// One paginated DescribeSnapshots.
    async fn describe(
        &self,
        place: &Place,
        customize: impl FnOnce(DescribeSnapshotsFluentBuilder) -> DescribeSnapshotsFluentBuilder,
    ) -> Result<Vec<types::Snapshot>, StoreError> {
        let request = customize(self.client(place).await.describe_snapshots().max_results(PAGE_SIZE));
        request.into_paginator().items().send().try_collect().await.map_err(store_error)
    }

    /// DescribeSnapshots for many values of one filter: one paginated call per 200 values.
    async fn describe_by(
        &self,
        place: &Place,
        filter: &str,
        values: &[&str],
        owner_self: bool,
        extra: &[types::Filter],
    ) -> Result<Vec<types::Snapshot>, StoreError> {
        let mut found = Vec::new();
        for chunk in values.chunks(MAX_FILTER_VALUES) {
            let page = self
                .describe(place, |r| {
                    let r = r.filters(ec2_filter(filter, chunk.iter().copied()));
                    let r = extra.iter().cloned().fold(r, |r, f| r.filters(f));
                    if owner_self { r.owner_ids("self") } else { r }
                })
                .await?;
            found.extend(page);
        }
        Ok(found)
    }

    /// Every copy of this deployment's in `target` tagged as a copy from `source_region`.
    async fn copies_from(&self, target: &Place, source_region: &Region) -> Result<Vec<types::Snapshot>, StoreError> {
        let from_region = ec2_filter(&format!("tag:{SOURCE_REGION_TAG}"), [source_region.as_str()]);
        self.describe_own(target, |r| r.filters(from_region)).await
    }

    /// ModifySnapshotAttribute on `createVolumePermission`, for one account. Adding an
    /// account already there, or removing one that is not, changes nothing: safe to repeat.
    async fn modify_share(
        &self,
        region: &Region,
        source: &SnapshotId,
        account: &str,
        operation: types::OperationType,
    ) -> Result<(), StoreError> {
        // OperationType and UserIds, as the CLI's `--operation-type add --user-ids` sends
        // them (the other documented form, CreateVolumePermission.Add.N, moto does not read).
        self.client(&Place::here(region.clone()))
            .await
            .modify_snapshot_attribute()
            .snapshot_id(source.as_str())
            .attribute(types::SnapshotAttributeName::CreateVolumePermission)
            .operation_type(operation)
            .user_ids(account)
            .send()
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// This configuration with the credentials of `role`, assumed through STS (aws-config's
/// provider, with the configuration's region, retries and endpoint), under a session name that
/// says who assumed it. The clients' identity cache keeps them until shortly before they
/// expire and then assumes the role again. `sdk_config` is one [`load_sdk_config`] loaded (the
/// provider needs its time source).
///
/// [`load_sdk_config`]: crate::store::sdk::load_sdk_config
async fn assume_role_config(sdk_config: &SdkConfig, role: &RoleArn) -> SdkConfig {
    let provider = AssumeRoleProvider::builder(role.as_str())
        .session_name(session_name(std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok().as_deref()))
        .configure(sdk_config)
        .build()
        .await;
    sdk_config.to_builder().credentials_provider(SharedCredentialsProvider::new(provider)).build()
}

/// The role session's name, as the target account's CloudTrail shows it: `copy-snapshots`, and
/// the Lambda function's name when there is one (at most 64 of `[\w+=,.@-]`).
fn session_name(function: Option<&str>) -> String {
    let name = match function {
        Some(function) if !function.is_empty() => format!("copy-snapshots@{function}"),
        _ => "copy-snapshots".to_owned(),
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c);
    name.chars().map(|c| if allowed(c) { c } else { '-' }).take(64).collect()
}

impl SnapshotStore for Ec2Store {
    fn slot_ledger(&self) -> Option<&impl crate::store::ledger::SlotLedger> {
        self.ledger.as_ref()
    }

    async fn describe_sources(
        &self,
        region: &Region,
        selector: &SourceSelector,
    ) -> Result<Vec<SourceSnapshot>, StoreError> {
        let here = Place::here(region.clone());
        let snapshots = match selector {
            // Ids through the snapshot-id filter, not SnapshotIds: a missing id then comes back
            // as absent (the engine names every missing one) instead of failing the call. No
            // owner filter, so snapshots shared with this account can be copied too.
            SourceSelector::Ids(ids) => {
                let ids: Vec<&str> = ids.iter().map(SnapshotId::as_str).collect();
                self.describe_by(&here, "snapshot-id", &ids, false, &[]).await?
            }
            SourceSelector::Filters(filters) => {
                let filters: Vec<types::Filter> =
                    filters.iter().map(|f| ec2_filter(&f.name, f.values.iter().map(String::as_str))).collect();
                self.describe(&here, |r| filters.into_iter().fold(r.owner_ids("self"), |r, f| r.filters(f))).await?
            }
        };
        Ok(snapshots.iter().filter_map(to_source).collect())
    }

    async fn find_copies(
        &self,
        target: &Place,
        source_region: &Region,
        source_ids: &[SnapshotId],
    ) -> Result<Vec<CopyStatus>, StoreError> {
        let from_region = ec2_filter(&format!("tag:{SOURCE_REGION_TAG}"), [source_region.as_str()]);
        let snapshots = if source_ids.len() <= MAX_FILTER_VALUES {
            let ids: Vec<&str> = source_ids.iter().map(SnapshotId::as_str).collect();
            let extra: Vec<types::Filter> =
                std::iter::once(from_region).chain(self.own_copies_filter(target).await?).collect();
            self.describe_by(target, &format!("tag:{SOURCE_SNAPSHOT_TAG}"), &ids, true, &extra).await?
        } else {
            // Many sources: one paginated call for every copy from that region beats many
            // chunked ones; keep the wanted ones here.
            self.copies_from(target, source_region).await?
        };
        let wanted: HashSet<&str> = source_ids.iter().map(SnapshotId::as_str).collect();
        Ok(snapshots
            .iter()
            .filter_map(|s| {
                let tags = tags_of(s);
                (is_copy_from(&tags, source_region, &wanted) && is_own_here(target, &tags))
                    .then(|| copy_status(s, &tags))
                    .flatten()
            })
            .collect())
    }

    async fn list_copies(&self, target: &Place, source_region: &Region) -> Result<Vec<CopyStatus>, StoreError> {
        let snapshots = self.copies_from(target, source_region).await?;
        Ok(snapshots
            .iter()
            .filter_map(|s| {
                let tags = tags_of(s);
                // The region filter ran in EC2; the snapshot-id tag must be there too, as the
                // role's DeleteSnapshot condition requires.
                (find_tag(&tags, SOURCE_REGION_TAG) == Some(source_region.as_str()))
                    .then(|| copy_status(s, &tags))
                    .flatten()
            })
            .collect())
    }

    async fn list_pending_copies(&self, target: &Place) -> Result<Vec<CopyStatus>, StoreError> {
        let ours = ec2_filter("tag-key", [SOURCE_SNAPSHOT_TAG]);
        let pending = ec2_filter("status", ["pending"]);
        let snapshots = self.describe_own(target, |r| r.filters(ours).filters(pending)).await?;
        Ok(snapshots.iter().filter_map(to_copy).collect())
    }

    async fn start_copy(&self, spec: &CopySpec) -> Result<SnapshotId, StoreError> {
        let mut tags: Vec<types::Tag> =
            spec.tags.iter().map(|t| types::Tag::builder().key(&t.key).value(&t.value).build()).collect();
        if spec.target.role.is_some() {
            // Whose copy it is, in an account that may hold several accounts' copies. Without
            // it nothing is sent: never a start that may have happened.
            let account = self.own_account().await.map_err(|e| match e {
                StoreError::Unknown(message) => StoreError::Throttled(message),
                other => other,
            })?;
            tags.push(types::Tag::builder().key(SOURCE_ACCOUNT_TAG).value(account).build());
        }
        let tags = TagSpecification::builder().resource_type(ResourceType::Snapshot).set_tags(Some(tags)).build();
        // The copy is made by the target's account, so the URL is signed with its credentials.
        let account = self.account(&spec.target).await;
        let presigned_url = account.presigner.copy_snapshot_url(spec).await?;
        let output = account
            .clients
            .get(&spec.target.region)
            .copy_snapshot()
            .source_region(spec.source_region.as_str())
            .source_snapshot_id(spec.source_id.as_str())
            // What botocore, the JavaScript, Go, Java, Ruby, C++ and PHP SDKs add to every
            // CopySnapshot and aws-sdk-ec2 does not (see Presigner). A throttled call retried
            // by the SDK sends the same URL again: it is valid for an hour.
            .destination_region(spec.target.region.as_str())
            .presigned_url(presigned_url)
            .description(&spec.description)
            // The API reference: "You cannot set this parameter to false"; omit it unless true.
            .set_encrypted(spec.encrypted.then_some(true))
            .set_kms_key_id(spec.kms_key_id.clone())
            .set_completion_duration_minutes(spec.completion_duration_minutes.and_then(|m| i32::try_from(m).ok()))
            .tag_specifications(tags)
            .customize()
            // CopySnapshot has no idempotency token: a retried call that had reached EC2 makes
            // a second copy. Only throttling (refused before anything happened) is retried;
            // anything else goes back to the engine, which looks for the copy by its tags.
            .config_override(aws_sdk_ec2::config::Builder::default().retry_classifier(RetryOnlyThrottling))
            .send()
            .await
            .map_err(store_error)?;
        let id = output.snapshot_id().unwrap_or_default();
        SnapshotId::parse(id)
            .map_err(|e| StoreError::Unknown(format!("CopySnapshot answered without a usable id: {e}")))
    }

    async fn describe_copies(&self, target: &Place, copy_ids: &[SnapshotId]) -> Result<Vec<CopyStatus>, StoreError> {
        // The snapshot-id filter, not SnapshotIds: a copy not visible yet (EC2 is eventually
        // consistent) is just absent instead of failing the whole poll.
        let ids: Vec<&str> = copy_ids.iter().map(SnapshotId::as_str).collect();
        let snapshots = self.describe_by(target, "snapshot-id", &ids, true, &[]).await?;
        Ok(snapshots.iter().filter_map(to_copy).collect())
    }

    async fn delete_copy(&self, target: &Place, copy_id: &SnapshotId) -> Result<DeleteOutcome, StoreError> {
        // InvalidSnapshot.NotFound: gone before this call (or deleted by an attempt the SDK
        // retried): the snapshot is gone either way, but this run does not count it.
        match self.client(target).await.delete_snapshot().snapshot_id(copy_id.as_str()).send().await {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(e) => match store_error(e) {
                StoreError::NotFound(_) => Ok(DeleteOutcome::AlreadyGone),
                other => Err(other),
            },
        }
    }

    async fn existing_volumes(&self, region: &Region, volume_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        // The volume-id filter, not VolumeIds: a volume that does not exist is then left out
        // of the answer instead of failing the call with InvalidVolume.NotFound (which names
        // only one of the missing ids). Should EC2 answer InvalidVolume.NotFound all the same,
        // each id of that batch is asked for on its own, where the error is the answer.
        let client = self.client(&Place::here(region.clone())).await;
        let mut existing = HashSet::new();
        for chunk in volume_ids.chunks(MAX_FILTER_VALUES) {
            let filter = ec2_filter("volume-id", chunk.iter().map(String::as_str));
            let answer: Result<Vec<types::Volume>, _> =
                client.describe_volumes().filters(filter).into_paginator().items().send().try_collect().await;
            match answer {
                Ok(volumes) => existing.extend(
                    volumes.iter().filter(|v| volume_exists(v)).filter_map(|v| v.volume_id().map(str::to_owned)),
                ),
                Err(error) if error.code() == Some("InvalidVolume.NotFound") => {
                    for id in chunk {
                        match client.describe_volumes().volume_ids(id).send().await {
                            Ok(answer) => existing.extend(
                                answer
                                    .volumes()
                                    .iter()
                                    .filter(|v| volume_exists(v))
                                    .filter_map(|v| v.volume_id().map(str::to_owned)),
                            ),
                            Err(error) if error.code() == Some("InvalidVolume.NotFound") => {}
                            Err(error) => return Err(store_error(error)),
                        }
                    }
                }
                Err(error) => return Err(store_error(error)),
            }
        }
        Ok(existing)
    }

    async fn images_using(
        &self,
        place: &Place,
        snapshot_ids: &[SnapshotId],
    ) -> Result<HashMap<SnapshotId, String>, StoreError> {
        let wanted: HashSet<&str> = snapshot_ids.iter().map(SnapshotId::as_str).collect();
        let client = self.client(place).await;
        let mut using = HashMap::new();
        for chunk in snapshot_ids.chunks(MAX_FILTER_VALUES) {
            let filter = ec2_filter("block-device-mapping.snapshot-id", chunk.iter().map(SnapshotId::as_str));
            let images: Vec<types::Image> = client
                .describe_images()
                .owners("self")
                .filters(filter)
                .include_deprecated(true)
                .include_disabled(true)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(store_error)?;
            for image in &images {
                let image_id = image.image_id().unwrap_or("an AMI");
                for mapping in image.block_device_mappings() {
                    let Some(snapshot) = mapping.ebs().and_then(|ebs| ebs.snapshot_id()) else { continue };
                    if wanted.contains(snapshot)
                        && let Ok(id) = SnapshotId::parse(snapshot)
                    {
                        using.insert(id, image_id.to_owned());
                    }
                }
            }
        }
        Ok(using)
    }

    async fn describe_key(&self, place: &Place, key: &str) -> Result<KeyDescription, StoreError> {
        self.account(place).await.keys.describe(&place.region, key).await
    }

    async fn shared_with(&self, region: &Region, source: &SnapshotId) -> Result<Vec<String>, StoreError> {
        let answer = self
            .client(&Place::here(region.clone()))
            .await
            .describe_snapshot_attribute()
            .snapshot_id(source.as_str())
            .attribute(types::SnapshotAttributeName::CreateVolumePermission)
            .send()
            .await
            .map_err(store_error)?;
        Ok(answer
            .create_volume_permissions()
            .iter()
            .filter_map(|permission| match (permission.user_id(), permission.group()) {
                (Some(account), _) => Some(account.to_owned()),
                (None, Some(group)) => Some(group.as_str().to_owned()),
                (None, None) => None,
            })
            .collect())
    }

    async fn sources_shared_with(&self, region: &Region, account: &str) -> Result<Vec<SourceSnapshot>, StoreError> {
        let here = Place::here(region.clone());
        let shared = self.describe(&here, |r| r.owner_ids("self").restorable_by_user_ids(account)).await?;
        Ok(shared.iter().filter_map(to_source).collect())
    }

    async fn tag_source(&self, region: &Region, source: &SnapshotId, tag: &Tag) -> Result<(), StoreError> {
        let tag = types::Tag::builder().key(&tag.key).value(&tag.value).build();
        let client = self.client(&Place::here(region.clone())).await;
        client.create_tags().resources(source.as_str()).tags(tag).send().await.map_err(store_error)?;
        Ok(())
    }

    async fn untag_source(&self, region: &Region, source: &SnapshotId, key: &str) -> Result<(), StoreError> {
        let tag = types::Tag::builder().key(key).build();
        let client = self.client(&Place::here(region.clone())).await;
        client.delete_tags().resources(source.as_str()).tags(tag).send().await.map_err(store_error)?;
        Ok(())
    }

    async fn share(&self, region: &Region, source: &SnapshotId, account: &str) -> Result<(), StoreError> {
        self.modify_share(region, source, account, types::OperationType::Add).await
    }

    async fn unshare(&self, region: &Region, source: &SnapshotId, account: &str) -> Result<(), StoreError> {
        self.modify_share(region, source, account, types::OperationType::Remove).await
    }
}

/// A volume DescribeVolumes lists that is not on its way out (`deleting`, `deleted`).
fn volume_exists(volume: &types::Volume) -> bool {
    !matches!(volume.state(), Some(types::VolumeState::Deleting | types::VolumeState::Deleted))
}

/// Makes CopySnapshot's `PresignedUrl` (src/presign.rs) with what the client itself uses.
///
/// - The endpoint: aws-sdk-ec2's own resolver for the *source* region (so the partition's:
///   `ec2.cn-north-1.amazonaws.com.cn`, `ec2.us-gov-west-1.amazonaws.com`), with the
///   configuration's FIPS and dual-stack settings, as the Ruby SDK resolves it — but never an
///   `AWS_ENDPOINT_URL[_EC2]` override. The URL is for EC2 in the destination region to call
///   the source region with; an override (an emulator, a proxy, a VPC endpoint of the
///   destination region) is where this client sends its calls, not an endpoint of the source
///   region that EC2 could use. So the fault emulator sees AWS's host for the source region,
///   not its loopback address, and checks exactly that.
/// - The credentials: the configuration's provider, the one the clients sign with.
///   aws-sdk-ec2's `Config` no longer hands its provider out, so it is kept from the
///   `SdkConfig`; and the clients' identity cache is not reachable from here, so this keeps its
///   own: credentials are reused until 5 minutes before they expire, and for at most 15
///   minutes (the SDK's own default for credentials without an expiry).
#[derive(Debug)]
struct Presigner {
    credentials: Option<SharedCredentialsProvider>,
    use_fips: bool,
    use_dual_stack: bool,
    cached: Mutex<Option<(Credentials, SystemTime)>>,
}

/// How long credentials without an expiry are reused.
const CREDENTIALS_REUSE: Duration = Duration::from_secs(15 * 60);
/// Fresh credentials are fetched this long before the cached ones expire.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(5 * 60);

impl Presigner {
    fn new(sdk_config: &SdkConfig) -> Self {
        Self {
            credentials: sdk_config.credentials_provider(),
            use_fips: sdk_config.use_fips().unwrap_or(false),
            use_dual_stack: sdk_config.use_dual_stack().unwrap_or(false),
            cached: Mutex::new(None),
        }
    }

    async fn copy_snapshot_url(&self, spec: &CopySpec) -> Result<String, StoreError> {
        let endpoint = self.source_endpoint(&spec.source_region).await?;
        let credentials = self.credentials().await?;
        let url = CopySnapshotUrl {
            source_region: spec.source_region.as_str(),
            source_snapshot_id: spec.source_id.as_str(),
            destination_region: spec.target.region.as_str(),
            encrypted: spec.encrypted,
            kms_key_id: spec.kms_key_id.as_deref(),
        };
        // Never logged: it carries the session token.
        url.presign(&endpoint, &credentials, SystemTime::now(), EXPIRES_IN)
            .map_err(|e| StoreError::Refused { code: "PresignedUrl".to_owned(), message: e.to_string() })
    }

    /// The source region's EC2 endpoint, as aws-sdk-ec2 resolves it without an override.
    async fn source_endpoint(&self, region: &Region) -> Result<String, StoreError> {
        let refused = |message: String| StoreError::Refused { code: "PresignedUrl".to_owned(), message };
        let params = endpoint::Params::builder()
            .region(region.as_str())
            .use_fips(self.use_fips)
            .use_dual_stack(self.use_dual_stack)
            .build()
            .map_err(|e| refused(format!("no EC2 endpoint parameters for {region}: {e}")))?;
        let resolved = endpoint::DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|e| refused(format!("no EC2 endpoint for {region}: {e}")))?;
        Ok(resolved.url().to_owned())
    }

    async fn credentials(&self) -> Result<Credentials, StoreError> {
        let now = SystemTime::now();
        if let Some((credentials, until)) = self.cached.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && now < *until
        {
            return Ok(credentials.clone());
        }
        let Some(provider) = &self.credentials else {
            return Err(StoreError::AccessDenied("no credentials are configured to presign CopySnapshot".to_owned()));
        };
        // A provider that fails here would fail the SDK's own call the same way; nothing was
        // sent yet, so never a call that may have happened.
        let credentials = provider.provide_credentials().await.map_err(|e| credentials_error(&e))?;
        let until = credentials
            .expiry()
            .and_then(|expiry| expiry.checked_sub(CREDENTIALS_MARGIN))
            .map_or(now + CREDENTIALS_REUSE, |refresh| refresh.min(now + CREDENTIALS_REUSE));
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((credentials.clone(), until));
        Ok(credentials)
    }
}

/// Forbids retrying a CopySnapshot unless EC2 throttled it.
#[derive(Debug)]
struct RetryOnlyThrottling;

impl ClassifyRetry for RetryOnlyThrottling {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let throttled = error
            .as_operation_error()
            .and_then(|e| e.downcast_ref::<CopySnapshotError>())
            .and_then(ProvideErrorMetadata::code)
            .is_some_and(|code| THROTTLING_CODES.contains(&code));
        if throttled { RetryAction::NoActionIndicated } else { RetryAction::RetryForbidden }
    }

    fn name(&self) -> &'static str {
        "copy-snapshots: retry CopySnapshot only when throttled"
    }
}

/// Whether a copy listed in `place` is this deployment's: in this account, one that does not
/// carry [`SOURCE_ACCOUNT_TAG`] (a copy carrying it was made into this account by another
/// account's deployment, for which this one is the recovery account); in another account, the
/// listing's own filter has kept this account's only.
fn is_own_here(place: &Place, tags: &[Tag]) -> bool {
    place.role.is_some() || find_tag(tags, SOURCE_ACCOUNT_TAG).is_none()
}

fn ec2_filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> types::Filter {
    types::Filter::builder().name(name).set_values(Some(values.into_iter().map(str::to_owned).collect())).build()
}

fn tags_of(snapshot: &types::Snapshot) -> Vec<Tag> {
    snapshot.tags().iter().filter_map(|t| Some(Tag::new(t.key()?, t.value().unwrap_or_default()))).collect()
}

fn snapshot_id(snapshot: &types::Snapshot) -> Option<SnapshotId> {
    let id = snapshot.snapshot_id()?;
    SnapshotId::parse(id).map_err(|e| warn!(error = %e, "EC2 listed a snapshot with an unexpected id")).ok()
}

fn state_of(snapshot: &types::Snapshot) -> SnapshotState {
    snapshot.state().map_or(SnapshotState::Other("unknown".to_owned()), |s| SnapshotState::parse(s.as_str()))
}

fn to_source(snapshot: &types::Snapshot) -> Option<SourceSnapshot> {
    Some(SourceSnapshot {
        id: snapshot_id(snapshot)?,
        state: state_of(snapshot),
        size_gib: snapshot.volume_size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        encrypted: snapshot.encrypted().unwrap_or(false),
        archived: snapshot.storage_tier() == Some(&StorageTier::Archive),
        tags: tags_of(snapshot),
        start_time: snapshot.start_time().and_then(|t| std::time::SystemTime::try_from(*t).ok()),
        volume_id: real_volume(snapshot.volume_id()),
        kms_key_id: snapshot.kms_key_id().map(str::to_owned),
    })
}

fn to_copy(snapshot: &types::Snapshot) -> Option<CopyStatus> {
    copy_status(snapshot, &tags_of(snapshot))
}

fn copy_status(snapshot: &types::Snapshot, tags: &[Tag]) -> Option<CopyStatus> {
    let source_id = SnapshotId::parse(find_tag(tags, SOURCE_SNAPSHOT_TAG)?).ok()?;
    let (source_volume_id, source_start_time) = source_origin(tags);
    Some(CopyStatus {
        id: snapshot_id(snapshot)?,
        source_id,
        state: state_of(snapshot),
        progress: snapshot.progress().and_then(|p| p.trim_end_matches('%').trim().parse().ok()),
        encrypted: snapshot.encrypted().unwrap_or(false),
        kms_key_id: snapshot.kms_key_id().map(str::to_owned),
        state_message: snapshot.state_message().map(str::to_owned),
        start_time: snapshot.start_time().and_then(|t| SystemTime::try_from(*t).ok()),
        requested_encryption: find_tag(tags, ENCRYPTION_TAG).map(str::to_owned),
        source_volume_id,
        source_start_time,
        size_gib: snapshot.volume_size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_credential_types::provider::future::ProvideCredentials as CredentialsFuture;

    use super::*;

    fn presigner_for(config: SdkConfig) -> Presigner {
        Presigner::new(&config)
    }

    async fn endpoint_of(presigner: &Presigner, region: &str) -> String {
        presigner.source_endpoint(&Region::parse(region).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn the_source_endpoint_is_the_partitions_and_never_the_override() {
        // An emulator's address, as `AWS_ENDPOINT_URL` sets it: the URL still names AWS.
        let config = SdkConfig::builder().endpoint_url("http://127.0.0.1:4566").build();
        let presigner = presigner_for(config);
        assert_eq!(endpoint_of(&presigner, "us-west-2").await, "https://ec2.us-west-2.amazonaws.com");
        assert_eq!(endpoint_of(&presigner, "cn-north-1").await, "https://ec2.cn-north-1.amazonaws.com.cn");
        assert_eq!(endpoint_of(&presigner, "us-gov-west-1").await, "https://ec2.us-gov-west-1.amazonaws.com");
        let fips = presigner_for(SdkConfig::builder().use_fips(true).build());
        assert_eq!(endpoint_of(&fips, "us-east-1").await, "https://ec2-fips.us-east-1.amazonaws.com");
    }

    #[derive(Debug)]
    struct Counting(Arc<AtomicUsize>, Option<SystemTime>);

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> CredentialsFuture<'a>
        where
            Self: 'a,
        {
            let n = self.0.fetch_add(1, Ordering::Relaxed);
            CredentialsFuture::ready(Ok(Credentials::new(format!("akid{n}"), "secret", None, self.1, "counting")))
        }
    }

    async fn access_keys(expiry: Option<SystemTime>) -> (Vec<String>, usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let provider = SharedCredentialsProvider::new(Counting(Arc::clone(&calls), expiry));
        let presigner = presigner_for(SdkConfig::builder().credentials_provider(provider).build());
        let mut keys = Vec::new();
        for _ in 0..3 {
            keys.push(presigner.credentials().await.unwrap().access_key_id().to_owned());
        }
        (keys, calls.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn credentials_are_the_clients_and_reused_until_near_their_expiry() {
        let (keys, calls) = access_keys(None).await;
        assert_eq!((keys, calls), (vec!["akid0".to_owned(); 3], 1));
        let (keys, calls) = access_keys(Some(SystemTime::now() + Duration::from_secs(3600))).await;
        assert_eq!((keys, calls), (vec!["akid0".to_owned(); 3], 1));
        // Credentials about to expire are fetched again for each URL.
        let (keys, calls) = access_keys(Some(SystemTime::now() + Duration::from_secs(60))).await;
        assert_eq!((keys, calls), (vec!["akid0".to_owned(), "akid1".to_owned(), "akid2".to_owned()], 3));
    }

    #[tokio::test]
    async fn no_credentials_is_access_denied_before_any_call() {
        let spec = CopySpec {
            source_id: SnapshotId::parse("snap-0123456789abcdef0").unwrap(),
            source_region: Region::parse("us-east-1").unwrap(),
            target: Place::here(Region::parse("eu-west-1").unwrap()),
            description: String::new(),
            encrypted: false,
            kms_key_id: None,
            tags: vec![],
            completion_duration_minutes: None,
        };
        let error = presigner_for(SdkConfig::builder().build()).copy_snapshot_url(&spec).await.unwrap_err();
        assert!(matches!(error, StoreError::AccessDenied(_)), "{error:?}");
    }
}
