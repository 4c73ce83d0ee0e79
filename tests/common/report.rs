//! Reading the agent's output in system tests.
#![allow(dead_code)]

use std::process::Output;

use serde_json::Value;

/// Exit code and both streams, for assertion messages.
pub fn out_str(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The `--json` report on stdout.
pub fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out_str(o)))
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
