#!/usr/bin/env python3
"""A fault-injecting EC2 for the reliability tests: moto's server, patched to behave like EC2
where moto does not, plus faults on demand.

What it adds to moto:
- copies stay `pending` for (120 s + 20 s per GiB) x time_scale and report whole-percent progress;
- a per-region limit on pending copies (this function's and foreign ones), answered with
  ResourceLimitExceeded;
- foreign pending copies occupying slots;
- a share of EC2 calls answered RequestLimitExceeded, and streaks of throttled calls longer
  than the SDK's 8 attempts (`throttle_streak`: the next N calls, optionally only of
  `throttle_actions`, all answered RequestLimitExceeded 503, so the caller sees throttling
  outlast its retries);
- CopySnapshot of chosen sources denied as EC2 answers an SCP or IAM explicit deny (403
  UnauthorizedOperation, nothing copied), with the denial recorded;
- chosen sources whose copies end in `error` ("Given key ID is not accessible");
- CopySnapshot honouring Encrypted/KmsKeyId as EC2 does: the copy reports the key's ARN
  whatever form was sent (moto echoes the text sent: an alias), and a key moto's KMS does not
  know ends the copy in `error`; `ignore_kms_key` makes copies go under the region's default
  key instead (EC2 ignoring the key asked for, as reported without a PresignedUrl); an explicit
  `Encrypted=false`, which the API reference says cannot be set, is recorded;
- CopySnapshot's PresignedUrl checked as EC2 documents it (see _presigned_url_problem): a
  missing or wrong one is accepted, and the copy ends in `error` later, its reason recorded;
- a share of CopySnapshot calls that make the copy but lose the answer (a 500 after the copy
  exists), and a visibility lag during which new copies are missing from DescribeSnapshots;
- copies that stall at 0% and run at speeds that do not follow their size;
- DescribeSnapshots as EC2 pages it (fewer results than MaxResults, with a NextToken), and
  EC2's answer to an unknown filter name or more than 200 values in a filter;
- DescribeSnapshots' `status` filter seeing the timed state (a copy is `pending`, then
  `completed` or `error`, for the filter exactly as DescribeSnapshots reports it: moto's filter
  reads the patched `status` property), `tag-key` matching this project's tracking tag, and
  OwnerIds honoured (`self` is the caller's account, an account id that account; moto ignores
  OwnerIds and would list every snapshot for any owner); snapshots of another account, for
  that check;
- DeleteSnapshot as the deployed role's DeleteOwnCopies statement allows it (template.yaml): only
  in the target region, only on snapshots whose copy-snapshots:source-region tag is the stack's
  region or the target region and whose copy-snapshots:source-snapshot-id tag is like `snap-*`
  (in another account, as recovery-account.yaml's role allows it: only snapshots tagged
  copy-snapshots:source-account = the default account, with the tracking tags)
  (UnauthorizedOperation otherwise; set "role_regions" {"stack": …, "target": …} to match the
  deployment under test, or null for a caller with a person's rights, as verify-aws runs), and refused for chosen snapshots as EC2 refuses one an AMI uses (InvalidSnapshot.InUse) or a
  locked one;
- source snapshots of one volume and of chosen ages (StartTime in the past), and sources that
  vanish (as Data Lifecycle Manager prunes the source region), for retention;
- DynamoDB (the slot ledger's table) served one request at a time, so a conditional write is
  atomic as DynamoDB's is;
- accounts as EC2 keeps them apart: credentials from sts:AssumeRole act in the role's account
  (moto maps them); CopySnapshot of another account's snapshot works only once it is shared with
  the caller's account (createVolumePermission, or public), and is InvalidSnapshot.NotFound
  otherwise (moto looks only in the caller's account); sharing a snapshot encrypted under the AWS
  managed key aws/ebs is refused (InvalidParameter); DescribeSnapshots honours
  RestorableByUserIds; the copy quota and `max_pending` are per region and account
  (`REGION@ACCOUNT` for an account other than the default one); every share change is recorded;
  presigned URLs signed with assumed-role credentials are verified with their secret;
- a record of every EC2 call (DescribeSnapshots with its filters and owners) and every copy,
  with the most copies carrying the tracking tag pending at once (counted over the region,
  whichever invocation started them).

Control API (JSON), next to the EC2 API on the same port:
  POST /_fault/config   {"throttle_rate": 0.3, "time_scale": 0.001, "region_limit": 20,
                         "failing_sources": {"snap-…": "message"}, "lost_answer_rate": 0.3,
                         "visibility_lag_seconds": 2, "page_size": 3, "stall_seconds": 1,
                         "speed_spread": [0.5, 2.0], "throttle_streak": 12,
                         "throttle_actions": ["CopySnapshot"],
                         "denied_sources": {"snap-…": "message"}, "secrets": {"AKID…": "secret"},
                         "role_regions": {"stack": "us-east-1", "target": "eu-west-1"} | null,
                         "ignore_kms_key": false}
                        (throttle_streak counts down from the value set, call by call; secrets:
                        access keys besides the environment's whose presigned URLs the emulator
                        can verify)
  POST /_fault/foreign  {"region": "eu-west-1", "count": 20, "seconds": 3, "tags": {}, "owner_id": "…",
                         "account": "…" (whose region they fill; default this one)}
  POST /_fault/sources  {"region": "us-east-1", "sizes": [8, 64], "tags": {"k": "v"}, "state": "completed",
                         "one_volume": false, "ages_days": [0, 3], "owner_id": "210987654321",
                         "kms_key": "alias/aws/ebs" (encrypted under it; default unencrypted),
                         "account": "…" (whose snapshots; default this one)}
                        -> {"snapshot_ids": [...], "volume_ids": [...]}
  POST /_fault/refuse_delete {"snapshot_ids": {"snap-…": "in-use" | "locked"}}
  POST /_fault/forget   {"region": "us-east-1", "snapshot_ids": ["snap-…"]}  (gone from the region)
  GET  /_fault/record   {"calls": [...], "copies": [...], "max_pending": {...}, "no_slot_answers": n,
                         "shares": [...], "unshared_copies": n,
                         "denied_copies": [...], "streak_throttled": n, "throttle_streak_left": n}
  POST /_fault/reset    forget the record (not the snapshots)

Usage: fault_ec2.py PORT   (listens on 127.0.0.1 only)
"""
import datetime
import fnmatch
import functools
import hashlib
import hmac
import json
import os
import random
import sys
import threading
import time
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

