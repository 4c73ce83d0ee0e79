//! External commands: always with a timeout, output captured, and errors that carry the
//! full command line and stderr so an operator can re-run it by hand. Secret values are
//! replaced before anything is shown.

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone)]
pub struct Cmd {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    secrets: Vec<String>,
    /// Set by `Host::run` only: the command changes the system, so it is a crash point while
    /// it runs (see `host::crash`).
    mutating: bool,
}

#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// The output of a query that must succeed: a non-zero status becomes the same error
    /// `Cmd::run` gives, with the command line and the tail of stderr.
    pub fn success_of(self, cmd: &Cmd) -> Result<Self, CmdError> {
        if self.status == 0 {
            return Ok(self);
        }
        Err(CmdError::Failed {
            cmd: cmd.to_string(),
            status: self.status,
            stderr: self.stderr,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("`{cmd}` could not be started: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` did not finish within {timeout:?} and was killed")]
    Timeout { cmd: String, timeout: Duration },
    #[error("`{cmd}` exited with status {status}{}", tail(.stderr))]
    Failed {
        cmd: String,
        status: i32,
        stderr: String,
    },
}

fn tail(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(6);
    format!(": {}", lines[start..].join(" | "))
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Self {
            program: program.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout: Duration::from_secs(60),
            secrets: Vec::new(),
            mutating: false,
        }
    }

    pub(super) fn mutating(mut self) -> Self {
        self.mutating = true;
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// A value that must never appear in errors or logs (it is still passed to the
    /// program through stdin or env, never argv, by the callers that use this).
    pub fn secret(mut self, s: impl Into<String>) -> Self {
        let s = s.into();
        if !s.is_empty() {
            self.secrets.push(s);
        }
        self
    }

    fn redact(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), "<redacted>"))
    }

    /// Run and return the output whatever the exit status.
    pub async fn output(&self) -> Result<CmdOutput, CmdError> {
        let shown = self.to_string();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
        if let (Some(data), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            // A program that exits without reading stdin is not our error to report.
            let _ = pipe.write_all(data).await;
        }
        if self.mutating {
            super::crash::point(|| format!("{shown}: running"));
        }
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|source| CmdError::Spawn {
                cmd: shown.clone(),
                source,
            })?,
            Err(_) => {
                return Err(CmdError::Timeout {
                    cmd: shown,
                    timeout: self.timeout,
                });
            }
        };
        let status = out.status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + out.status.signal().unwrap_or(0)
        });
        log::debug!("ran `{shown}`: status {status}");
        Ok(CmdOutput {
            status,
            stdout: self.redact(&String::from_utf8_lossy(&out.stdout)),
            stderr: self.redact(&String::from_utf8_lossy(&out.stderr)),
        })
    }

    /// Run and require exit status 0.
    pub async fn run(&self) -> Result<CmdOutput, CmdError> {
        let out = self.output().await?;
        if out.status != 0 {
            let stderr = if out.stderr.trim().is_empty() {
                out.stdout.clone()
            } else {
                out.stderr.clone()
            };
            return Err(CmdError::Failed {
                cmd: self.to_string(),
                status: out.status,
                stderr,
            });
        }
        Ok(out)
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = quote(&self.program);
        for a in &self.args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        f.write_str(&self.redact(&line))
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn failure_carries_command_line_and_stderr() {
        let e = rt()
            .block_on(Cmd::new("sh").args(["-c", "echo boom >&2; exit 3"]).run())
            .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("`sh -c 'echo boom >&2; exit 3'`"), "{m}");
        assert!(m.contains("status 3") && m.contains("boom"), "{m}");
    }

    #[test]
    fn timeout_kills() {
        let t0 = std::time::Instant::now();
        let e = rt()
            .block_on(
                Cmd::new("sleep")
                    .arg("5")
                    .timeout(Duration::from_millis(200))
                    .run(),
            )
            .unwrap_err();
        assert!(matches!(e, CmdError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let c = Cmd::new("sh")
            .args(["-c", "echo tskey-123 >&2; exit 1"])
            .secret("tskey-123");
        assert!(!c.to_string().contains("tskey-123"));
        let e = rt().block_on(c.run()).unwrap_err().to_string();
        assert!(!e.contains("tskey-123") && e.contains("<redacted>"), "{e}");
    }

    #[test]
    fn stdin_is_fed() {
        let out = rt().block_on(Cmd::new("cat").stdin("hello").run()).unwrap();
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = rt()
            .block_on(Cmd::new("/nonexistent/prog").run())
            .unwrap_err();
        assert!(matches!(e, CmdError::Spawn { .. }));
        assert!(e.to_string().contains("/nonexistent/prog"));
    }
}
