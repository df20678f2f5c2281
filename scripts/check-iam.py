#!/usr/bin/env python3
"""Checks what the template's function role really grants, as a deployment would get it.

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
- ec2:DeleteSnapshot (duplicates and retention) only on target-region snapshots that carry this
  project's tracking tags for the stack's region or TargetRegion (aws:ResourceTag conditions);
- the schedule's Input is a valid request, carrying RetainDays, RetainCount and
  DeleteOrphansAfterDays as retain_days, retain_count and delete_orphans_after_days when set
  and nothing of them when empty;
- with a trigger on, a failed asynchronous invocation (SourcesPending, ...) is retried and then
  sent to the dead-letter queue, never dropped;
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


def check_kms(name, evaluator, expected_resources, errors):
    region, target, suffix = (
        evaluator.values["AWS::Region"],
        evaluator.values["TargetRegion"],
        evaluator.values["AWS::URLSuffix"],
    )
    via_ec2 = {f"ec2.{region}.{suffix}", f"ec2.{target}.{suffix}"}
    statements = role_statements(evaluator)
    for action in KMS_ACTIONS:
        granting = [s for s in statements if allows(s, action)]
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
    # Nothing else in the role may reach KMS without going through EC2.
    for s in statements:
        kms_actions = [a for a in as_list(s.get("Action", [])) if a.lower().startswith("kms:") or a == "*"]
        if kms_actions and not s.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService"):
            errors.append(f"{name}: statement {s.get('Sid', '?')} allows {kms_actions} without kms:ViaService")
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
    granting = [s for s in role_statements(evaluator) if allows(s, "ec2:DeleteSnapshot")]
    if not granting:
        errors.append(f"{name}: the role does not allow ec2:DeleteSnapshot (duplicates cannot heal, nothing is pruned)")
    for s in granting:
        where = f"{name}: ec2:DeleteSnapshot (statement {s.get('Sid', '?')})"
        resources = set(as_list(s.get("Resource", [])))
        if resources != {f"arn:{partition}:ec2:{target}::snapshot/*"}:
            errors.append(f"{where}: resources {sorted(resources)}, expected the target region's snapshots")
        condition = s.get("Condition", {})
        regions = set(as_list(condition.get("StringEquals", {}).get("aws:ResourceTag/copy-snapshots:source-region", [])))
        if not regions or not regions <= {region, target}:
            errors.append(f"{where}: source-region tag condition {sorted(regions)}, expected within {region}, {target}")
        source = condition.get("StringLike", {}).get("aws:ResourceTag/copy-snapshots:source-snapshot-id")
        if source != "snap-*":
            errors.append(f"{where}: not limited to snapshots tagged copy-snapshots:source-snapshot-id = snap-*")


def check_schedule_input(name, evaluator, expected, errors):
    """The schedule's Input, as EventBridge would send it, is a request with exactly `expected`
    besides its filters."""
    rule = evaluator.eval(evaluator.template["Resources"]["CopyScheduleRule"])
    text = rule["Properties"]["Targets"][0]["Input"]
    try:
        request = json.loads(text)
    except json.JSONDecodeError as e:
        errors.append(f"{name}: the schedule's Input is not JSON ({e}): {text}")
        return
    extra = {k: v for k, v in request.items() if k != "filters"}
    if extra != expected:
        errors.append(f"{name}: the schedule's Input carries {extra}, expected {expected}: {text}")
    if request.get("filters") != [{"name": "tag:Backup", "values": ["daily"]}]:
        errors.append(f"{name}: the schedule's Input selects {request.get('filters')}, expected tag:Backup=daily")


def check_async_failures(name, evaluator, errors):
    resource = evaluator.template["Resources"].get("AsyncInvokeConfig")
    if resource is None:
        errors.append(f"{name}: no AWS::Lambda::EventInvokeConfig for the triggers")
        return
    config = evaluator.eval(resource)["Properties"]
    if int(config.get("MaximumRetryAttempts", 0)) < 1:
        errors.append(f"{name}: failed event invocations are not retried")
    if not config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination"):
        errors.append(f"{name}: failed event invocations have no on-failure destination")


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
        check_kms(f"{partition}, default parameters", defaults, ["*"], errors)
        keys = [
            f"arn:{partition}:kms:{pseudo['AWS::Region']}:111122223333:key/1111aaaa-2222-3333-4444-555566667777",
            f"arn:{partition}:kms:{TARGET[partition]}:111122223333:key/8888bbbb-2222-3333-4444-555566667777",
        ]
        narrowed = Evaluator(template, {"TargetRegion": TARGET[partition], "KmsKeyArns": ",".join(keys)}, pseudo)
        check_kms(f"{partition}, KmsKeyArns set", narrowed, keys, errors)
        check_delete(f"{partition}, default parameters", defaults, errors)
        triggers = Evaluator(template, {"TargetRegion": TARGET[partition], "CopyNewSnapshots": "true"}, pseudo)
        check_async_failures(f"{partition}, CopyNewSnapshots", triggers, errors)
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
    check_no_hard_coded_suffix(text, errors)
    # The state machine's ARNs too: its definition is deployed as it is, in any partition.
    for number, line in enumerate(ASL.read_text().splitlines(), 1):
        if "arn:aws:" in line or "amazonaws.com" in line:
            errors.append(f"{ASL.name}:{number}: hard-coded partition (use ${{Partition}}): {line.strip()}")
    for error in errors:
        print(error)
    if errors:
        sys.exit(1)
    print("template.yaml: the role's KMS, delete and partition checks and the schedule's Input pass")


if __name__ == "__main__":
    main()
