use super::*;
use crate::host::Access;
use std::sync::{Arc, Mutex};

/// A resource whose "machine" is an integer.
struct Fake {
    name: Name,
    deps: &'static [Name],
    value: Arc<Mutex<i32>>,
    want: i32,
    /// Apply succeeds but changes nothing (a lying apply).
    inert: bool,
    fail_observe: bool,
    /// The config key that turned it off.
    off: Option<&'static str>,
    /// Observe fails the way reading a root-only file does.
    denied: bool,
    barrier: Option<Arc<tokio::sync::Barrier>>,
}

struct Set(i32);
impl Describe for Set {
    fn change(&self) -> Change {
        Change::value("value", None, Some(self.0.to_string()))
    }
}

fn fake(name: Name, want: i32) -> Fake {
    Fake {
        name,
        deps: &[],
        value: Arc::new(Mutex::new(0)),
        want,
        inert: false,
        fail_observe: false,
        off: None,
        denied: false,
        barrier: None,
    }
}

#[async_trait]
impl Resource for Fake {
    type State = i32;
    type Step = Set;
    fn name(&self) -> Name {
        self.name
    }
    fn depends_on(&self) -> &'static [Name] {
        self.deps
    }
    async fn observe(&self, _h: &Host) -> Result<i32> {
        if let Some(b) = &self.barrier {
            tokio::time::timeout(std::time::Duration::from_secs(5), b.wait())
                .await
                .map_err(|_| anyhow!("observations did not run concurrently"))?;
        }
        if self.fail_observe {
            anyhow::bail!("cannot observe");
        }
        if self.denied {
            return Err(anyhow::Error::new(std::io::Error::from(
                std::io::ErrorKind::PermissionDenied,
            ))
            .context("cannot open /proc/net/ip_tables_names"));
        }
        Ok(*self.value.lock().unwrap())
    }
    fn plan(&self, s: &i32) -> Result<Plan<Set>> {
        let mut p = Plan::default();
        if *s != self.want {
            p.steps.push(Set(self.want));
        }
        Ok(p)
    }
    async fn apply(&self, _h: &Host, _s: &i32, steps: &[Set]) -> Result<()> {
        if !self.inert {
            for s in steps {
                *self.value.lock().unwrap() = s.0;
            }
        }
        Ok(())
    }
    fn checks(&self, _s: &i32) -> Vec<Check> {
        vec![Check::new(self.name.as_str(), Level::Pass, "observed", "")]
    }
    fn disabled(&self) -> Option<&'static str> {
        self.off
    }
    fn disabled_checks(&self) -> Vec<Check> {
        vec![Check::new(
            self.name.as_str(),
            Level::Warn,
            "not managed",
            "",
        )]
    }
}

fn run(engine: &Engine, mode: Mode, sel: &Selection) -> Vec<ResourceReport> {
    let host = Host::new(Access::ReadWrite);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(engine.run(&host, mode, sel, |_| {}))
}

fn checks(engine: &Engine, names: &[Name]) -> Vec<Check> {
    let host = Host::new(Access::ReadOnly);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(engine.checks(&host, names))
}

fn all(names: &[Name]) -> Selection {
    Selection {
        entries: names.iter().map(|n| (*n, None)).collect(),
    }
}

#[test]
fn converge_applies_and_second_run_is_unchanged() {
    let e = Engine {
        registry: vec![Box::new(fake(Name::Hostname, 5))],
        root: true,
    };
    let r = run(&e, Mode::Converge, &all(&[Name::Hostname]));
    assert_eq!(r[0].status, Status::Changed);
    let r = run(&e, Mode::Converge, &all(&[Name::Hostname]));
    assert_eq!(r[0].status, Status::Unchanged);
}

#[test]
fn plan_changes_nothing() {
    let f = fake(Name::Hostname, 5);
    let v = f.value.clone();
    let e = Engine {
        registry: vec![Box::new(f)],
        root: true,
    };
    let r = run(&e, Mode::Plan, &all(&[Name::Hostname]));
    assert_eq!(r[0].status, Status::WouldChange);
    assert_eq!(*v.lock().unwrap(), 0);
}

#[test]
fn an_apply_that_changes_nothing_fails_verification() {
    let mut f = fake(Name::Hostname, 5);
    f.inert = true;
    let e = Engine {
        registry: vec![Box::new(f)],
        root: true,
    };
    let r = run(&e, Mode::Converge, &all(&[Name::Hostname]));
    assert_eq!(r[0].status, Status::Failed);
    assert!(
        r[0].error
            .as_ref()
            .unwrap()
            .contains("still different after apply")
    );
}

#[test]
fn failure_skips_dependents_but_not_independents() {
    let mut users = fake(Name::Users, 1);
    users.fail_observe = true;
    let mut sshd = fake(Name::Sshd, 1);
    sshd.deps = &[Name::Users];
    let e = Engine {
        registry: vec![
            Box::new(users),
            Box::new(sshd),
            Box::new(fake(Name::Swap, 1)),
        ],
        root: true,
    };
    let r = run(
        &e,
        Mode::Converge,
        &all(&[Name::Users, Name::Sshd, Name::Swap]),
    );
    assert_eq!(r[0].status, Status::Failed);
    assert_eq!(r[1].status, Status::Skipped);
    assert!(r[1].error.as_ref().unwrap().contains("depends on users"));
    assert_eq!(r[2].status, Status::Changed);
}

