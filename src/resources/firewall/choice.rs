//! Which Cloudflare list is in force for a family (fetched, last good, or built in) and
//! which interface is the WAN: the inputs every wanted chain is built from.

use anyhow::{Result, anyhow, bail};
use ipnet::IpNet;

use super::lists::{self, Family, LastGood, Stored};
use super::rules::{self, Rule};
use super::{
    FamilyState, Fetched, Firewall, ListChoice, PROC_ROUTE_V4, PROC_ROUTE_V6, Source, State, Step,
    builtin_lists,
};

fn stored_words(s: &Stored) -> String {
    match &s.meta {
        Some(m) => format!(
            "{} ranges, fetched {} from {}, sha256 {}",
            s.nets.len(),
            m.fetched_at,
            m.source,
            lists::short(&s.sha256)
        ),
        None => format!(
            "{} ranges, sha256 {}",
            s.nets.len(),
            lists::short(&s.sha256)
        ),
    }
}

/// The list built into the binary for a family.
fn built_in(fam: Family) -> Vec<IpNet> {
    let text = match fam {
        Family::V4 => builtin_lists::V4,
        Family::V6 => builtin_lists::V6,
    };
    lists::parse_list(text, fam, usize::MAX).expect("the built-in lists are valid")
}

/// What a list is chosen as: the ranges, where they come from, and the step that stores
/// them as the new last good list when they are not it already.
type Chosen = (Vec<IpNet>, Source, Option<Step>);

/// A list fetched now is in force; it is stored unless it is the last good one already.
fn take_fetched(
    fam: Family,
    fetched: &Fetched,
    nets: &[IpNet],
    last: Option<&Stored>,
    notes: &mut Vec<String>,
) -> Chosen {
    let same = last.is_some_and(|s| s.nets == nets && s.meta.is_some());
    // A compromised mirror would swap ranges wholesale; Cloudflare adds a few.
    let old = last
        .map(|s| s.nets.clone())
        .unwrap_or_else(|| built_in(fam));
    if let Some(w) = lists::big_change_warning(fam, &old, nets) {
        notes.push(format!("WARNING: {w}"));
    }
    let store = (!same).then(|| Step::StoreList {
        family: fam,
        url: fetched.url.clone(),
        at: fetched.at.clone(),
        old: last.map(|s| s.nets.clone()),
        nets: nets.to_vec(),
    });
    let since = last
        .filter(|_| same)
        .and_then(|s| s.meta.as_ref())
        .map(|m| m.fetched_at.clone());
    let source = Source::Fetched {
        url: fetched.url.clone(),
        at: fetched.at.clone(),
        since,
    };
    (nets.to_vec(), source, store)
}

impl Firewall {
    /// Which list is in force for a family: a list fetched now, else the last good one,
    /// else the one built into the binary; never an empty or invalid one.
    pub fn choose_list(&self, f: &FamilyState) -> ListChoice {
        let fam = f.family;
        let mut notes = Vec::new();
        let last = self.usable_last_good(f, &mut notes);
        let (nets, source, store) = match (&f.fetched, last) {
            (
                Some(
                    fetched @ Fetched {
                        result: Ok(nets), ..
                    },
                ),
                last,
            ) => take_fetched(fam, fetched, nets, last, &mut notes),
            (Some(Fetched { result: Err(e), .. }), Some(s)) => {
                notes.push(format!(
                    "{e}; keeping the last good {} list ({})",
                    fam.label(),
                    stored_words(s)
                ));
                (s.nets.clone(), Source::LastGood(s.clone()), None)
            }
            (Some(Fetched { result: Err(e), .. }), None) => {
                self.take_built_in(fam, Some(e), &mut notes)
            }
            (None, Some(s)) => (s.nets.clone(), Source::LastGood(s.clone()), None),
            (None, None) => self.take_built_in(fam, None, &mut notes),
        };
        let sha256 = lists::sha256_hex(lists::render_list(&nets).as_bytes());
        ListChoice {
            nets,
            source,
            sha256,
            notes,
            store,
        }
    }

    /// The stored last good list when it is valid; a note says why it is not, or what is
    /// wrong with its metadata.
    fn usable_last_good<'a>(
        &self,
        f: &'a FamilyState,
        notes: &mut Vec<String>,
    ) -> Option<&'a Stored> {
        let fam = f.family;
        match &f.last_good {
            LastGood::Valid(s) => {
                if let Some(p) = &s.meta_problem {
                    notes.push(format!(
                        "last good {} list {}: {p}",
                        fam.label(),
                        lists::list_path(&self.state_dir, fam).display()
                    ));
                }
                Some(s)
            }
            LastGood::Invalid(why) => {
                notes.push(format!("last good {} list ignored: {why}", fam.label()));
                None
            }
            LastGood::Absent => None,
        }
    }

    /// Nothing fetched (or the fetch failed: `error`) and no last good list: the built-in
    /// list, with a note that says so.
    fn take_built_in(
        &self,
        fam: Family,
        error: Option<&String>,
        notes: &mut Vec<String>,
    ) -> Chosen {
        let nets = built_in(fam);
        let why = format!(
            "no last good {} list in {}: using the list built into sapari-agent {} ({} ranges)",
            fam.label(),
            self.state_dir.display(),
            crate::engine::VERSION,
            nets.len()
        );
        notes.push(match error {
            Some(e) => format!("{e}; {why}, which may be out of date"),
            None => why,
        });
        (nets, Source::BuiltIn, None)
    }

    /// The WAN interface for a family: configured, else this family's default route, else
    /// the other family's.
    pub fn wan(&self, s: &State, fam: Family) -> Result<String> {
        if !self.cfg.wan_interface.is_empty() {
            if !rules::valid_iface(&self.cfg.wan_interface) {
                bail!(
                    "firewall.wan_interface `{}` is not an interface name (at most 15 letters, digits, `-_.:@+`)",
                    self.cfg.wan_interface
                );
            }
            return Ok(self.cfg.wan_interface.clone());
        }
        let of = |f: Family| {
            s.families
                .iter()
                .find(|x| x.family == f)
                .and_then(|x| x.route_iface.clone())
        };
        let other = match fam {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        };
        of(fam)
            .or_else(|| of(other))
            .filter(|i| rules::valid_iface(i))
            .ok_or_else(|| {
                anyhow!(
                    "cannot tell the WAN interface: no default route in {PROC_ROUTE_V4} or {PROC_ROUTE_V6}; set firewall.wan_interface"
                )
            })
    }

    /// The chain wanted for a managed family, and the list behind it.
    pub(super) fn want(
        &self,
        s: &State,
        f: &FamilyState,
    ) -> Result<(ListChoice, String, Vec<Rule>)> {
        let choice = self.choose_list(f);
        let wan = self.wan(s, f.family)?;
        let want = rules::desired(&choice.nets, &wan);
        Ok((choice, wan, want))
    }

    pub(super) fn unmanaged_note(f: &FamilyState) -> String {
        match f.family {
            Family::V4 => format!(
                "IPv4 skipped: Docker has no iptables chains{}",
                f.backend_note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
            Family::V6 => format!(
                "IPv6 skipped: Docker has no ip6tables chains (ip6tables disabled in Docker?){}",
                f.backend_note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
        }
    }
}
