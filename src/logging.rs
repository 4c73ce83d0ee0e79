//! Logs go to journald (with RESOURCE/STATUS fields) when its socket exists, else to
//! stderr. The human report is not a log: it goes to stdout.

use std::path::Path;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Per-resource outcome for the journal (RESOURCE= and STATUS= fields). The human report on
/// stdout already shows it, so the stderr logger leaves this target out.
pub const REPORT_TARGET: &str = "sapari_agent::report";

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level && m.target() != REPORT_TARGET
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            let tag = match r.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                _ => "info",
            };
            eprintln!("sapari-agent: {tag}: {}", r.args());
        }
    }

    fn flush(&self) {}
}

pub fn init(verbose: bool) {
    if crate::host::files::exists(Path::new(JOURNAL_SOCKET))
        && let Ok(j) = systemd_journal_logger::JournalLog::new()
    {
        let j = j.with_syslog_identifier("sapari-agent".to_string());
        if j.install().is_ok() {
            log::set_max_level(LevelFilter::Info);
            return;
        }
    }
    let level = if verbose {
        LevelFilter::Info
    } else {
        LevelFilter::Warn
    };
    if log::set_boxed_logger(Box::new(Stderr { level })).is_ok() {
        log::set_max_level(level);
    }
}
