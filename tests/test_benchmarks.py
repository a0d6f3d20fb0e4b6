"""A smoke run of every benchmark at tiny sizes, so the benchmark command does not rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_run_all_quick_writes_every_scenario(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nhand-written\n")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                             "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text.startswith("# Results\n\nhand-written\n")
    assert "60 deals naming 3 existing keys: ok" in text
    assert "0 x 429" in text and "utilisation 100.0%" in text
    assert text.count("### Engine growth on the memory connectors") == 3
    assert "peak RSS     600 deals (600 links)" in text  # the growth summary, largest size
    assert "quiet run inside the lookback" in text and "quiet run after the lookback" in text
    assert "fewest; made" in text  # each quiet run's calls beside the fewest, with arithmetic
    assert "statuses equal in the replay" in text and "(limit 1.30)" in text
    assert "20 ms added to every answer" in text
    assert "lanes on :" in text and "lanes off:" in text and "floor with lanes" in text
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                            "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and out.read_text().count("<!-- run_all: begin -->") == 1
