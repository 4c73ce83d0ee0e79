//! Would sshd let this user in with a key? Judged from `sshd -T -C user=..,addr=..` of the
//! candidate configuration, so every keyword sshd applies to that connection (Match blocks
//! included) is already resolved; what `-T` prints but does not evaluate for the user
//! (AllowUsers, DenyUsers, AllowGroups, DenyGroups) is evaluated here.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The login being judged.
pub struct Login<'a> {
    pub user: &'a str,
    /// The user's primary and supplementary groups.
    pub groups: &'a [String],
    pub addr: IpAddr,
    /// Algorithms of the user's valid keys (`ssh-ed25519`, `ssh-rsa`, ...).
    pub key_algorithms: &'a [String],
}

fn values<'a>(v: &'a BTreeMap<String, Vec<String>>, key: &str) -> Vec<&'a str> {
    v.get(key)
        .map(|l| l.iter().flat_map(|x| x.split_whitespace()).collect())
        .unwrap_or_default()
}

fn one<'a>(v: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|l| l.first()).map(String::as_str)
}

/// sshd's `match_pattern`: `*` and `?` wildcards.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// A `user[@host]` entry of AllowUsers/DenyUsers: the host part is a pattern or a CIDR.
fn user_matches(entry: &str, login: &Login) -> bool {
    let (u, host) = match entry.split_once('@') {
        Some((u, h)) => (u, Some(h)),
        None => (entry, None),
    };
    if !glob(u, login.user) {
        return false;
    }
    match host {
        None => true,
        Some(h) => match h.parse::<ipnet::IpNet>() {
            Ok(net) => net.contains(&login.addr),
            Err(_) => glob(h, &login.addr.to_string()),
        },
    }
}

