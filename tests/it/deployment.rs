//! The deployment files agree with the code: the state machine's transitions all lead
//! somewhere, it retries exactly the errorTypes the function raises for transient trouble, and
//! the template sets the environment variables the function reads, and its alarms watch metrics
//! the function emits. (cfn-lint checks the template and the definition's schema, and
//! scripts/check-iam.py what the role grants, in `make test`; tests/step_functions.rs runs the
//! loop's paths on real answers.)

use std::collections::HashSet;

use copy_snapshots::CopySnapshotsError;
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn state_machine() -> Value {
    serde_json::from_str(&read("statemachine/copy-snapshots.asl.json")).expect("the definition is JSON")
}

#[test]
fn every_transition_leads_to_a_state_and_every_state_is_reached() {
    let asl = state_machine();
    let states = asl["States"].as_object().expect("States");
    let names: HashSet<&str> = states.keys().map(String::as_str).collect();
    let mut targets = vec![asl["StartAt"].as_str().expect("StartAt")];
    for state in states.values() {
        targets.extend(state["Next"].as_str());
        targets.extend(state["Default"].as_str());
        for list in ["Choices", "Catch"] {
            for item in state[list].as_array().into_iter().flatten() {
                targets.extend(item["Next"].as_str());
            }
        }
    }
    for target in &targets {
        assert!(names.contains(target), "transition to missing state {target}");
    }
    let reached: HashSet<&str> = targets.into_iter().collect();
    assert_eq!(reached, names, "unreachable states");
}

