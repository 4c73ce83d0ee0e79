// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! The harness's config helper writes what the agent reads (no root needed).
mod common;

use common::config::{config, to_toml};

#[test]
fn default_config_round_trips() {
    let text = to_toml(&config(|_| {}));
    assert!(text.contains("[firewall]"), "{text}");
}

#[test]
fn edited_config_round_trips() {
    let c = config(|c| {
        c.ntp.require_sync = false;
        c.swap.enabled = false;
        c.hostname.name = "sapari-prod".parse().unwrap();
        c.swap.size = "64M".parse().unwrap();
    });
    let text = to_toml(&c);
    println!("{text}");
}
