//! Documented exit codes (README, `--help`), and the one place a command's error becomes
//! one of them.

use std::fmt::Display;

pub const OK: i32 = 0;
pub const FAILED: i32 = 1;
pub const CHANGES: i32 = 2;
pub const USAGE: i32 = 64;
pub const LOCKED: i32 = 75;
pub const NOT_ROOT: i32 = 77;
pub const CONFIG: i32 = 78;

/// A process exit code, one of the constants above.
pub type Exit = i32;

/// Why a command stopped early: the lines to tell the operator and the code that says so
/// to scripts. A command that already printed its reason returns one without lines.
#[derive(Debug)]
pub struct CommandError {
    pub code: Exit,
    pub lines: Vec<String>,
}

impl CommandError {
    pub fn new(code: Exit, line: impl Display) -> Self {
        Self {
            code,
            lines: vec![line.to_string()],
        }
    }

    /// The reason is already on stderr (or in the JSON document on stdout).
    pub fn said(code: Exit) -> Self {
        Self {
            code,
            lines: Vec::new(),
        }
    }

    /// One more line after the first.
    pub fn then(mut self, line: impl Display) -> Self {
        self.lines.push(line.to_string());
        self
    }
}

/// The one mapping from a command's outcome to the process exit code.
pub fn code(outcome: Result<Exit, CommandError>) -> Exit {
    match outcome {
        Ok(code) => code,
        Err(e) => {
            for l in &e.lines {
                eprintln!("sapari-agent: {l}");
            }
            e.code
        }
    }
}
