#!/usr/bin/python
# The agent run as an Ansible module: check mode is `sapari-agent plan`, a real run is
# `sapari-agent converge`, and `changed` and `--diff` come from the agent's own JSON report,
# never from guessing at its exit code or output.
from __future__ import annotations

import json
import os

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: sapari_agent
short_description: Converge a server with sapari-agent (plan in check mode)
description:
  - Runs C(sapari-agent converge --json), or C(sapari-agent plan --json) in check mode.
  - C(changed) is the report's count of changed (in check mode, would-change) resources.
  - With C(--diff), every file change the agent reports is shown as its unified diff and every
    value change as C(what: from -> to).
  - With O(confirm), the run is commit-confirmed; RV(pending_confirm) and RV(confirm_id) say so,
    and the change is undone on the server unless C(sapari-agent confirm) runs from a new SSH
    session in time.
options:
  binary: {type: path, default: /usr/local/bin/sapari-agent, description: the agent}
  config: {type: path, default: /etc/sapari-agent/agent.toml, description: its configuration}
  config_content:
    type: str
    description:
      - The agent.toml this run installs. With O(validate), and in check mode, plan runs
        against it instead of the file in place (from the module's own temporary directory, root's
        and removed when the module ends: the agent refuses a configuration a user owns, such as
        the file Ansible uploads as the login user), so C(--check) shows what the new
        configuration would change.
  validate:
    type: bool
    default: false
    description:
      - Only check O(config_content) with C(sapari-agent plan --only hostname), which reads and
        validates the whole file and changes nothing; fail with the agent's message if it is
        rejected.
  confirm: {type: int, default: 0, description: seconds for C(--confirm) (10-3600), 0 for none}
  only: {type: list, elements: str, default: [], description: C(--only) resource names}
  skip: {type: list, elements: str, default: [], description: C(--skip) resource names}
  force: {type: bool, default: false, description: C(--force) past the agent's lock-out guards}
  my_ip: {type: list, elements: str, default: [], description: C(--my-ip) addresses}
"""

RETURN = r"""
report: {type: dict, description: the agent's JSON report}
changed_resources: {type: list, description: names of the resources that changed (would change)}
pending_confirm: {type: bool, description: a commit-confirmed change waits for C(sapari-agent confirm)}
confirm_id: {type: str, description: the pending change's id}
confirm_deadline: {type: str, description: when the server rolls the change back unless confirmed}
"""


def diffs(report, check_mode):
    """One Ansible diff per changed resource: its file diffs, then its value changes."""
    want = "would_change" if check_mode else "changed"
    out = []
    for r in report.get("resources", []):
        if r.get("status") != want:
            continue
        text = []
        for c in r.get("changes", []):
            if c.get("diff"):
                text.append(c["diff"] if c["diff"].endswith("\n") else c["diff"] + "\n")
            else:
                was, now = c.get("from"), c.get("to")
                text.append("~ %s: %s -> %s\n" % (c.get("what"), "absent" if was is None else was, "absent" if now is None else now))
        out.append({"before_header": r["name"], "after_header": r["name"], "prepared": "".join(text)})
    return out


def main():
    m = AnsibleModule(
        argument_spec=dict(
            binary=dict(type="path", default="/usr/local/bin/sapari-agent"),
            config=dict(type="path", default="/etc/sapari-agent/agent.toml"),
            config_content=dict(type="str", no_log=True),
            validate=dict(type="bool", default=False),
            confirm=dict(type="int", default=0),
            only=dict(type="list", elements="str", default=[]),
            skip=dict(type="list", elements="str", default=[]),
            force=dict(type="bool", default=False),
            my_ip=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = m.params
    if not os.path.isfile(p["binary"]):
        m.fail_json(
            msg="sapari-agent is not installed at %s yet%s" % (
                p["binary"],
                " (check mode installs nothing: run once without --check first)" if m.check_mode else "",
            )
        )
    config = p["config"]
    if (m.check_mode or p["validate"]) and p["config_content"] is not None:
        config = os.path.join(m.tmpdir, "agent.toml")
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(p["config_content"])
    if p["validate"]:
        if p["config_content"] is None:
            m.fail_json(msg="validate needs config_content")
        rc, out, err = m.run_command([p["binary"], "plan", "--config", config, "--only", "hostname"])
        if rc != 0:
            m.fail_json(msg="sapari-agent rejects this agent.toml (exit %d): %s" % (rc, err.strip()), rc=rc)
        m.exit_json(changed=False, msg="sapari-agent accepts this agent.toml")
    cmd = [p["binary"], "plan" if m.check_mode else "converge", "--config", config, "--json"]
    if p["only"]:
        cmd += ["--only", ",".join(p["only"])]
    if p["skip"]:
        cmd += ["--skip", ",".join(p["skip"])]
    for ip in p["my_ip"]:
        cmd += ["--my-ip", ip]
    if p["force"]:
        cmd.append("--force")
    if p["confirm"] and not m.check_mode:
        cmd += ["--confirm", str(p["confirm"])]
    # plan changes nothing, so it runs in check mode too: that is what check mode asks for.
    rc, out, err = m.run_command(cmd)
    try:
        report = json.loads(out)
    except ValueError:
        # No report: a usage or configuration error (64, 78), no root (77), the lock (75).
        m.fail_json(msg="sapari-agent exited %d without a report: %s" % (rc, err.strip()), rc=rc, cmd=cmd, stderr=err)
    summary = report.get("summary", {})
    want = "would_change" if m.check_mode else "changed"
    confirm = report.get("confirm") or {}
    result = dict(
        changed=summary.get(want, 0) > 0,
        report=report,
        rc=rc,
        cmd=cmd,
        changed_resources=[r["name"] for r in report.get("resources", []) if r.get("status") == want],
        pending_confirm=bool(confirm.get("pending")),
        confirm_id=confirm.get("id"),
        confirm_deadline=confirm.get("deadline"),
    )
    if m._diff:
        result["diff"] = diffs(report, m.check_mode)
    failed = [r for r in report.get("resources", []) if r.get("status") == "failed"]
    if rc != 0 or failed:
        why = "; ".join("%s: %s" % (r["name"], r.get("error")) for r in failed) or err.strip()
        m.fail_json(msg="sapari-agent %s exited %d: %s" % (cmd[1], rc, why), stderr=err, **result)
    m.exit_json(**result)


if __name__ == "__main__":
    main()
