"""The guides say what the code does, and their commands run as written (see doc_blocks.py for the
rules): their shell blocks run in a sandbox (mount and network namespaces of their own), with the
web UI, agents and simulators they start; what cannot run here is marked, with the reason."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.doc_blocks import SANDBOX, Block, blocks, script, undefined_variables

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GUIDES = [DOCS / "admin-guide.md", DOCS / "raspberry-guide.md", DOCS / "user-guide.md"]
README = ROOT / "README.md"
# Every document whose blocks are checked; README's commands run from the repository's folder.
DOCUMENTS = [*GUIDES, README]
ACTIONS = {"run", "skip", "install", "file", "none", "demo"}
UNIT_RE = re.compile(r"\b([a-z][a-z_]*(?:@[\w<>.-]*)?)\.service\b")
EXEC_RE = re.compile(
    r"^ExecStart=/opt/piseduce/\.venv/bin/piseduce (agent (?:api|exec|monitor|gateway)|webui serve) "
    r"/etc/piseduce/(%i/)?config_(agent|webui)\.json$",
    re.M,
)


def runnable(guide: Path) -> list[Block]:
    return [b for b in blocks(guide) if b.action in ("run", "install", "file")]


# ---------------------------------------------------------------- what the guides say


@pytest.mark.parametrize("guide", DOCUMENTS, ids=lambda g: g.name)
def test_every_block_is_labelled_and_every_skipped_one_says_why(guide: Path) -> None:
    for b in blocks(guide):
        assert b.lang, f"{b.where}: give the block a language (sh for commands)"
        assert b.action in ACTIONS, f"{b.where}: unknown doc-test directive {b.action!r}"
        if b.action == "skip":
            assert len(b.arg) >= 12, f"{b.where}: say why this block cannot run"
        if b.action == "file":
            assert b.arg.startswith("/") or not b.arg.startswith("~"), b.where
        if b.lang == "sh" and b.action in ("run", "install"):
            # An elided part ("-H ...", '"ssh_user":"pi", ...') cannot be typed as written.
            assert "..." not in b.text and "…" not in b.text, f"{b.where}: write the command in full"


@pytest.mark.parametrize("guide", DOCUMENTS, ids=lambda g: g.name)
def test_no_command_uses_an_undefined_variable(guide: Path) -> None:
    install = [b for b in runnable(DOCS / "admin-guide.md") if b.action == "install"]
    sh = [b for b in install + runnable(guide) if b.lang == "sh"]
    assert undefined_variables(sh) == []


def test_the_password_rule_in_the_guide_and_the_forms_is_the_code_s() -> None:
    from piseduce.webui import auth

    guide = (DOCS / "user-guide.md").read_text()
    said = re.findall(r"password \(at least (\d+) characters\)", guide)
    assert said == [str(auth.MIN_PASSWORD)], said
    templates = ROOT / "src/piseduce/webui/templates"
    for name in ("signup.html", "settings.html"):
        text = (templates / name).read_text()
        assert set(re.findall(r'minlength="(\d+)"', text)) == {str(auth.MIN_PASSWORD)}, name
        assert set(re.findall(r"at least (\d+) characters", text)) <= {str(auth.MIN_PASSWORD)}, name


def test_the_systemd_units_the_guides_name_ship_and_run_piseduce() -> None:
    shipped = {p.name for p in (ROOT / "deploy/systemd").glob("*.service")}
    named = set()
    for doc in DOCUMENTS:
        for unit in UNIT_RE.findall(doc.read_text()):
            # agent_api@g5k-nancy.service is an instance of the template agent_api@.service.
            named.add(unit.split("@")[0] + "@.service" if "@" in unit else unit + ".service")
    assert named and named <= shipped, sorted(named - shipped)
    for name in shipped:
        text = (ROOT / "deploy/systemd" / name).read_text()
        m = EXEC_RE.search(text)
        assert m, f"{name}: ExecStart is not a piseduce command of a config in /etc/piseduce"
        assert bool(m.group(2)) == ("@" in name), f"{name}: a template reads /etc/piseduce/%i/"
        assert "User=piseduce" in text and "[Install]" in text, name


# ---------------------------------------------------------------- the commands, run


def _sandbox_ok() -> str:
    if os.geteuid() != 0:
        return "the sandbox (mount and network namespaces) needs root"
    for tool in ("unshare", "ip", "ss", "curl", "jq", "ssh-keygen", "snmpwalk", "useradd"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--net", "--fork", "true"], capture_output=True, text=True, timeout=30
    )
    return "" if probe.returncode == 0 else f"unshare refused: {probe.stderr.strip()}"


@pytest.mark.slow
@pytest.mark.parametrize("guide", ["admin-guide.md", "raspberry-guide.md", "README.md"])
def test_the_guides_commands_run_as_written(guide: str, tmp_path: Path) -> None:
    why = _sandbox_ok()
    if why:
        pytest.skip(why)
    parts = runnable(README if guide == "README.md" else DOCS / guide)
    if guide != "admin-guide.md":  # the other guides start from the admin guide's installation
        parts = [b for b in runnable(DOCS / "admin-guide.md") if b.action == "install"] + parts
    commands = [b for b in parts if b.lang == "sh"]
    assert len(commands) >= 3, f"{guide}: too few runnable blocks"
    (tmp_path / "logs").mkdir()
    guide_script = tmp_path / "guide.sh"
    guide_script.write_text(script(parts))
    sandbox = tmp_path / "sandbox.sh"
    sandbox.write_text(SANDBOX)
    env = {
        **os.environ,
        "DOC_SCRATCH": str(tmp_path / "scratch"),
        "DOC_REPO": str(ROOT),
        "DOC_SCRIPT": str(guide_script),
        "DOC_LOGS": str(tmp_path / "logs"),
        # README's commands run in a checkout (what they write there vanishes with the sandbox).
        "DOC_IN_REPO": "1" if guide == "README.md" else "",
    }
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--net", "--fork", "bash", str(sandbox)],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{guide}: the commands did not finish within 600 s\n{exc.stderr}")
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp_path / "logs").iterdir()))
    failed = f"{guide}: a command failed\n{done.stderr[-6000:]}\n{done.stdout[-2000:]}\n{logs}"
    assert done.returncode == 0, failed


# ---------------------------------------------------------------- listeners


def _demo_ports() -> set[int]:
    from piseduce.demo.ports import Ports

    ports = Ports(9000, 8090)  # `./run demo`'s defaults
    return {*ports.tcp().values(), ports.snmp}


def _try_it_ports() -> dict[int, str]:
    """The ports the documents' try-it-yourself setups listen on (port_number, --port, --snmp-port),
    which a reader runs next to `./run demo`: README, the raspberry guide's §8, the example configs."""
    texts = {"README.md": README.read_text()}
    guide = (DOCS / "raspberry-guide.md").read_text()
    texts["raspberry-guide.md §8"] = guide[guide.index("## 8. Trying it without hardware") :]
    for p in (ROOT / "docs/examples").glob("*.json"):
        texts[p.name] = p.read_text()
    found: dict[int, str] = {}
    for where, text in texts.items():
        for m in re.finditer(r'"port_number":\s*(\d+)|--(?:snmp-)?port\s+(\d+)', text):
            found[int(m.group(1) or m.group(2))] = where
    return found


def test_the_try_it_setups_listen_clear_of_the_demo_and_never_on_every_address() -> None:
    demo = _demo_ports()
    ports = _try_it_ports()
    assert len(ports) >= 5, ports
    assert {p: w for p, w in ports.items() if p in demo} == {}
    for doc in [*DOCUMENTS, *(ROOT / "docs/examples").glob("*.json")]:
        # An agent or web UI on 0.0.0.0 is open to every network the host is on (the boards' too).
        listens = re.findall(r'"host":\s*"0\.0\.0\.0"|--host[ =]0\.0\.0\.0', doc.read_text())
        assert listens == [], f"{doc.name}: listen on 127.0.0.1 or on one address"