#[test]
fn the_loop_invokes_without_waiting_inside_lambda_and_stops_on_complete() {
    let asl = state_machine();
    let prepare = &asl["States"]["Prepare"]["Parameters"]["request.$"];
    assert!(
        prepare.as_str().unwrap().contains(r#"{"max_wait_seconds": 0, "response_format": "summary"}"#),
        "{prepare}"
    );
    let choice = &asl["States"]["Complete?"]["Choices"][0];
    assert_eq!(choice["Variable"], "$.result.complete");
    assert_eq!(choice["BooleanEquals"], true);
    // Wait, count the round (the continuation bound), invoke again.
    assert_eq!(asl["States"]["Wait"]["Next"], "Next round");
    assert_eq!(asl["States"]["Next round"]["Next"], "Copy");
}

#[test]
fn retries_name_real_error_types_and_failures_keep_the_error() {
    let asl = state_machine();
    let copy = &asl["States"]["Copy"];
    let retried: Vec<&str> = copy["Retry"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ErrorEquals"].as_array().unwrap().iter().filter_map(Value::as_str))
        .collect();
    let transient = [
        CopySnapshotsError::Throttled(String::new()).error_type(),
        CopySnapshotsError::Ec2Error(String::new()).error_type(),
    ];
    for error_type in transient {
        assert!(retried.contains(&error_type), "{error_type} is not retried");
    }
    for lambda_error in [
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException",
    ] {
        assert!(retried.contains(&lambda_error), "{lambda_error} is not retried");
    }
    for never in ["InvalidRequest", "SourceNotFound", "SourceNotReady", "CopyFailed", "AccessDenied"] {
        assert!(!retried.contains(&never), "{never} would fail the same way again");
    }
    let catch = &copy["Catch"][0];
    assert_eq!(catch["ErrorEquals"][0], "States.ALL");
    let failed = &asl["States"][catch["Next"].as_str().unwrap()];
    assert_eq!(failed["Type"], "Fail");
    assert_eq!(failed["ErrorPath"], "$.error.Error");
    assert_eq!(failed["CausePath"], "$.error.Cause");
}

#[test]
fn the_template_sets_what_the_function_reads() {
    let template = read("template.yaml");
    for variable in ["ENCRYPT", "KMS_KEY_ID", "PENDING_LIMIT", "COPY_TAGS"] {
        assert!(template.contains(&format!("{variable}: !Ref")), "template.yaml does not set {variable}");
    }
    // One target in this account, or a list (TargetRegion2…5, or a TargetRoleArn): TARGET_REGION
    // or TARGETS, on both functions (scripts/check-iam.py evaluates them for one and for three
    // regions, and for targets in other accounts).
    let one = "TARGET_REGION: !If [UsesTargetList, !Ref AWS::NoValue, !Ref TargetRegion]\n";
    assert_eq!(template.matches(one).count(), 2, "template.yaml does not set TARGET_REGION for one target");
    assert_eq!(template.matches("TARGETS: !If\n").count(), 2, "template.yaml does not set TARGETS for several");
    // The slot table, by the name the bootstrap reads, on both functions that copy.
    let slot_table = format!("{}: !Ref SlotTable\n", copy_snapshots::entry::lambda::SLOT_TABLE_VARIABLE);
    assert_eq!(template.matches(&slot_table).count(), 2, "template.yaml names the slot table to both functions");
    // The role copies only from the stack's region (or within TargetRegion) to TargetRegion;
    // the function refuses other regions up front when these are set.
    assert!(template.contains("ALLOWED_SOURCE_REGIONS: !Sub ${AWS::Region},${TargetRegion}\n"));
    assert_eq!(template.matches("ALLOWED_TARGET_REGIONS: !Join\n").count(), 2);
    let deployed = copy_snapshots::Settings::from_lookup(|name| match name {
        "AWS_REGION" => Some("us-east-1".into()),
        "ALLOWED_SOURCE_REGIONS" => Some("us-east-1,eu-west-1".into()),
        "ALLOWED_TARGET_REGIONS" => Some("eu-west-1".into()),
        _ => None,
    })
    .expect("the values the template produces are valid settings");
    assert_eq!(deployed.allowed_target_regions.map(|r| r.len()), Some(1));
    // What the template gives a stack of three target regions (check-iam.py evaluates it).
    let several = copy_snapshots::Settings::from_lookup(|name| match name {
        "AWS_REGION" => Some("us-east-1".into()),
        "TARGETS" => Some(r#"[{"region":"eu-west-1"},{"region":"us-west-2"},{"region":"ap-southeast-2"}]"#.into()),
        "ALLOWED_TARGET_REGIONS" => Some("eu-west-1,us-west-2,ap-southeast-2".into()),
        _ => None,
    })
    .expect("the values the template produces for several targets are valid settings");
    let request =
        copy_snapshots::CopyRequest::from_json(serde_json::json!({"snapshot_ids": ["snap-0123abcd"]}), &several)
            .expect("a request takes the stack's targets");
    assert_eq!(request.targets.len(), 3);
    // What it gives a stack copying to eu-west-1 here and in a recovery account, and to us-west-2.
    let role = "arn:aws:iam::444455556666:role/copy-snapshots-recovery";
    let accounts = copy_snapshots::Settings::from_lookup(|name| match name {
        "AWS_REGION" => Some("us-east-1".into()),
        "TARGETS" => Some(format!(
            r#"[{{"region":"eu-west-1","role_arn":"{role}"}},{{"region":"eu-west-1"}},{{"region":"us-west-2"}}]"#
        )),
        "ALLOWED_TARGET_REGIONS" => Some("eu-west-1,eu-west-1,us-west-2".into()),
        _ => None,
    })
    .expect("the values the template produces for targets in other accounts are valid settings");
    let request =
        copy_snapshots::CopyRequest::from_json(serde_json::json!({"snapshot_ids": ["snap-0123abcd"]}), &accounts)
            .expect("a request takes the stack's targets");
    let roles: Vec<Option<&str>> = request.targets.iter().map(|t| t.place.role.as_ref().map(|r| r.as_str())).collect();
    assert_eq!(roles, [Some(role), None, None]);
    // No reserved concurrency unless asked for: it fails to deploy in accounts with a
    // concurrency quota of 10.
    assert!(
        template.contains(
            "ReservedConcurrentExecutions: !If [HasReservedConcurrency, !Ref ReservedConcurrency, !Ref AWS::NoValue]"
        ),
        "ReservedConcurrentExecutions must be optional"
    );
    assert!(template.contains("  ReservedConcurrency:\n    Type: Number"));
    assert!(template.contains("    MinValue: 0\n    Default: 0\n"), "ReservedConcurrency defaults to none");
    for required in
        ["provided.al2023", "BuildMethod: rust-cargolambda", "Timeout: 900", "MemorySize: 128", "LogFormat: JSON"]
    {
        assert!(template.contains(required), "template.yaml lacks {required}");
    }
    assert!(!template.contains("Action: \"*\"") && !template.contains("- \"*\"\n"), "no wildcard action");
}

#[test]
fn the_alarms_watch_metrics_the_function_emits() {
    let template = read("template.yaml");
    let counts =
        copy_snapshots::contract::metrics::InvocationCounts { oldest_uncopied_seconds: Some(0), ..Default::default() };
    let emitted = copy_snapshots::contract::metrics::emf(Some("eu-west-1"), counts, 0);
    let declared: Vec<&str> = emitted["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .expect("Metrics")
        .iter()
        .filter_map(|m| m["Name"].as_str())
        .collect();
    let mut namespace = "";
    let mut watched = Vec::new();
    for line in template.lines().map(str::trim) {
        if let Some(ns) = line.strip_prefix("Namespace: ") {
            namespace = ns;
        } else if let Some(name) = line.strip_prefix("MetricName: ")
            && namespace == copy_snapshots::contract::metrics::NAMESPACE
        {
            assert!(declared.contains(&name), "alarm on {name}, which the function does not emit: {declared:?}");
            watched.push(name);
        }
    }
    for required in ["CopiesFailed", "InvocationErrors", "OldestUncopiedSourceSeconds"] {
        assert!(watched.contains(&required), "no alarm on {required}");
    }
    for (alarm, expected) in [
        ("FunctionErrorsAlarm", "MetricName: Errors"),
        ("DeadLetterQueueAlarm", "MetricName: ApproximateNumberOfMessagesVisible"),
        ("CopyQueueDeadLetterQueueAlarm", "MetricName: ApproximateNumberOfMessagesVisible"),
    ] {
        let block = template.split(&format!("  {alarm}:\n")).nth(1).unwrap_or_else(|| panic!("no {alarm}"));
        assert!(block.split("\n\n").next().is_some_and(|b| b.contains(expected)), "{alarm} lacks {expected}");
    }
    assert!(template.contains("    Condition: HasDeadLetterAlarm\n"), "the queue's alarm only where the queue exists");
    assert!(
        template.contains("Dimensions: [{Name: TargetRegion, Value: !Ref TargetRegion}]"),
        "alarms per TargetRegion"
    );
}
