"""The message catalogs: extract them from the sources, merge into the .po files, compile the .mo files.

The .po files (dashboards/translations/LOCALE/LC_MESSAGES/messages.po) are the sources the translators
edit and git keeps; the .mo files Flask-Babel reads are made from them, by the build (setup.py's
build_py, also run by `pip install -e .`) and, should a .po be newer than its .mo, by the web app when it
starts (a developer who edited a .po). Nothing here imports Flask or the rest of the package:
setup.py loads this file by its path in a build environment that has Babel only.

    python -m dashboards.i18n_build update    # extract, then merge into every .po (new: empty, changed: fuzzy)
    python -m dashboards.i18n_build compile   # every stale .mo
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
TRANSLATIONS = PACKAGE / "translations"
DOMAIN = "messages"
# Flask-Babel's and campus.i18n's markers (N_ and lazy_gettext: text marked where there is no request).
KEYWORDS = {**DEFAULT_KEYWORDS, "lazy_gettext": None, "_l": None}
# Whitespace in {% trans %} blocks is trimmed, as the app renders them (dashboards/i18n.py).
OPTIONS = {"dashboards/templates/**.html": {"trimmed": "true"}}


# A page script marks a message as `_("…")` with a double-quoted literal, the only form the scripts use (the
# catalog test checks it). Babel's own JavaScript lexer swallows a call inside a template literal's `${…}`
# whole, so half the scripts' messages went missing from the catalog: this reads the calls themselves.
JS_CALL = re.compile(r'(?<![\w$.])_\(\s*"((?:[^"\\\n]|\\.)*)"')


def extract_js(fileobj: IO[bytes], keywords: Any, comment_tags: Any, options: Any) -> Iterator[tuple[int, str, str, list[str]]]:
    """Babel extractor (babel.cfg `[javascript_calls: …]`): every `_("…")` of a page script."""
    text = fileobj.read().decode("utf-8")
    for match in JS_CALL.finditer(text):
        lineno = text.count("\n", 0, match.start()) + 1
        yield lineno, "_", json.loads(f'"{match.group(1)}"'), []


def extract(root: Path = ROOT) -> Catalog:
    """Every message the sources mark, as a fresh catalog (what `pybabel extract -F babel.cfg` makes)."""
    with open(root / "babel.cfg", encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    for pattern, options in OPTIONS.items():
        options_map.setdefault(pattern, {}).update(options)
    catalog = Catalog(project="campus-iot", domain=DOMAIN, charset="utf-8")
    for filename, lineno, message, comments, context in extract_from_dir(
            root, method_map, options_map, keywords=KEYWORDS, comment_tags=("Translators:",), strip_comment_tags=True):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def po_files(translations: Path = TRANSLATIONS) -> list[Path]:
    return sorted(translations.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def update(root: Path = ROOT) -> list[Path]:
    """Merge the sources' messages into every .po: new ones empty, changed ones fuzzy, gone ones obsolete."""
    template = extract(root)
    for po in po_files():
        with open(po, "rb") as f:
            catalog = read_po(f, locale=po.parent.parent.name)
        catalog.update(template, no_fuzzy_matching=False)
        catalog.obsolete.clear()  # git keeps the history; an obsolete entry would only be a stale line
        with open(po, "wb") as f:
            write_po(f, catalog, width=110, omit_header=False, sort_output=False, include_previous=True)
    return po_files()


def compile_catalogs(translations: Path = TRANSLATIONS, force: bool = False) -> list[Path]:
    """Write the .mo of every .po that has none or an older one; the .mo files written."""
    written = []
    for po in po_files(translations):
        mo = po.with_suffix(".mo")
        if not force and mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        with open(po, "rb") as f:
            catalog = read_po(f, locale=po.parent.parent.name)
        tmp = mo.with_suffix(".mo.tmp")
        with open(tmp, "wb") as f:
            write_mo(f, catalog, use_fuzzy=False)
        tmp.replace(mo)  # atomic: several web workers may start at once
        written.append(mo)
    return written


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "update":
        print("\n".join(str(p) for p in update()))
    elif command == "compile":
        print("\n".join(str(p) for p in compile_catalogs(force="--force" in sys.argv)))
    else:
        sys.exit("usage: python -m dashboards.i18n_build update|compile [--force]")
