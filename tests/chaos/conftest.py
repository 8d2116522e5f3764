"""The chaos suite lives in bench/ (it is also `make chaos`); its modules import as top-level ones."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
