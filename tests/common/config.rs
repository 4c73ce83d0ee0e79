//! The agent's config for a test, built as the library's own `Config` and written as TOML, so a
//! test states what it changes and the file always parses the way the agent parses it.

use sapari_agent::config::{self, Config};

use super::{CONFIG_PATH, TestBox};

/// `Config::default()` with `edit` applied.
pub fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    edit(&mut c);
    c
}

/// `c` as TOML, checked to parse back (through the agent's own parser) to the same `Config`.
pub fn to_toml(c: &Config) -> String {
    let text = toml::to_string(c).unwrap_or_else(|e| panic!("serialise {c:?}: {e}"));
    match config::parse(&text, None) {
        Ok(back) => assert_eq!(&back, c, "config does not round-trip:\n{text}"),
        Err(e) => panic!("serialised config does not parse: {e}\n{text}"),
    }
    text
}

impl TestBox {
    /// Writes `c` to the agent's config path (root:root 0600, parents created).
    pub fn write_config(&self, c: &Config) {
        self.write(CONFIG_PATH, to_toml(c).as_bytes(), 0o600);
    }
}
