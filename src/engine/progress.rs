//! What a run tells the operator while it works, and the words it uses for errors.

use super::Name;

/// The agent's version, as every report and `version` print it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A progress line for a long step: plain text on stderr (no spinners: the agent often
/// runs without a TTY), and the journal.
pub fn progress(resource: Name, msg: &str) {
    eprintln!("{resource}: {msg}");
    log::info!(resource = resource.as_str(); "{msg}");
}

/// An error and its causes on one line, the way reports show it.
pub fn error_chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}