import botocore.session  # noqa: E402
from botocore.config import Config as BotocoreConfig  # noqa: E402
from moto.core.responses import ActionResult, EmptyResult  # noqa: E402
from moto.ec2.exceptions import EC2ClientError  # noqa: E402
from moto.ec2.models import ec2_backends  # noqa: E402
from moto.ec2.models import elastic_block_store as ebs  # noqa: E402
from moto.ec2.responses.elastic_block_store import ElasticBlockStore  # noqa: E402
from moto.iam.models import get_account_id_from  # noqa: E402
from moto.kms.models import kms_backends  # noqa: E402
from moto.sts.models import sts_backends  # noqa: E402
from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

TRACKING_TAG = "copy-snapshots:source-snapshot-id"
SOURCE_REGION_TAG = "copy-snapshots:source-region"
SOURCE_ACCOUNT_TAG = "copy-snapshots:source-account"
ACCOUNT = "123456789012"
KEY_NOT_ACCESSIBLE = "Given key ID is not accessible"

LOCK = threading.RLock()
CONFIG = {
    "throttle_rate": 0.0,
    "time_scale": 0.001,
    "region_limit": 20,
    "failing_sources": {},
    "lost_answer_rate": 0.0,
    "visibility_lag_seconds": 0.0,
    "page_size": None,
    "stall_seconds": 0.0,
    "speed_spread": [1.0, 1.0],
    "secrets": {},
    # Source snapshot id -> the message of the 403 UnauthorizedOperation its CopySnapshot gets.
    "denied_sources": {},
    # The next this-many EC2 calls (of `throttle_actions`, when set) are throttled.
    "throttle_streak": 0,
    "throttle_actions": None,
    # The regions of the role's DeleteSnapshot conditions: the stack's (source) and the target.
    # None: the caller is a person with their own rights (verify-aws), not the function's role.
    "role_regions": {"stack": "us-east-1", "target": "eu-west-1"},
    # CopySnapshot ignores KmsKeyId: the copy goes under the region's default key.
    "ignore_kms_key": False,
}
RECORD = {
    "calls": [],
    "copies": [],
    "max_pending": {},
    "no_slot_answers": 0,
    "explicit_encrypted_false": 0,
    "lost_answers": 0,
    "refused_deletes": 0,
    "pending_deletes": 0,
    "denied_copies": [],
    # ModifySnapshotAttribute createVolumePermission changes, in order: {"snapshot_id",
    # "operation", "user_ids", "at"} (monotonic seconds).
    "shares": [],
    # CopySnapshot calls refused because the source was not shared with the caller's account.
    "unshared_copies": 0,
    "streak_throttled": 0,
    "throttle_streak_left": 0,
}
# DescribeSnapshots' filter names (EC2 API reference), besides tag:<key>.
SNAPSHOT_FILTERS = {
    "description", "encrypted", "owner-alias", "owner-id", "progress", "snapshot-id", "start-time", "status",
    "storage-tier", "tag-key", "transfer-type", "volume-id", "volume-size",
}
MAX_FILTER_VALUES = 200
RANDOM = random.Random(int(os.environ.get("FAULT_SEED", "1")))
# Snapshots whose deletion EC2 refuses, and how: "in-use" (an AMI) or "locked".
REFUSED_DELETES = {}


