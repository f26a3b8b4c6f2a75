"""The Bill Pay app is importable from its source tree whether or not `make` installed it."""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "billpay"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
