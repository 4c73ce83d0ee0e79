//! `sapari-agent env-check`: the production .env validator on files the operator names.

use std::path::{Path, PathBuf};

use crate::cli::EnvCheckArgs;
use crate::envcheck;
use crate::exit::{self, CommandError, Exit};
use crate::host;

pub fn run(a: EnvCheckArgs) -> Result<Exit, CommandError> {
    let (path, json) = (a.path.as_path(), a.json);
    let mut files: Vec<(String, String)> = Vec::new();
    for p in std::iter::once(path).chain(a.with.iter().map(PathBuf::as_path)) {
        let t = host::files::read_to_string(p).map_err(|e| {
            CommandError::new(exit::FAILED, format!("cannot read {}: {e}", p.display()))
        })?;
        files.push((p.display().to_string(), t));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    // In the order compose applies them: the later file wins, and is what gets checked.
    let findings = envcheck::check(&envcheck::parse_files(&refs));
    let fails = findings
        .iter()
        .filter(|f| f.severity == envcheck::Severity::Fail)
        .count();
    let warns = findings.len() - fails;
    if json {
        let doc = serde_json::json!({
            "file": path.display().to_string(),
            "findings": findings,
            "failures": fails,
            "warnings": warns,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", envcheck::render(&findings));
        println!("{}", summary(path, fails, warns));
    }
    Ok(if fails > 0 { exit::FAILED } else { exit::OK })
}

fn summary(path: &Path, fails: usize, warns: usize) -> String {
    format!(
        "{}: {fails} failure(s), {warns} warning(s){}",
        path.display(),
        if fails > 0 {
            " - fix them before deploying"
        } else {
            ""
        }
    )
}