#[test]
fn plan_of_a_dependent_waits_for_its_dependency() {
    let users = fake(Name::Users, 1);
    let mut sshd = fake(Name::Sshd, 1);
    sshd.deps = &[Name::Users];
    sshd.fail_observe = true;
    let e = Engine {
        registry: vec![Box::new(users), Box::new(sshd)],
        root: true,
    };
    let r = run(&e, Mode::Plan, &all(&[Name::Users, Name::Sshd]));
    assert_eq!(r[1].status, Status::WouldChange);
    assert!(r[1].notes[0].contains("before users is applied"));
    // In a converge the same failure is a failure.
    let r = run(&e, Mode::Converge, &all(&[Name::Users, Name::Sshd]));
    assert_eq!(r[1].status, Status::Failed);
}

#[test]
fn observations_run_concurrently_and_deselected_are_reported() {
    let b = Arc::new(tokio::sync::Barrier::new(2));
    let mut a = fake(Name::Hostname, 0);
    a.barrier = Some(b.clone());
    let mut c = fake(Name::Swap, 0);
    c.barrier = Some(b);
    let e = Engine {
        registry: vec![Box::new(a), Box::new(c), Box::new(fake(Name::Ntp, 1))],
        root: true,
    };
    let sel = Selection {
        entries: vec![
            (Name::Hostname, None),
            (Name::Swap, None),
            (Name::Ntp, Some("skipped by --skip".to_string())),
        ],
    };
    let r = run(&e, Mode::Converge, &sel);
    assert_eq!(r[0].status, Status::Unchanged, "{:?}", r[0].error);
    assert_eq!(r[1].status, Status::Unchanged, "{:?}", r[1].error);
    assert_eq!(r[2].status, Status::Skipped);
    assert_eq!(r[2].notes, vec!["skipped by --skip"]);
}

#[test]
fn a_disabled_resource_is_skipped_without_being_observed() {
    let mut off = fake(Name::Compose, 5);
    off.fail_observe = true;
    off.off = Some("compose.enabled");
    let v = off.value.clone();
    let e = Engine {
        registry: vec![Box::new(fake(Name::Swap, 0)), Box::new(off)],
        root: true,
    };
    for mode in [Mode::Plan, Mode::Converge] {
        let r = run(&e, mode, &all(&[Name::Swap, Name::Compose]));
        assert_eq!(r[1].status, Status::Skipped, "{:?}", r[1].error);
        assert_eq!(r[1].notes, vec!["compose.enabled = false"]);
        assert_eq!(r[1].error, None);
    }
    assert_eq!(*v.lock().unwrap(), 0, "a disabled resource was applied");
    let c = checks(&e, &[Name::Swap, Name::Compose]);
    assert_eq!(
        c.iter()
            .map(|c| (c.name.as_str(), c.level))
            .collect::<Vec<_>>(),
        vec![("swap", Level::Pass), ("compose", Level::Warn)]
    );
}

#[test]
fn a_disabled_dependency_does_not_skip_its_dependents() {
    let mut docker = fake(Name::Docker, 1);
    docker.off = Some("docker.enabled");
    let mut compose = fake(Name::Compose, 1);
    compose.deps = &[Name::Docker];
    let e = Engine {
        registry: vec![Box::new(docker), Box::new(compose)],
        root: true,
    };
    let r = run(&e, Mode::Converge, &all(&[Name::Docker, Name::Compose]));
    assert_eq!(r[0].status, Status::Skipped);
    assert_eq!(r[1].status, Status::Changed);
}

#[test]
fn permission_denied_without_root_is_unknown_not_failed() {
    let denied = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        .context("cannot open /x");
    let note = unknown_without_root(false, &denied).unwrap();
    assert!(
        note.starts_with("unknown without root: cannot open /x"),
        "{note}"
    );
    // As root a permission error is a real failure; other errors always are.
    assert_eq!(unknown_without_root(true, &denied), None);
    let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound));
    assert_eq!(unknown_without_root(false, &other), None);
    assert_eq!(
        unknown_without_root(false, &anyhow!("permission denied")),
        None
    );

    let mut fw = fake(Name::Firewall, 1);
    fw.denied = true;
    let mut e = Engine {
        registry: vec![Box::new(fw), Box::new(fake(Name::Swap, 1))],
        root: false,
    };
    let r = run(&e, Mode::Plan, &all(&[Name::Firewall, Name::Swap]));
    assert_eq!(r[0].status, Status::Unchanged, "{:?}", r[0].error);
    assert_eq!(r[0].error, None);
    assert!(
        r[0].notes[0].starts_with("unknown without root: cannot open /proc/net/ip_tables_names")
    );
    assert_eq!(r[1].status, Status::WouldChange);
    let c = checks(&e, &[Name::Firewall]);
    assert_eq!(c[0].level, Level::Warn);
    assert!(
        c[0].detail.starts_with("cannot read without root: "),
        "{c:?}"
    );

    e.root = true;
    let r = run(&e, Mode::Plan, &all(&[Name::Firewall]));
    assert_eq!(r[0].status, Status::Failed);
    assert_eq!(checks(&e, &[Name::Firewall])[0].level, Level::Fail);
}
