"""Run EnOSlib's Grid'5000 provider against the emulator (argv: API URL, user, job name, JSON out).

Run by tests/test_g5k_clients.py with the interpreter of the EnOSlib environment (EnOSlib pins
rich~=12.0, which the project's own environment cannot have). The provider submits its job, waits
for it, reads the node descriptions and deploys with Kadeploy, then needs SSH to the nodes through
a Grid'5000 frontend, which does not exist here: that step fails (its retries are cut from 100 x
30 s to 2 x 0 s) and the report says how far the provider got.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from pathlib import Path


def main() -> int:
    url, user, job_name, out = sys.argv[1:5]
    home = Path(os.environ["HOME"])
    # EnOSlib reads its API credentials from ~/.python-grid5000.yaml (0600: it holds a password);
    # the password comes on stdin, never on a command line.
    password = sys.stdin.readline().strip()
    conf_file = home / ".python-grid5000.yaml"
    fd = os.open(conf_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"uri: {url}\nusername: {user}\npassword: {json.dumps(password)}\nverify_ssl: false\n")
    (home / ".ssh").mkdir(exist_ok=True)
    # the public key EnOSlib deploys (it reads ~/.ssh/*.pub when none is configured)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEnoslibTestKeyOnly enos\n"
    (home / ".ssh" / "id_rsa.pub").write_text(key)
    logging.basicConfig(level=logging.INFO)

    import enoslib as en
    from enoslib.config import set_config
    from enoslib.infra.enos_g5k import provider as g5k_provider

    # No jump over access.grid5000.fr: the SSH step stays on this machine (the caller also points
    # ssh at a closed loopback port with ANSIBLE_SSH_ARGS), whatever network there is.
    set_config(g5k_auto_jump=False)
    g5k_provider.wait_for = functools.partial(g5k_provider.wait_for, retries=2, interval=0)
    network = en.G5kNetworkConf(type="prod", roles=["net"], site="nancy")
    conf = (
        en.G5kConf.from_settings(job_type=["deploy"], env_name="debian12-min", job_name=job_name,
                                 walltime="00:40:00")
        .add_network_conf(network)
        .add_machine(roles=["server"], cluster="grisou", nodes=1, primary_network=network)
        .add_machine(roles=["client"], cluster="gros", nodes=1, primary_network=network)
        .finalize()
    )
    provider = en.G5k(conf)
    report: dict[str, object] = {}
    try:
        provider.init()
        report["finished"] = True
    except Exception as exc:  # the SSH step: no frontend, no node to reach
        report["error"] = type(exc).__name__
        report["message"] = str(exc)[:2000]
        report["traceback"] = traceback.format_exc()[-4000:]
    report["hosts"] = sorted(h.fqdn for h in provider.hosts)
    report["deployed"] = sorted(h.fqdn for h in getattr(provider, "deployed", []))
    report["undeployed"] = sorted(h.fqdn for h in getattr(provider, "undeployed", []))
    report["jobs"] = [{"uid": j.uid, "state": j.state, "name": j.name} for j in provider.jobs]
    Path(out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
