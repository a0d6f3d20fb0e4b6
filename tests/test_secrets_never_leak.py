"""Secrets never leave in what dealsync writes: not in logs at the most verbose level, not in
`--json`, not in errors, not in the state store; also with tokens that change mid-run."""

from __future__ import annotations

from conftest import process_stack, run_dealsync
from plugins.hubspot.emulator import PRIVATE_TOKEN
from plugins.pingcode.testing import DEMO_SECRETS


def test_no_secret_in_logs_json_errors_or_the_state_store(tmp_path):
    with process_stack(tmp_path, "leak") as (hubspot, pingcode, config, env):
        assert run_dealsync(config, env, "check", "--fix").returncode == 0
        hubspot.seed(deals=[{"properties": {"dealname": f"Deal {n}", "dealsync_request": text,
                                            "dealstage": "qualifiedtobuy"}}
                            for n, text in enumerate(["SSO", "SCR-1", "Audit log"])])
        outputs = [run_dealsync(config, env, "-vv", "--debug", "sync", "--json")]
        pingcode.expire_tokens()  # the next run renews its token mid-run, after a 401
        pingcode.mutate("SCR-1", priority="最高")
        # this one logs JSON Lines, the format log collectors read
        outputs.append(run_dealsync(config, env, "-vv", "--debug", "--log-format", "json",
                                    "sync", "--json"))
        pingcode.apps.clear()  # and one run fails on its credentials
        pingcode.expire_tokens()
        pingcode.mutate("SCR-1", priority="低")
        outputs.append(run_dealsync(config, env, "-vv", "--debug", "sync", "--json"))
        outputs.append(run_dealsync(config, env, "status", "--json"))
        tokens = set(pingcode.tokens)
    assert [o.returncode for o in outputs[:3]] == [0, 0, 3], outputs[2].stderr
    assert len(tokens) >= 2, "the second run must have renewed its token"
    assert "POST" in outputs[0].stderr  # -vv logs every HTTP call: there is something to scan
    assert "POST" in outputs[1].stderr and outputs[1].stderr.lstrip().startswith("{")
    home = tmp_path / "home"
    stored = b"".join(path.read_bytes() for path in home.rglob("*") if path.is_file())
    secrets = {PRIVATE_TOKEN, DEMO_SECRETS["client_secret"], *tokens}
    for secret in secrets:
        for output in outputs:
            assert secret not in output.stdout and secret not in output.stderr, secret
        assert secret.encode() not in stored, secret
