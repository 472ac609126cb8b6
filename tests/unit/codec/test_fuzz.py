"""The decoders' fuzz run (bench/fuzz_decoders.py) works: a few hundred coverage-guided runs, no crash."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO_ROOT

FUZZ = REPO_ROOT / "bench" / "fuzz_decoders.py"


def test_a_short_fuzz_run_of_the_decoders_finds_no_crash() -> None:
    done = subprocess.run([sys.executable, str(FUZZ), "--runs", "300"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 300 and summary["crash"] is False
