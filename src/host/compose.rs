//! Interface to Docker's compose: `docker compose` (v2, the CLI plugin) or `docker-compose`
//! (v1, the standalone Python program), whichever answers here.

use std::time::Duration;

use super::{Cmd, Host};

/// Which compose answers here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The `docker compose` plugin.
    V2,
    /// The standalone Python `docker-compose` (Debian 12 ships 1.29).
    V1,
}

impl Flavor {
    /// The command line that starts it, as an operator types it.
    pub fn command(self) -> &'static str {
        match self {
            Flavor::V2 => "docker compose",
            Flavor::V1 => "docker-compose",
        }
    }
}

/// v2 first: it is what Docker's packages and Ubuntu's ship, and `docker-compose` may be a
/// leftover v1 beside it. The plugin counts only if `docker compose version` succeeds,
/// since a `docker` without the plugin exits non-zero.
pub async fn detect(host: &Host) -> Option<Flavor> {
    if host.program_exists("docker")
        && host
            .query(
                &Cmd::new("docker")
                    .args(["compose", "version"])
                    .timeout(Duration::from_secs(20)),
            )
            .await
            .is_ok_and(|o| o.status == 0)
    {
        return Some(Flavor::V2);
    }
    host.program_exists("docker-compose").then_some(Flavor::V1)
}
