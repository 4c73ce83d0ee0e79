use super::*;

const G: u64 = 1 << 30;

fn res() -> Swap {
    Swap::new(&SwapSettings::default())
}

fn mem() -> Memory {
    Memory {
        total: 32 * G,
        available: 30 * G,
        swap_total: 0,
        swap_free: 0,
    }
}

fn fresh() -> State {
    State {
        active: vec![],
        fstab: Some("UUID=abc / ext4 defaults 0 1\n".into()),
        file: None,
        helper: None,
        fs: FsKind::Ext4,
        memory: mem(),
        free: 100 * G,
    }
}

fn ours(size: u64, used: u64) -> ActiveSwap {
    ActiveSwap {
        path: "/swapfile".into(),
        is_file: true,
        size: size - PAGE,
        used,
    }
}

fn converged() -> State {
    State {
        active: vec![ours(4 * G, 0)],
        fstab: Some(format!(
            "UUID=abc / ext4 defaults 0 1\n{}\n",
            fstab_line(Path::new("/swapfile"))
        )),
        file: Some(SwapFile {
            size: 4 * G,
            spec: FileSpec::root(0o600),
            has_signature: true,
        }),
        helper: None,
        fs: FsKind::Ext4,
        memory: mem(),
        free: 100 * G,
    }
}

