#!/usr/bin/env python3
"""A fault-injecting EC2 for the reliability tests: moto's server, patched to behave like EC2
where moto does not, plus faults on demand.

What it adds to moto:
- copies stay `pending` for (120 s + 20 s per GiB) x time_scale and report whole-percent progress;
- a per-region limit on pending copies (this function's and foreign ones), answered with
  ResourceLimitExceeded;
- foreign pending copies occupying slots;
- a share of EC2 calls answered RequestLimitExceeded;
- chosen sources whose copies end in `error` ("Given key ID is not accessible");
- CopySnapshot honouring Encrypted/KmsKeyId as EC2 does (and a key moto's KMS does not know
  ends the copy in `error`); an explicit `Encrypted=false`, which the API reference says cannot
  be set, is recorded;
- a share of CopySnapshot calls that make the copy but lose the answer (a 500 after the copy
  exists), and a visibility lag during which new copies are missing from DescribeSnapshots;
- copies that stall at 0% and run at speeds that do not follow their size;
- DescribeSnapshots as EC2 pages it (fewer results than MaxResults, with a NextToken), and
  EC2's answer to an unknown filter name or more than 200 values in a filter;
- DeleteSnapshot as the deployed role's DeleteOwnCopies statement allows it (template.yaml): only
  in the target region, only on snapshots whose copy-snapshots:source-region tag is the stack's
  region or the target region and whose copy-snapshots:source-snapshot-id tag is like `snap-*`
  (UnauthorizedOperation otherwise; set "role_regions" {"stack": …, "target": …} to match the
  deployment under test), and refused for chosen snapshots as EC2 refuses one an AMI uses (InvalidSnapshot.InUse) or a
  locked one;
- source snapshots of one volume and of chosen ages (StartTime in the past), and sources that
  vanish (as Data Lifecycle Manager prunes the source region), for retention;
- a record of every EC2 call and every copy, with the most copies pending at once.

Control API (JSON), next to the EC2 API on the same port:
  POST /_fault/config   {"throttle_rate": 0.3, "time_scale": 0.001, "region_limit": 20,
                         "failing_sources": {"snap-…": "message"}, "lost_answer_rate": 0.3,
                         "visibility_lag_seconds": 2, "page_size": 3, "stall_seconds": 1,
                         "speed_spread": [0.5, 2.0]}
  POST /_fault/foreign  {"region": "eu-west-1", "count": 20, "seconds": 3}
  POST /_fault/sources  {"region": "us-east-1", "sizes": [8, 64], "tags": {"k": "v"}, "state": "completed",
                         "one_volume": false, "ages_days": [0, 3]}
                        -> {"snapshot_ids": [...], "volume_ids": [...]}
  POST /_fault/refuse_delete {"snapshot_ids": {"snap-…": "in-use" | "locked"}}
  POST /_fault/forget   {"region": "us-east-1", "snapshot_ids": ["snap-…"]}  (gone from the region)
  GET  /_fault/record   {"calls": [...], "copies": [...], "max_pending": {...}, "no_slot_answers": n}
  POST /_fault/reset    forget the record (not the snapshots)

Usage: fault_ec2.py PORT   (listens on 127.0.0.1 only)
"""
import datetime
import fnmatch
import json
import os
import random
import sys
import threading
import time
from urllib.parse import parse_qs

os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

from moto.core.responses import ActionResult, EmptyResult  # noqa: E402
from moto.ec2.exceptions import EC2ClientError  # noqa: E402
from moto.ec2.models import ec2_backends  # noqa: E402
from moto.ec2.models import elastic_block_store as ebs  # noqa: E402
from moto.ec2.responses.elastic_block_store import ElasticBlockStore  # noqa: E402
from moto.kms.models import kms_backends  # noqa: E402
from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

TRACKING_TAG = "copy-snapshots:source-snapshot-id"
SOURCE_REGION_TAG = "copy-snapshots:source-region"
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
    # The regions of the role's DeleteSnapshot conditions: the stack's (source) and the target.
    "role_regions": {"stack": "us-east-1", "target": "eu-west-1"},
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