/// Why this login would be refused, or `None` when a key admits it.
pub fn refusal(v: &BTreeMap<String, Vec<String>>, login: &Login) -> Option<String> {
    if one(v, "pubkeyauthentication") != Some("yes") {
        return Some("PubkeyAuthentication is not yes".into());
    }
    // "any", or at least one method list that a key alone completes.
    let methods = values(v, "authenticationmethods");
    if !methods.is_empty()
        && !methods
            .iter()
            .any(|m| *m == "any" || m.split(',').all(|x| x == "publickey"))
    {
        return Some(format!(
            "AuthenticationMethods {} needs more than a key",
            methods.join(" ")
        ));
    }
    let deny_users = values(v, "denyusers");
    if let Some(d) = deny_users.iter().find(|e| user_matches(e, login)) {
        return Some(format!("DenyUsers {d} matches"));
    }
    let allow_users = values(v, "allowusers");
    if !allow_users.is_empty() && !allow_users.iter().any(|e| user_matches(e, login)) {
        return Some(format!(
            "AllowUsers {} does not list it",
            allow_users.join(" ")
        ));
    }
    let in_group = |pat: &&str| login.groups.iter().any(|g| glob(pat, g));
    if let Some(d) = values(v, "denygroups").iter().find(|p| in_group(p)) {
        return Some(format!("DenyGroups {d} matches"));
    }
    let allow_groups = values(v, "allowgroups");
    if !allow_groups.is_empty() && !allow_groups.iter().any(in_group) {
        return Some(format!(
            "AllowGroups {} holds none of its groups",
            allow_groups.join(" ")
        ));
    }
    let files = values(v, "authorizedkeysfile");
    if !files.iter().any(|f| {
        let f = f.trim_start_matches("%h/");
        f == ".ssh/authorized_keys" || *f == format!("/home/{}/.ssh/authorized_keys", login.user)
    }) {
        return Some(format!(
            "AuthorizedKeysFile {} does not read ~/.ssh/authorized_keys",
            files.join(" ")
        ));
    }
    let accepted: Vec<&str> = values(v, "pubkeyacceptedalgorithms")
        .into_iter()
        .flat_map(|x| x.split(','))
        .collect();
    if !accepted.is_empty()
        && !login.key_algorithms.iter().any(|k| {
            accepted.iter().any(|a| {
                let a = a.trim_end_matches("-cert-v01@openssh.com");
                a == k || (k == "ssh-rsa" && a.starts_with("rsa-sha2-"))
            })
        })
    {
        return Some(format!(
            "none of its key types ({}) is in PubkeyAcceptedAlgorithms",
            login.key_algorithms.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eff(extra: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        let mut v: BTreeMap<String, Vec<String>> = [
            ("pubkeyauthentication", "yes"),
            ("authenticationmethods", "any"),
            (
                "authorizedkeysfile",
                ".ssh/authorized_keys .ssh/authorized_keys2",
            ),
            (
                "pubkeyacceptedalgorithms",
                "ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
        .collect();
        for (k, x) in extra {
            v.entry(k.to_string()).or_default().push(x.to_string());
        }
        v
    }

    fn login<'a>(groups: &'a [String], algs: &'a [String]) -> Login<'a> {
        Login {
            user: "deploy",
            groups,
            addr: "192.0.2.50".parse().unwrap(),
            key_algorithms: algs,
        }
    }

    #[test]
    fn allow_users_without_the_user_refuses() {
        let g = vec!["deploy".to_string(), "sudo".to_string()];
        let a = vec!["ssh-ed25519".to_string()];
        assert_eq!(refusal(&eff(&[]), &login(&g, &a)), None);
        let r = refusal(&eff(&[("allowusers", "alice")]), &login(&g, &a)).unwrap();
        assert!(r.contains("AllowUsers alice"), "{r}");
        assert_eq!(
            refusal(
                &eff(&[("allowusers", "alice"), ("allowusers", "dep*")]),
                &login(&g, &a)
            ),
            None
        );
        assert_eq!(
            refusal(
                &eff(&[("allowusers", "deploy@192.0.2.0/24")]),
                &login(&g, &a)
            ),
            None
        );
        assert!(refusal(&eff(&[("allowusers", "deploy@10.*")]), &login(&g, &a)).is_some());
        assert!(refusal(&eff(&[("denyusers", "*")]), &login(&g, &a)).is_some());
        assert!(refusal(&eff(&[("allowgroups", "admins")]), &login(&g, &a)).is_some());
        assert_eq!(
            refusal(&eff(&[("allowgroups", "sudo")]), &login(&g, &a)),
            None
        );
        assert!(refusal(&eff(&[("denygroups", "su*")]), &login(&g, &a)).is_some());
    }

    #[test]
    fn methods_key_types_and_key_files() {
        let g = vec!["sudo".to_string()];
        let ed = vec!["ssh-ed25519".to_string()];
        let mut v = eff(&[]);
        v.insert(
            "authenticationmethods".into(),
            vec!["publickey,password".into()],
        );
        assert!(
            refusal(&v, &login(&g, &ed))
                .unwrap()
                .contains("more than a key")
        );
        v.insert(
            "authenticationmethods".into(),
            vec!["publickey,password publickey".into()],
        );
        assert_eq!(refusal(&v, &login(&g, &ed)), None);
        let mut v = eff(&[]);
        v.insert("pubkeyauthentication".into(), vec!["no".into()]);
        assert!(refusal(&v, &login(&g, &ed)).is_some());
        let mut v = eff(&[]);
        v.insert("authorizedkeysfile".into(), vec!["/etc/ssh/keys/%u".into()]);
        assert!(
            refusal(&v, &login(&g, &ed))
                .unwrap()
                .contains("AuthorizedKeysFile")
        );
        let rsa = vec!["ssh-rsa".to_string()];
        assert_eq!(refusal(&eff(&[]), &login(&g, &rsa)), None);
        let mut v = eff(&[]);
        v.insert(
            "pubkeyacceptedalgorithms".into(),
            vec!["ssh-ed25519".into()],
        );
        assert!(refusal(&v, &login(&g, &rsa)).unwrap().contains("key types"));
    }
}
