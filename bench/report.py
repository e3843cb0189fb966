"""What every benchmark does with its result: print it as JSON and, with --out, write the same text to that file."""

import json
from pathlib import Path


def emit(report: dict, out: str | Path | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
