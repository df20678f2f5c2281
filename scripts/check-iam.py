#!/usr/bin/env python3
"""Checks what the template's function role (and recovery-account.yaml's role) really grants, as a
deployment would get it.

cfn-lint checks that the template is well formed, not what it allows. This script reads
template.yaml with cfn-lint's decoder (which understands the short tags `!Sub`, `!If`, ...),
evaluates the intrinsic functions for a given set of parameters and pseudo parameters (so every
`!If` resolves as CloudFormation would resolve it for that deploy), and asserts on the resulting
IAM statements:

- with the default parameters, the role may use KMS keys the way EBS encryption needs
  (CreateGrant, Decrypt, DescribeKey, GenerateDataKeyWithoutPlaintext, ReEncryptFrom,
  ReEncryptTo), only through EC2 in the stack's region and TargetRegion (kms:ViaService), and
  CreateGrant only for AWS resources (kms:GrantIsForAWSResource);
- with KmsKeyArns set, those keys and no others;
- the one KMS call the function makes itself, kms:DescribeKey (resolving the key a request
  names), is allowed without kms:ViaService on the target region's keys only (any account's:
  a key may be shared), or on KmsKeyArns only when set; no other KMS action is;
- ec2:DeleteSnapshot (duplicates and retention) only on target-region snapshots that carry this
  project's tracking tags for the stack's region or TargetRegion (aws:ResourceTag conditions);
- every EC2 call the function makes is allowed (DescribeVolumes and DescribeImages, the looks
  before a deletion, included), and nothing that changes a volume or an image;
- every function that copies is told the stack's targets (TARGET_REGION for one, TARGETS for
  TargetRegion2…5 too, never both) and allowed exactly them (ALLOWED_TARGET_REGIONS); the role
  copies, tags and deletes only in them, KMS through EC2 only there, DescribeKey on their keys;
  each alarm on the function's metrics watches every target region;
- every function that copies names the slot table (SLOT_TABLE), the role may GetItem and
  PutItem on that table and nothing else of DynamoDB anywhere, and the table is on demand and
  keyed by target_region as src/store/dynamo_slots.rs writes it;
- the schedule starts the state machine (with a role allowing states:StartExecution on it and
  nothing else), and its Input is `{"loop": {"kind": "schedule", "generation": 0}, "request":
  …}` with a valid request carrying RetainDays, RetainCount and DeleteOrphansAfterDays as
  retain_days, retain_count and delete_orphans_after_days when set and nothing of them when
  empty;
- the state machine's role allows what its definition calls, on what it calls: every Task
  resource of the definition (lambda:invoke of the function, aws-sdk:sfn:listExecutions and
  states:startExecution of itself) is granted, StartExecution and ListExecutions only on the
  ARN its Name gives it;
- with CopyNewSnapshots, the new-snapshot rule targets CopyQueue, only that rule may send to
  it, CopyQueueFunction is the same build and configuration as the main function and consumes
  it with batch item failures, the function role may receive, delete, change the visibility of
  and read the attributes of CopyQueue (what Lambda's event source mapping calls) and nothing
  of it without CopyNewSnapshots, and the queue's numbers hold: visibility timeout ≥ 6 × the
  function's timeout + the batching window, at least 24 hours of tries before its own
  dead-letter queue (CopyQueueDeadLetterQueue), retention longer than those tries and shorter
  than that queue's, whose RedriveAllowPolicy names CopyQueue's real ARN and nothing else;
  nothing else sends there (no EventBridge target, no on-failure destination), since SQS's move
  task replays only messages an SQS redrive put in a queue; and with alarms, that queue has an
  alarm of its own;
- with a trigger on, a failed asynchronous invocation (SourcesPending, ...) is retried and then
  sent to the dead-letter queue DeadLetterQueue, never dropped, and so are EventBridge's
  failed deliveries; no SQS queue may dead-letter into DeadLetterQueue (RedriveAllowPolicy
  denyAll), so CopyQueue's messages never mix with these;
- with a TargetRoleArn (a target region in another account), TARGETS carries each target's
  role_arn; the role may sts:AssumeRole exactly the stack's target roles, share this region's
  snapshots (ec2:ModifySnapshotAttribute) only with their accounts and never with a group
  (public), read the shares and describe this account's keys in this region (is a source under
  aws/ebs?); without one, none of that;
- recovery-account.yaml's role trusts only the main stack's function role, and may only look,
  copy, tag at creation and delete (this project's copies from the source region, by their
  tags) in its target regions, use KMS through EC2, and describe its own account's keys;
- service names and ARNs follow the partition: evaluated for aws and for aws-cn, the
  kms:ViaService values end in that partition's URL suffix, and the template hard-codes no
  `amazonaws.com` except in service principals (which are `<service>.amazonaws.com` in every
  partition, China included: `lambda.amazonaws.com.cn` is rejected as an invalid principal).

Exit status 1 with one line per violated expectation.
"""
import fnmatch
import json
import re
import sys
from pathlib import Path

from cfnlint.decode import decode

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
ASL = Path(__file__).resolve().parent.parent / "statemachine" / "copy-snapshots.asl.json"

# What EBS needs of a KMS key to copy encrypted snapshots, or to encrypt copies.
KMS_ACTIONS = [
    "kms:CreateGrant",
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
]

PARTITIONS = {
    "aws": {"AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", "AWS::Region": "us-east-1"},
    "aws-cn": {"AWS::Partition": "aws-cn", "AWS::URLSuffix": "amazonaws.com.cn", "AWS::Region": "cn-north-1"},
}
TARGET = {"aws": "eu-west-1", "aws-cn": "cn-northwest-1"}
# A stack of several targets: TargetRegion plus these (TargetRegion2, …) per partition.
MORE_TARGETS = {"aws": ["us-west-2", "ap-southeast-2"], "aws-cn": ["cn-north-1"]}

NO_VALUE = object()


