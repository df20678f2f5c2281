#!/usr/bin/env python3
"""Checks the state machine definition with cfn-lint's Step Functions rules.

cfn-lint does not open a SAM DefinitionUri file, so the definition is placed inline in a
throwaway AWS::StepFunctions::StateMachine, with the substitutions SAM would make, and that
template is linted.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ASL = Path(__file__).resolve().parent.parent / "statemachine" / "copy-snapshots.asl.json"

definition = json.loads(ASL.read_text())
template = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Resources": {
        "CopyStateMachine": {
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {
                "RoleArn": "arn:aws:iam::111122223333:role/copy-snapshots-states",
                "Definition": definition,
                "DefinitionSubstitutions": {
                    "CopySnapshotsFunctionArn": "arn:aws:lambda:us-east-1:111122223333:function:copy-snapshots",
                    "WaitSeconds": "300",
                },
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
