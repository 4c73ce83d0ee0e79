//! Traffic through the edge: one-shot and continuous probes, netfilter in srv, events.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::topology::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// Events

/// Run in srv's netns by [`Edge::flush_netfilter`]. The legacy tables are looked at only when
/// srv has some (listing them with iptables-legacy could load the legacy modules host-wide).
pub(crate) const FLUSH_NETFILTER_SH: &str = r#"set -e
nft flush ruleset
for f in ip:iptables-legacy ip6:ip6tables-legacy; do
  names=/proc/net/${f%%:*}_tables_names; cmd=${f#*:}
  [ -r "$names" ] || continue
  for t in $(cat "$names"); do
    $cmd -t "$t" -F
    $cmd -t "$t" -X
    for c in $($cmd -t "$t" -S | awk '$1=="-P" {print $2}'); do $cmd -t "$t" -P "$c" ACCEPT; done
  done
done
# conntrack: IPCTNL_MSG_CT_DELETE without a tuple flushes the table of this netns
python3 -c '
import errno, socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
for seq, fam in enumerate((socket.AF_INET, socket.AF_INET6), 1):
    # nlmsghdr (type NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE, REQUEST|ACK) + nfgenmsg
    s.send(struct.pack("=LHHLL", 20, (1 << 8) | 2, 0x1 | 0x4, seq, 0) + struct.pack("=BBH", fam, 0, 0))
    r = s.recv(4096)
    err = -struct.unpack_from("=i", r, 16)[0]
    if err not in (0, errno.ENOENT):
        raise SystemExit("conntrack flush (family %d): %s" % (fam, errno.errorcode.get(err, err)))
'
"#;

/// The client of [`Edge::start_probe`]: a fresh non-blocking TCP connect every `interval`, each
/// given `timeout` to complete; stats (JSON) are rewritten every 100 ms and at the end.
pub(crate) const PROBE_PY: &str = r#"
import errno, json, os, selectors, signal, socket, struct, sys, time
fam, addr, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
interval, timeout, max_s, max_n = (float(sys.argv[5]), float(sys.argv[6]),
                                   float(sys.argv[7]), int(sys.argv[8]))
af = socket.AF_INET6 if fam == "6" else socket.AF_INET
st = {"attempts": 0, "connected": 0, "refused": 0, "timed_out": 0, "other": 0,
      "unfinished": 0, "first": None, "last": None, "elapsed_ms": 0, "done": False,
      "timeline": [], "max_gap_ms": 0}
last_attempt = None
stop = False
def term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, term)
signal.signal(signal.SIGINT, term)
sel = selectors.DefaultSelector()
pending = {}
t0 = time.monotonic()
def ms():
    return int((time.monotonic() - t0) * 1000)
def dump():
    st["elapsed_ms"] = ms()
    with open(out + ".tmp", "w") as f:
        json.dump(st, f)
    os.replace(out + ".tmp", out)
# close with RST: no TIME_WAIT pile-up over thousands of connections
linger = struct.pack("ii", 1, 0)
# When the outcome changes, [ms, outcome]: tells a DROP (timeout) from a container that is
# down (refused) and shows when each phase began (capped: a flapping path is seen anyway).
def mark(kind):
    tl = st["timeline"]
    if (not tl or tl[-1][1] != kind) and len(tl) < 200:
        tl.append([ms(), kind])
def finish(s, err):
    mark({0: "ok", errno.ECONNREFUSED: "refused", errno.ETIMEDOUT: "timeout"}.get(
        err, errno.errorcode.get(err, str(err))))
    if err == 0:
        st["connected"] += 1
        m = ms()
        if st["first"] is None:
            st["first"] = m
        st["last"] = m
    elif err == errno.ECONNREFUSED:
        st["refused"] += 1
    elif err == errno.ETIMEDOUT:
        st["timed_out"] += 1
    else:
        st["other"] += 1
    s.close()