def _key_known(region, key_id):
    keys = kms_backends[ACCOUNT][region]
    try:
        keys.describe_key(key_id)
        return True
    except Exception:  # moto raises NotFoundException and friends
        return False


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
    if encrypted_param is not None and not encrypted:
        with LOCK:
            RECORD["explicit_encrypted_false"] += 1

    source = ec2_backends[self.current_account][source_region].describe_snapshots(snapshot_ids=[source_snapshot_id])[0]
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
        key = kms_key_id or (f"arn:aws:kms:{region}:{ACCOUNT}:alias/aws/ebs" if encrypted else None)
        snapshot = self.ec2_backend.copy_snapshot(
            source_snapshot_id=source_snapshot_id, source_region=source_region, description=description, kms_key_id=key
        )
        snapshot.encrypted = encrypted
        snapshot.add_tags(snapshot_tags)
        error = CONFIG["failing_sources"].get(source_snapshot_id)
        if error is None and kms_key_id and not _key_known(region, kms_key_id):
            error = KEY_NOT_ACCESSIBLE
        slowest, fastest = CONFIG["speed_spread"]
        speed = RANDOM.uniform(slowest, fastest)
        stall = RANDOM.uniform(0.0, CONFIG["stall_seconds"])
        duration = (120 + 20 * source.volume.size) * CONFIG["time_scale"] / speed
        snapshot._fault_timing = (time.monotonic(), duration, error, stall)
        tracked = [s for s in _pending_in(self.ec2_backend) if s.get_tags() and TRACKING_TAG in _tag_dict(s)]
        RECORD["max_pending"][region] = max(RECORD["max_pending"].get(region, 0), len(tracked))
        RECORD["copies"].append({
            "region": region,
            "snapshot_id": snapshot.id,
            "source_snapshot_id": source_snapshot_id,
            "tags": _tag_dict(snapshot),
            "encrypted": encrypted,
            "kms_key_id": key,
            "size_gib": source.volume.size,
            "fails_with": error,
            "deleted": False,
        })
    return ActionResult({"SnapshotId": snapshot.id, "Tags": snapshot.tag_set})


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
        regions = dict(CONFIG["role_regions"])
    # The role's statement: Resource arn:…:ec2:${TargetRegion}::snapshot/*, StringEquals
    # aws:ResourceTag/copy-snapshots:source-region [AWS::Region, TargetRegion], StringLike
    # aws:ResourceTag/copy-snapshots:source-snapshot-id snap-*.
    allowed = (
        self.ec2_backend.region_name == regions["target"]
        and tags.get(SOURCE_REGION_TAG) in (regions["stack"], regions["target"])
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


ElasticBlockStore.copy_snapshot = copy_snapshot
ElasticBlockStore.describe_snapshots = describe_snapshots
ElasticBlockStore.delete_snapshot = delete_snapshot


# --- control API -----------------------------------------------------------------------------

def _new_snapshot(region, size, tags, state="completed", timing=None, volume=None, age_days=0.0):
    backend = ec2_backends[ACCOUNT][region]
    if volume is None:
        volume = backend.create_volume(size=size, zone_name=f"{region}a")
    snapshot = backend.create_snapshot(volume.id, "fault_ec2 snapshot")
    snapshot.add_tags(tags)
    snapshot.status = state
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
            return dict(CONFIG)
        if path == "/_fault/foreign":
            for _ in range(int(body["count"])):
                _new_snapshot(body["region"], 100, {}, timing=(time.monotonic(), float(body["seconds"]), None, 0.0))
            return {"pending": len(_pending_in(ec2_backends[ACCOUNT][body["region"]]))}
        if path == "/_fault/sources":
            region, sizes = body["region"], body["sizes"]
            ages = body.get("ages_days") or [0.0] * len(sizes)
            volume = None
            if body.get("one_volume"):
                volume = ec2_backends[ACCOUNT][region].create_volume(size=sizes[0], zone_name=f"{region}a")
            made = [
                _new_snapshot(region, size, body.get("tags", {}), body.get("state", "completed"), volume=volume, age_days=age)
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
            return {}
    return None


THROTTLED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code>'
    "<Message>Request limit exceeded.</Message></Error></Errors><RequestID>fault-ec2</RequestID></Response>"
)


INTERNAL_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>InternalError</Code>'
    "<Message>An internal error has occurred.</Message></Error></Errors><RequestID>fault-ec2</RequestID></Response>"
)


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
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", [None])[0]
        credential = request.headers.get("Authorization", "")
        region = credential.split("Credential=")[-1].split("/")[2] if "Credential=" in credential else None
        service = credential.split("Credential=")[-1].split("/")[3] if "Credential=" in credential else None
        if service == "ec2" and action:
            with LOCK:
                throttled = RANDOM.random() < CONFIG["throttle_rate"]
                RECORD["calls"].append({"action": action, "region": region, "throttled": throttled})
            if throttled:
                return Response(THROTTLED, status=503, mimetype="text/xml")(environ, start_response)
        environ["wsgi.input"] = __import__("io").BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
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