# --- copies that take time -------------------------------------------------------------------

def _timing(snapshot):
    return getattr(snapshot, "_fault_timing", None)


def _state(snapshot):
    """(status, percent, message) now, for a snapshot with fault timing."""
    start, duration, error, stall = snapshot._fault_timing
    elapsed = max(0.0, time.monotonic() - start - stall)
    if error is not None and elapsed >= duration / 2:
        return "error", 0, error
    if elapsed >= duration:
        return "completed", 100, None
    percent = int(elapsed / duration * 100) if duration > 0 else 100
    return "pending", min(percent, 99), None


def _status_get(self):
    if _timing(self) is not None:
        return _state(self)[0]
    return self.__dict__.get("_fault_status", "completed")


def _status_set(self, value):
    self.__dict__["_fault_status"] = value


def _progress_get(self):
    if _timing(self) is not None:
        return f"{_state(self)[1]}%"
    return "100%" if _status_get(self) == "completed" else "0%"


def _state_message_get(self):
    return _state(self)[2] if _timing(self) is not None else None


ebs.Snapshot.status = property(_status_get, _status_set)
ebs.Snapshot.progress = property(_progress_get)
ebs.Snapshot.state_message = property(_state_message_get)


def _pending_in(backend):
    return [s for s in backend.snapshots.values() if _timing(s) is not None and _status_get(s) == "pending"]


def _key_arn(region, key_id, account=ACCOUNT):
    """The ARN of the key `key_id` (any of KMS's four forms) names in `region` of `account`, or None."""
    keys = kms_backends[account][region]
    try:
        return keys.describe_key(key_id).arn
    except Exception:  # moto raises NotFoundException and friends
        return None


def _default_ebs_key_arn(region, account=ACCOUNT):
    """The region's aws/ebs key, made on first use as EC2 makes it: an AWS managed key (moto
    makes its reserved aliases' keys as customer managed ones)."""
    keys = kms_backends[account][region]
    key = keys.describe_key("alias/aws/ebs")
    key.key_manager = "AWS"
    return key.arn


def _key_known(region, key_id, account=ACCOUNT):
    return _key_arn(region, key_id, account) is not None


# --- CopySnapshot's PresignedUrl --------------------------------------------------------------

EC2_API_VERSION = "2016-11-15"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Longest validity SigV4 allows a presigned URL.
MAX_EXPIRES = 604800


@functools.lru_cache(maxsize=None)
def _ec2_host(region):
    """The region's EC2 host as botocore resolves it, whatever AWS_ENDPOINT_URL says.

    The function names AWS's endpoint of the source region in the URL even when its calls go
    to an emulator (the URL is for EC2 to use, not for the caller), so that is what is checked
    here, by another SDK's resolver: never this emulator's loopback address.
    """
    client = botocore.session.get_session().create_client(
        "ec2", region_name=region, aws_access_key_id="x", aws_secret_access_key="x",
        config=BotocoreConfig(ignore_configured_endpoint_urls=True),
    )
    return urlsplit(client.meta.endpoint_url).netloc


def _secret_of(access_key):
    secrets = {"testing": "testing"}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        secrets[os.environ["AWS_ACCESS_KEY_ID"]] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    secrets.update(CONFIG["secrets"])
    if access_key in secrets:
        return secrets[access_key]
    # Credentials from sts:AssumeRole (a role in another account): moto keeps their secret.
    assumed = sts_backends[get_account_id_from(access_key)]["aws"].get_assumed_role_from_access_key(access_key)
    return assumed.secret_access_key if assumed is not None else None


