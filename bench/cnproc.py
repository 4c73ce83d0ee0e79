#!/usr/bin/env python3
"""Host-side process-event recorder for the first-converge split (no ptrace, no agent change).

usage: cnproc.py READY_FILE OUT_JSON NETNS_INODE

Subscribes to the kernel's process events connector (netlink, NETLINK_CONNECTOR/CN_IDX_PROC:
fork, exec and exit of every process, with kernel timestamps) until SIGTERM. The agent is the
process that execs as `sapari-agent converge` inside the network namespace NETNS_INODE (other
test containers may run agents at the same time). Every process it forks (not its threads) is an
external command; each lives from its fork to its exit, grandchildren included.

OUT_JSON: agent lifetime (exec to exit), the union of the commands' lifetimes (time during which
at least one external command ran: the agent waits for them, or runs them concurrently), and
the commands with their durations.
"""
import json
import os
import signal
import socket
import struct
import sys

NETLINK_CONNECTOR, CN_IDX_PROC, CN_VAL_PROC = 11, 1, 1
PROC_EVENT_FORK, PROC_EVENT_EXEC, PROC_EVENT_EXIT = 1, 2, 0x80000000
HDR = 16 + 20  # nlmsghdr + cn_msg

ready, out_path, netns = sys.argv[1], sys.argv[2], sys.argv[3]
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)

s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: the whole machine's events
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind((os.getpid(), CN_IDX_PROC))
op = struct.pack("I", 1)  # PROC_CN_MCAST_LISTEN
cn = struct.pack("IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
s.send(struct.pack("IHHII", 16 + len(cn), 3, 0, 0, os.getpid()) + cn)  # NLMSG_DONE
s.settimeout(0.2)


def read(path, n=4096):
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


agent = None  # tgid
agent_start = agent_end = None
kids = {}  # pid -> [fork_ts, exit_ts, argv]
lost = 0
open(ready, "w").close()
while not stop or (agent is not None and agent_end is None and lost == 0):
    try:
        d = s.recv(65536)
    except socket.timeout:
        if stop:
            break
        continue
    except OSError:  # ENOBUFS: events were dropped
        lost += 1
        continue
    if len(d) < HDR + 16:
        continue
    what, _cpu, ts = struct.unpack_from("IIQ", d, HDR)
    ev = HDR + 16
    if what == PROC_EVENT_FORK:
        _ppid, ptgid, cpid, ctgid = struct.unpack_from("IIII", d, ev)
        if agent is not None and ptgid == agent and cpid == ctgid and ctgid != agent:
            kids[cpid] = [ts, None, ""]
    elif what == PROC_EVENT_EXEC:
        pid, tgid = struct.unpack_from("II", d, ev)
        if pid in kids:
            argv = [a.decode(errors="replace") for a in read(f"/proc/{pid}/cmdline").split(b"\0") if a]
            # a script (ufw is Python) is named after the script, not the interpreter
            if len(argv) > 1 and os.path.basename(argv[0]).startswith(("python", "perl", "sh", "bash")):
                argv = argv[1:]
            if argv:
                argv[0] = os.path.basename(argv[0])
            kids[pid][2] = " ".join(argv[:3])
        elif agent is None and read(f"/proc/{pid}/comm").strip() == b"sapari-agent":
            try:
                ns = os.readlink(f"/proc/{pid}/ns/net")
            except OSError:
                ns = ""
            if ns == f"net:[{netns}]" and b"converge" in read(f"/proc/{pid}/cmdline"):
                agent, agent_start = tgid, ts
    elif what == PROC_EVENT_EXIT:
        pid, tgid = struct.unpack_from("II", d, ev)
        if pid != tgid:
            continue  # a thread
        if pid in kids and kids[pid][1] is None:
            kids[pid][1] = ts
        elif agent is not None and pid == agent:
            agent_end = ts

res = {"found": agent is not None and agent_end is not None, "lost_batches": lost}
if res["found"]:
    iv = sorted((a, b if b is not None else agent_end) for a, b, _ in kids.values())
    union, cur_a, cur_b = 0, None, None
    for a, b in iv:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                union += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        union += cur_b - cur_a
    by = {}
    for a, b, argv in kids.values():
        k = argv or "(exited before its name was read)"
        n, t = by.get(k, (0, 0))
        by[k] = (n + 1, t + ((b if b is not None else agent_end) - a))
    res.update(
        agent_s=(agent_end - agent_start) / 1e9,
        external_s=union / 1e9,
        own_s=(agent_end - agent_start - union) / 1e9,
        commands=len(kids),
        by_command=sorted(
            ({"cmd": k, "n": n, "s": round(t / 1e9, 4)} for k, (n, t) in by.items()),
            key=lambda x: -x["s"],
        ),
    )
with open(out_path, "w") as f:
    json.dump(res, f, indent=1)
