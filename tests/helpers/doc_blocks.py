"""The guides' code blocks, and the script that runs their shell commands as written.

A fenced block has a language (`sh` for commands, `json`, `ini`, `text`...). An HTML comment on the
line before a block tells the test what to do with it:

  <!-- doc-test: skip <why> -->     a `sh` block that cannot run here, and why (systemd, hardware...)
  <!-- doc-test: install -->        a `sh` block other guides rely on (run first in their sandbox)
  <!-- doc-test: file <path> -->    the block is the content of <path> (relative: to the current dir)
  <!-- doc-test: demo -->           a `sh` block run against `./run demo` (tests/test_demo.py)

Every other `sh` block runs, in the guide's order, in one bash script (`set -euo pipefail`): a
reader types the commands one after the other. A command that serves until stopped
(`piseduce webui serve`, `piseduce agent api|exec|monitor`, `piseduce sim ...`) runs in the
background, as in a second terminal, and the next command waits until it listens (or, without a
port, until it has been running for two seconds); every one is stopped at the end.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

FENCE_RE = re.compile(r"^```([\w-]*)\s*$")
DIRECTIVE_RE = re.compile(r"^<!--\s*doc-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
SERVER_RE = re.compile(r"^\s*piseduce\s+(webui\s+serve|agent\s+(api|exec|monitor)|sim\s+(rpi|g5k|iotlab))\b")
QUIET_RE = re.compile(r"^\s*piseduce\s+agent\s+(exec|monitor)\b")  # servers without a port
ASSIGN_RE = re.compile(
    r"(?:^|[\s;(])(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=|\bread\s+(?:-r\s+)?([A-Za-z_]\w*)|\bfor\s+([A-Za-z_]\w*)\s+in\b"
)
USE_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
SHELL_VARS = {"HOME", "PATH", "PWD", "USER"}  # set by the shell


@dataclass
class Block:
    guide: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    action: str = "run"  # run | skip | install | file
    arg: str = ""  # the skip reason or the file path

    @property
    def where(self) -> str:
        return f"{self.guide.name}:{self.line}"


def blocks(guide: Path) -> list[Block]:
    out: list[Block] = []
    lines = guide.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        block = Block(guide, start + 1, m.group(1), "\n".join(body) + "\n")
        d = DIRECTIVE_RE.match(prev.strip())
        if d:
            block.action, block.arg = d.group(1), d.group(2)
        elif block.lang != "sh":
            block.action = "none"
        out.append(block)
        i += 1
    return out


def logical_lines(text: str) -> list[str]:
    """Lines joined where they end with a backslash (one command over several lines)."""
    out: list[str] = []
    current = ""
    for raw in text.splitlines():
        current += raw
        if raw.endswith("\\"):
            current += "\n"
            continue
        out.append(current)
        current = ""
    if current:
        out.append(current)
    return out


def undefined_variables(runnable: list[Block]) -> list[tuple[str, str]]:
    """($NAME, block) used in a runnable block before any runnable block assigns it."""
    known = set(SHELL_VARS)
    missing = []
    for b in runnable:
        for line in logical_lines(b.text):
            code = re.sub(r"'[^']*'", "''", line.split(" #", 1)[0])  # nothing expands in '...'
            known |= {n for groups in ASSIGN_RE.findall(code) for n in groups if n}
            for name in USE_RE.findall(code):
                if name not in known:
                    missing.append((name, b.where))
    return missing


HELPERS = r"""
set -euo pipefail
PS4='+ doc$ '
set -x
DOC_PIDS=()
doc_stop() {
  set +e
  for pid in "${DOC_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 50); do
    alive=0; for pid in "${DOC_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break; sleep 0.2
  done
  for pid in "${DOC_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
}
trap doc_stop EXIT
doc_server() {  # doc_server <listens: yes|no> <command>: the command in a second terminal
  { set +x; } 2>/dev/null
  local listens=$1 cmd=$2 log pid before now wait_file=""
  log="$DOC_LOGS/server-${#DOC_PIDS[@]}.log"
  [[ $cmd =~ --inventory-file[[:space:]]+([^[:space:]]+) ]] && wait_file=${BASH_REMATCH[1]}
  before=$(ss -Hlntu | awk '{print $5}' | sort)
  echo "+ doc$ $cmd   (in the background, log $log)" >&2
  bash -c "exec $cmd" >"$log" 2>&1 &
  pid=$!
  DOC_PIDS+=("$pid")
  for i in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then echo "stopped at once: $cmd" >&2; cat "$log" >&2; exit 1; fi
    now=$(ss -Hlntu | awk '{print $5}' | sort)
    if [[ $listens == no && $i -ge 10 ]] || [[ $listens == yes && "$now" != "$before" ]]; then
      if [[ -z $wait_file || -s $wait_file ]]; then sleep 0.5; set -x; return 0; fi
    fi
    sleep 0.2
  done
  echo "did not start within 60 s: $cmd" >&2; cat "$log" >&2; exit 1
}
"""


def script(parts: list[Block]) -> str:
    """The bash script of these blocks (runnable, install and file ones), in order."""
    out = [HELPERS]
    for b in parts:
        out.append(f"\n# ---- {b.where}")
        if b.action == "file":
            out.append(f"mkdir -p \"$(dirname {shlex.quote(b.arg)})\"")
            out.append(f"cat > {shlex.quote(b.arg)} <<'DOC_TEST_EOF'\n{b.text}DOC_TEST_EOF")
            continue
        for line in logical_lines(b.text):
            if SERVER_RE.match(line):
                listens = "no" if QUIET_RE.match(line) else "yes"
                out.append(f"doc_server {listens} {shlex.quote(line.split(' #', 1)[0].strip())}")
            else:
                out.append(line)
    return "\n".join(out) + "\n"


# The sandbox: a mount namespace where /etc, /var, /srv, /usr/local, /root and /opt are overlays
# (what the guides write there vanishes with it), the repository at /opt/piseduce as the admin
# guide installs it (read-only; for README, whose commands run in the checkout, an overlay), and
# a network namespace of its own (the guides' fixed ports never meet the
# machine's). Run with `unshare --mount --net --fork bash <this>`.
SANDBOX = r"""
set -euo pipefail
mount --make-rprivate /
ip link set lo up
for d in /etc /var /srv /usr/local /root /opt; do
  mkdir -p "$DOC_SCRATCH/upper$d" "$DOC_SCRATCH/work$d"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$DOC_SCRATCH/upper$d,workdir=$DOC_SCRATCH/work$d" "$d"
done
mkdir -p /opt/piseduce
if [[ -n ${DOC_IN_REPO:-} ]]; then  # README: a checkout the commands write into, as a reader's
  mkdir -p "$DOC_SCRATCH/upper/repo" "$DOC_SCRATCH/work/repo"
  mount -t overlay overlay \
    -o "lowerdir=$DOC_REPO,upperdir=$DOC_SCRATCH/upper/repo,workdir=$DOC_SCRATCH/work/repo" /opt/piseduce
else
  mount --bind "$DOC_REPO" /opt/piseduce
  mount -o remount,bind,ro /opt/piseduce  # the guides never write into the repository
fi
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [[ -n ${DOC_IN_REPO:-} ]]; then cd /opt/piseduce; else cd /root; fi
exec bash "$DOC_SCRIPT"
"""
