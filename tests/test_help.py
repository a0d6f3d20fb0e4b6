"""Every command's and group's `--help` ends with an example that names a real command with
options it has, printed as written (click's `\\b`), so help is never a dead end."""

from __future__ import annotations

import shlex

import click
import pytest
from click.testing import CliRunner

from sync.cli import cli


def walk(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(cli))


def examples(help_text: str) -> list[str]:
    """The command lines of the help's last "Example:"/"Examples:" section, with lines ending
    in a backslash joined to the next."""
    lines = help_text.rstrip().splitlines()
    heads = [n for n, line in enumerate(lines) if line.strip() in ("Example:", "Examples:")]
    assert heads, "no Example section"
    commands: list[str] = []
    for line in lines[heads[-1] + 1:]:
        text = line.strip()
        if commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1] + " " + text
        else:
            commands.append(text)
    return commands


def options_of(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def check_line(line: str) -> None:
    """``dealsync [global options] COMMAND... [options]``: every command exists, and every
    option is one its command (or the root, before the first command) takes."""
    words = shlex.split(line.split(" | ")[0].split(" || ")[0], comments=True)
    assert words[0] == "dealsync", line
    command: click.Command = cli
    for word in words[1:]:
        if isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
        elif word.startswith("-"):
            assert word.split("=")[0] in options_of(command), (line, word, command.name)
        elif isinstance(command, click.Group) and command is not cli \
                and not command.invoke_without_command:
            pytest.fail(f"{line}: {word} is not a command of {command.name}")


@pytest.mark.parametrize("path,command", COMMANDS,
                         ids=[" ".join(("dealsync", *p)) for p, _ in COMMANDS])
def test_help_ends_with_an_example(path, command):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert command.epilog and command.epilog.lstrip().startswith("\b"), \
        "the epilog must start with \\b so click prints it as written"
    found = examples(result.output)
    assert found and all(line.startswith("dealsync ") for line in found), found
    if path:  # a command's own example runs that command
        assert any(" ".join(("dealsync", *path)) in line for line in found), found
    for line in found:
        check_line(line)


def test_the_walk_reaches_every_level():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "sync", "init", "conflicts resolve", "auth set", "state check"} <= names
    assert len(COMMANDS) >= 20


def test_a_wrong_example_is_caught():
    with pytest.raises(AssertionError):
        check_line("dealsync sync --no-such-option")
    with pytest.raises(pytest.fail.Exception):
        check_line("dealsync auth frobnicate acme")


def test_init_help_lists_each_connectors_settings_and_defaults():
    text = CliRunner().invoke(cli, ["init", "--help"]).output
    for kind in ("hubspot", "salesforce", "pingcode", "worktile"):
        assert f"\n  {kind}: " in text, kind
    assert "base_url [https://api.hubapi.com]" in text
    assert "base_url [https://open.pingcode.com]" in text
    assert "base_url [https://dev.worktile.com]" in text
    assert "*project:" in text and "*login_url:" in text  # required, as check_settings says
    assert "secret client_secret:" in text
