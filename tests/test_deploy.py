"""deploy/: the docker-compose demo without Docker. Docker cannot run here, so this starts what
the compose file starts as plain processes: both emulators as their own servers (`python -m
plugins.<vendor>.emulator`), PostgreSQL (tests/pgcluster.py), two `dealsync run` workers with
the compose file's environment and deploy/dealsync.toml, then deploy/story.py, which must pass.
What is not exercised: the image build, the compose file's own wiring (network_mode, health
checks) and the Kubernetes manifests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from pgcluster import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def compose_environment() -> dict[str, str]:
    """The workers' variables as deploy/docker-compose.yml sets them (its x-dealsync block)."""
    text = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    block = text[text.index("environment: &environment"):text.index("\nservices:")]
    return dict(re.findall(r"^\s+([A-Z_]+): (\S+)$", block, re.MULTILINE))


def serve(module: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert "listening on" in proc.stdout.readline()
    return proc


def test_the_compose_story_passes_against_two_workers(tmp_path, pg_url):
    from pgcluster import PASSWORD

    environment = compose_environment()
    assert environment["DEALSYNC_STATE_PASSWORD"] and "DEALSYNC_DEMO_HUBSPOT_TOKEN" in environment
    ports = {8081: free_port(), 8082: free_port()}
    config = (DEPLOY / "dealsync.toml").read_text(encoding="utf-8")
    for fixed, free in ports.items():
        config = config.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{free}")
    (tmp_path / "dealsync.toml").write_text(config, encoding="utf-8")
    env = {**os.environ, **environment, "DEALSYNC_CONFIG": str(tmp_path / "dealsync.toml"),
           "DEALSYNC_STATE_URL": pg_url, "DEALSYNC_STATE_PASSWORD": PASSWORD,
           "HUBSPOT_URL": f"http://127.0.0.1:{ports[8081]}",
           "PINGCODE_URL": f"http://127.0.0.1:{ports[8082]}", "STORY_WAIT_S": "60"}
    processes = [serve("plugins.hubspot.emulator", ports[8081]),
                 serve("plugins.pingcode.emulator", ports[8082])]
    try:
        processes += [subprocess.Popen([sys.executable, "-m", "sync.cli", "run", "--every",
                                        "10s"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL) for _ in range(2)]
        story = subprocess.run([sys.executable, str(DEPLOY / "story.py")], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=180)
    finally:
        for proc in processes:
            proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert story.returncode == 0, story.stdout + story.stderr
    out = story.stdout
    assert "Acme plant rollout: SCR-1 status = in_progress" in out
    assert "Acme spare parts portal: SCR-2 status = planned" in out
    assert "Initech reporting add-on: linked to SCR-2" in out
    assert "the story ran" in out


def test_the_readme_shows_the_kubernetes_manifests_as_committed():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for manifest in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        assert f"```yaml\n{manifest.read_text(encoding='utf-8')}```" in readme, manifest.name
