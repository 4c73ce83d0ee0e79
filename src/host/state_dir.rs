//! The agent's state directory, `/var/lib/sapari-agent` (filled in by the state-dir work).
