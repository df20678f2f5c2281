#!/usr/bin/env python3
"""Checks the state machine definition with cfn-lint's Step Functions rules.

cfn-lint does not open a SAM DefinitionUri file, so the definition, with the substitutions SAM
would make applied, is placed inline in a throwaway AWS::StepFunctions::StateMachine, and that
template is linted. Before that, the `${…}` names the definition uses must be exactly the
template's DefinitionSubstitutions (a name only one side has is a definition SAM would deploy
with a literal `${…}` in it, or a substitution nothing reads).
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cfnlint.decode import decode

ASL = Path(__file__).resolve().parent.parent / "statemachine" / "copy-snapshots.asl.json"
TEMPLATE = ASL.parent.parent / "template.yaml"

# What SAM substitutes at deploy time (DefinitionSubstitutions), for a deploy in the aws
# partition; cfn-lint checks ARNs in the definition only once they are substituted.
SUBSTITUTIONS = {
    "CopySnapshotsFunctionArn": "arn:aws:lambda:us-east-1:111122223333:function:copy-snapshots",
    "WaitSeconds": "300",
    "Partition": "aws",
}
text = ASL.read_text()
template, matches = decode(str(TEMPLATE))
if matches:
    sys.exit(f"{TEMPLATE.name} does not parse: {matches}")
declared = set(template["Resources"]["CopyStateMachine"]["Properties"].get("DefinitionSubstitutions", {}))
used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", text))
if declared != used:
    sys.exit(
        f"{ASL.name} uses {sorted(used)}, {TEMPLATE.name}'s DefinitionSubstitutions are {sorted(declared)}"
    )
if declared != set(SUBSTITUTIONS):
    sys.exit(f"{Path(__file__).name} substitutes {sorted(SUBSTITUTIONS)}, the template {sorted(declared)}: update it")
for name, value in SUBSTITUTIONS.items():
    text = text.replace("${" + name + "}", value)
leftover = [part.split("}")[0] for part in text.split("${")[1:]]
if leftover:
    sys.exit(f"{ASL.name}: substitutions the template does not make: {leftover}")
definition = json.loads(text)
template = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Resources": {
        "CopyStateMachine": {
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {
                "RoleArn": "arn:aws:iam::111122223333:role/copy-snapshots-states",
                "Definition": definition,
            },
        }
    },
}
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(template, f)
cfn_lint = Path(sys.executable).parent / "cfn-lint"
result = subprocess.run([str(cfn_lint), f.name])
Path(f.name).unlink()
if result.returncode == 0:
    print(f"{ASL.name}: cfn-lint clean")
sys.exit(result.returncode)