#[test]
fn fresh_box_gets_the_whole_sequence() {
    let p = res().plan(&fresh()).unwrap();
    assert_eq!(p.steps.len(), 4);
    assert_eq!(
        p.steps[0],
        Step::Create {
            file: Which::Main,
            size: 4 * G,
            nocow: false
        }
    );
    assert_eq!(p.steps[1], Step::Mkswap(Which::Main));
    assert_eq!(p.steps[2], Step::Swapon(Which::Main));
    match &p.steps[3] {
        Step::WriteFstab { new, .. } => {
            assert_eq!(
                new,
                "UUID=abc / ext4 defaults 0 1\n/swapfile none swap sw,nofail 0 0\n"
            )
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn converged_plans_nothing() {
    let p = res().plan(&converged()).unwrap();
    assert!(p.steps.is_empty(), "{:?}", p.steps);
}

#[test]
fn btrfs_creates_nocow() {
    let mut s = fresh();
    s.fs = FsKind::Btrfs;
    assert_eq!(
        res().plan(&s).unwrap().steps[0],
        Step::Create {
            file: Which::Main,
            size: 4 * G,
            nocow: true
        }
    );
}

#[test]
fn overlay_or_tmpfs_is_a_clear_error() {
    let mut s = fresh();
    s.fs = FsKind::NoSwap("overlayfs");
    let e = res().plan(&s).unwrap_err().to_string();
    assert!(e.contains("overlayfs") && e.contains("swap.path"), "{e}");
}

#[test]
fn existing_swap_of_sufficient_size_is_respected() {
    let mut s = fresh();
    s.active = vec![ActiveSwap {
        path: "/swap.img".into(),
        is_file: true,
        size: 4 * G - PAGE,
        used: 0,
    }];
    let p = res().plan(&s).unwrap();
    assert!(p.steps.is_empty());
    assert!(p.notes[0].contains("/swap.img"));
    // Too small: our file is still made.
    s.active[0].size = G - PAGE;
    assert!(!res().plan(&s).unwrap().steps.is_empty());
    // Not accepted when the config says so.
    let cfg = SwapSettings {
        accept_existing: false,
        ..SwapSettings::default()
    };
    s.active[0].size = 8 * G;
    assert!(!Swap::new(&cfg).plan(&s).unwrap().steps.is_empty());
}

#[test]
fn resize_only_without_memory_pressure() {
    let mut s = converged();
    s.file.as_mut().unwrap().size = 2 * G;
    s.active = vec![ours(2 * G, G)];
    let p = res().plan(&s).unwrap();
    assert!(
        p.steps.contains(&Step::Swapoff(Which::Main)),
        "{:?}",
        p.steps
    );
    s.memory.available = G;
    let p = res().plan(&s).unwrap();
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert!(p.notes[0].contains("deferred"), "{:?}", p.notes);
}

const HELPER: &str = "/swapfile.sapari-agent-new";

/// What the steps do to a box, as the planner sees it afterwards.
fn simulate(s: &State, steps: &[Step]) -> State {
    let mut s = s.clone();
    let name = |w: Which| match w {
        Which::Main => PathBuf::from("/swapfile"),
        Which::Helper => PathBuf::from(HELPER),
    };
    let size_of = |s: &State, w: Which| match w {
        Which::Main => s.file.as_ref().map(|f| f.size),
        Which::Helper => s.helper,
    };
    for step in steps {
        match step {
            Step::Create { file, size, .. } => {
                assert!(!s.active.iter().any(|a| a.path == name(*file)), "{step:?}");
                s.free -= size - size_of(&s, *file).unwrap_or(0);
                match file {
                    Which::Main => {
                        s.file = Some(SwapFile {
                            size: *size,
                            spec: FileSpec::root(0o600),
                            has_signature: false,
                        })
                    }
                    Which::Helper => s.helper = Some(*size),
                }
            }
            Step::Remove { file, size } => {
                assert!(
                    !s.active.iter().any(|a| a.path == name(*file)),
                    "EPERM: {step:?}"
                );
                assert_eq!(size_of(&s, *file), Some(*size), "{step:?}");
                s.free += size;
                match file {
                    Which::Main => s.file = None,
                    Which::Helper => s.helper = None,
                }
            }
            Step::Mkswap(Which::Main) => s.file.as_mut().unwrap().has_signature = true,
            Step::Mkswap(Which::Helper) => assert!(s.helper.is_some()),
            Step::Swapon(w) => {
                let size = size_of(&s, *w).expect("swapon of a missing file");
                s.active.push(ActiveSwap {
                    path: name(*w),
                    is_file: true,
                    size: size - PAGE,
                    used: 0,
                });
            }
            Step::Swapoff(w) => s.active.retain(|a| a.path != name(*w)),
            Step::FixPermissions { .. } => {
                let f = s.file.as_mut().unwrap();
                f.spec = FileSpec::root(0o600);
            }
            Step::WriteFstab { new, .. } => s.fstab = Some(new.clone()),
        }
    }
    s
}

fn assert_swap_stays_on(s: &State, steps: &[Step]) {
    for n in 0..=steps.len() {
        assert!(
            !simulate(s, &steps[..n]).active.is_empty(),
            "no swap after {:?}",
            &steps[..n]
        );
    }
}

fn resizing() -> State {
    let mut s = converged();
    s.file.as_mut().unwrap().size = 2 * G;
    s.active = vec![ours(2 * G, G)];
    s
}

#[test]
fn resize_builds_the_new_file_beside_the_old_one_first() {
    let s = resizing();
    let p = res().plan(&s).unwrap();
    let h = Which::Helper;
    let m = Which::Main;
    assert_eq!(
        p.steps,
        vec![
            Step::Create {
                file: h,
                size: 4 * G,
                nocow: false
            },
            Step::Mkswap(h),
            Step::Swapon(h),
            Step::Swapoff(m),
            Step::Remove {
                file: m,
                size: 2 * G
            },
            Step::Create {
                file: m,
                size: 4 * G,
                nocow: false
            },
            Step::Mkswap(m),
            Step::Swapon(m),
            Step::Swapoff(h),
            Step::Remove {
                file: h,
                size: 4 * G
            },
        ]
    );
    assert_swap_stays_on(&s, &p.steps);
    let done = simulate(&s, &p.steps);
    assert!(res().plan(&done).unwrap().steps.is_empty());
    assert_eq!(done.helper, None);
    assert_eq!(done.free, s.free - 2 * G);
    // fstab is never pointed at the temporary file.
    assert!(
        !p.steps
            .iter()
            .any(|st| matches!(st, Step::WriteFstab { .. }))
    );
}

/// Killed after any step of a resize (or halfway through allocating either file), the
/// next plan finishes it without a moment without swap, and the one after has nothing
/// left to do.
#[test]
fn a_resize_killed_at_any_point_is_finished_by_the_next_run() {
    let s = resizing();
    let steps = res().plan(&s).unwrap().steps;
    let mut crashed: Vec<State> = (0..=steps.len())
        .map(|n| simulate(&s, &steps[..n]))
        .collect();
    for (n, step) in steps.iter().enumerate() {
        if let Step::Create { file, .. } = step {
            let mut partial = simulate(&s, &steps[..n]);
            match file {
                Which::Main => {
                    partial.file = Some(SwapFile {
                        size: G,
                        spec: FileSpec::root(0o600),
                        has_signature: false,
                    })
                }
                Which::Helper => partial.helper = Some(G),
            }
            partial.free -= G;
            crashed.push(partial);
        }
    }
    for c in &crashed {
        let p = res()
            .plan(c)
            .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", c.file, c.active));
        assert_swap_stays_on(c, &p.steps);
        let done = simulate(c, &p.steps);
        assert_eq!(done.file.as_ref().map(|f| f.size), Some(4 * G), "{c:?}");
        assert_eq!(done.helper, None, "temporary file left: {:?}", p.steps);
        assert_eq!(done.active.len(), 1, "{:?}", done.active);
        assert!(
            res().plan(&done).unwrap().steps.is_empty(),
            "after {:?}",
            p.steps
        );
    }
}

#[test]
fn leftover_temporary_file_is_removed_or_reused() {
    // Inactive (killed before its swapon, or rebooted since): removed, nothing else.
    let mut s = converged();
    s.helper = Some(G);
    let p = res().plan(&s).unwrap();
    assert_eq!(
        p.steps,
        vec![Step::Remove {
            file: Which::Helper,
            size: G
        }]
    );
    assert!(p.notes[0].contains(HELPER), "{:?}", p.notes);
    // Active while ours still has the old size: it carries swap, no second one is made.
    let mut s = resizing();
    s.helper = Some(4 * G);
    s.active.push(ActiveSwap {
        path: HELPER.into(),
        is_file: true,
        size: 4 * G - PAGE,
        used: 0,
    });
    let p = res().plan(&s).unwrap();
    assert_eq!(p.steps[0], Step::Swapoff(Which::Main));
    assert!(
        !p.steps.contains(&Step::Swapon(Which::Helper)),
        "{:?}",
        p.steps
    );
    assert_eq!(
        &p.steps[p.steps.len() - 2..],
        [
            Step::Swapoff(Which::Helper),
            Step::Remove {
                file: Which::Helper,
                size: 4 * G
            }
        ]
    );
}

#[test]
fn temporary_file_is_not_taken_for_existing_swap() {
    // Killed after our file was removed: the temporary swap alone is enough in size,
    // but accepting it would leave fstab naming a file that does not exist.
    let mut s = converged();
    s.file = None;
    s.helper = Some(4 * G);
    s.active = vec![ActiveSwap {
        path: HELPER.into(),
        is_file: true,
        size: 4 * G - PAGE,
        used: 0,
    }];
    let p = res().plan(&s).unwrap();
    assert_eq!(
        p.steps[0],
        Step::Create {
            file: Which::Main,
            size: 4 * G,
            nocow: false
        }
    );
    assert!(p.steps.contains(&Step::Swapoff(Which::Helper)));
}

#[test]
fn busy_temporary_swap_stays_until_memory_allows() {
    let mut s = converged();
    s.helper = Some(4 * G);
    s.active.push(ActiveSwap {
        path: HELPER.into(),
        is_file: true,
        size: 4 * G - PAGE,
        used: 2 * G,
    });
    s.memory.available = G;
    let p = res().plan(&s).unwrap();
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert!(p.notes[0].contains("deferred"), "{:?}", p.notes);
    s.memory.available = 8 * G;
    assert_eq!(
        res().plan(&s).unwrap().steps[0],
        Step::Swapoff(Which::Helper)
    );
}

#[test]
fn not_enough_disk_for_both_files_is_refused_naming_the_sizes() {
    // 2G -> 4G: the old file plus the 4G temporary one, then the temporary one plus
    // the new one: 6G beyond what the old file holds.
    let mut s = resizing();
    s.free = 5 * G + G / 2;
    let e = res().plan(&s).unwrap_err().to_string();
    assert!(
        e.contains("swap.size") && e.contains("6G") && e.contains("5.5G"),
        "{e}"
    );
    assert!(e.contains("/swapfile") && e.contains("beside"), "{e}");
    s.free = 6 * G;
    assert!(res().plan(&s).is_ok());
    // Shrinking needs only the temporary file: the old one is removed first.
    let mut s = converged();
    s.file.as_mut().unwrap().size = 8 * G;
    s.active = vec![ours(8 * G, 0)];
    s.free = 4 * G;
    assert!(res().plan(&s).is_ok());
    s.free = 4 * G - 1;
    assert!(res().plan(&s).is_err());
    // A plain create is checked too.
    let mut s = fresh();
    s.free = G;
    let e = res().plan(&s).unwrap_err().to_string();
    assert!(e.contains("creating /swapfile (4G) needs 4G"), "{e}");
}

#[test]
fn plan_output_names_the_files() {
    let c = Step::Create {
        file: Which::Main,
        size: 64 << 20,
        nocow: false,
    }
    .change();
    assert_eq!(
        (c.what.as_str(), c.from.as_deref(), c.to.as_deref()),
        ("swap file", Some("absent"), Some("64M"))
    );
    let c = Step::Swapoff(Which::Helper).change();
    assert_eq!(c.what, "temporary swap active");
    assert_eq!(
        helper_path(Path::new("/mnt/my swap")),
        PathBuf::from("/mnt/my swap.sapari-agent-new")
    );
}

#[test]
fn loose_permissions_and_missing_signature_are_fixed() {
    let mut s = converged();
    s.file.as_mut().unwrap().spec.mode = 0o644;
    assert_eq!(
        res().plan(&s).unwrap().steps,
        vec![Step::FixPermissions {
            mode: 0o644,
            uid: 0
        }]
    );
    let mut s = converged();
    s.active.clear();
    s.file.as_mut().unwrap().has_signature = false;
    assert_eq!(
        res().plan(&s).unwrap().steps,
        vec![Step::Mkswap(Which::Main), Step::Swapon(Which::Main)]
    );
}

#[test]
fn disabled_names_its_key() {
    let cfg = SwapSettings {
        enabled: false,
        ..SwapSettings::default()
    };
    assert_eq!(Swap::new(&cfg).disabled(), Some("swap.enabled"));
    assert_eq!(Swap::new(&SwapSettings::default()).disabled(), None);
}

#[test]
fn fstab_never_duplicates_and_fixes_old_runbook_line() {
    let p = Path::new("/swapfile");
    let once = ensure_fstab_line("/dev/sda1 / ext4 defaults 0 1\n", p);
    assert_eq!(ensure_fstab_line(&once, p), once);
    // The runbook's manual line lacked nofail: rewritten in place, not appended.
    let old = "/swapfile none swap sw 0 0\n/dev/sda1 / ext4 defaults 0 1\n";
    assert_eq!(
        ensure_fstab_line(old, p),
        "/swapfile none swap sw,nofail 0 0\n/dev/sda1 / ext4 defaults 0 1\n"
    );
    let dup = "/swapfile none swap sw 0 0\n/swapfile none swap sw 0 0\n";
    assert_eq!(
        ensure_fstab_line(dup, p),
        "/swapfile none swap sw,nofail 0 0\n"
    );
}

#[test]
fn fstab_missing_trailing_newline_and_comments() {
    let p = Path::new("/swapfile");
    assert_eq!(
        ensure_fstab_line("/dev/sda1 / ext4 defaults 0 1", p),
        "/dev/sda1 / ext4 defaults 0 1\n/swapfile none swap sw,nofail 0 0\n"
    );
    assert_eq!(
        ensure_fstab_line("", p),
        "/swapfile none swap sw,nofail 0 0\n"
    );
    let commented = "# /swapfile none swap sw 0 0\n";
    assert_eq!(
        ensure_fstab_line(commented, p),
        "# /swapfile none swap sw 0 0\n/swapfile none swap sw,nofail 0 0\n"
    );
    // Extra whitespace in an otherwise identical line is left alone.
    let spaced = "/swapfile\tnone\tswap\tsw,nofail\t0\t0\n";
    assert_eq!(ensure_fstab_line(spaced, p), spaced);
}

#[test]
fn proc_swaps_parsing() {
    let t = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/swap.img                               file\t\t4194300\t\t1024\t\t-2\n/dev/vda3 partition 1048572 0 -3\n/mnt/my\\040swap file 100 0 -4\n";
    let a = parse_proc_swaps(t);
    assert_eq!(a.len(), 3);
    assert_eq!(a[0].size, 4194300 * 1024);
    assert_eq!(a[0].used, 1024 * 1024);
    assert!(!a[1].is_file);
    assert_eq!(a[2].path, PathBuf::from("/mnt/my swap"));
}

#[test]
fn checks() {
    let c = res().checks(&fresh());
    assert_eq!(c[0].level, Level::Fail);
    let c = res().checks(&converged());
    assert_eq!(c[0].level, Level::Pass);
    assert_eq!(c[1].level, Level::Pass);
}