def _hmac(key, text):
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _presigned_url_problem(call, region):
    """Why the PresignedUrl of a CopySnapshot called in `region` with `call`'s parameters is
    not what EC2 documents (a CopySnapshot for the source region's endpoint, SigV4-presigned
    for the source region and service ec2, carrying the call's parameters); None when it is."""
    url = call.get("PresignedUrl")
    if not url:
        return "no PresignedUrl"
    source_region = call.get("SourceRegion")
    if call.get("DestinationRegion") != region:
        return f"DestinationRegion is {call.get('DestinationRegion')!r}, the call went to {region!r}"
    parts = urlsplit(url)
    host = _ec2_host(source_region)
    if (parts.scheme, parts.netloc) != ("https", host):
        return f"the URL is for {parts.scheme}://{parts.netloc}, not the source region's https://{host}"
    if parts.path not in ("", "/"):
        return f"the URL's path is {parts.path!r}"
    pairs = [pair.split("=", 1) for pair in parts.query.split("&") if pair]
    if any(len(pair) != 2 for pair in pairs):
        return f"the URL's query is malformed: {parts.query!r}"
    query = {unquote(k): unquote(v) for k, v in pairs}
    if len(query) != len(pairs):
        return "the URL repeats a parameter"
    expected = {
        "Action": "CopySnapshot", "Version": EC2_API_VERSION, "SourceRegion": source_region,
        "SourceSnapshotId": call.get("SourceSnapshotId"), "DestinationRegion": region,
        # Present in the URL exactly when the call sends them.
        "Encrypted": call.get("Encrypted"), "KmsKeyId": call.get("KmsKeyId"),
    }
    for name, value in expected.items():
        if query.get(name) != value:
            return f"{name} is {query.get(name)!r} in the URL and {value!r} in the call"
    if query.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return f"X-Amz-Algorithm is {query.get('X-Amz-Algorithm')!r}"
    scope = query.get("X-Amz-Credential", "").split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return f"X-Amz-Credential is {query.get('X-Amz-Credential')!r}"
    access_key, day, signed_region, service, _ = scope
    if signed_region != source_region:
        return f"signed for region {signed_region}, not the source region {source_region}"
    if service != "ec2":
        return f"signed for service {service}, not ec2"
    if query.get("X-Amz-SignedHeaders") != "host":
        return f"X-Amz-SignedHeaders is {query.get('X-Amz-SignedHeaders')!r}, not host"
    expires = query.get("X-Amz-Expires")
    if expires is None or not expires.isdigit() or not 0 < int(expires) <= MAX_EXPIRES:
        return f"X-Amz-Expires is {expires!r}"
    stamp = query.get("X-Amz-Date", "")
    try:
        signed_at = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return f"X-Amz-Date is {stamp!r}"
    now = datetime.datetime.now(datetime.timezone.utc)
    if stamp[:8] != day or not signed_at - datetime.timedelta(minutes=5) <= now <= signed_at + datetime.timedelta(
        seconds=int(expires)
    ):
        return f"signed at {stamp} for {day}, {expires} s: not valid now"
    secret = _secret_of(access_key)
    if secret is None:
        return f"signed with access key {access_key}, which the emulator does not know"
    canonical_query = "&".join(
        f"{k}={v}" for k, v in sorted(
            (quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in query.items() if k != "X-Amz-Signature"
        )
    )
    canonical_request = "\n".join(["GET", "/", canonical_query, f"host:{host}\n", "host", EMPTY_SHA256])
    string_to_sign = "\n".join([
        "AWS4-HMAC-SHA256", stamp, f"{day}/{signed_region}/{service}/aws4_request",
        hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
    ])
    key = ("AWS4" + secret).encode("utf-8")
    for part in (day, signed_region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, query.get("X-Amz-Signature", "")):
        return "the signature does not match the URL (signed with another secret, or the URL changed after signing)"
    return None


def copy_snapshot(self):
    """ElasticBlockStore.copy_snapshot, with EC2's quota, encryption and timing."""
    source_snapshot_id = self._get_param("SourceSnapshotId")
    source_region = self._get_param("SourceRegion")
    description = self._get_param("Description")
    snapshot_tags = self._parse_tag_specification().get("snapshot", {})
    kms_key_id = self._get_param("KmsKeyId")
    encrypted_param = self._get_param("Encrypted")
    encrypted = str(encrypted_param).lower() == "true"
    self.error_on_dryrun()
    # The values as sent (moto's _get_param turns "true" into True).
    presign_call = {
        name: (self.querystring.get(name) or [None])[0]
        for name in ("PresignedUrl", "SourceRegion", "SourceSnapshotId", "DestinationRegion", "Encrypted", "KmsKeyId")
    }
    if encrypted_param is not None and not encrypted:
        with LOCK:
            RECORD["explicit_encrypted_false"] += 1

    source = _visible_source(self.current_account, source_region, source_snapshot_id)
    if source.status != "completed":
        raise EC2ClientError("IncorrectState", f"Snapshot '{source_snapshot_id}' is not in a completed state")
    if kms_key_id and not (encrypted or source.encrypted):
        raise EC2ClientError("InvalidParameterDependency", "The parameter KmsKeyId requires the parameter Encrypted to be set.")
    with LOCK:
        pending = _pending_in(self.ec2_backend)
        limit = CONFIG["region_limit"]
        if len(pending) >= limit:
            RECORD["no_slot_answers"] += 1
            raise EC2ClientError(
                "ResourceLimitExceeded",
                f"You have reached the maximum of {limit} concurrent snapshot copies to this region.",
            )
        encrypted = encrypted or source.encrypted
        region = self.region
        # EC2 reports a copy's key by its ARN, however the call named it; without one (or when
        # told to ignore it, as EC2 was reported to), the region's default key, aws/ebs, which
        # moto makes on first use.
        if kms_key_id and not CONFIG["ignore_kms_key"]:
            key = _key_arn(region, kms_key_id, self.current_account) or kms_key_id
        elif encrypted:
            key = _default_ebs_key_arn(region, self.current_account)
        else:
            key = None
        # moto's own copy_snapshot looks for the source in the caller's account only; a
        # source shared by another account is copied the same way here.
        snapshot = ebs.Snapshot(
            self.ec2_backend, ebs.random_snapshot_id(), volume=source.volume, description=description,
            encrypted=encrypted, kms_key_id=key,
        )
        self.ec2_backend.snapshots[snapshot.id] = snapshot
        snapshot.encrypted = encrypted
        snapshot.add_tags(snapshot_tags)
        error = CONFIG["failing_sources"].get(source_snapshot_id)
        presigned_url_problem = _presigned_url_problem(presign_call, region)
        if error is None and presigned_url_problem is not None:
            # EC2: "If you supply an invalid or expired pre-signed URL, the snapshot copy
            # operation fails asynchronously, and the snapshot will move to an error state."
            error = f"The PresignedUrl is invalid: {presigned_url_problem}"
        if error is None and kms_key_id and not _key_known(region, kms_key_id, self.current_account):
            error = KEY_NOT_ACCESSIBLE
        slowest, fastest = CONFIG["speed_spread"]
        speed = RANDOM.uniform(slowest, fastest)
        stall = RANDOM.uniform(0.0, CONFIG["stall_seconds"])
        duration = (120 + 20 * source.volume.size) * CONFIG["time_scale"] / speed
        snapshot._fault_timing = (time.monotonic(), duration, error, stall)
        tracked = [s for s in _pending_in(self.ec2_backend) if s.get_tags() and TRACKING_TAG in _tag_dict(s)]
        # Quotas are per region and account: another account's region is `REGION@ACCOUNT`.
        place = region if self.current_account == ACCOUNT else f"{region}@{self.current_account}"
        RECORD["max_pending"][place] = max(RECORD["max_pending"].get(place, 0), len(tracked))
        RECORD["copies"].append({
            "region": region,
            "account": self.current_account,
            # When EC2 accepted the copy (the emulator's monotonic clock, seconds): the order
            # of starts across regions.
            "started_at": time.monotonic(),
            "snapshot_id": snapshot.id,
            "source_snapshot_id": source_snapshot_id,
            "tags": _tag_dict(snapshot),
            "encrypted": encrypted,
            "kms_key_id": key,
            "size_gib": source.volume.size,
            "fails_with": error,
            "presigned_url_problem": presigned_url_problem,
            "deleted": False,
        })
    return ActionResult({"SnapshotId": snapshot.id, "Tags": snapshot.tag_set})


def _visible_source(account, region, snapshot_id):
    """The snapshot `snapshot_id` in `region` as `account` may copy it: its own, or another
    account's that is shared with it (createVolumePermission) or public. Anything else does not
    exist as far as EC2 tells that account."""
    for owner in [account] + [a for a in list(ec2_backends.keys()) if a != account]:
        snapshot = ec2_backends[owner][region].snapshots.get(snapshot_id)
        if snapshot is None:
            continue
        if owner == account or account in snapshot.create_volume_permission_userids \
                or "all" in snapshot.create_volume_permission_groups:
            return snapshot
        with LOCK:
            RECORD["unshared_copies"] += 1
        break
    raise EC2ClientError("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")


def modify_snapshot_attribute(self):
    """ElasticBlockStore.modify_snapshot_attribute, refusing what EC2 refuses: sharing a
    snapshot encrypted under the AWS managed key (aws/ebs), which no other account may use.
    Every change is recorded."""
    snapshot_id = self._get_param("SnapshotId")
    operation = self._get_param("OperationType")
    user_ids = self._get_param("UserIds", []) or []
    snapshot = self.ec2_backend.get_snapshot(snapshot_id)
    if operation == "add" and snapshot.encrypted and _is_aws_managed(self.region, snapshot.kms_key_id):
        raise EC2ClientError(
            "InvalidParameter", "Snapshots encrypted with the AWS Managed CMK can't be shared. Specify another snapshot."
        )
    result = ORIGINAL_MODIFY_SNAPSHOT_ATTRIBUTE(self)
    with LOCK:
        RECORD["shares"].append(
            {"snapshot_id": snapshot_id, "operation": operation, "user_ids": list(user_ids), "at": time.monotonic()}
        )
    return result


def _is_aws_managed(region, key_id):
    if not key_id:
        return False
    try:
        return kms_backends[ACCOUNT][region].describe_key(key_id).key_manager == "AWS"
    except Exception:  # a key moto does not know
        return False


def describe_snapshots(self):
    """ElasticBlockStore.describe_snapshots, with EC2's filter checks, paging and listing lag."""
    filters = self._filters_from_querystring()
    for name, values in filters.items():
        if name not in SNAPSHOT_FILTERS and not name.startswith("tag:"):
            raise EC2ClientError("InvalidParameterValue", f"The filter '{name}' is invalid")
        if len(values) > MAX_FILTER_VALUES:
            raise EC2ClientError(
                "FilterLimitExceeded", f"The maximum number of filter values specified on a single call is {MAX_FILTER_VALUES}"
            )
    snapshot_ids = self._get_param("SnapshotIds", [])
    snapshots = self.ec2_backend.describe_snapshots(snapshot_ids=snapshot_ids, filters=filters)
    # OwnerIds (the query's Owner.N): `self` is the caller's account, `amazon` the AMI owner
    # alias, anything else an account id. Without it, every snapshot the caller may see.
    owners = self._get_param("OwnerIds", []) or []
    if owners:
        wanted = {self.current_account if owner == "self" else owner for owner in owners}
        snapshots = [s for s in snapshots if s.owner_id in wanted or ("amazon" in wanted and s.from_ami)]
    # RestorableByUserIds (RestorableBy.N), which moto ignores: snapshots those accounts may
    # create volumes from (shared with them, or public).
    restorable_by = set(self._get_param("RestorableByUserIds", []) or [])
    if restorable_by:
        snapshots = [
            s for s in snapshots
            if restorable_by & s.create_volume_permission_userids or "all" in s.create_volume_permission_groups
        ]
    lag = CONFIG["visibility_lag_seconds"]
    now = time.monotonic()
    snapshots = [s for s in snapshots if _timing(s) is None or now - _timing(s)[0] >= lag]
    max_results = self._get_int_param("MaxResults") or len(snapshots) or 1
    page = min(max_results, CONFIG["page_size"] or max_results)
    first = int(self._get_param("NextToken") or 0)
    answer = {"Snapshots": snapshots[first:first + page]}
    if first + page < len(snapshots):
        answer["NextToken"] = str(first + page)
    return ActionResult(answer)


def delete_snapshot(self):
    """ElasticBlockStore.delete_snapshot, as the deployed role allows it: only this project's copies."""
    snapshot_id = self._get_param("SnapshotId")
    self.error_on_dryrun()
    snapshot = self.ec2_backend.snapshots.get(snapshot_id)
    tags = _tag_dict(snapshot) if snapshot is not None else {}
    with LOCK:
        regions = dict(CONFIG["role_regions"]) if CONFIG["role_regions"] is not None else None
    # The role's statement: Resource arn:…:ec2:${TargetRegion}::snapshot/*, StringEquals
    # aws:ResourceTag/copy-snapshots:source-region [AWS::Region, TargetRegion], StringLike
    # aws:ResourceTag/copy-snapshots:source-snapshot-id snap-*.
    allowed = regions is None or (
        self.ec2_backend.region_name == regions["target"]
        and tags.get(SOURCE_REGION_TAG) in (regions["stack"], regions["target"])
        and fnmatch.fnmatchcase(tags.get(TRACKING_TAG, ""), "snap-*")
        and SOURCE_ACCOUNT_TAG not in tags
    )
    if self.current_account != ACCOUNT:
        # A recovery account's role (recovery-account.yaml's DeleteOwnCopies): only this
        # project's copies of the production account (this emulator's default one).
        allowed = (
            tags.get(SOURCE_ACCOUNT_TAG) == ACCOUNT
            and SOURCE_REGION_TAG in tags
            and fnmatch.fnmatchcase(tags.get(TRACKING_TAG, ""), "snap-*")
        )
    if snapshot is not None and not allowed:
        raise EC2ClientError(
            "UnauthorizedOperation",
            f"You are not authorized to perform this operation. User is not authorized to perform: "
            f"ec2:DeleteSnapshot on resource {snapshot_id} because no identity-based policy allows it",
        )
    with LOCK:
        refusal = REFUSED_DELETES.get(snapshot_id)
        if refusal is not None:
            RECORD["refused_deletes"] += 1
    if refusal == "in-use":
        raise EC2ClientError(
            "InvalidSnapshot.InUse", f"The snapshot {snapshot_id} is currently in use by ami-0123456789abcdef0"
        )
    if refusal == "locked":
        raise EC2ClientError("SnapshotLocked", f"The snapshot {snapshot_id} is locked and cannot be deleted")
    if snapshot is not None and _timing(snapshot) is not None and _status_get(snapshot) == "pending":
        with LOCK:
            RECORD["pending_deletes"] += 1
    self.ec2_backend.delete_snapshot(snapshot_id)
    with LOCK:
        for copy in RECORD["copies"]:
            if copy["snapshot_id"] == snapshot_id:
                copy["deleted"] = True
    return EmptyResult()


def _tag_dict(snapshot):
    return {t["key"]: t["value"] for t in snapshot.get_tags()}


ORIGINAL_MODIFY_SNAPSHOT_ATTRIBUTE = ElasticBlockStore.modify_snapshot_attribute
ElasticBlockStore.modify_snapshot_attribute = modify_snapshot_attribute
ElasticBlockStore.copy_snapshot = copy_snapshot
ElasticBlockStore.describe_snapshots = describe_snapshots
ElasticBlockStore.delete_snapshot = delete_snapshot


# --- control API -----------------------------------------------------------------------------

def _new_snapshot(
    region, size, tags, state="completed", timing=None, volume=None, age_days=0.0, owner_id=None, account=ACCOUNT,
    kms_key=None,
):
    backend = ec2_backends[account][region]
    if volume is None:
        volume = backend.create_volume(size=size, zone_name=f"{region}a")
    # owner_id: a snapshot another account owns and shares with this one.
    snapshot = backend.create_snapshot(volume.id, "fault_ec2 snapshot", owner_id=owner_id)
    snapshot.add_tags(tags)
    snapshot.status = state
    if kms_key:
        # Taken of a volume encrypted under `kms_key` (an alias such as alias/aws/ebs, or a key).
        snapshot.encrypted = True
        aws_managed = kms_key == "alias/aws/ebs"
        snapshot.kms_key_id = _default_ebs_key_arn(region) if aws_managed else (_key_arn(region, kms_key) or kms_key)
    if age_days:
        snapshot.start_time = snapshot.start_time - datetime.timedelta(days=age_days)
    if timing is not None:
        snapshot._fault_timing = timing
    return snapshot


def control(request):
    path = request.path
    body = request.get_json(silent=True) or {}
    with LOCK:
        if path == "/_fault/config":
            CONFIG.update(body)
            if "throttle_streak" in body:
                RECORD["throttle_streak_left"] = int(body["throttle_streak"])
            return dict(CONFIG)
        if path == "/_fault/foreign":
            # Copies other services (DLM, AWS Backup) or, with this project's tags, other
            # deployments started: they hold slots of the region's quota for `seconds`.
            for _ in range(int(body["count"])):
                timing = (time.monotonic(), float(body["seconds"]), None, 0.0)
                _new_snapshot(
                    body["region"], 100, body.get("tags", {}), timing=timing, owner_id=body.get("owner_id"),
                    account=body.get("account", ACCOUNT),
                )
            return {"pending": len(_pending_in(ec2_backends[body.get("account", ACCOUNT)][body["region"]]))}
        if path == "/_fault/sources":
            region, sizes = body["region"], body["sizes"]
            ages = body.get("ages_days") or [0.0] * len(sizes)
            volume = None
            if body.get("one_volume"):
                volume = ec2_backends[body.get("account", ACCOUNT)][region].create_volume(size=sizes[0], zone_name=f"{region}a")
            made = [
                _new_snapshot(
                    region,
                    size,
                    body.get("tags", {}),
                    body.get("state", "completed"),
                    volume=volume,
                    age_days=age,
                    owner_id=body.get("owner_id"),
                    kms_key=body.get("kms_key"),
                    account=body.get("account", ACCOUNT),
                )
                for size, age in zip(sizes, ages)
            ]
            return {"snapshot_ids": [s.id for s in made], "volume_ids": [s.volume.id for s in made]}
        if path == "/_fault/refuse_delete":
            REFUSED_DELETES.update(body["snapshot_ids"])
            return {"refused": sorted(REFUSED_DELETES)}
        if path == "/_fault/forget":
            backend = ec2_backends[ACCOUNT][body["region"]]
            for snapshot_id in body["snapshot_ids"]:
                backend.snapshots.pop(snapshot_id, None)
            return {}
        if path == "/_fault/record":
            return RECORD
        if path == "/_fault/reset":
            RECORD["calls"].clear()
            RECORD["copies"].clear()
            RECORD["max_pending"].clear()
            RECORD["no_slot_answers"] = 0
            RECORD["explicit_encrypted_false"] = 0
            RECORD["lost_answers"] = 0
            RECORD["refused_deletes"] = 0
            RECORD["pending_deletes"] = 0
            RECORD["denied_copies"].clear()
            RECORD["shares"].clear()
            RECORD["unshared_copies"] = 0
            RECORD["streak_throttled"] = 0
            return {}
    return None


THROTTLED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code>'
    "<Message>Request limit exceeded.</Message></Error></Errors><RequestID>fault-ec2</RequestID></Response>"
)


