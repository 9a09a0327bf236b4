"""Print a markdown table of every check in bench/results/*.json (used to refresh bench/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    print("| result | check | value | target | met |\n| --- | --- | --- | --- | --- |")
    for p in sorted(RESULTS.glob("*.json")):
        d = json.loads(p.read_text())
        for c in d.get("checks", []):
            print(f"| `{p.name}` | {c['name']} | {c['value']} | {c['target']} | {'yes' if c['met'] else '**no**'} |")


if __name__ == "__main__":
    main()
