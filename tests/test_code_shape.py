"""The size rule (README, "Size rule"): no function in `src/` over 80 lines, no module over 500.
The README names the only exceptions (simulator data tables); they are the allow-list."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
START, END = "<!-- size-rule exceptions", "<!-- /size-rule exceptions -->"


def readme_exceptions(text: str) -> set[str]:
    """The `src/...` paths named between the README's two marks."""
    start = text.index(START)
    block = text[start : text.index(END, start)]
    return set(re.findall(r"`(src/[^`]+\.py)`", block))


def file_offences(path: Path, name: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: module of {lines} lines (max {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text, name)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines (max {MAX_FUNCTION_LINES})")
    return found


def offenders(base: Path, allowed: set[str]) -> list[str]:
    """Every offence in `base/src`, paths relative to `base`, the allowed ones left out."""
    found = []
    for path in sorted((base / "src").rglob("*.py")):
        name = path.relative_to(base).as_posix()
        if name not in allowed:
            found.extend(file_offences(path, name))
    return found


def _allowed() -> set[str]:
    return readme_exceptions((ROOT / "README.md").read_text(encoding="utf-8"))


def test_no_function_or_module_over_the_limits() -> None:
    found = offenders(ROOT, _allowed())
    assert not found, (
        "split these along their seams (one job per module, named for it; a long function into "
        "named phases), or, for a simulator data table, name it in the README's size rule:\n  "
        + "\n  ".join(found)
    )


def test_the_readme_exceptions_are_simulator_tables_still_over_the_limit() -> None:
    for name in sorted(_allowed()):
        path = ROOT / name
        assert path.is_file(), f"the README names {name} as an exception, but there is no such file"
        assert name.startswith("src/piseduce/sim/"), f"{name}: only simulator data tables may be exceptions"
        assert file_offences(path, name), f"{name} is within the limits now: take it off the README's list"


def test_the_checker_sees_a_long_function_and_a_long_module(tmp_path: Path) -> None:
    """The rule itself can fail: a module of 501 lines and a function of 81 are reported, one of
    80 is not, and a module the README names is left out."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "long_module.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    body = "    y = 1\n" * MAX_FUNCTION_LINES
    (src / "long_function.py").write_text("def f() -> None:\n" + body)
    (src / "fine.py").write_text("async def g() -> None:\n" + body[: -len("    y = 1\n")])
    (src / "table.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    readme = f"a\n{START}: x -->\n- `src/table.py`: a data table\n{END}\n"
    found = offenders(tmp_path, readme_exceptions(readme))
    assert found == [
        "src/long_function.py:1 f: 81 lines (max 80)",
        "src/long_module.py: module of 501 lines (max 500)",
    ]
