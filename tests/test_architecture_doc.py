"""docs/architecture.md matches the code: every path it names exists, its table of steps is each
driver's processes exactly, and its commands run and find what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from piseduce.agent.drivers import DRIVERS
from piseduce.agent.drivers.catalog import processes_of

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
TEMPLATES = ROOT / "src/piseduce/webui/templates"
ROUTE_DIR = ROOT / "src/piseduce/webui/routes"


def named_paths(text: str) -> list[str]:
    """What the page writes as a path in backquotes: a/b, or a file name with an extension."""
    def is_path(item: str) -> bool:
        if "/" in item:
            return not item.startswith("/") and "{" not in item  # not an agent route
        return re.fullmatch(r"[\w.-]+\.(py|html|md)", item) is not None

    return [item for item in re.findall(r"`([^`\s]+)`", text) if is_path(item)]


def _exists(item: str) -> bool:
    if "*" in item:
        return any(ROOT.glob(item))
    if "/" in item:
        return (ROOT / item).exists()
    # A bare file name: a template, a module of the page's row, or of the engine or a driver.
    return any(ROOT.glob(f"src/piseduce/**/{item}")) or (ROOT / item).exists()


def test_every_path_it_names_exists() -> None:
    missing = [p for p in named_paths(DOC.read_text()) if not _exists(p)]
    assert not missing, f"docs/architecture.md names what is not there: {missing}"


def test_the_page_table_names_real_route_modules_and_templates() -> None:
    text = DOC.read_text()
    rows = text[text.index("## Pages") : text.index("## The lifecycle")]
    for line in rows.splitlines():
        if not line.startswith("| ") or "route module" in line:
            continue
        for template in re.findall(r"`([\w-]+\.html)`", line):
            assert (TEMPLATES / template).is_file(), template
        modules = re.findall(r"`src/piseduce/webui/routes/([\w]+\.py)`", line)
        assert modules, f"a page row without its route module: {line}"
    # Every route module that serves a page is on the map.
    mapped = set(re.findall(r"webui/routes/(\w+\.py)", rows))
    serving = {p.name for p in ROUTE_DIR.glob("*.py") if "@router.get(" in p.read_text()}
    assert serving <= mapped, f"pages missing from docs/architecture.md: {sorted(serving - mapped)}"


def doc_steps(text: str) -> dict[str, dict[str, list[str]]]:
    block = text[text.index("<!-- steps") : text.index("<!-- /steps -->")]
    out: dict[str, dict[str, list[str]]] = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("driver", "---"):
            continue
        node_type, process, steps = cells
        out.setdefault(node_type, {})[process] = [s.strip() for s in steps.split("→")]
    return out


def test_the_steps_table_is_each_drivers_processes() -> None:
    listed = doc_steps(DOC.read_text())
    assert set(listed) == set(DRIVERS)
    for node_type in DRIVERS:
        assert listed[node_type] == processes_of(node_type), (
            f"docs/architecture.md's steps of {node_type} differ from the driver's: "
            "python -m piseduce.agent.drivers.catalog prints them"
        )


def test_a_changed_step_would_be_seen() -> None:
    text = DOC.read_text().replace("wipe → remove_boot", "erase → remove_boot")
    assert doc_steps(text)["raspberry"]["destroy"] != processes_of("raspberry")["destroy"]


@pytest.mark.parametrize("index", range(len(re.findall(r"```sh\n", DOC.read_text()))))
def test_its_commands_run(index: int) -> None:
    block = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)[index]
    script = block.replace(".venv/bin/python", sys.executable)
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip(), f"the commands printed nothing:\n{block}"
