"""Unit tier: pure lora_math, importable from the repo root without ComfyUI."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
FIXTURES = REPO.parent / "shared" / "fixtures"
