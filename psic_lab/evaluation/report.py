"""Where every evaluation writes: raw numbers to ``results/<name>.json``, the table to ``docs/<name>.md``."""

from __future__ import annotations

import json
from pathlib import Path


def save(name: str, res: dict, lines: list[str]) -> None:
    """Write ``res`` as JSON and ``lines`` as the markdown report (paths relative to the working directory)."""
    Path("results").mkdir(exist_ok=True)
    Path("docs").mkdir(exist_ok=True)
    Path(f"results/{name}.json").write_text(json.dumps(res, indent=2))
    Path(f"docs/{name}.md").write_text("\n".join(lines) + "\n")
