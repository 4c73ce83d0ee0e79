//! The run report: what every resource did, for people (text) and machines (JSON).

use serde::Serialize;

use super::Name;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    pub what: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Unified diff for file content changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

impl Change {
    pub fn value(what: impl Into<String>, from: Option<String>, to: Option<String>) -> Self {
        Self {
            what: what.into(),
            from,
            to,
            diff: None,
        }
    }

    /// A file whose content changes: from/to are short summaries, the diff is the detail.
    pub fn file(path: &str, old: Option<&str>, new: &str) -> Self {
        let diff = similar::TextDiff::from_lines(old.unwrap_or(""), new)
            .unified_diff()
            .context_radius(2)
            .header(if old.is_some() { path } else { "/dev/null" }, path)
            .to_string();
        Self {
            what: path.to_string(),
            from: Some(match old {
                Some(o) => format!("{} lines", o.lines().count()),
                None => "absent".into(),
            }),
            to: Some(format!("{} lines", new.lines().count())),
            diff: Some(diff),
        }
    }
}

impl Change {
    /// A file in a user's directory: summaries only. Its content is the user's (and a file
    /// the user swapped in may hold anything), so it never reaches a report or a log.
    pub fn user_file(path: &str, old: Option<&str>, new: &str) -> Self {
        Self {
            diff: None,
            ..Self::file(path, old, new)
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Unchanged,
    Changed,
    WouldChange,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unchanged => "unchanged",
            Status::Changed => "changed",
            Status::WouldChange => "would_change",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceReport {
    pub name: Name,
    pub status: Status,
    pub changes: Vec<Change>,
    /// Things worth knowing that are not changes (existing swap accepted, a deferred resize).
    pub notes: Vec<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub unchanged: usize,
    pub changed: usize,
    pub would_change: usize,
    pub failed: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub agent_version: &'static str,
    pub mode: &'static str,
    pub started_at: String,
    pub duration_ms: u64,
    pub resources: Vec<ResourceReport>,
    pub summary: Summary,
}

impl Report {
    pub fn summarize(resources: &[ResourceReport]) -> Summary {
        let mut s = Summary::default();
        for r in resources {
            match r.status {
                Status::Unchanged => s.unchanged += 1,
                Status::Changed => s.changed += 1,
                Status::WouldChange => s.would_change += 1,
                Status::Failed => s.failed += 1,
                Status::Skipped => s.skipped += 1,
            }
        }
        s
    }

    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        let mut parts = Vec::new();
        if self.mode == "plan" {
            parts.push(format!("{} would change", s.would_change));
        } else {
            parts.push(format!("{} changed", s.changed));
        }
        parts.push(format!("{} unchanged", s.unchanged));
        parts.push(format!("{} failed", s.failed));
        parts.push(format!("{} skipped", s.skipped));
        format!(
            "{}: {} in {:.2}s",
            self.mode,
            parts.join(", "),
            self.duration_ms as f64 / 1000.0
        )
    }
}

/// One resource as human-readable lines (printed as soon as the resource finishes).
pub fn render_resource(r: &ResourceReport) -> String {
    let mut out = format!(
        "{:<11} {:<12} {:>6}ms",
        r.name.as_str(),
        r.status.as_str(),
        r.duration_ms
    );
    if let Some(e) = &r.error {
        out.push_str(&format!("\n    error: {e}"));
    }
    for c in &r.changes {
        match (&c.diff, &c.from, &c.to) {
            (Some(d), _, _) => {
                out.push_str(&format!("\n    ~ {}", c.what));
                for l in d.lines() {
                    out.push_str(&format!("\n      {l}"));
                }
            }
            (None, f, t) => out.push_str(&format!(
                "\n    ~ {}: {} -> {}",
                c.what,
                f.as_deref().unwrap_or("(none)"),
                t.as_deref().unwrap_or("(none)")
            )),
        }
    }
    for n in &r.notes {
        out.push_str(&format!("\n    note: {n}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_change_has_unified_diff() {
        let c = Change::file("/etc/hosts", Some("a\nb\n"), "a\nc\n");
        let d = c.diff.unwrap();
        assert!(d.contains("-b") && d.contains("+c"), "{d}");
        assert_eq!(c.from.as_deref(), Some("2 lines"));
        let c = Change::file("/etc/x", None, "n\n");
        assert_eq!(c.from.as_deref(), Some("absent"));
    }

    #[test]
    fn json_shape() {
        let r = ResourceReport {
            name: Name::Swap,
            status: Status::WouldChange,
            changes: vec![Change::value("swap", None, Some("4G".into()))],
            notes: vec![],
            error: None,
            duration_ms: 3,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["name"], "swap");
        assert_eq!(v["status"], "would_change");
        assert_eq!(v["changes"][0]["to"], "4G");
        assert!(v["error"].is_null());
        assert!(v["changes"][0].get("diff").is_none());
    }

    #[test]
    fn a_user_file_change_carries_no_content() {
        let c = Change::user_file(
            "/home/deploy/.ssh/config",
            Some("Host secret\n"),
            "Host a\n",
        );
        assert!(c.diff.is_none());
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("secret"), "{json}");
        assert_eq!(c.to.as_deref(), Some("1 lines"));
    }
}
