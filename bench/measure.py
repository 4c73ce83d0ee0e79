#!/usr/bin/env python3
"""Run a command and print one line of figures about it (used inside the bench container).

usage: measure.py OUT ERR CMD ARG...   (the command's stdout goes to OUT, stderr to ERR)

prints: wall_s exit_code maxrss_kb self_user_s self_sys_s children_user_s children_sys_s

- wall_s: fork to exit, monotonic clock.
- maxrss_kb: ru_maxrss from wait4: the peak RSS of the largest single process among the
  command and every descendant it waited for (what GNU time's %M reports). Not a sum.
- self_*: CPU time of the command's own process; children_*: CPU time of every process it
  started and waited for (with their descendants). Read from /proc/PID/stat while the
  command is a zombie (waitid WNOWAIT), so the two are not mixed up as in wait4's rusage.
"""
import os
import sys
import time

out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    fo = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    fe = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fo, 1)
    os.dup2(fe, 2)
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
t1 = time.monotonic()
with open(f"/proc/{pid}/stat") as f:
    stat = f.read()
# fields after "(comm)": state is field 3; utime 14, stime 15, cutime 16, cstime 17
rest = stat[stat.rfind(")") + 2:].split()
hz = os.sysconf("SC_CLK_TCK")
ut, st, cut, cst = (int(rest[i]) / hz for i in (11, 12, 13, 14))
_, status, ru = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
print(f"{t1 - t0:.4f} {code} {ru.ru_maxrss} {ut:.2f} {st:.2f} {cut:.2f} {cst:.2f}")
