import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


def write_csv(path: Path, columns: dict) -> Path:
    names = list(columns)
    n = len(columns[names[0]])
    lines = [",".join(names)]
    for i in range(n):
        lines.append(",".join(str(columns[c][i]) for c in names))
    path.write_text("\n".join(lines) + "\n")
    return path