def collect(wait):
    for key, _ in sel.select(wait):
        s = key.fileobj
        sel.unregister(s)
        del pending[s]
        finish(s, s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
next_at = t0
next_dump = t0 + 0.1
dump()
while not stop:
    now = time.monotonic()
    if now - t0 >= max_s or (st["attempts"] >= max_n and not pending):
        break
    if now >= next_at and st["attempts"] < max_n:
        s = socket.socket(af, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        st["attempts"] += 1
        # the longest stretch without a new connection: what the probe could have missed
        if last_attempt is not None:
            st["max_gap_ms"] = max(st["max_gap_ms"], int((now - last_attempt) * 1000))
        last_attempt = now
        err = s.connect_ex((addr, port))
        if err == errno.EINPROGRESS:
            pending[s] = now + timeout
            sel.register(s, selectors.EVENT_WRITE)
        else:
            finish(s, err)
        next_at += interval
        if next_at < now:
            next_at = now + interval  # late (a busy machine): no burst to catch up
    now = time.monotonic()
    wake = min([next_at if st["attempts"] < max_n else now + 0.05, next_dump]
               + list(pending.values()))
    collect(max(0.0, wake - now))
    now = time.monotonic()
    for s, deadline in list(pending.items()):
        if now >= deadline:
            sel.unregister(s)
            del pending[s]
            finish(s, errno.ETIMEDOUT)
    if now >= next_dump:
        dump()
        next_dump = now + 0.1
collect(0)
st["unfinished"] = len(pending)
for s in list(pending):
    s.close()
st["done"] = True
dump()
"#;

/// What a [`Probe`] saw. Times are ms since the probe started, taken when a handshake completed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Connections opened (each a new socket).
    pub attempts: u64,
    /// Handshakes completed: the client reached the port.
    pub connected: u64,
    /// Answered by RST (e.g. nothing listening, or a REJECT).
    pub refused: u64,
    /// No answer within the probe's connect timeout (e.g. a DROP).
    pub timed_out: u64,
    /// Other errors (unreachable...).
    pub other: u64,
    /// Still in flight when the probe stopped (not counted as anything else).
    pub unfinished: u64,
    pub first_connected_ms: Option<u64>,
    pub last_connected_ms: Option<u64>,
    /// How long the probe ran.
    pub elapsed_ms: u64,
    /// The probe ended by itself or by `stop` (false: read while running, or it was killed).
    pub done: bool,
    /// (ms, outcome) each time the outcome changed: "ok", "refused", "timeout" or an errno name.
    pub timeline: Vec<(u64, String)>,
    /// The longest time between two connection attempts: a window shorter than this could
    /// have been open unseen.
    pub max_gap_ms: u64,
}

impl ProbeStats {
    pub(crate) fn parse(text: &str) -> Option<ProbeStats> {
        let v: Value = serde_json::from_str(text).ok()?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Some(ProbeStats {
            attempts: n("attempts"),
            connected: n("connected"),
            refused: n("refused"),
            timed_out: n("timed_out"),
            other: n("other"),
            unfinished: n("unfinished"),
            first_connected_ms: v["first"].as_u64(),
            last_connected_ms: v["last"].as_u64(),
            elapsed_ms: n("elapsed_ms"),
            max_gap_ms: n("max_gap_ms"),
            done: v["done"].as_bool().unwrap_or(false),
            timeline: v["timeline"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| Some((e[0].as_u64()?, e[1].as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// A running continuous probe (see [`Edge::start_probe`]). Dropping it kills it.
pub struct Probe {
    child: Option<Child>,
    stats: PathBuf,
    log: PathBuf,
    label: String,
}

impl Probe {
    /// Connect interval, connect timeout, hard limits: a probe always ends by itself.
    pub const INTERVAL: Duration = Duration::from_millis(10);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
    pub const MAX_DURATION: Duration = Duration::from_secs(180);
    pub const MAX_ATTEMPTS: u64 = 20_000;

    /// "evil/v4:443"
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The stats as last written (every 100 ms) while it runs.
    pub fn stats_so_far(&self) -> ProbeStats {
        fs::read_to_string(&self.stats)
            .ok()
            .and_then(|t| ProbeStats::parse(&t))
            .unwrap_or_default()
    }

    /// Handshakes completed so far (at most 100 ms old).
    pub fn connected_so_far(&self) -> u64 {
        self.stats_so_far().connected
    }

    /// Stops the probe (SIGTERM; it collects what completed, then writes its stats) and returns
    /// what it saw. Panics if the probe died instead of finishing.
    pub fn stop(mut self) -> ProbeStats {
        let mut c = self.child.take().expect("probe child");
        signal(c.id(), "TERM");
        let t0 = Instant::now();
        while c.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(10));
        }
        if c.try_wait().ok().flatten().is_none() {
            signal_group(c.id(), "KILL");
            let _ = c.kill();
        }
        let _ = c.wait();
        let st = self.stats_so_far();
        assert!(
            st.done,
            "probe {} did not finish cleanly: {st:?}\n{}",
            self.label,
            fs::read_to_string(&self.log).unwrap_or_default()
        );
        st
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), "KILL");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Edge {
    // ---- netfilter in srv -------------------------------------------------------------------

    /// `sh -c script` in srv's network namespace (host filesystem). Panics on timeout only.
    pub fn srv_sh(&self, script: &str) -> Output {
        self.sh_in(Host::Srv, script, Duration::from_secs(30))
    }

    pub fn srv_sh_ok(&self, script: &str) -> String {
        let o = self.srv_sh(script);
        assert!(o.status.success(), "in srv: {script}\n{}", describe(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn sh_in(&self, h: Host, script: &str, timeout: Duration) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(h), "sh", "-c", script])
            .env("PATH", PATH);
        run(&mut c, None, timeout)
    }

    /// `iptables-save -t filter` of one family, without counters and comments lines.
    pub fn filter_table(&self, fam: Fam) -> String {
        let out = self.srv_sh_ok(&format!("{} -t filter", fam.save()));
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                // ":CHAIN POLICY [p:b]" -> ":CHAIN POLICY"
                if l.starts_with(':') {
                    l.rsplit_once(' ').map_or(l, |(a, _)| a)
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `-A DOCKER-USER ...` lines of one family (empty if the chain is missing or empty).
    pub fn docker_user(&self, fam: Fam) -> Vec<String> {
        self.chain_rules(fam, "DOCKER-USER")
    }

    pub fn chain_rules(&self, fam: Fam, chain: &str) -> Vec<String> {
        let pfx = format!("-A {chain} ");
        self.filter_table(fam)
            .lines()
            .filter(|l| l.starts_with(&pfx))
            .map(String::from)
            .collect()
    }

    pub fn chain_exists(&self, fam: Fam, chain: &str) -> bool {
        let pfx = format!(":{chain} ");
        self.filter_table(fam).lines().any(|l| l.starts_with(&pfx))
    }

    /// Feeds `text` to `iptables-restore --noflush` (or ip6tables-) in srv.
    pub fn restore_noflush(&self, fam: Fam, text: &str) -> Output {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns(Host::Srv),
            fam.restore(),
            "--noflush",
        ])
        .env("PATH", PATH);
        run(&mut c, Some(text.as_bytes()), Duration::from_secs(30))
    }

    /// The DOCKER-USER policy as the design describes it, written by hand (from the rig's
    /// cf_rules.sh): the control that proves the topology can block before the agent exists.
    pub fn hand_rules(cidrs: &[&str]) -> String {
        let mut s = String::from("*filter\n:DOCKER-USER - [0:0]\n");
        s.push_str(&format!(
            "-A DOCKER-USER -i {WAN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n"
        ));
        for p in ["tcp", "udp"] {
            for n in cidrs {
                s.push_str(&format!("-A DOCKER-USER -s {n} -i {WAN} -p {p} -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment netfw-hand -j RETURN\n"));
            }
            s.push_str(&format!("-A DOCKER-USER -i {WAN} -p {p} -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment netfw-hand -j DROP\n"));
        }
        s.push_str("-A DOCKER-USER -j RETURN\nCOMMIT\n");
        s
    }

    // ---- probes -----------------------------------------------------------------------------

    /// One real exchange with srv's published :443 from `from`: TCP expects "hello", UDP "pong".
    pub fn probe(&self, from: Host, proto: Proto, fam: Fam) -> bool {
        self.probe_addr(from, proto, fam.srv_addr())
    }

    /// Like [`probe`](Self::probe) to any address (e.g. the container's own).
    pub fn probe_addr(&self, from: Host, proto: Proto, addr: &str) -> bool {
        let (a, v) = if addr.contains(':') {
            (format!("[{addr}]"), "6")
        } else {
            (addr.to_string(), "")
        };
        let (script, want) = match proto {
            Proto::Tcp => (
                format!("timeout 6 socat -t3 -T3 - TCP{v}:{a}:443,connect-timeout=1 </dev/null"),
                "hello",
            ),
            // socat would wait out its whole -t after a reply: a one-shot client returns at once
            Proto::Udp => (
                format!(
                    "timeout 5 python3 -c {}",
                    sh_quote(&format!(
                        "import socket\n\
                         s = socket.socket(socket.AF_INET{v}, socket.SOCK_DGRAM)\n\
                         s.settimeout(2)\n\
                         s.sendto(b'ping\\n', ('{addr}', 443))\n\
                         print(s.recv(64).decode())\n"
                    ))
                ),
                "pong",
            ),
        };
        let o = self.sh_in(from, &script, Duration::from_secs(10));
        String::from_utf8_lossy(&o.stdout).trim() == want
    }

    /// Reachability of srv's :443 from `from` over both protocols (and v6 where it has it),
    /// keyed "cf/tcp/v4". Probes run in parallel: a blocked one costs its 1-2 s timeout.
    pub fn reach(&self, from: Host) -> BTreeMap<String, bool> {
        let fams: &[Fam] = match from {
            Host::Op | Host::Lists => &[Fam::V4],
            _ => &[Fam::V4, Fam::V6],
        };
        let mut want = Vec::new();
        for &f in fams {
            for p in [Proto::Tcp, Proto::Udp] {
                want.push((from, p, f));
            }
        }
        self.probes(&want).into_iter().collect()
    }

    /// Several probes in parallel: ("cf/tcp/v4", reached) in the order asked.
    pub fn probes(&self, which: &[(Host, Proto, Fam)]) -> Vec<(String, bool)> {
        thread::scope(|s| {
            let hs: Vec<_> = which
                .iter()
                .map(|&(h, p, f)| {
                    s.spawn(move || {
                        (
                            format!("{}/{:?}/{}", h.role(), p, f.suffix()).to_lowercase(),
                            self.probe(h, p, f),
                        )
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Starts a continuous probe in `from`'s netns: a new TCP connection to srv's address of
    /// `fam` on `port` every [`Probe::INTERVAL`], each given [`Probe::CONNECT_TIMEOUT`] (so about
    /// 20 are in flight against a DROP), until [`Probe::stop`] or its hard limits
    /// ([`Probe::MAX_DURATION`], [`Probe::MAX_ATTEMPTS`]). Several may run at once. Returns
    /// once the probe runs (its first stats are written).
    pub fn start_probe(&self, from: Host, fam: Fam, port: u16) -> Probe {
        let n = self.probes.fetch_add(1, Ordering::SeqCst);
        let pdir = self.probe_dir().to_path_buf();
        let script = pdir.join("probe.py");
        if !script.exists() {
            let tmp = pdir.join(format!(".probe.py.{n}"));
            fs::write(&tmp, PROBE_PY).unwrap();
            fs::rename(&tmp, &script).unwrap();
        }
        let label = format!("{}/{}:{port}", from.role(), fam.suffix());
        let base = format!("{n}-{}-{}", from.role(), fam.suffix());
        let stats = pdir.join(format!("{base}.json"));
        let log_path = pdir.join(format!("{base}.log"));
        let log = fs::File::create(&log_path).unwrap();
        let py = which(&["/usr/bin/python3", "python3"]).expect("python3");
        // Above the other tests' work: an instrument that is starved of CPU leaves gaps.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(from), "nice", "-n", "-10"])
            .arg(py)
            .arg(&script)
            .arg(match fam {
                Fam::V4 => "4",
                Fam::V6 => "6",
            })
            .arg(fam.srv_addr())
            .arg(port.to_string())
            .arg(&stats)
            .arg(Probe::INTERVAL.as_secs_f64().to_string())
            .arg(Probe::CONNECT_TIMEOUT.as_secs_f64().to_string())
            .arg(Probe::MAX_DURATION.as_secs_f64().to_string())
            .arg(Probe::MAX_ATTEMPTS.to_string())
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn probe");
        let mut p = Probe {
            child: Some(child),
            stats,
            log: log_path,
            label,
        };
        let t0 = Instant::now();
        while !p.stats.exists() {
            if let Some(st) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "probe {} exited ({st}):\n{}",
                    p.label,
                    fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "probe {} not running after 10 s",
                p.label
            );
            thread::sleep(Duration::from_millis(5));
        }
        p
    }
}
