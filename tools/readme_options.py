"""Write the README's option table from the option table (latentsync_core.options): one row per option,
with its command-line flag, node widget, default and allowed values.

    python tools/readme_options.py          # rewrite the block between the markers in README.md
    python tools/readme_options.py --check  # exit 1 when README.md is behind (tests/test_options.py runs it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latentsync_core.options import GROUPS, Option  # noqa: E402

BEGIN, END = "<!-- options:begin (tools/readme_options.py) -->", "<!-- options:end -->"


def _allowed(o: Option) -> str:
    if o.accepts:
        return o.accepts
    if o.labels or o.choices:
        words = o._flag_labels() if o.flag and o._flag_labels() else o.labels or {str(c): c for c in o.choices}
        return " \\| ".join(f"`{w}`" for w in words)
    if o.kind is bool:
        return "on / off"
    low = o.unset[0] if o.unset else o.minimum
    high = "" if o.maximum is None else str(o.maximum)
    unset = f"; {o.unset[0]} = {o.unset[1] or 'official'}" if o.unset else ""
    return f"{low} – {high}{unset}"


def _default(o: Option) -> str:
    labels = o._flag_labels() if o.flag else o.labels
    if labels and o.kind is not str:
        return next(w for w, v in labels.items() if v == o.default and type(v) is type(o.default))
    return str(o.encode(o.default))


def table() -> str:
    rows = ["| option | command line | node widget | default | allowed | what it does |", "|---|---|---|---|---|---|"]
    for group, specs in GROUPS.items():
        for o in specs:
            flag = f"`{o.flag}`" if o.flag else "—"
            widget = f"`{o.widget}`" if o.widget else "—"
            if o.name == "face":
                widget = "`face` + `face_index`"
            text = (o.help or o.tooltip).replace("|", "\\|")
            rows.append(f"| {group}: `{o.name}` | {flag} | {widget} | `{_default(o)}` | {_allowed(o)} | {text} |")
    return "\n".join(rows)


def render(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print("README.md's option table is behind: run python tools/readme_options.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
