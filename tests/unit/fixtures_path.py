"""Where the shared fixtures corpus (real LoRA files, key lists) is, for every unit test that reads it.

$LORA_LOOM_FIXTURES, else <repo>/shared/fixtures, else <repo>/../shared/fixtures (how CI lays it out).
Tests that need it are skipped, with the reason, on a checkout that has no corpus.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _find() -> Path | None:
    env = os.environ.get("LORA_LOOM_FIXTURES")
    for cand in ([Path(env)] if env else []) + [REPO / "shared" / "fixtures", REPO.parent / "shared" / "fixtures"]:
        if (cand / "real_loras").is_dir():
            return cand
    return None


FIXTURES = _find()
REAL_LORAS = FIXTURES / "real_loras" if FIXTURES else REPO / "missing-shared-fixtures"
needs_fixtures = pytest.mark.skipif(FIXTURES is None, reason="shared fixtures corpus not found ($LORA_LOOM_FIXTURES)")
