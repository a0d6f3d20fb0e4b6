"""The ``dealsync`` command line.

One error funnel: every ``DealsyncError`` raised by a command is printed as what went wrong and
what to do, and the process exits with the error's code (listed in ``dealsync --help``). Logs go
to stderr (as text, or JSON Lines under ``--log-format json``); ``--json`` puts exactly one JSON
document on stdout. Progress goes to stderr too: a live display on a terminal, log lines
otherwise (``sync/progress.py``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import sqlite3
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import click

from . import errors
from .check import check_pair
from .config import Config, PairConfig, config_path, load_config
from .engine import Options, run_pair
from .errors import ConfigError, DealsyncError, PluginError
from .files import write_private
from .manager import call_strict, describe_plugins, notify
from .progress import (EVERY_ENV, LOG_FORMATS, Every, end_progress, json_logs, parse_every,
                       progress_printer, setup_logging, start_progress)
from .report import format_report, pipeline_report
from .report_html import render_html
from .secrets import delete_secret, keyring_usable, no_keyring, secret_source, set_secret
from .state import (StateStore, describe_target, is_postgres_url, open_store, parse_ts,
                    store_errors)
from .words import conflict_words, counted, listing, manual_update, plural, shown
from .workers import Supervisor, next_run, work, worker_command

log = logging.getLogger("dealsync")


class FunnelGroup(click.Group):
    """A click group whose commands share one error funnel."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return super().invoke(ctx)
        except DealsyncError as exc:
            report_error(exc, debug)
            if wants_json(ctx):  # `--json` promises one document on stdout, errors included
                emit_json({"error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code})
            ctx.exit(exc.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            say_err("\ninterrupted: what was already written stays written, and the state "
                    "store records it; the next run does the rest", logging.WARNING)
            ctx.exit(errors.EXIT_INTERRUPTED)
        except BrokenPipeError:  # `dealsync links | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(errors.EXIT_OK)
        except store_errors() as exc:  # the state store's database, not a bug in dealsync
            report_error(state_store_error(ctx, exc), debug)
            ctx.exit(errors.EXIT_USAGE)
        except Exception as exc:  # a bug: say so plainly; --debug shows the traceback
            if debug:
                raise
            report_error(DealsyncError(f"internal error: {type(exc).__name__}: {exc}",
                                       "run again with --debug for the traceback, and report "
                                       "it with that output"))
            ctx.exit(errors.EXIT_INTERNAL)


def _note_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta["dealsync.json"] = value  # meta is shared by every context of one invocation
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_note_json,
                           help="One JSON document on stdout (one line unless on a terminal), "
                                "errors included.")


def example(*lines: str) -> str:
    """A help epilog of command lines, printed as written (``\\b`` stops click rewrapping it)."""
    head = "Examples:" if len(lines) > 1 else "Example:"
    return "\b\n" + head + "\n" + "\n".join(f"  {line}" for line in lines)


def wants_json(ctx: click.Context) -> bool:
    """Whether the command being run was given ``--json``."""
    return bool(ctx.meta.get("dealsync.json"))


def state_store_error(ctx: click.Context, exc: Exception) -> DealsyncError:
    state = ctx.find_object(Context)
    path = state.state_path() if state is not None else None
    where = f"state store {describe_target(path)}" if path else "the state store"
    if not isinstance(exc, sqlite3.Error):  # PostgreSQL: the server or the connection
        hint = "check that PostgreSQL is up and reachable; what was written stays written, " \
               "and the next run resumes from there"
    elif "readonly" in str(exc) or "read-only" in str(exc):
        hint = "make the file and its folder writable by this user, or point DEALSYNC_HOME at " \
               "a writable folder"
    else:
        hint = "if the file is damaged, move it aside and restore a backup, or start afresh: " \
               "dealsync finds the requirements it created by their markers (then run " \
               "`dealsync sync --scan-markers` once)"
    return DealsyncError(f"{where}: {exc}", hint)


def report_error(exc: DealsyncError, debug: bool = False) -> None:
    if debug:
        log.exception("details")
    if json_logs():  # stderr carries JSON Lines: the error is one of them
        log.error("%s", exc.message, extra={"fields": {"hint": exc.hint,
                                                       "exit_code": exc.exit_code}})
        return
    click.secho(f"Error: {exc.message}", fg="red", err=True)
    if exc.hint:
        click.echo(f"  What to do: {exc.hint}", err=True)


def _every(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Every:
    try:
        return parse_every(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def say_err(text: str, level: int = logging.INFO) -> None:
    """A line for stderr: as it is, or as a log line under ``--log-format json``."""
    if json_logs():  # shown whatever -v says, as the text would be
        log.handle(log.makeRecord(log.name, level, __file__, 0, "%s", (text.strip(),), None))
    else:
        click.echo(text, err=True)


class Context:
    """What commands share: the config path, loaded lazily, and the state store."""

    progress_every = Every()  # how often log lines show a running phase (--progress-every)

    def __init__(self, config: str | None, debug: bool):
        self.config_ref = config
        self.debug = debug
        self._config: Config | None = None
        self._store: StateStore | None = None
        self._unshare: Callable[[], None] | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(config_path(self.config_ref))
            if self._config.state_url:
                # Other workers may call the same instances: share their rate limits
                # through the store (sync/state/limiter.py), before any connector is built.
                from .state.limiter import share_limits

                url = self._config.state_url
                self._unshare = share_limits(lambda: open_store(url))
        return self._config

    def state_path(self) -> Path | str | None:
        """The state store in use (a file, or a URL without secrets), if the configuration
        got as far as naming it."""
        return self._config.state_target if self._config is not None else None

    @property
    def store(self) -> StateStore:
        if self._store is None:
            self._store = open_store(self.config.state_target)
        return self._store

    def drop_store(self) -> None:
        """Close the store after an error of its database; the next use opens it again."""
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception as exc:  # a connection already gone cannot close cleanly
                log.debug("closing the state store: %s", exc)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._unshare is not None:
            self._unshare()


pass_ctx = click.make_pass_decorator(Context)


@click.group(cls=FunnelGroup, epilog="\b\n" + errors.EXIT_CODES_HELP + "\n\n" + example(
                 "dealsync -c ./dealsync.toml sync --dry-run"),
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-c", "--config", metavar="FILE", help="Configuration file (default: "
              "$DEALSYNC_CONFIG, then dealsync.toml in the user config directory).")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for HTTP).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              envvar="DEALSYNC_LOG_FORMAT",
              help="Log lines on stderr as text, or one JSON object per line for a log collector.")
@click.option("--progress-every", metavar="SPEC", envvar=EVERY_ENV, callback=_every,
              help="Without a terminal, log a running phase's progress every so many seconds "
                   "and items: 30s, 500 or 30s,500 (the default); 0 turns one off.")
@click.version_option(package_name="dealsync")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: int, debug: bool, log_format: str,
        progress_every: Every) -> None:
    """Keep CRM deals and tracker requirements in step.

    Sales writes a request on a deal; dealsync creates or links the requirement in the tracker,
    shows product managers every deal behind it, and mirrors status and priority both ways.

    \b
    Start here:
      dealsync demo                  a full sync against local emulators, in a minute
      dealsync init                  answer a few questions: a first dealsync.toml
      dealsync auth set acme token   store a secret in the system keyring
      dealsync check                 verify mappings against the live systems
      dealsync sync --dry-run        show what a run would do
      dealsync run --every 5m        the scheduled job
    """
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else logging.WARNING
    setup_logging(level, log_format)  # progress lines show at any level
    # urllib3 logs full request lines, query strings included: keep it out of -v/-vv.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    state = Context(config, debug)
    state.progress_every = progress_every
    ctx.obj = state
    ctx.call_on_close(state.close)
    if _PLUGIN_ERROR is not None:
        raise _PLUGIN_ERROR


def emit_json(document: Any) -> None:
    """One document: indented for a person at a terminal, one line otherwise (a job appending
    to a JSON Lines file)."""
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(document, indent=indent, ensure_ascii=False, default=str))


# -- sync, retry, run ---------------------------------------------------------------------------
def run_pairs(state: Context, pair: str | None, options: Options) -> tuple[list[dict], int]:
    """Run each selected pair; one pair's failure does not stop the others."""
    results, exit_code = [], errors.EXIT_OK
    for pair_config in state.config.select(pair):
        result = run_one(state, pair_config, options)
        results.append(result)
        code = result.pop("_exit", errors.EXIT_OK)
        if code and (not exit_code or exit_code == errors.EXIT_PARTIAL):
            exit_code = code
    return results, exit_code


def run_one(state: Context, pair_config: PairConfig, options: Options) -> dict[str, Any]:
    start_progress(options.progress, pair_config.name)
    try:
        with pair_config.connected() as pair:
            summary = run_pair(pair, state.store, options)
    except DealsyncError as exc:
        end_progress(options.progress, stopped=True)  # cleared before the error is printed
        report_error(exc, state.debug)
        return {"pair": pair_config.name, "status": "stopped", "error": exc.message,
                "hint": exc.hint, "_exit": exc.exit_code}
    finally:
        end_progress(options.progress)
    summary["_exit"] = errors.EXIT_PARTIAL if summary["status"] == "partial" else errors.EXIT_OK
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    if summary.get("error"):  # what and why went to stderr as the run stopped
        click.echo(f"{summary['pair']}: stopped (the error above says why and what to do)")
        return
    counts = summary["counts"]
    click.echo(f"{summary['pair']}: {summary['status']} in {summary['duration_s']:.1f}s: "
               f"{counted(counts['deals_read'], 'deal')} and "
               f"{counted(counts['requirements_read'], 'requirement')} read")
    parts = count_words(counts)
    plan = summary.get("plan")
    if plan is not None:  # a dry run did nothing: its plan says what a real run would do
        click.echo(f"  {counted(len(plan), 'planned action')}" if plan else "  nothing to do")
    else:
        click.echo("  " + (", ".join(parts) if parts else "nothing to do"))
    calls = ", ".join(f"{name} {n}" for name, n in summary["api_calls"].items())
    click.echo(f"  API calls: {calls}")
    for line in plan or []:
        click.echo(f"  {line}" if line.startswith(("STOP", "phase two")) else f"  would {line}")
    for line in summary.get("manual_updates", []) if "plan" not in summary else []:
        click.echo(f"  manual: {line}")
    for error in summary.get("errors", []):
        say_err(f"  ! {error}", logging.WARNING)


#: a run's counts in words: key, then the words for one and for several
COUNT_WORDS = (
    ("created", "requirement created", "requirements created"),
    ("relinked", "requirement re-linked by marker", "requirements re-linked by marker"),
    ("linked", "deal linked to the requirement it names",
     "deals linked to the requirements they name"),
    ("joined", "deal joined to the requirement of the same request",
     "deals joined to the requirement of the same request"),
    ("updated_tracker", "requirement updated", "requirements updated"),
    ("updated_crm", "deal updated", "deals updated"),
    ("notes", "deal note added", "deal notes added"),
    ("conflicts", "conflict settled by policy", "conflicts settled by policy"),
    ("conflicts_queued", "conflict waiting", "conflicts waiting"),
    ("manual_updates", "change waiting for a manual update in the tracker",
     "changes waiting for a manual update in the tracker"),
    ("failures", "item failed (queued for retry)", "items failed (queued for retry)"),
    ("orphaned", "link orphaned", "links orphaned"))


def count_words(counts: dict[str, int]) -> list[str]:
    """What a run did, in words, leaving out what it did not do."""
    return [counted(counts[key], one, several) for key, one, several in COUNT_WORDS
            if counts.get(key)]


def sync_options(func: Callable) -> Callable:
    for option in reversed([
        click.option("--pair", "pair", metavar="NAME", help="Only this pair (default: all)."),
        json_option,
        click.option("--force", is_flag=True,
                     help="Go past the safety guards (mass change, a side returning nothing)."),
    ]):
        func = option(func)
    return func


def _sync(state: Context, pair: str | None, as_json: bool, options: Options) -> None:
    options.notify = notify
    options.progress = progress_printer(every=state.progress_every)  # stderr: --json is safe
    results, code = run_pairs(state, pair, options)
    if as_json:
        emit_json({"pairs": results, "exit_code": code})
    else:
        for summary in results:
            print_summary(summary)
    if code:
        sys.exit(code)


@cli.command(
             epilog=example("dealsync sync --dry-run            # the plan; nothing is written",
                            "dealsync sync --pair acme-rd --json"))
@sync_options
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing anywhere.")
@click.option("--scan-markers", is_flag=True,
              help="Before creating, look for requirements earlier runs created (use once after "
                   "restoring the state store from a backup).")
@pass_ctx
def sync(state: Context, pair: str | None, as_json: bool, force: bool, dry_run: bool,
         scan_markers: bool) -> None:
    """Run every pair once (or one with --pair).

    Reads what changed on both sides since the last run, links or creates the requirements
    new requests ask for, mirrors status and priority, refreshes the deal context on each
    requirement, and retries queued items that are due.
    """
    _sync(state, pair, as_json, Options(dry_run=dry_run, force=force,
                                        scan_markers=scan_markers))


@cli.command(epilog=example("dealsync retry --pair acme-rd"))
@sync_options
@pass_ctx
def retry(state: Context, pair: str | None, as_json: bool, force: bool) -> None:
    """Run now, retrying every queued failed item, due or not."""
    _sync(state, pair, as_json, Options(force=force, retry_all=True))


def parse_interval(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{text!r}: use a number with s, m or h, e.g. 5m") from None
    # Each run opens with a few fixed reads (PingCode: 7 set-up calls of its 200 a minute);
    # below 5 s those alone would take a large share of an instance's limits.
    if value < 5:
        raise click.BadParameter(f"{text!r}: run at most every 5 seconds, to leave the "
                                 "rate limits to the work")
    return value


@cli.command(
             epilog=example("dealsync run --every 5m",
                            "dealsync run --every 5m --workers 4   # PostgreSQL state store"))
@click.option("--every", default="5m", show_default=True,
              help="How often each pair runs: 30s, 5m, 1h.")
@click.option("--pair", metavar="NAME", help="Only this pair (default: all).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes sharing the pairs (needs the PostgreSQL state store).")
@click.pass_context
def run(ctx: click.Context, every: str, pair: str | None, workers: int) -> None:
    """The scheduled job: each pair once every interval, the most overdue first. SIGTERM or
    Ctrl-C stops it after the current runs.

    With the PostgreSQL state store, any number of workers share the pairs with no
    coordinator: `--workers N` here, or N `dealsync run` processes or pods. A pair's lock
    keeps two workers off one pair, and the instances' rate limits are shared among all.
    """
    state: Context = ctx.obj
    interval = parse_interval(every)
    names = [p.name for p in state.config.select(pair)]
    if workers > 1:
        if not state.config.state_url:
            raise click.UsageError("--workers needs the PostgreSQL state store ([state] "
                                   "state_url or DEALSYNC_STATE_URL); with SQLite run one worker")
        root = ctx.find_root().params
        command = worker_command(str(config_path(state.config_ref)), root["verbose"],
                                 root["debug"], every, pair)
        at = command.index("run")  # the workers log as this process does
        every = state.progress_every
        command[at:at] = ["--log-format", root["log_format"],
                          "--progress-every", f"{every.seconds:g}s,{every.items}"]
        Supervisor(command, workers).run()
        say_err("stopped")
        return
    stopping = {"now": False}

    def stop(signum: int, _frame: Any) -> None:
        stopping["now"] = True
        log.warning("signal %s: stopping after the current run", signum)

    progress = progress_printer(every=state.progress_every)

    def run_named(name: str) -> None:
        summary = run_one(state, state.config.pairs[name],
                          Options(notify=notify, progress=progress))
        summary.pop("_exit", None)
        print_summary(summary)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    work(lambda: state.store, names, timedelta(seconds=interval), run_named,
         lambda: stopping["now"], on_error=lambda exc: worker_error(state, exc, interval))
    say_err("stopped")


def worker_error(state: Context, exc: Exception, interval: float) -> float:
    """A worker outlives its PostgreSQL store going away: it says so, and opens the store
    again after a while (seconds returned). Anything else ends it as before."""
    if not state.config.state_url or not isinstance(exc, (DealsyncError, *store_errors())):
        raise exc
    report_error(exc if isinstance(exc, DealsyncError) else DealsyncError(
        f"state store {describe_target(state.config.state_target)}: {exc}",
        "the worker opens it again shortly; runs resume where they stopped"), state.debug)
    state.drop_store()
    return min(interval, 30.0)


# -- the demo ----------------------------------------------------------------------------------
@cli.command(
             epilog=example("dealsync demo --crm salesforce --tracker worktile",
                            "dealsync demo --keep-running --dir ./dealsync-demo"))
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the demo's config and state (default: a new temporary folder).")
@click.option("--keep-running", is_flag=True,
              help="Leave the emulators up afterwards, to run dealsync against them yourself.")
@click.option("--crm", type=click.Choice(["hubspot", "salesforce"]), default="hubspot",
              show_default=True, help="The CRM whose emulator the story runs against.")
@click.option("--tracker", type=click.Choice(["pingcode", "worktile"]), default="pingcode",
              show_default=True, help="The tracker whose emulator the story runs against.")
def demo(folder: Path | None, keep_running: bool, crm: str, tracker: str) -> None:
    """A full sync against local CRM and tracker emulators, with seeded data.

    Starts a HubSpot (or Salesforce) emulator and a PingCode (or Worktile) emulator on free
    loopback ports, seeds a believable company, writes a real dealsync.toml, syncs over HTTP
    with the shipped mapping for the two, plays a working day on both sides, syncs again to
    show what moved where, and prints the pipeline report. With Worktile, whose API cannot
    change a task after creating it, the deals' changes are listed as manual updates; the demo
    shows the list, the PM making the changes, and a last sync taking them off. Needs no
    account, no secret and no network.
    """
    from .demo import PAIR_NAME, run_demo

    # the demo narrates each sync itself: the live display on a terminal, no log lines
    progress = progress_printer(pair=PAIR_NAME) if sys.stderr.isatty() and not json_logs() \
        else None
    run_demo(folder, keep_running, click.echo, progress, crm=crm, tracker=tracker)


# -- setting up --------------------------------------------------------------------------------
class InitCommand(click.Command):
    """``init``, whose help ends with every installed connector's settings (read when the help
    is shown, from what each connector declares) before the examples."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from .wizard import settings_listing

        try:
            listing = {side: settings_listing(side) for side in ("crm", "tracker")}
        except PluginError as exc:
            listing = {"plugins": [f"(cannot list them: {exc.message})"]}
        width = max((formatter.width or 80) - formatter.current_indent - 4, 60)
        for side, lines in listing.items():
            formatter.write_paragraph()
            heading = {"crm": "CRM settings (--crm-setting KEY=VALUE; * required, [default]):",
                       "tracker": "Tracker settings (--tracker-setting KEY=VALUE):"}
            wrapped = [heading.get(side, "Settings:")]
            for line in lines:
                indent = " " * (len(line) - len(line.lstrip()) + 2)
                wrapped += textwrap.wrap(line, width, subsequent_indent=indent,
                                         break_on_hyphens=False) or [""]
            with formatter.indentation():
                formatter.write_text("\b\n" + "\n".join(wrapped))
        super().format_epilog(ctx, formatter)


@cli.command(cls=InitCommand, epilog=example(
    "dealsync init",
    "dealsync init --no-input --crm hubspot --crm-setting portal_id=1234567 \\",
    "    --tracker pingcode --tracker-setting project=SCR"))
@click.option("--crm", metavar="TYPE", help="CRM connector type (hubspot, salesforce, ...).")
@click.option("--crm-name", metavar="NAME",
              help="The [crm.NAME] instance, under which its secrets are stored (default: the "
                   "type).")
@click.option("--crm-setting", "crm_settings", multiple=True, metavar="KEY=VALUE",
              help="A setting of the CRM instance; repeat for more. Listed below per type.")
@click.option("--tracker", metavar="TYPE", help="Tracker connector type (pingcode, worktile, ...).")
@click.option("--tracker-name", metavar="NAME",
              help="The [tracker.NAME] instance (default: the type).")
@click.option("--tracker-setting", "tracker_settings", multiple=True, metavar="KEY=VALUE",
              help="A setting of the tracker instance; repeat for more. Listed below per type.")
@click.option("--mapping", metavar="NAME|FILE",
              help="A shipped mapping or a path (default: the shipped CRM-TRACKER one).")
@click.option("--pair", "pair_name", metavar="NAME",
              help="The [pair.NAME] (default: CRM_NAME-TRACKER_NAME).")
@click.option("--no-input", is_flag=True,
              help="Ask nothing (also without a terminal): defaults fill the rest, and a "
                   "missing required value is an error naming its option.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_context
def init(ctx: click.Context, crm: str | None, crm_name: str | None,
         crm_settings: tuple[str, ...], tracker: str | None, tracker_name: str | None,
         tracker_settings: tuple[str, ...], mapping: str | None, pair_name: str | None,
         no_input: bool, force: bool) -> None:
    """Write a first dealsync.toml where dealsync looks for it (or to -c FILE).

    On a terminal it asks for the CRM and its settings, the tracker and its settings, the
    mapping and the pair's name, showing each vendor's default; every answer can be given as
    an option instead. The file is checked as `dealsync check` loads it, written readable by
    you only (0600), and the next steps are printed: the secrets to store, `dealsync check
    --fix`, `dealsync sync --dry-run`.
    """
    config_flag = ctx.find_root().params.get("config")
    path = config_path(config_flag)
    from . import wizard

    if path.exists() and not force:
        raise wizard.FileExists(f"{path} exists already", "pass --force to overwrite it, or "
                                "-c FILE to write another file")
    answers = wizard.Answers(
        crm=crm, crm_name=crm_name,
        crm_settings=wizard.parse_settings(crm_settings, "--crm-setting"),
        tracker=tracker, tracker_name=tracker_name,
        tracker_settings=wizard.parse_settings(tracker_settings, "--tracker-setting"),
        mapping=mapping, pair=pair_name)
    asker = wizard.Wizard(answers, interactive=not no_input and wizard.terminal())
    crm_instance, tracker_instance, mapping_ref, pair = asker.run(path.parent)
    text = wizard.render(crm_instance, tracker_instance, mapping_ref, pair)
    wizard.validate(text, path)
    write_private(path, text)
    flag = f" -c {path}" if config_flag else ""
    click.echo(f"\nwrote {path}\n\nNext steps:")
    secrets = wizard.secret_steps([crm_instance, tracker_instance], flag)
    if secrets:
        click.echo("store the secrets (each is prompted for, and kept in the system keyring):")
    for line in secrets:
        click.echo(f"  {line}")
    click.echo("check the mapping against both systems (--fix creates missing CRM fields), and "
               "see\nwhat a first run would do, writing nothing:")
    click.echo(f"  dealsync{flag} check --fix\n  dealsync{flag} sync --dry-run")


@cli.command(epilog=example("dealsync check --fix"))
@click.option("--pair", metavar="NAME", help="Only this pair.")
@click.option("--fix", is_flag=True, help="Create the missing CRM deal properties.")
@pass_ctx
def check(state: Context, pair: str | None, fix: bool) -> None:
    """Check each pair against the live systems.

    Every value table must cover the tracker's live states and priorities, every CRM value
    must be an option of its deal property, and the deal properties dealsync reads and writes
    must exist (--fix creates them).
    """
    problems: list[str] = []
    for pair_config in state.config.select(pair):
        with pair_config.connected() as built:
            problems += check_pair(pair_config, built, fix, click.echo)
    if problems:
        raise ConfigError(problems, "edit the mapping's value tables, or run `dealsync check "
                          "--fix` to create missing CRM properties")
    click.echo("all pairs check out")


# -- inspecting state ---------------------------------------------------------------------------
@cli.command(epilog=example("dealsync status || notify-oncall \"dealsync needs a look\""))
@json_option
@pass_ctx
def status(state: Context, as_json: bool) -> None:
    """The last run of each pair, and what waits: failures, conflicts, orphaned links.

    Exits with the last run's exit code when a pair's last run was stopped (a guard, an
    outage, rejected credentials), or 7 when items wait for a retry, so a monitor can alert
    on `dealsync status` alone.

    """
    store, doc = state.store, []
    for name in state.config.pairs:
        links = store.links(name)
        runs = [r for r in store.runs(name, 20) if r["status"] != "dry-run"]
        doc.append({
            "pair": name, "last_run": runs[0] if runs else None,
            "next_run": next_run(store, name,
                                 parse_ts(runs[0]["started_at"]) if runs else None),
            "links": len(links), "orphaned_links": [l.__dict__ for l in links if l.orphaned],
            "failures": store.failures(name),
            "open_conflicts": len(store.conflicts(name, status="open")),
            "manual_updates": store.manual_updates(name),
            "cursors": {side: (c.isoformat() if (c := store.cursor(name, side)) else None)
                        for side in ("crm", "tracker")}})
    code = max((status_code(entry) for entry in doc), default=errors.EXIT_OK)
    if as_json:
        emit_json({"pairs": doc, "exit_code": code})
    else:
        for entry in doc:
            print_status(entry)
    if code:
        sys.exit(code)


def status_code(entry: dict[str, Any]) -> int:
    """A stopped last run's own exit code; 7 while failed items wait; else 0."""
    last = entry["last_run"]
    if last and last["status"] in ("stopped", "error"):
        return (last["summary"].get("stop") or {}).get("exit_code", errors.EXIT_INTERNAL)
    return errors.EXIT_PARTIAL if entry["failures"] else errors.EXIT_OK


def print_status(entry: dict[str, Any]) -> None:
    last = entry["last_run"]
    click.echo(f"{entry['pair']}: {counted(entry['links'], 'link')}, "
               f"{counted(len(entry['failures']), 'queued failure')}, "
               f"{counted(entry['open_conflicts'], 'open conflict')}")
    if last:
        summary = last["summary"]
        when = last["finished_at"][:19].replace("T", " ")
        click.echo(f"  last run {last['status']} at {when} UTC after "
                   f"{summary['duration_s']:.1f}s: "
                   + (", ".join(count_words(summary["counts"])) or "nothing to do"))
        stop = summary.get("stop")
        if stop:
            click.echo(f"  why it stopped: {stop['reason']}")
            if stop.get("hint"):
                click.echo(f"  what to do: {stop['hint']}")
    else:
        click.echo("  never run: try `dealsync sync --dry-run`")
    scheduled = entry["next_run"]
    if scheduled:
        every = duration_words(scheduled["every_s"])
        click.echo(f"  next run at {scheduled['at'][:19].replace('T', ' ')} UTC "
                   f"(`dealsync run --every {every}` is running)")
    else:
        click.echo("  not scheduled: no `dealsync run --every` has looked at this pair lately")
    print_waiting(entry)


def duration_words(seconds: int) -> str:
    """``300`` -> ``5m``, as ``--every`` takes it."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def print_waiting(entry: dict[str, Any]) -> None:
    """The failures, manual updates and orphaned links of a pair, for `status`."""
    for failure in entry["failures"][:10]:
        when = failure["next_retry_at"] or "on `dealsync retry`"
        click.echo(f"  failed {failure['kind']} deal {failure['deal_id'] or '-'} requirement "
                   f"{failure['req_id'] or '-'} ({failure['attempts']}x, next {when}): "
                   f"{failure['error']}")
    if len(entry["failures"]) > 10:
        click.echo(f"  ... and {len(entry['failures']) - 10} more (dealsync status --json)")
    for item in entry["manual_updates"]:
        click.echo(f"  {manual_update(item)}")
    for orphan in entry["orphaned_links"]:
        click.echo(f"  orphaned: deal {orphan['deal_id']} <-> {orphan['req_key']}: "
                   f"{orphan['orphaned']}")


@cli.command(epilog=example("dealsync links --pair acme-rd | grep SCR-12"))
@click.option("--pair", metavar="NAME", help="Only this pair.")
@json_option
@pass_ctx
def links(state: Context, pair: str | None, as_json: bool) -> None:
    """Every link: deal, requirement, how it was made, and whether it is orphaned."""
    rows = [link.__dict__ for p in state.config.select(pair) for link in state.store.links(p.name)]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no links yet")
    for row in rows:
        flag = f"  ORPHANED: {row['orphaned']}" if row["orphaned"] else ""
        click.echo(f"{row['pair']}  deal {row['deal_id']:<14} {row['req_key']:<10} "
                   f"{row['origin']:<8} {row['req_title'] or ''}{flag}")


@cli.group(cls=FunnelGroup, invoke_without_command=True,
           epilog=example("dealsync conflicts --all",
                          "dealsync conflicts resolve 3 --take tracker"))
@click.option("--pair", metavar="NAME", help="Only this pair.")
@click.option("--all", "show_all", is_flag=True, help="Include conflicts settled by policy.")
@json_option
@click.pass_context
def conflicts(ctx: click.Context, pair: str | None, show_all: bool, as_json: bool) -> None:
    """List conflicts (open ones by default); `conflicts resolve` settles one.

    Every conflict is kept with both sides' values, including those a policy settled.
    """
    if ctx.invoked_subcommand:
        return
    state: Context = ctx.obj
    rows = [c for p in state.config.select(pair)
            for c in state.store.conflicts(p.name, None if show_all else "open")]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no open conflicts" if not show_all else "no conflicts")
    for c in rows:
        click.echo(f"#{c['id']} {c['pair']} {conflict_words(c, by_deal=True)} [{c['status']}]")


@conflicts.command("resolve",
                   epilog=example("dealsync conflicts resolve 3 --take crm",
                                  "dealsync conflicts resolve 3 --value 高"))
@click.argument("conflict_id", type=int)
@click.option("--take", type=click.Choice(["crm", "tracker"]), help="Keep one side's value.")
@click.option("--value", help="Set this value (as the tracker names it) on both sides.")
@pass_ctx
def conflicts_resolve(state: Context, conflict_id: int, take: str | None,
                      value: str | None) -> None:
    """Settle an open conflict; the next sync applies the choice to both sides."""
    if (take is None) == (value is None):
        raise click.UsageError("give exactly one of --take crm|tracker or --value VALUE")
    row = next((c for c in state.store.conflicts(status="open") if c["id"] == conflict_id), None)
    if row is None:
        raise click.BadParameter(f"no open conflict #{conflict_id}; list them with "
                                 "`dealsync conflicts`", param_hint="CONFLICT_ID")
    mapping = state.config.pairs[row["pair"]].mapping
    fm = next(f for f in mapping.fields if f.name == row["field"])
    if take == "tracker":
        chosen = row["tracker_value"]
    elif take == "crm":
        distinct = set(row["crm_values"])
        if len(distinct) != 1:
            raise DealsyncError(f"the deals disagree among themselves ({listing(distinct)})",
                                "choose one with --value")
        chosen = fm.to_tracker(distinct.pop())
    else:
        allowed = list(fm.values) if fm.values else None
        if allowed is not None and value not in allowed:
            raise DealsyncError(f"{value} is not a tracker value of {fm.name}",
                                f"use one of: {', '.join(allowed)}")
        chosen = value
    state.store.resolve_conflict(conflict_id, chosen)
    click.echo(f"conflict #{conflict_id} resolved: {fm.name} = {shown(chosen)} on the next "
               "sync")


@cli.command(epilog=example("dealsync report --format html --out pipeline.html"))
@click.option("--pair", metavar="NAME", help="Only this pair.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "html"]),
              default="table", show_default=True,
              help="html: one self-contained page with a chart and a sortable table.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the report to FILE instead of stdout.")
@pass_ctx
def report(state: Context, pair: str | None, fmt: str, out: Path | None) -> None:
    """Requirements ranked by the open pipeline asking for them (from the last sync).
    """
    pairs = state.config.select(pair)
    rows = pipeline_report(state.store, [p.name for p in pairs],
                           {p.name: p.mapping for p in pairs})
    if fmt == "json" and out is None:
        emit_json(rows)
        return
    text = report_text(rows, fmt, [p.name for p in pairs])
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"cannot write {out}: {exc.strerror}",
                                 param_hint="--out") from None
    click.echo(f"report written to {out} ({counted(len(rows), 'requirement')})", err=True)


def report_text(rows: list[dict[str, Any]], fmt: str, pairs: list[str]) -> str:
    """The report in ``fmt``, ending with a newline."""
    if fmt == "html":
        return render_html(rows, pairs)
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False, default=str) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["key"])
        writer.writeheader()
        writer.writerows({**r, "companies": "; ".join(r["companies"])} for r in rows)
        return out.getvalue()
    return format_report(rows) + "\n"


# -- plugins and secrets ------------------------------------------------------------------------
@cli.command(epilog=example("dealsync plugins --json"))
@json_option
def plugins(as_json: bool) -> None:
    """Installed plugins (built-ins included), their versions, hooks and connectors."""
    rows = describe_plugins()
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        kind = "built-in" if row["builtin"] else "plugin"
        click.echo(f"{row['name']} {row['version']} ({kind})")
        click.echo(f"  hooks: {', '.join(row['hooks']) or '-'}")
        if row["connectors"]:
            click.echo(f"  connectors: {', '.join(row['connectors'])}")


@cli.group(cls=FunnelGroup, epilog=example("dealsync auth set acme token", "dealsync auth status"))
def auth() -> None:
    """Store, check and delete secrets (system keyring, or DEALSYNC_<INSTANCE>_<NAME>)."""


@auth.command("set", epilog=example("dealsync auth set acme token"))
@click.argument("instance")
@click.argument("name")
@pass_ctx
def auth_set(state: Context, instance: str, name: str) -> None:
    """Store secret NAME of INSTANCE in the keyring; the value is prompted for, never an argument.

    NAME must be a secret the instance's connector asks for (`dealsync auth status` lists
    them). Without a usable keyring it says at once which environment variable to set.
    """
    check_secret_name(state, instance, name)
    if not keyring_usable():
        raise no_keyring(instance, name)
    value = click.prompt(f"{name} for {instance}", hide_input=True, confirmation_prompt=True)
    set_secret(instance, name, value)
    click.echo(f"stored {name} for {instance} in the system keyring")


def check_secret_name(state: Context, instance: str, name: str) -> None:
    """Refuse a secret no connector would read (a typo would be stored and never used). Without
    a configuration file there is nothing to check against."""
    try:
        config = state.config
    except ConfigError:
        return
    known = {(inst.name, spec.name) for inst in config.instances.values()
             for spec in inst.cls.secrets} | {("state", "password")}
    if (instance, name) in known:
        return
    names = sorted(n for i, n in known if i == instance)
    instances = sorted({inst.name for inst in config.instances.values()} | {"state"})
    if instance not in instances:
        raise click.BadParameter(f"no instance {instance!r} in {config.path} (instances: "
                                 f"{', '.join(instances)})", param_hint="INSTANCE")
    raise click.BadParameter(f"instance {instance!r} has no secret {name!r}; it takes "
                             f"{', '.join(names) or 'none'}", param_hint="NAME")


@auth.command("delete", epilog=example("dealsync auth delete acme token"))
@click.argument("instance")
@click.argument("name")
def auth_delete(instance: str, name: str) -> None:
    """Remove secret NAME of INSTANCE from the keyring."""
    removed = delete_secret(instance, name)
    click.echo(f"deleted {name} for {instance}" if removed else
               f"{name} for {instance} was not in the keyring")


@auth.command("status", epilog=example("dealsync auth status --json"))
@json_option
@pass_ctx
def auth_status(state: Context, as_json: bool) -> None:
    """Where each configured secret comes from (keyring, environment, missing); never its value."""
    rows = [{"instance": inst.name, "side": inst.side, "secret": spec.name,
             "required": spec.required, "source": secret_source(inst.name, spec.name)}
            for inst in state.config.instances.values() for spec in inst.cls.secrets]
    if state.config.state_url:  # optional: libpq may find it in ~/.pgpass or use a certificate
        rows.append({"instance": "state", "side": "state", "secret": "password",
                     "required": False, "source": secret_source("state", "password")})
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no configured instance needs a secret")
    for row in rows:
        source = row["source"]
        if source == "missing" and not row["required"]:
            source = "not set (optional)"
        click.echo(f"{row['side']}.{row['instance']} {row['secret']}: {source}")
    if any(r["source"] == "missing" and r["required"] for r in rows):
        sys.exit(errors.EXIT_AUTH)


# -- the state store ----------------------------------------------------------------------------
@cli.group("state", cls=FunnelGroup,
           epilog=example("dealsync state export postgresql://dealsync@db.internal/dealsync",
                          "dealsync state import ~/.local/share/dealsync/state.db",
                          "dealsync state check"))
def state_group() -> None:
    """Move the state store between SQLite and PostgreSQL, and check it.
    """


def open_named(target: str, must_exist: bool) -> StateStore:
    """A store named on the command line: a postgresql:// URL (its password is the secret
    `state password`, as for the configured one) or a SQLite file."""
    from .state.postgres import url_problems

    if is_postgres_url(target):
        problems = url_problems(target)
        if problems:
            raise click.BadParameter("; ".join(problems), param_hint="the store")
    elif must_exist and not Path(target).expanduser().is_file():
        raise click.BadParameter(f"no SQLite file at {target}", param_hint="the store")
    return open_store(target if is_postgres_url(target) else Path(target).expanduser())


@state_group.command("export", epilog=example(
    "dealsync state export postgresql://dealsync@db.internal/dealsync"))
@click.argument("target", metavar="TARGET")
@click.option("--replace", is_flag=True, help="Overwrite TARGET if it holds a store already.")
@json_option
@pass_ctx
def state_export(state: Context, target: str, replace: bool, as_json: bool) -> None:
    """Copy the configured store to TARGET, a SQLite file or a postgresql:// URL.

    The copy is read in one consistent snapshot (workers may keep running), written in one
    transaction, then compared with the source row for row.
    """
    dest = open_named(target, must_exist=False)
    transfer(state.store, dest, replace=replace, as_json=as_json, opened=dest)


@state_group.command("import", epilog=example(
    "dealsync state import ~/.local/share/dealsync/state.db --replace"))
@click.argument("source", metavar="SOURCE")
@click.option("--replace", is_flag=True, help="Overwrite the configured store if it is not empty.")
@json_option
@pass_ctx
def state_import(state: Context, source: str, replace: bool, as_json: bool) -> None:
    """Copy SOURCE, a SQLite file or a postgresql:// URL, into the configured store.

    Every pair's lock is held while the store is written, so stop the workers first (a busy
    pair exits with code 4); the result is compared with the source row for row.
    """
    origin = open_named(source, must_exist=True)
    transfer(origin, state.store, replace=replace, as_json=as_json, opened=origin)


def transfer(source: StateStore, dest: StateStore, *, replace: bool, as_json: bool,
             opened: StateStore) -> None:
    """Copy, report table by table, and fail unless every row arrived; ``opened`` (the store
    named on the command line) is closed at the end."""
    from .state.transfer import copy_store, require_match

    try:
        if source.where == dest.where:
            raise click.BadParameter("the source and the destination are the same store")
        copies = copy_store(source, dest, replace=replace)
        doc = {"from": source.where, "to": dest.where, "matches": all(c.matches for c in copies),
               "tables": [{"table": c.table, "rows": c.rows, "missing": c.missing,
                           "unexpected": c.extra} for c in copies]}
        if as_json:
            emit_json(doc)
        else:
            click.echo(f"copied {source.where} -> {dest.where}")
            for c in copies:
                verdict = "every row matches" if c.matches else \
                    f"{c.missing} missing, {c.extra} unexpected"
                click.echo(f"  {c.table:<15} {c.rows:>8} {plural(c.rows, 'row'):<4}  {verdict}")
        require_match(copies, source, dest)
    finally:
        opened.close()


@state_group.command("check",
                     epilog=example("dealsync state check",
                                    "dealsync state check ./backup/state.db"))
@click.argument("target", metavar="[STORE]", required=False)
@json_option
@pass_ctx
def state_check(state: Context, target: str | None, as_json: bool) -> None:
    """Verify the configured store (or STORE, a SQLite file or a postgresql:// URL).

    The database's own check (SQLite's integrity_check; PostgreSQL reads every table, and
    checks every index where the amcheck extension is installed), the schema against the
    migrations, and the rules the engine keeps between tables. Exits 2 on any problem.
    """
    from .state.transfer import check_store

    store = open_named(target, must_exist=True) if target else state.store
    try:
        report = check_store(store)
        where = store.where
    finally:
        if target:
            store.close()
    if as_json:
        emit_json({"store": where, "ok": not report.problems, "problems": report.problems,
                   "notes": report.notes, "rows": report.rows})
    else:
        click.echo(f"state store {where}: " + ("ok" if not report.problems else
                                               counted(len(report.problems), "problem")))
        for problem in report.problems:
            click.echo(f"  ! {problem}")
        for note in report.notes:
            click.echo(f"  {note}")
        if report.rows:
            click.echo("  rows: " + ", ".join(f"{t} {n}" for t, n in report.rows.items()))
    if report.problems:
        sys.exit(errors.EXIT_USAGE)


# -- plugin commands ----------------------------------------------------------------------------
_PLUGIN_ERROR: PluginError | None = None
try:
    call_strict("register_commands", cli=cli)
except PluginError as exc:  # reported when a command runs, so --help still works
    _PLUGIN_ERROR = exc


def main() -> None:
    cli(prog_name="dealsync")


if __name__ == "__main__":
    main()
