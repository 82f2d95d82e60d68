"""What the browser tests share: Debian's Chromium, its flags on this closed network, and where
screenshots go: `tmp/screenshots/` (ignored by git) so that a test run rewrites no tracked file;
`./run docs-shots` (the tests naming SHOTS, with `PISEDUCE_SCREENSHOTS=docs/img`) refreshes the
guides' images on purpose."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from helpers.constants import ROOT

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
_where = Path(os.environ.get("PISEDUCE_SCREENSHOTS") or "tmp/screenshots")
SHOTS = _where if _where.is_absolute() else ROOT / _where


# What a Find box (templates/_find.html) searches: per item, the values of the fields the box
# names, and the item's text as shown.
_FIND_ITEMS = """(box) => {
  const b = document.querySelector(box), fields = b.dataset.fields.split(' ');
  return [...document.querySelectorAll(b.dataset.filter)].map(el => {
    const vals = {};
    for (const f of fields) {
      vals[f] = [el, ...el.querySelectorAll('[data-s-' + f + ']')]
        .map(p => p.getAttribute('data-s-' + f)).filter(Boolean).join(' ');
    }
    return {vals, text: el.innerText};
  });
}"""
_SHOWN = """(box) => [...document.querySelectorAll(document.querySelector(box).dataset.filter)]
  .map((el, i) => el.getClientRects().length ? i : -1).filter(i => i >= 0)"""


def check_find_box(page: Any, box: str) -> set[str]:
    """The Find box `box` finds an item by each field its placeholder names, and by nothing else
    the items show (their buttons, connection details...). Returns the fields it could try."""
    fields = str(page.get_attribute(box, "data-fields")).split()
    labels = str(page.get_attribute(box, "placeholder")).split(", ")
    assert len(labels) == len(fields) and all(labels), (fields, labels)
    items = page.evaluate(_FIND_ITEMS, box)
    assert items, f"{box}: no item to search"
    tried = set()
    for f in fields:
        having = [i for i, it in enumerate(items) if it["vals"][f]]
        if not having:
            continue
        value = items[having[0]]["vals"][f].split()[0]
        page.fill(box, value)
        shown = page.evaluate(_SHOWN, box)
        assert having[0] in shown, (box, f, value)
        for j in shown:  # each item shown holds the word in a field the box names
            assert any(value.lower() in v.lower() for v in items[j]["vals"].values()), (box, value, items[j])
        tried.add(f)
    held = " ".join(v for it in items for v in it["vals"].values()).lower()
    shown_words = {w for it in items for w in re.findall(r"[A-Za-z][A-Za-z-]{3,}", it["text"])}
    others = sorted(w for w in shown_words if w.lower() not in held)
    assert others, f"{box}: the items show nothing but their fields"
    for w in others[:8]:
        page.fill(box, w)
        assert page.evaluate(_SHOWN, box) == [], (box, w)
    page.fill(box, "")
    return tried


_OFF_SCREEN = """() => [...document.querySelectorAll('main table button, main table .btn, main table a')]
  .filter(b => b.getClientRects().length)
  .filter(b => { const r = b.getBoundingClientRect(); return r.left < -1 || r.right > innerWidth + 1; })
  .map(b => b.textContent.trim() + ' at ' + Math.round(b.getBoundingClientRect().left))"""


def table_buttons_off_screen(page: Any) -> list[str]:
    """The buttons and links of the page's tables not within the viewport horizontally (as shown,
    without scrolling sideways)."""
    out: list[str] = page.evaluate(_OFF_SCREEN)
    return out


# The text of every cell of every data row (a row with a <td>) of the page's tables, that the page
# does not show: hidden (display: none, on the cell or a parent), or of no size. Rows a find box
# filtered out are hidden on purpose. Column-heading rows (only <th>) may go: on a phone their names
# are the cells' labels (data-label), checked as well: a stacked cell under a named column says it.
_HIDDEN_CELLS = """() => {
  const out = [];
  const stacked = window.matchMedia('(max-width: 760px)').matches;
  document.querySelectorAll('main table tr').forEach(tr => {
    if (!tr.querySelector(':scope > td') || tr.closest('.filtered-out, .hidden')) { return; }
    const head = tr.closest('table').querySelector('tr');
    const headed = head && head !== tr && !head.querySelector(':scope > td');
    [...tr.children].forEach((cell, i) => {
      const text = cell.textContent.trim();
      if (!text) { return; }
      const r = cell.getBoundingClientRect();
      if (!cell.checkVisibility() || r.width === 0 || r.height === 0) {
        out.push('hidden: ' + text.slice(0, 40));
      } else if (stacked && headed && cell.tagName === 'TD') {
        const name = (head.children[i] || {textContent: ''}).textContent.trim();
        if (name && cell.getAttribute('data-label') !== name) {
          out.push('unlabelled: ' + text.slice(0, 40));
        }
      }
    });
  });
  return out;
}"""


def hidden_table_cells(page: Any) -> list[str]:
    """The cells with text of the page's table rows that the page does not show (see above)."""
    out: list[str] = page.evaluate(_HIDDEN_CELLS)
    return out
