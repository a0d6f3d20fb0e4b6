"""Each emulator started by hand prints where it listens and the credentials it accepts."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("vendor, secret", [("hubspot", "pat-emu-private-token"),
                                            ("pingcode", "client_secret=demo-secret"),
                                            ("worktile", "client_secret=demo-secret")])
def test_a_standalone_emulator_says_its_url_and_credentials(vendor, secret):
    proc = subprocess.Popen([sys.executable, "-m", f"plugins.{vendor}.emulator", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert "listening on http://127.0.0.1:" in lines[0]
    assert secret in lines[1]
