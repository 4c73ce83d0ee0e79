//! Interface to `nft`: list one table as JSON, list the tables, and load a script in one
//! transaction (`nft -f -` commits everything or nothing). Parsing what the JSON means is the
//! caller's business; this module only runs the program.

use std::time::Duration;

use anyhow::Result;

use super::{Cmd, Host};

pub const PROGRAM: &str = "nft";
const TIMEOUT: Duration = Duration::from_secs(30);

/// `nft -j list table FAMILY NAME`: the parsed JSON, or None when the table does not exist.
pub async fn list_table(
    host: &Host,
    family: &str,
    name: &str,
) -> Result<Option<serde_json::Value>> {
    let cmd = Cmd::new(PROGRAM)
        .args(["-j", "list", "table", family, name])
        .timeout(TIMEOUT);
    let out = host.query(&cmd).await?;
    // nft says "No such file or directory" for a table that does not exist.
    if out.status != 0 && out.stderr.contains("No such file or directory") {
        return Ok(None);
    }
    let out = out.success_of(&cmd)?;
    let v = serde_json::from_str(&out.stdout)
        .map_err(|e| anyhow::anyhow!("cannot parse the output of `{cmd}`: {e}"))?;
    Ok(Some(v))
}

/// `nft list tables`: (family, name) of every table.
pub async fn list_tables(host: &Host) -> Result<Vec<(String, String)>> {
    let cmd = Cmd::new(PROGRAM).args(["list", "tables"]).timeout(TIMEOUT);
    let out = host.query(&cmd).await?.success_of(&cmd)?;
    Ok(parse_tables(&out.stdout))
}

/// The lines `table FAMILY NAME` that `nft list tables` prints.
pub fn parse_tables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("table")).then_some(())?;
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// Load `script` with `nft -f -`: one kernel transaction, applied whole or not at all.
pub async fn load(host: &Host, script: &str) -> Result<()> {
    let cmd = Cmd::new(PROGRAM)
        .args(["-f", "-"])
        .stdin(script)
        .timeout(TIMEOUT);
    host.run(&cmd).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_parsed() {
        let t = "table ip filter\ntable inet sapari_agent\ntable ip6 docker-bridges\n";
        assert_eq!(
            parse_tables(t),
            vec![
                ("ip".into(), "filter".into()),
                ("inet".into(), "sapari_agent".into()),
                ("ip6".into(), "docker-bridges".into())
            ]
        );
        assert!(parse_tables("").is_empty());
    }
}
