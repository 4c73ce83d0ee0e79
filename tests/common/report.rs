//! Reading the agent's output in system tests.
#![allow(dead_code)]

use std::process::Output;

use serde_json::Value;

/// The `--json` report on stdout.
pub fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", super::describe(o)))
}

/// One resource's entry in a report.
pub fn resource<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["resources"]
        .as_array()
        .expect("resources array")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in report: {report:#}"))
}
