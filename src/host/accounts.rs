//! Local accounts read straight from /etc/passwd and /etc/group: the agent is a static
//! binary and the boxes it manages use files, not NSS modules, for system accounts.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

pub fn parse_passwd(text: &str) -> Vec<Account> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Account {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: PathBuf::from(f[5]),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// The password field of /etc/shadow for `user`: `!`/`*` prefixes mean locked.
pub fn shadow_password<'a>(shadow: &'a str, user: &str) -> Option<&'a str> {
    shadow.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == user).then(|| f.next()).flatten()
    })
}

/// Snapshot of the account databases.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    pub users: Vec<Account>,
    pub groups: Vec<Group>,
}

impl Accounts {
    pub fn user(&self, name: &str) -> Option<&Account> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Groups `user` belongs to, primary group included.
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        let primary = self.user(user).map(|u| u.gid);
        self.groups
            .iter()
            .filter(|g| Some(g.gid) == primary || g.members.iter().any(|m| m == user))
            .map(|g| g.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_databases() {
        let a = Accounts {
            users: parse_passwd(
                "root:x:0:0:root:/root:/bin/bash\ndeploy:x:1000:1000::/home/deploy:/bin/sh\nbroken\n",
            ),
            groups: parse_group("sudo:x:27:deploy,ops\ndocker:x:999:\ndeploy:x:1000:\n"),
        };
        assert_eq!(a.users.len(), 2);
        assert_eq!(
            a.user("deploy").unwrap().home,
            PathBuf::from("/home/deploy")
        );
        assert_eq!(a.group("docker").unwrap().members.len(), 0);
        assert_eq!(a.groups_of("deploy"), vec!["sudo", "deploy"]);
        assert_eq!(
            shadow_password("deploy:!:19000::::::\n", "deploy"),
            Some("!")
        );
        assert_eq!(shadow_password("deploy:!:19000::::::\n", "nobody"), None);
    }
}
