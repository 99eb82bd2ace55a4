"""The API process loads only what serving needs (the import contracts in pyproject.toml state
the directions; this checks what one import really pulls in)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NOT_FOR_SERVING = (
    "trainer.research",
    "trainer.loop",
    "trainer.learning.updaters",
    "trainer.learning.meta",
    "trainer.learning.native",
    "pandas",
    "matplotlib",
)


def test_importing_the_api_loads_no_training_research_or_dataframe_code() -> None:
    listing = subprocess.run(
        [sys.executable, "-c", "import sys, app.main; print('\\n'.join(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert "app.main" in listing and "trainer.core.store" in listing  # the listing is of a real import
    loaded = sorted(m for m in listing if m.split(".")[0] in {"trainer", "pandas", "matplotlib"})
    assert [m for m in loaded if m.startswith(NOT_FOR_SERVING)] == []