class Evaluator:
    """Evaluates CloudFormation intrinsic functions for fixed parameter values."""

    def __init__(self, template, parameters, pseudo):
        self.template = template
        self.values = dict(pseudo)
        self.values["AWS::AccountId"] = "111122223333"
        self.values["AWS::StackName"] = "copy-snapshots"
        for name, spec in template.get("Parameters", {}).items():
            if name in parameters:
                value = parameters[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise SystemExit(f"parameter {name} has no default; give it a value")
            if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                value = [v.strip() for v in value.split(",")] if value else [""]
            self.values[name] = value if isinstance(value, list) else str(value)
        self.conditions = {}

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = bool(self.eval(self.template["Conditions"][name]))
        return self.conditions[name]

    def eval(self, node):
        if isinstance(node, list):
            return [v for v in (self.eval(item) for item in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                if arg in self.values:
                    return self.values[arg]
                return f"<{arg}>"  # a resource's Ref: an opaque id
            if key == "Fn::GetAtt":
                parts = arg if isinstance(arg, list) else arg.split(".", 1)
                return f"<{parts[0]}.{parts[1]}>"
            if key == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.eval(arg[1]))
                return re.sub(r"\$\{([^}!]+)\}", lambda m: self.substitute(m.group(1), extra), text)
            if key == "Fn::If":
                name, then, otherwise = arg
                return self.eval(then if self.condition(name) else otherwise)
            if key == "Fn::Equals":
                a, b = self.eval(arg)
                return a == b
            if key == "Fn::Not":
                return not self.eval(arg[0])
            if key == "Fn::Or":
                return any(self.eval(a) for a in arg)
            if key == "Fn::And":
                return all(self.eval(a) for a in arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Select":
                index, items = self.eval(arg)
                return items[int(index)]
            if key == "Fn::Split":
                separator, text = arg
                return self.eval(text).split(separator)
            if key == "Fn::Join":
                separator, items = arg
                items = self.eval(items)
                return separator.join(items if isinstance(items, list) else [items])
        out = {}
        for key, value in node.items():
            value = self.eval(value)
            if value is not NO_VALUE:
                out[key] = value
        return out

    def substitute(self, name, extra):
        if name in extra:
            return str(extra[name])
        if name in self.values:
            value = self.values[name]
            return ",".join(value) if isinstance(value, list) else value
        return f"<{name}>"


def target_regions(evaluator):
    """TargetRegion and every TargetRegion2…5 that is set, in order."""
    extra = [evaluator.values.get(f"TargetRegion{n}", "") for n in range(2, 6)]
    return [evaluator.values["TargetRegion"]] + [region for region in extra if region]


def target_roles(evaluator):
    """(region, role ARN or "") of TargetRegion and every TargetRegion2…5 that is set, in order."""
    pairs = [(evaluator.values["TargetRegion"], evaluator.values.get("TargetRoleArn", ""))]
    for n in range(2, 6):
        region = evaluator.values.get(f"TargetRegion{n}", "")
        if region:
            pairs.append((region, evaluator.values.get(f"TargetRoleArn{n}", "")))
    return pairs


def several_targets(partition, pseudo):
    """The parameters of a stack copying to TargetRegion and MORE_TARGETS[partition]."""
    parameters = {"TargetRegion": TARGET[partition]}
    parameters.update({f"TargetRegion{n}": region for n, region in enumerate(MORE_TARGETS[partition], 2)})
    return parameters


def as_list(value):
    return value if isinstance(value, list) else [value]


def allows(statement, action):
    return statement.get("Effect") == "Allow" and any(
        fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in as_list(statement.get("Action", []))
    )


def role_statements(evaluator):
    role = evaluator.eval(evaluator.template["Resources"]["FunctionRole"])
    statements = []
    for policy in role["Properties"].get("Policies", []):
        statements.extend(as_list(policy["PolicyDocument"]["Statement"]))
    return statements


def check_kms(name, evaluator, expected_resources, direct_resources, errors):
    region, suffix = evaluator.values["AWS::Region"], evaluator.values["AWS::URLSuffix"]
    via_ec2 = {f"ec2.{region}.{suffix}"} | {f"ec2.{target}.{suffix}" for target in target_regions(evaluator)}
    statements = role_statements(evaluator)
    # The source keys asked about before sharing (targets in another account) are checked by
    # check_other_accounts.
    statements = [s for s in statements if s.get("Sid") != "TellAwsManagedSourceKeys"]
    direct = [s for s in statements if not s.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")]
    for action in KMS_ACTIONS:
        granting = [s for s in statements if allows(s, action) and s not in direct]
        if not granting:
            errors.append(f"{name}: the role does not allow {action}")
        for s in granting:
            where = f"{name}: {action} (statement {s.get('Sid', '?')})"
            via = set(as_list(s.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService", [])))
            if via != via_ec2:
                errors.append(f"{where}: kms:ViaService is {sorted(via) or 'not set'}, expected {sorted(via_ec2)}")
            resources = set(as_list(s.get("Resource", [])))
            if resources != set(expected_resources):
                errors.append(f"{where}: resources {sorted(resources)}, expected {sorted(expected_resources)}")
            if action == "kms:CreateGrant":
                flag = s.get("Condition", {}).get("Bool", {}).get("kms:GrantIsForAWSResource")
                if str(flag).lower() != "true":
                    errors.append(f"{where}: not limited by Bool kms:GrantIsForAWSResource = true")
    # Nothing else in the role may reach KMS without going through EC2, but DescribeKey.
    if not any(allows(s, "kms:DescribeKey") for s in direct):
        errors.append(f"{name}: the role may not call kms:DescribeKey itself (resolving the request's key)")
    for s in statements:
        kms_actions = [a for a in as_list(s.get("Action", [])) if a.lower().startswith("kms:") or a == "*"]
        if kms_actions and s in direct:
            if kms_actions != ["kms:DescribeKey"]:
                errors.append(f"{name}: statement {s.get('Sid', '?')} allows {kms_actions} without kms:ViaService")
            resources = set(as_list(s.get("Resource", [])))
            if resources != set(direct_resources) or s.get("Condition"):
                errors.append(
                    f"{name}: kms:DescribeKey without kms:ViaService (statement {s.get('Sid', '?')}) on "
                    f"{sorted(resources)}, expected {sorted(direct_resources)} and no condition"
                )
        if "kms:CreateGrant" not in kms_actions and any(
            fnmatch.fnmatchcase("kms:CreateGrant", a) for a in kms_actions
        ):
            errors.append(f"{name}: statement {s.get('Sid', '?')} allows kms:CreateGrant through a wildcard")


def check_delete(name, evaluator, errors):
    region, target, partition = (
        evaluator.values["AWS::Region"],
        evaluator.values["TargetRegion"],
        evaluator.values["AWS::Partition"],
    )
    targets = target_regions(evaluator)
    granting = [s for s in role_statements(evaluator) if allows(s, "ec2:DeleteSnapshot")]
    if not granting:
        errors.append(f"{name}: the role does not allow ec2:DeleteSnapshot (duplicates cannot heal, nothing is pruned)")
    for s in granting:
        where = f"{name}: ec2:DeleteSnapshot (statement {s.get('Sid', '?')})"
        resources = set(as_list(s.get("Resource", [])))
        if resources != {f"arn:{partition}:ec2:{t}::snapshot/*" for t in targets}:
            errors.append(f"{where}: resources {sorted(resources)}, expected the target regions' snapshots")
        condition = s.get("Condition", {})
        regions = set(as_list(condition.get("StringEquals", {}).get("aws:ResourceTag/copy-snapshots:source-region", [])))
        if not regions or not regions <= {region, target}:
            errors.append(f"{where}: source-region tag condition {sorted(regions)}, expected within {region}, {target}")
        source = condition.get("StringLike", {}).get("aws:ResourceTag/copy-snapshots:source-snapshot-id")
        if source != "snap-*":
            errors.append(f"{where}: not limited to snapshots tagged copy-snapshots:source-snapshot-id = snap-*")
        foreign = condition.get("Null", {}).get("aws:ResourceTag/copy-snapshots:source-account")
        if str(foreign).lower() != "true":
            errors.append(f"{where}: copies another account's deployment made here (copy-snapshots:source-account) not excluded")


def check_targets(name, evaluator, errors):
    """Every function that copies is told the stack's targets (TARGET_REGION for one, TARGETS
    for several, never both) and allowed exactly those (ALLOWED_TARGET_REGIONS); the role copies
    and tags only there, from the stack's region."""
    targets = target_regions(evaluator)
    region, partition = evaluator.values["AWS::Region"], evaluator.values["AWS::Partition"]
    resources = evaluator.eval(evaluator.template["Resources"])
    for function in COPYING_FUNCTIONS:
        if function not in resources:
            continue
        env = resources[function]["Properties"]["Environment"]["Variables"]
        where = f"{name}: {function}"
        pairs = target_roles(evaluator)
        if len(targets) == 1 and not pairs[0][1]:
            if env.get("TARGET_REGION") != targets[0] or "TARGETS" in env:
                errors.append(f"{where}: one target, expected TARGET_REGION={targets[0]} and no TARGETS: {env}")
        else:
            if "TARGET_REGION" in env:
                errors.append(f"{where}: a list of targets, and TARGET_REGION is set too (the function refuses both)")
            try:
                listed = [(t["region"], t.get("role_arn", "")) for t in json.loads(env.get("TARGETS", ""))]
            except (ValueError, TypeError, KeyError) as e:
                listed = f"unreadable ({e}): {env.get('TARGETS')!r}"
            if listed != pairs:
                errors.append(f"{where}: TARGETS names {listed}, expected {pairs}")
        if env.get("ALLOWED_TARGET_REGIONS") != ",".join(dict.fromkeys(targets)) and env.get(
            "ALLOWED_TARGET_REGIONS"
        ) != ",".join(targets):
            errors.append(f"{where}: ALLOWED_TARGET_REGIONS={env.get('ALLOWED_TARGET_REGIONS')}, expected {targets}")
    # Each alarm on the function's metrics watches every target region: one series each, all
    # in the expression the alarm evaluates.
    for alarm in ["CopiesFailedAlarm", "DeletionsHeldAlarm", "CopiesNotDeletedAlarm", "InvocationErrorsAlarm",
                  "RecoveryPointAlarm"]:
        if alarm not in resources:
            continue
        metrics = resources[alarm]["Properties"].get("Metrics", [])
        series = {m["Id"]: m["MetricStat"]["Metric"] for m in metrics if "MetricStat" in m}
        watched = [d["Value"] for m in series.values() for d in m.get("Dimensions", []) if d["Name"] == "TargetRegion"]
        expressions = [m["Expression"] for m in metrics if m.get("ReturnData") and "Expression" in m]
        used = set(re.findall(r"\bt\d\b", expressions[0])) if len(expressions) == 1 else set()
        if sorted(watched) != sorted(targets) or used != set(series):
            errors.append(f"{name}: {alarm} watches {watched} through {expressions}, expected {targets}")
    snapshots = {f"arn:{partition}:ec2:{t}::snapshot/*" for t in targets}
    for action, expected in [
        ("ec2:CopySnapshot", snapshots | {f"arn:{partition}:ec2:{region}::snapshot/*"}),
        ("ec2:CreateTags", snapshots),
    ]:
        # The share's record on sources is check_other_accounts' to check.
        for s in (s for s in role_statements(evaluator) if allows(s, action) and s.get("Sid") != "RecordSourceShares"):
            granted = set(as_list(s.get("Resource", [])))
            if granted != expected:
                errors.append(f"{name}: {action} (statement {s.get('Sid', '?')}) on {sorted(granted)}, expected {sorted(expected)}")


# The EC2 calls the function makes (src/store/ec2.rs), each allowed by the role.
EC2_CALLS = [
    "ec2:DescribeSnapshots",
    "ec2:CopySnapshot",
    "ec2:CreateTags",
    "ec2:DeleteSnapshot",
    "ec2:DescribeVolumes",
    "ec2:DescribeImages",
]


def check_ec2_calls(name, evaluator, errors):
    statements = role_statements(evaluator)
    for action in EC2_CALLS:
        if not any(allows(s, action) for s in statements):
            errors.append(f"{name}: the role does not allow {action}, which the function calls")
    # Looks only: nothing in the role may change volumes or images.
    for s in statements:
        for action in as_list(s.get("Action", [])):
            lowered = action.lower()
            if lowered.startswith("ec2:") and ("volume" in lowered or "image" in lowered) and not lowered.startswith("ec2:describe"):
                errors.append(f"{name}: statement {s.get('Sid', '?')} allows {action}; only looks at volumes and images")


# What sharing a source with a target account takes (src/store/ec2.rs).
SHARING_CALLS = ["ec2:DescribeSnapshotAttribute", "ec2:ModifySnapshotAttribute", "ec2:DeleteTags"]


def check_other_accounts(name, evaluator, errors):
    """With a TargetRoleArn, the role may assume exactly the stack's target roles, share this
    region's snapshots with exactly their accounts (never with a group: public), read the shares
    and describe this account's keys in this region; without one, none of it."""
    roles = [role for _, role in target_roles(evaluator) if role]
    accounts = sorted({role.split(":")[4] for role in roles})
    region, partition = evaluator.values["AWS::Region"], evaluator.values["AWS::Partition"]
    statements = role_statements(evaluator)
    sources = [f"arn:{partition}:ec2:{region}::snapshot/*"]
    assuming = [s for s in statements if allows(s, "sts:AssumeRole")]
    if any(a.lower().startswith("sts:") and a != "sts:AssumeRole" for s in statements for a in as_list(s.get("Action", []))):
        errors.append(f"{name}: the role allows an STS action besides sts:AssumeRole")
    granted = sorted(r for s in assuming for r in as_list(s.get("Resource", [])))
    if granted != sorted(roles):
        errors.append(f"{name}: sts:AssumeRole on {granted}, expected exactly the target roles {sorted(roles)}")
    for action in SHARING_CALLS:
        granting = [s for s in statements if allows(s, action)]
        if not roles:
            if granting:
                errors.append(f"{name}: {action} is allowed with no target in another account")
            continue
        if not granting:
            errors.append(f"{name}: the role does not allow {action}, which sharing a source takes")
        for s in granting:
            where = f"{name}: {action} (statement {s.get('Sid', '?')})"
            if as_list(s.get("Resource", [])) != sources:
                errors.append(f"{where}: on {s.get('Resource')}, expected this region's snapshots {sources}")
            if action != "ec2:ModifySnapshotAttribute":
                continue
            # Each statement adds or removes, requiring its own key and its accounts only.
            condition = s.get("Condition", {})
            users = condition.get("ForAllValues:StringEquals", {})
            nulls = condition.get("Null", {})
            keys = [key for key in ["ec2:Add/userId", "ec2:Remove/userId"] if key in users]
            if len(keys) != 1 or sorted(as_list(users[keys[0]])) != accounts:
                errors.append(f"{where}: users {users}, expected one of ec2:Add/userId, ec2:Remove/userId = {accounts}")
                continue
            group = keys[0].replace("userId", "group")
            if str(nulls.get(keys[0])).lower() != "false" or str(nulls.get(group)).lower() != "true":
                errors.append(f"{where}: {keys[0]} not required (Null false) or a group (public) not ruled out: {nulls}")
        if action == "ec2:ModifySnapshotAttribute" and roles:
            kinds = sorted(k for s in granting for k in s.get("Condition", {}).get("ForAllValues:StringEquals", {}))
            if kinds != ["ec2:Add/userId", "ec2:Remove/userId"]:
                errors.append(f"{name}: sharing and unsharing are not each allowed, for the target accounts ({kinds})")
    # The share's record on the source: that tag only, this region's snapshots only.
    recording = [s for s in statements if s.get("Sid") == "RecordSourceShares"]
    for s in statements:
        for action in ["ec2:CreateTags", "ec2:DeleteTags"]:
            if allows(s, action) and s.get("Sid") != "TagCopiesAtCreation" and s not in recording:
                errors.append(f"{name}: statement {s.get('Sid', '?')} allows {action}")
    if roles:
        expected = {"ForAllValues:StringLike": {"aws:TagKeys": "copy-snapshots:shared-with:*"}, "Null": {"aws:TagKeys": "false"}}
        if [(as_list(s.get("Resource")), s.get("Condition")) for s in recording] != [(sources, expected)]:
            errors.append(f"{name}: the share record's tagging is {recording}, expected {sources} with {expected}")
    elif recording:
        errors.append(f"{name}: sources may be tagged with no target in another account")
    describing = [s for s in statements if s.get("Sid") == "TellAwsManagedSourceKeys"]
    expected_keys = [f"arn:{partition}:kms:{region}:{evaluator.values['AWS::AccountId']}:key/*"] if roles else []
    granted_keys = [r for s in describing for r in as_list(s.get("Resource", []))]
    if granted_keys != expected_keys or any(as_list(s.get("Action")) != ["kms:DescribeKey"] for s in describing):
        errors.append(f"{name}: the source keys' DescribeKey is on {granted_keys}, expected {expected_keys} only")


RECOVERY_TEMPLATE = Path(__file__).resolve().parent.parent / "recovery-account.yaml"
# What the copy needs in the recovery account, and nothing more.
RECOVERY_ACTIONS = {
    "ec2:DescribeSnapshots", "ec2:DescribeImages", "ec2:CopySnapshot", "ec2:CreateTags", "ec2:DeleteSnapshot",
    "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:CreateGrant",
}


def check_recovery_role(name, evaluator, errors):
    """recovery-account.yaml's role: trusts only the main stack's function role; copies, tags
    (at creation) and deletes (this project's tagged copies from the source region) only in
    the target regions; KMS through EC2 only, but for DescribeKey on this account's keys."""
    role = evaluator.eval(evaluator.template["Resources"]["RecoveryRole"])["Properties"]
    trust = as_list(role["AssumeRolePolicyDocument"]["Statement"])
    expected_trust = [{"Effect": "Allow", "Principal": {"AWS": evaluator.values["FunctionRoleArn"]}, "Action": "sts:AssumeRole"}]
    if trust != expected_trust:
        errors.append(f"{name}: the role trusts {trust}, expected only the function role {expected_trust}")
    statements = [s for p in role.get("Policies", []) for s in as_list(p["PolicyDocument"]["Statement"])]
    actions = {a for s in statements for a in as_list(s.get("Action", []))}
    if evaluator.values.get("AllowDeletion") == "false":
        actions.add("ec2:DeleteSnapshot")
    if actions != RECOVERY_ACTIONS:
        errors.append(f"{name}: the role allows {sorted(actions)}, expected {sorted(RECOVERY_ACTIONS)}")
    regions = as_list(evaluator.values["TargetRegions"])
    for s in statements:
        where = f"{name}: statement {s.get('Sid', '?')}"
        condition = s.get("Condition", {})
        ec2_writes = [a for a in as_list(s["Action"]) if a in ("ec2:CopySnapshot", "ec2:CreateTags", "ec2:DeleteSnapshot")]
        if ec2_writes and as_list(condition.get("StringEquals", {}).get("aws:RequestedRegion")) != regions:
            errors.append(f"{where}: {ec2_writes} not limited to the target regions {regions}")
        if "ec2:CreateTags" in as_list(s["Action"]) and condition.get("StringEquals", {}).get("ec2:CreateAction") != "CopySnapshot":
            errors.append(f"{where}: CreateTags not limited to CopySnapshot's TagSpecifications")
        if "ec2:DeleteSnapshot" in as_list(s["Action"]):
            tag = condition.get("StringEquals", {}).get("aws:ResourceTag/copy-snapshots:source-region")
            like = condition.get("StringLike", {}).get("aws:ResourceTag/copy-snapshots:source-snapshot-id")
            account = condition.get("StringEquals", {}).get("aws:ResourceTag/copy-snapshots:source-account")
            production = evaluator.values["FunctionRoleArn"].split(":")[4]
            if tag != evaluator.values["SourceRegion"] or like != "snap-*" or account != production:
                errors.append(
                    f"{where}: DeleteSnapshot not conditioned on this project's tags ({tag!r}, {like!r}) and the "
                    f"production account {production} ({account!r})"
                )
        kms = [a for a in as_list(s["Action"]) if a.startswith("kms:")]
        via = condition.get("StringLike", {}).get("kms:ViaService")
        suffix = evaluator.values["AWS::URLSuffix"]
        if kms and kms != ["kms:DescribeKey"] and via != f"ec2.*.{suffix}":
            errors.append(f"{where}: {kms} without kms:ViaService through EC2 ({via!r})")
        if kms == ["kms:DescribeKey"] and not via:
            keys = as_list(s.get("Resource", []))
            expected = [f"arn:{evaluator.values['AWS::Partition']}:kms:*:{evaluator.values['AWS::AccountId']}:key/*"]
            if keys != expected:
                errors.append(f"{where}: DescribeKey on {keys}, expected this account's keys {expected}")
        if "kms:CreateGrant" in kms and str(condition.get("Bool", {}).get("kms:GrantIsForAWSResource")).lower() != "true":
            errors.append(f"{where}: CreateGrant not limited to AWS resources")


# The DynamoDB calls the function makes (src/store/dynamo_slots.rs), on the slot table only.
DYNAMODB_CALLS = ["dynamodb:GetItem", "dynamodb:PutItem"]
COPYING_FUNCTIONS = ["CopySnapshotsFunction", "CopyQueueFunction"]


def check_slot_table(name, evaluator, errors):
    """Every function that copies names the slot table; the role may get and put its items and
    do nothing else with DynamoDB; the table is on demand and keyed by the target region."""
    statements = role_statements(evaluator)
    for action in DYNAMODB_CALLS:
        if not any(allows(s, action) for s in statements):
            errors.append(f"{name}: the role does not allow {action}, which the slot ledger calls")
    for s in statements:
        actions = [a for a in as_list(s.get("Action", [])) if a.lower().startswith("dynamodb:") or a == "*"]
        if not actions:
            continue
        extra = [a for a in actions if a not in DYNAMODB_CALLS]
        if extra:
            errors.append(f"{name}: statement {s.get('Sid', '?')} allows {extra}; the slot ledger needs only {DYNAMODB_CALLS}")
        if as_list(s.get("Resource", [])) != ["<SlotTable.Arn>"]:
            errors.append(f"{name}: statement {s.get('Sid', '?')} allows {actions} on {s.get('Resource')}, not the slot table alone")
    resources = evaluator.template["Resources"]
    for function in COPYING_FUNCTIONS:
        spec = resources.get(function)
        condition = spec and spec.get("Condition")
        if spec is None or (condition and not evaluator.condition(condition)):
            continue
        variables = evaluator.eval(spec["Properties"].get("Environment", {})).get("Variables", {})
        if variables.get("SLOT_TABLE") != "<SlotTable>":
            errors.append(f"{name}: {function} copies but its SLOT_TABLE is {variables.get('SLOT_TABLE')!r}, not the slot table")
    table = evaluator.eval(resources.get("SlotTable", {}).get("Properties", {}))
    if table.get("BillingMode") != "PAY_PER_REQUEST":
        errors.append(f"{name}: SlotTable is not on demand (PAY_PER_REQUEST)")
    if table.get("KeySchema") != [{"AttributeName": "target_region", "KeyType": "HASH"}]:
        errors.append(f"{name}: SlotTable's key is not target_region, as src/store/dynamo_slots.rs writes it")


def check_schedule_input(name, evaluator, expected, errors):
    """The schedule's Input, as EventBridge would send it to the state machine, wraps a request
    with exactly `expected` besides its filters."""
    rule = evaluator.eval(evaluator.template["Resources"]["CopyScheduleRule"])
    target = rule["Properties"]["Targets"][0]
    text = target["Input"]
    try:
        wrapped = json.loads(text)
    except json.JSONDecodeError as e:
        errors.append(f"{name}: the schedule's Input is not JSON ({e}): {text}")
        return
    if target.get("Arn") != "<CopyStateMachine>":
        errors.append(f"{name}: the schedule targets {target.get('Arn')}, not the state machine")
    if target.get("RoleArn") != "<ScheduleRole.Arn>":
        errors.append(f"{name}: the schedule's target has role {target.get('RoleArn')}, expected ScheduleRole")
    # The state machine's "Input?" state runs the "Already running?" check only for this form.
    if set(wrapped) != {"loop", "request"} or wrapped["loop"] != {"kind": "schedule", "generation": 0}:
        errors.append(f"{name}: the schedule's Input is not {{loop: {{kind: schedule, generation: 0}}, request}}: {text}")
        return
    request = wrapped["request"]
    extra = {k: v for k, v in request.items() if k != "filters"}
    if extra != expected:
        errors.append(f"{name}: the schedule's Input carries {extra}, expected {expected}: {text}")
    if request.get("filters") != [{"name": "tag:Backup", "values": ["daily"]}]:
        errors.append(f"{name}: the schedule's Input selects {request.get('filters')}, expected tag:Backup=daily")


def policy_statements(policies):
    statements = []
    for policy in policies:
        document = policy.get("PolicyDocument", policy)
        statements.extend(as_list(document.get("Statement", [])))
    return statements


def check_schedule_role(name, evaluator, errors):
    """EventBridge may start the state machine, and do nothing else, with the schedule's role."""
    role = evaluator.eval(evaluator.template["Resources"]["ScheduleRole"])["Properties"]
    principals = [s.get("Principal", {}).get("Service") for s in role["AssumeRolePolicyDocument"]["Statement"]]
    if principals != ["events.amazonaws.com"]:
        errors.append(f"{name}: ScheduleRole is assumed by {principals}, expected events.amazonaws.com only")
    statements = policy_statements(role.get("Policies", []))
    granted = [(a, r) for s in statements for a in as_list(s["Action"]) for r in as_list(s["Resource"])]
    if granted != [("states:StartExecution", "<CopyStateMachine>")]:
        errors.append(f"{name}: ScheduleRole grants {granted}, expected states:StartExecution on the state machine only")


# What each Task resource of the definition calls, and on what (the state machine's own ARN
# is "self", the function's "function").
TASK_ACTIONS = {
    "arn:${Partition}:states:::lambda:invoke": ("lambda:InvokeFunction", "function"),
    "arn:${Partition}:states:::aws-sdk:sfn:listExecutions": ("states:ListExecutions", "self"),
    "arn:${Partition}:states:::states:startExecution": ("states:StartExecution", "self"),
}


def check_state_machine_role(name, evaluator, errors):
    """Every call of the definition is granted, StartExecution and ListExecutions of itself on
    exactly the ARN its Name gives it (built with !Sub: a !Ref would be a circular reference)."""
    machine = evaluator.eval(evaluator.template["Resources"]["CopyStateMachine"])["Properties"]
    values = evaluator.values
    own_arn = f"arn:{values['AWS::Partition']}:states:{values['AWS::Region']}:{values['AWS::AccountId']}:stateMachine:{machine.get('Name')}"
    if machine.get("Name") != values["AWS::StackName"]:
        errors.append(f"{name}: the state machine is named {machine.get('Name')}, expected the stack's name")
    substitutions = machine.get("DefinitionSubstitutions", {})
    statements = [s for s in as_list(machine.get("Policies", [])) if "Statement" in s]
    statements = policy_statements(statements)
    lambda_policies = [p for p in as_list(machine.get("Policies", [])) if "LambdaInvokePolicy" in p]
    definition = json.loads(ASL.read_text())
    for state_name, state in definition["States"].items():
        if state.get("Type") != "Task":
            continue
        resource = state["Resource"]
        if resource not in TASK_ACTIONS:
            errors.append(f"{name}: state {state_name} calls {resource}, which this check does not know: add it")
            continue
        action, target = TASK_ACTIONS[resource]
        if target == "function":
            function = state["Parameters"].get("FunctionName")
            if function != "${CopySnapshotsFunctionArn}" or substitutions.get("CopySnapshotsFunctionArn") != "<CopySnapshotsFunction.Arn>":
                errors.append(f"{name}: state {state_name} invokes {function}, not the copy-snapshots function")
            if [p["LambdaInvokePolicy"] for p in lambda_policies] != [{"FunctionName": "<CopySnapshotsFunction>"}]:
                errors.append(f"{name}: the state machine may not invoke (only) the function: {lambda_policies}")
            continue
        if state["Parameters"].get("StateMachineArn.$") != "$$.StateMachine.Id":
            errors.append(f"{name}: state {state_name} does not call this state machine ($$.StateMachine.Id)")
        granting = [s for s in statements if allows(s, action)]
        resources = {r for s in granting for r in as_list(s["Resource"])}
        if resources != {own_arn}:
            errors.append(f"{name}: {action} (state {state_name}) is granted on {sorted(resources)}, expected {own_arn}")


def check_queue(name, evaluator, errors):
    """CopyQueue, its function, its policies and its numbers (see the docstring)."""
    resources = evaluator.template["Resources"]
    main = evaluator.eval(resources["CopySnapshotsFunction"])
    consumer = evaluator.eval(resources["CopyQueueFunction"])
    # `sam build` builds one artifact for functions whose build definition (CodeUri, Metadata,
    # Handler, Runtime, Architectures) is the same; the role and settings make it behave alike.
    if consumer.get("Metadata") != main.get("Metadata"):
        errors.append(f"{name}: CopyQueueFunction's Metadata differs from CopySnapshotsFunction's (built twice)")
    for key in ["CodeUri", "Handler", "Runtime", "Architectures", "Role", "Environment", "MemorySize"]:
        if consumer["Properties"].get(key) != main["Properties"].get(key):
            errors.append(f"{name}: CopyQueueFunction's {key} differs from CopySnapshotsFunction's")
    timeout = int(consumer["Properties"]["Timeout"])
    events = consumer["Properties"].get("Events", {})
    sqs = [e["Properties"] for e in events.values() if e.get("Type") == "SQS"]
    if len(sqs) != 1 or sqs[0].get("Queue") != "<CopyQueue.Arn>":
        errors.append(f"{name}: CopyQueueFunction does not consume CopyQueue: {events}")
        return
    source = sqs[0]
    if source.get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
        errors.append(f"{name}: the queue's event source does not report batch item failures (a batch would succeed or fail whole)")
    window = int(source.get("MaximumBatchingWindowInSeconds", 0))
    if int(source.get("BatchSize", 10)) > 10 and window < 1:
        errors.append(f"{name}: a batch size over 10 needs a batching window")
    if "MaximumConcurrency" not in source.get("ScalingConfig", {}):
        errors.append(f"{name}: the queue's event source has no MaximumConcurrency")

    queue = evaluator.eval(resources["CopyQueue"])["Properties"]
    dlq = evaluator.eval(resources["CopyQueueDeadLetterQueue"])["Properties"]
    visibility = int(queue["VisibilityTimeout"])
    if visibility < 6 * timeout + window:
        errors.append(f"{name}: CopyQueue's visibility timeout {visibility} s < 6 × {timeout} s + {window} s (AWS's guidance)")
    redrive = queue.get("RedrivePolicy", {})
    if redrive.get("deadLetterTargetArn") != "<CopyQueueDeadLetterQueue.Arn>":
        errors.append(f"{name}: CopyQueue does not dead-letter into CopyQueueDeadLetterQueue: {redrive}")
    tries = int(redrive.get("maxReceiveCount", 0))
    # Receives are at least one visibility timeout apart.
    lifetime = (tries - 1) * visibility
    if lifetime < 24 * 3600:
        errors.append(f"{name}: {tries} tries {visibility} s apart last {lifetime / 3600:.1f} h, under 24 h of a full quota")
    retention = int(queue["MessageRetentionPeriod"])
    if retention <= tries * visibility:
        errors.append(f"{name}: CopyQueue's retention {retention} s ends before its {tries} tries ({tries * visibility} s): messages expire unseen")
    if int(dlq["MessageRetentionPeriod"]) <= retention:
        errors.append(f"{name}: the dead-letter queue keeps messages {dlq['MessageRetentionPeriod']} s, not longer than CopyQueue's {retention} s")
    values = evaluator.values
    queue_arn = f"arn:{values['AWS::Partition']}:sqs:{values['AWS::Region']}:{values['AWS::AccountId']}:{queue.get('QueueName')}"
    allow = dlq.get("RedriveAllowPolicy", {})
    if allow != {"redrivePermission": "byQueue", "sourceQueueArns": [queue_arn]}:
        errors.append(f"{name}: CopyQueueDeadLetterQueue's RedriveAllowPolicy {allow} does not name CopyQueue ({queue_arn}) only")
    if int(dlq.get("MessageRetentionPeriod", 0)) != 1209600 or dlq.get("SqsManagedSseEnabled") is not True:
        errors.append(f"{name}: CopyQueueDeadLetterQueue does not keep messages 14 days encrypted: {dlq}")
    # Only CopyQueue's redrive may put messages there: every other reference to it is an alarm,
    # an output, or CopyQueue's RedrivePolicy.
    for other, resource in resources.items():
        if other in ("CopyQueueDeadLetterQueue", "CopyQueue", "CopyQueueDeadLetterQueueAlarm"):
            continue
        if "<CopyQueueDeadLetterQueue" in json.dumps(evaluator.eval(resource)):
            errors.append(f"{name}: {other} refers to CopyQueueDeadLetterQueue, which must hold CopyQueue's dead letters only")
    if evaluator.condition("HasAlarms"):
        alarm = resources.get("CopyQueueDeadLetterQueueAlarm")
        dimensions = evaluator.eval(alarm)["Properties"]["Dimensions"] if alarm else []
        if alarm is None or alarm.get("Condition") != "HasQueueAlarms" or dimensions != [
            {"Name": "QueueName", "Value": "<CopyQueueDeadLetterQueue.QueueName>"}
        ]:
            errors.append(f"{name}: no alarm on CopyQueueDeadLetterQueue's messages")

    policy = evaluator.eval(resources["CopyQueuePolicy"])["Properties"]
    statements = as_list(policy["PolicyDocument"]["Statement"])
    expected = [{
        "Sid": "NewSnapshotEvents", "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sqs:SendMessage", "Resource": "<CopyQueue.Arn>",
        "Condition": {"ArnEquals": {"aws:SourceArn": "<NewSnapshotRule.Arn>"}},
    }]
    if statements != expected or policy["Queues"] != ["<CopyQueue>"]:
        errors.append(f"{name}: CopyQueue's policy is not 'the new-snapshot rule may send': {statements}")
    rule = evaluator.eval(resources["NewSnapshotRule"])["Properties"]
    if [t["Arn"] for t in rule["Targets"]] != ["<CopyQueue.Arn>"]:
        errors.append(f"{name}: the new-snapshot rule targets {[t['Arn'] for t in rule['Targets']]}, not CopyQueue")

    # What the event source mapping calls, with the function's role.
    consume = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    statements = role_statements(evaluator)
    for action in consume:
        granted = {r for s in statements if allows(s, action) for r in as_list(s["Resource"])}
        if granted != {"<CopyQueue.Arn>"}:
            errors.append(f"{name}: the role allows {action} on {sorted(granted)}, expected CopyQueue only")


def check_no_queue(name, evaluator, errors):
    """Without CopyNewSnapshots there is no queue, and the role reads none."""
    for s in role_statements(evaluator):
        for action in ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]:
            if allows(s, action):
                errors.append(f"{name}: the role allows {action} without a queue ({s.get('Sid', '?')})")


def check_async_failures(name, evaluator, errors):
    resource = evaluator.template["Resources"].get("AsyncInvokeConfig")
    if resource is None:
        errors.append(f"{name}: no AWS::Lambda::EventInvokeConfig for the triggers")
        return
    config = evaluator.eval(resource)["Properties"]
    if int(config.get("MaximumRetryAttempts", 0)) < 1:
        errors.append(f"{name}: failed event invocations are not retried")
    if config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination") != "<DeadLetterQueue.Arn>":
        errors.append(f"{name}: failed event invocations are not sent to DeadLetterQueue")
    resources = evaluator.template["Resources"]
    for rule in ("CopyScheduleRule", "NewSnapshotRule"):
        if rule in resources and evaluator.condition(resources[rule]["Condition"]):
            for target in evaluator.eval(resources[rule])["Properties"]["Targets"]:
                if target.get("DeadLetterConfig", {}).get("Arn") != "<DeadLetterQueue.Arn>":
                    errors.append(f"{name}: {rule}'s target {target['Id']} does not dead-letter into DeadLetterQueue")
    allow = evaluator.eval(resources["DeadLetterQueue"])["Properties"].get("RedriveAllowPolicy")
    if allow != {"redrivePermission": "denyAll"}:
        errors.append(f"{name}: DeadLetterQueue's RedriveAllowPolicy {allow} lets an SQS queue dead-letter into it")


def check_no_hard_coded_suffix(text, errors):
    """`amazonaws.com` may appear only as a service principal (`Service: x.amazonaws.com` in a policy,
    `Principal: x.amazonaws.com` in an AWS::Lambda::Permission)."""
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        if "amazonaws.com" not in code:
            continue
        if re.search(r"(Service|Principal):\s*\[?\s*[a-z0-9-]+\.amazonaws\.com\s*\]?\s*}?\s*$", code):
            continue
        errors.append(f"template.yaml:{number}: hard-coded amazonaws.com (use ${{AWS::URLSuffix}}): {line.strip()}")


def main():
    text = TEMPLATE.read_text()
    template, matches = decode(str(TEMPLATE))
    if matches:
        raise SystemExit(f"template.yaml does not parse: {matches}")
    errors = []
    for partition, pseudo in PARTITIONS.items():
        defaults = Evaluator(template, {"TargetRegion": TARGET[partition]}, pseudo)
        target_keys = [f"arn:{partition}:kms:{TARGET[partition]}:*:key/*"]
        check_kms(f"{partition}, default parameters", defaults, ["*"], target_keys, errors)
        keys = [
            f"arn:{partition}:kms:{pseudo['AWS::Region']}:111122223333:key/1111aaaa-2222-3333-4444-555566667777",
            f"arn:{partition}:kms:{TARGET[partition]}:111122223333:key/8888bbbb-2222-3333-4444-555566667777",
        ]
        narrowed = Evaluator(template, {"TargetRegion": TARGET[partition], "KmsKeyArns": ",".join(keys)}, pseudo)
        check_kms(f"{partition}, KmsKeyArns set", narrowed, keys, keys, errors)
        check_delete(f"{partition}, default parameters", defaults, errors)
        check_targets(f"{partition}, default parameters", defaults, errors)
        one_alarmed = Evaluator(template, {
            "TargetRegion": TARGET[partition], "CopyNewSnapshots": "true",
            "AlarmTopicArn": f"arn:{partition}:sns:{pseudo['AWS::Region']}:111122223333:ops",
        }, pseudo)
        check_targets(f"{partition}, one target, triggers and alarms", one_alarmed, errors)
        several = Evaluator(template, {
            **several_targets(partition, pseudo), "CopyNewSnapshots": "true",
            "AlarmTopicArn": f"arn:{partition}:sns:{pseudo['AWS::Region']}:111122223333:ops",
        }, pseudo)
        label = f"{partition}, {1 + len(MORE_TARGETS[partition])} target regions"
        several_keys = [f"arn:{partition}:kms:{t}:*:key/*" for t in target_regions(several)]
        check_kms(label, several, ["*"], several_keys, errors)
        check_delete(label, several, errors)
        check_targets(label, several, errors)
        check_ec2_calls(label, several, errors)
        check_ec2_calls(f"{partition}, default parameters", defaults, errors)
        check_slot_table(f"{partition}, default parameters", defaults, errors)
        triggers = Evaluator(template, {"TargetRegion": TARGET[partition], "CopyNewSnapshots": "true"}, pseudo)
        check_async_failures(f"{partition}, CopyNewSnapshots", triggers, errors)
        check_queue(f"{partition}, CopyNewSnapshots", triggers, errors)
        check_slot_table(f"{partition}, CopyNewSnapshots", triggers, errors)
        alarmed = Evaluator(template, {
            "TargetRegion": TARGET[partition], "CopyNewSnapshots": "true", "ScheduleExpression": "rate(1 day)",
            "AlarmTopicArn": f"arn:{partition}:sns:{pseudo['AWS::Region']}:111122223333:ops",
        }, pseudo)
        check_async_failures(f"{partition}, both triggers and alarms", alarmed, errors)
        check_queue(f"{partition}, both triggers and alarms", alarmed, errors)
        check_no_queue(f"{partition}, default parameters", defaults, errors)
        check_state_machine_role(f"{partition}, default parameters", defaults, errors)
        schedule = Evaluator(template, {"TargetRegion": TARGET[partition], "ScheduleExpression": "rate(1 day)"}, pseudo)
        check_schedule_role(f"{partition}, schedule", schedule, errors)
        check_async_failures(f"{partition}, schedule", schedule, errors)
    schedule = {"TargetRegion": "eu-west-1", "ScheduleExpression": "rate(1 day)"}
    pseudo = PARTITIONS["aws"]
    check_schedule_input("schedule without retention", Evaluator(template, schedule, pseudo), {}, errors)
    retention = {"RetainDays": "7", "RetainCount": "3", "DeleteOrphansAfterDays": "0"}
    check_schedule_input(
        "schedule with retention",
        Evaluator(template, {**schedule, **retention}, pseudo),
        {"retain_days": 7, "retain_count": 3, "delete_orphans_after_days": 0},
        errors,
    )
    check_schedule_input(
        "schedule with retain_count only",
        Evaluator(template, {**schedule, "RetainCount": "14"}, pseudo),
        {"retain_count": 14},
        errors,
    )
    role = "arn:aws:iam::444455556666:role/copy-snapshots-recovery"
    other = "arn:aws:iam::777788889999:role/dr/copy-snapshots-recovery"
    accounts = {
        "TargetRegion": "eu-west-1", "TargetRoleArn": role, "TargetRegion2": "eu-west-1",
        "TargetRegion3": "us-west-2", "TargetRoleArn3": other, "CopyNewSnapshots": "true",
    }
    for partition, pseudo in PARTITIONS.items():
        if partition != "aws":
            continue
        label = "aws, targets in two other accounts and this one"
        two_accounts = Evaluator(template, accounts, pseudo)
        check_targets(label, two_accounts, errors)
        check_other_accounts(label, two_accounts, errors)
        check_ec2_calls(label, two_accounts, errors)
        check_delete(label, two_accounts, errors)
        one_remote = Evaluator(template, {"TargetRegion": "eu-west-1", "TargetRoleArn": role}, pseudo)
        check_targets("aws, one target in another account", one_remote, errors)
        check_other_accounts("aws, one target in another account", one_remote, errors)
        check_other_accounts("aws, default parameters", Evaluator(template, {"TargetRegion": "eu-west-1"}, pseudo), errors)
    recovery, matches = decode(str(RECOVERY_TEMPLATE))
    if matches:
        raise SystemExit(f"recovery-account.yaml does not parse: {matches}")
    for partition, pseudo in PARTITIONS.items():
        parameters = {
            "FunctionRoleArn": f"arn:{partition}:iam::111122223333:role/copy-snapshots-FunctionRole-ABC",
            "SourceRegion": pseudo["AWS::Region"],
            "TargetRegions": "eu-west-1,us-west-2",
        }
        check_recovery_role(f"recovery-account.yaml, {partition}", Evaluator(recovery, parameters, pseudo), errors)
    # AllowDeletion false: the role may delete nothing at all.
    frozen = Evaluator(recovery, {**parameters, "AllowDeletion": "false"}, PARTITIONS["aws"])
    role = frozen.eval(frozen.template["Resources"]["RecoveryRole"])["Properties"]
    statements = [s for p in role.get("Policies", []) for s in as_list(p["PolicyDocument"]["Statement"])]
    if any(allows(s, "ec2:DeleteSnapshot") for s in statements):
        errors.append("recovery-account.yaml, AllowDeletion false: the role may still delete snapshots")
    check_no_hard_coded_suffix(RECOVERY_TEMPLATE.read_text(), errors)
    check_no_hard_coded_suffix(text, errors)
    # The state machine's ARNs too: its definition is deployed as it is, in any partition.
    for number, line in enumerate(ASL.read_text().splitlines(), 1):
        if "arn:aws:" in line or "amazonaws.com" in line:
            errors.append(f"{ASL.name}:{number}: hard-coded partition (use ${{Partition}}): {line.strip()}")
    for error in errors:
        print(error)
    if errors:
        sys.exit(1)
    print(
        "template.yaml: the role's KMS, delete, queue, slot table, other accounts and partition checks, the state"
        " machine's role, the schedule's target and Input pass; recovery-account.yaml: the recovery role's checks pass"
    )


if __name__ == "__main__":
    main()
