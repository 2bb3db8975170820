"""The code passes ruff with the project's configuration (pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


RUFF = Path(sys.executable).parent / "ruff"
RUFF = str(RUFF) if RUFF.exists() else shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is in the test extra")
def test_ruff_passes():
    proc = subprocess.run([RUFF, "check", "--output-format", "concise", str(REPO)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