# EC2's answer when IAM or a service control policy denies the call: 403, UnauthorizedOperation,
# the message naming the principal and action, and an encoded authorization failure message.
UNAUTHORIZED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>UnauthorizedOperation</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>fault-ec2</RequestID></Response>"
)
DEFAULT_DENIAL = (
    "You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/"
    "copy-snapshots/copy-snapshots is not authorized to perform: ec2:CopySnapshot on resource: "
    "arn:aws:ec2:{region}::snapshot/* with an explicit deny in a service control policy. "
    "Encoded authorization failure message: fault-ec2"
)


def _query_summary(query):
    """The filters and owners of a DescribeSnapshots query, for the record."""
    filters = {}
    for key, values in query.items():
        if key.startswith("Filter.") and key.endswith(".Name"):
            prefix = key[: -len("Name")]
            filters[values[0]] = sorted(v[0] for k, v in query.items() if k.startswith(prefix + "Value."))
    owners = sorted(v[0] for k, v in query.items() if k.startswith("Owner."))
    return {"filters": filters, "owners": owners}


INTERNAL_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>InternalError</Code>'
    "<Message>An internal error has occurred.</Message></Error></Errors><RequestID>fault-ec2</RequestID></Response>"
)


DYNAMODB_LOCK = threading.Lock()


