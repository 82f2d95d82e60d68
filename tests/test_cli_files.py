"""Every `piseduce` command stops on a file it cannot use (missing, a folder, in a folder that does
not exist) with one line naming the option and the file: never a traceback (the commands as users
run them, subprocesses of the console entry point)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers.agent_helpers import piseduce_cmd, subprocess_env

# (command line with {missing} / {folder} / {nodir} for the file, the option named in the error)
CASES = [
    ("sim rpi --mode in-process --boards 1 --state-dir {tmp}/s --agent-pubkey {missing}", "--agent-pubkey"),
    ("sim rpi --mode in-process --boards 1 --state-dir {tmp}/s --agent-pubkey {folder}", "--agent-pubkey"),
    ("sim rpi --mode in-process --boards 1 --state-dir {tmp}/s --inventory-file {nodir}", "--inventory-file"),
    ("sim rpi --mode in-process --boards 1 --state-dir {afile} --tftp-root {tmp}/t --nfs-root {tmp}/n",
     "--state-dir"),
    ("sim rpi --mode in-process --boards 1 --state-dir {tmp}/s --tftp-root {afile}", "--tftp-root"),
    ("sim g5k --port 0 --users-file {missing}", "--users-file"),
    ("sim g5k --port 0 --users-file {folder}", "--users-file"),
    ("sim iotlab --port 0 --users-file {missing}", "--users-file"),
    ("sim iotlab --port 0 --users-file {folder}", "--users-file"),
    ("agent init-db {missing}", "config"),
    ("agent api {folder}", "config"),
    ("agent exec {missing}", "config"),
    ("webui gen-key {folder}", "config"),
    ("webui serve {missing}", "config"),
    ("demo --data {afile}", "--data"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "option"), CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_a_file_it_cannot_use_is_one_line_naming_the_option_and_the_file(
    tmp_path: Path, line: str, option: str
) -> None:
    folder = tmp_path / "a-folder.json"
    folder.mkdir()
    afile = tmp_path / "a-file"
    afile.write_text("not a folder\n")
    paths = {"missing": tmp_path / "agent_ssh_key.pub", "folder": folder,
             "nodir": tmp_path / "no" / "inv.json", "afile": afile}  # fmt: skip
    args = line.format(tmp=tmp_path, **{k: str(v) for k, v in paths.items()}).split()
    named = next(str(v) for k, v in paths.items() if "{" + k + "}" in line)
    done = subprocess.run(
        piseduce_cmd(*args), capture_output=True, text=True, env=subprocess_env(), timeout=60,
        stdin=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith("error: ") and named in lines[0], lines
    if option != "config":
        assert option in lines[0], lines
