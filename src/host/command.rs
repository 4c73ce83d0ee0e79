//! External commands: always with a timeout, output captured, and errors that carry the
//! full command line and stderr so an operator can re-run it by hand. Secret values are
//! replaced before anything is shown.

use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long to wait for a killed child to be reaped before giving up on it.
const REAP_AFTER_KILL: Duration = Duration::from_secs(5);

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
    #[error("`{cmd}` was started but collecting its output or exit status failed: {source}")]
    Wait {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{cmd}` did not finish within {timeout:?} and was killed with its process group; \
         run it by hand to see where it hangs"
    )]
    Timeout { cmd: String, timeout: Duration },
    #[error("`{cmd}` exited with status {status}{}", tail(.stderr))]
    Failed {
        cmd: String,
        status: i32,
        stderr: String,
    },
}

/// A running child that leads its own process group (`process_group(0)`: group ID = PID).
/// Until it is reaped the group is killed when this is dropped, so a caller that gives up
/// on the command (a dropped future) stops what it started, too.
struct Group {
    child: tokio::process::Child,
    /// `None` once reaped: from then on the number may belong to someone else.
    pgid: Option<Pid>,
}

impl Group {
    fn new(child: tokio::process::Child) -> Self {
        // A PID of 0 or 1 would make killpg hit our own group or init; never kill those.
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .filter(|&id| id > 1)
            .map(Pid::from_raw);
        Self { child, pgid }
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await;
        if status.is_ok() {
            self.pgid = None;
        }
        status
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            // ESRCH is fine (the whole group is already gone); the child itself is killed
            // directly as well in case it moved to another group.
            if let Err(e) = killpg(pgid, Signal::SIGKILL)
                && e != nix::errno::Errno::ESRCH
            {
                log::warn!("cannot kill process group {pgid}: {e}");
            }
            let _ = self.child.start_kill();
        }
    }

    /// SIGKILL ends anything not stuck in the kernel; a child that is (state D) is left to
    /// tokio's reaping of dropped children rather than holding up the caller.
    async fn kill_and_reap(&mut self) {
        self.kill();
        let _ = tokio::time::timeout(REAP_AFTER_KILL, self.wait()).await;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The exit status as a shell reports it: the code, or 128 + the signal that ended the child.
fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    })
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
    ///
    /// The timeout covers everything: feeding stdin, draining stdout and stderr, and the
    /// exit. They run concurrently, so a child that fills its output pipe before reading its
    /// input cannot deadlock against us. The child leads its own process group; on timeout,
    /// or if this future is dropped first, the whole group is killed, so an `apt-get` that
    /// times out does not leave its `dpkg` running. A normal exit kills nothing: what the
    /// child left behind on purpose (a daemon) is not ours to stop.
    pub async fn output(&self) -> Result<CmdOutput, CmdError> {
        let shown = self.to_string();
        let child = self.command().spawn().map_err(|source| CmdError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
        let mut group = Group::new(child);
        if self.mutating {
            super::crash::point(|| format!("{shown}: running"));
        }
        let finished = tokio::time::timeout(self.timeout, self.drain(&mut group, &shown)).await;
        let (status, out, err) = match finished {
            Ok(r) => r.map_err(|source| CmdError::Wait {
                cmd: shown.clone(),
                source,
            })?,
            Err(_) => {
                group.kill_and_reap().await;
                return Err(CmdError::Timeout {
                    cmd: shown,
                    timeout: self.timeout,
                });
            }
        };
        let status = exit_code(status);
        log::debug!("ran `{shown}`: status {status}");
        Ok(CmdOutput {
            status,
            stdout: self.redact(&String::from_utf8_lossy(&out)),
            stderr: self.redact(&String::from_utf8_lossy(&err)),
        })
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            // Callers parse apt, sshd, ufw and iptables output: it must not be translated.
            // A caller's own LC_ALL comes later and so wins.
            .env("LC_ALL", "C")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that one signal reaches everything it started. Side effect:
            // an operator's Ctrl-C reaches only the agent, not the children directly.
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// Feeds stdin while draining stdout and stderr (all three at once, see `output`), then
    /// reaps the child.
    async fn drain(
        &self,
        group: &mut Group,
        shown: &str,
    ) -> std::io::Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
        let stdin = group.child.stdin.take();
        let (Some(mut stdout), Some(mut stderr)) =
            (group.child.stdout.take(), group.child.stderr.take())
        else {
            unreachable!("stdout and stderr are piped by `command`");
        };
        let feed = async {
            if let (Some(data), Some(mut pipe)) = (&self.stdin, stdin) {
                // A program that exits without reading all of its stdin (EPIPE) is not an
                // error by itself: its exit status decides.
                if let Err(e) = pipe.write_all(data).await
                    && e.kind() != std::io::ErrorKind::BrokenPipe
                {
                    log::debug!("`{shown}`: writing its stdin failed: {e}");
                }
                // `pipe` is dropped here: the child sees end of input.
            }
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let ((), o, e) = tokio::join!(
            feed,
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err)
        );
        o?;
        e?;
        // Reaped only after both pipes closed: until then the child, even a zombie, holds
        // its PID and so its group ID, and a kill of the group on timeout cannot reach an
        // unrelated process that was given the same number.
        let status = group.wait().await?;
        Ok((status, out, err))
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
mod tests;