class FaultMiddleware:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        request = Request(environ)
        if request.path.startswith("/_fault/"):
            answer = control(request)
            if answer is None:
                return Response("unknown control path", status=404)(environ, start_response)
            return Response(json.dumps(answer), mimetype="application/json")(environ, start_response)

        body = request.get_data(cache=True)
        query = parse_qs(body.decode("utf-8", "replace"))
        action = query.get("Action", [None])[0]
        credential = request.headers.get("Authorization", "")
        region = credential.split("Credential=")[-1].split("/")[2] if "Credential=" in credential else None
        service = credential.split("Credential=")[-1].split("/")[3] if "Credential=" in credential else None
        if service == "ec2" and action:
            with LOCK:
                actions = CONFIG["throttle_actions"]
                in_streak = RECORD["throttle_streak_left"] > 0 and (actions is None or action in actions)
                if in_streak:
                    RECORD["throttle_streak_left"] -= 1
                    RECORD["streak_throttled"] += 1
                throttled = in_streak or RANDOM.random() < CONFIG["throttle_rate"]
                call = {"action": action, "region": region, "throttled": throttled}
                if action == "DescribeSnapshots":
                    call.update(_query_summary(query))
                source = query.get("SourceSnapshotId", [None])[0]
                denial = CONFIG["denied_sources"].get(source) if action == "CopySnapshot" else None
                if source is not None:
                    call["source_snapshot_id"] = source
                denied = denial is not None and not throttled
                if denied:
                    call["denied"] = True
                    RECORD["denied_copies"].append({"region": region, "source_snapshot_id": source, "message": denial})
                RECORD["calls"].append(call)
            if throttled:
                return Response(THROTTLED, status=503, mimetype="text/xml")(environ, start_response)
            if denied:
                message = escape(denial or DEFAULT_DENIAL.format(region=region))
                return Response(UNAUTHORIZED.format(message=message), status=403, mimetype="text/xml")(
                    environ, start_response
                )
        environ["wsgi.input"] = __import__("io").BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        if service == "dynamodb":
            # DynamoDB evaluates a condition and writes as one step; moto checks and then
            # writes, and this server serves requests on threads. One at a time, the slot
            # ledger's conditional writes are as atomic here as they are in DynamoDB.
            with DYNAMODB_LOCK:
                answer = Response.from_app(self.app, environ)
            return answer(environ, start_response)
        if action != "CopySnapshot":
            return self.app(environ, start_response)
        answer = Response.from_app(self.app, environ)
        with LOCK:
            lose = answer.status_code == 200 and RANDOM.random() < CONFIG["lost_answer_rate"]
            if lose:
                RECORD["lost_answers"] += 1
        if lose:
            # The copy exists; the caller hears only a server error.
            return Response(INTERNAL_ERROR, status=500, mimetype="text/xml")(environ, start_response)
        return answer(environ, start_response)


def main():
    port = int(sys.argv[1])
    app = FaultMiddleware(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"fault_ec2 listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
