"""The error types dealsync raises, and the exit code each one maps to.

Every error a user can cause or fix is a ``DealsyncError``: it carries a message that says what
went wrong and a ``hint`` that says what to do. The CLI's single error funnel prints both and exits
with the class's ``exit_code``; anything else is a bug and exits 1 with a traceback hint.
"""

from __future__ import annotations

# Exit codes, documented in `dealsync --help` and the README.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2  # bad command line, config or mapping (click also uses 2 for usage errors)
EXIT_AUTH = 3  # missing secret, rejected credentials, missing scope
EXIT_LOCKED = 4  # another run of the same pair holds its lock
EXIT_SAFETY = 5  # a safety guard stopped the run; --force overrides after checking
EXIT_REMOTE = 6  # a service failed or refused (daily limit, outage) after retries
EXIT_PARTIAL = 7  # the run finished but some items failed and wait in the retry queue
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it (128 + SIGINT)

EXIT_CODES_HELP = """\
Exit codes:
  0  success
  1  internal error (a bug: please report it with the traceback from --debug)
  2  bad command line, configuration or mapping file, or an unusable state store
  3  missing secret, rejected credentials or missing API scope
  4  another run of the same pair is in progress
  5  a safety guard stopped the run (nothing was written); re-run with --force once checked
  6  a service failed or refused after retries (outage, daily rate limit)
  7  the run finished but some items failed; they wait in the retry queue (dealsync retry)
130  interrupted (Ctrl-C); what was written stays written"""


class DealsyncError(Exception):
    """Base of every error that is the user's to fix or the environment's to recover from."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(DealsyncError):
    """One or more problems in dealsync.toml or a mapping file; ``problems`` lists all of them."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[str], hint: str | None = None):
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the configuration:"
        super().__init__(head + "".join(f"\n  - {p}" for p in self.problems), hint)


class SecretMissing(DealsyncError):
    exit_code = EXIT_AUTH


class AuthError(DealsyncError):
    """Credentials were rejected, or the token lacks a scope."""

    exit_code = EXIT_AUTH


class LockHeld(DealsyncError):
    exit_code = EXIT_LOCKED


class SafetyStop(DealsyncError):
    exit_code = EXIT_SAFETY


class RemoteError(DealsyncError):
    """A service failed in a way retries did not cure; ``status`` is the HTTP status if any."""

    exit_code = EXIT_REMOTE

    def __init__(self, message: str, hint: str | None = None, status: int | None = None,
                 code: str | None = None):
        super().__init__(message, hint)
        self.status = status
        self.code = code


class RateLimitExhausted(RemoteError):
    """A quota that will not free up within this run (HubSpot's DAILY policy, say)."""


class ItemError(DealsyncError):
    """A single record could not be read or written; the run goes on and queues it for retry."""

    exit_code = EXIT_PARTIAL

    def __init__(self, message: str, hint: str | None = None, retryable: bool = True):
        super().__init__(message, hint)
        self.retryable = retryable


class NotFound(ItemError):
    """The service says the record does not exist (never inferred from a failed fetch)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint, retryable=False)


class TransitionError(ItemError):
    """The tracker workflow has no path from the current state to the wanted one."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint, retryable=False)


class PluginError(DealsyncError):
    """A plugin raised while dealsync called one of its hooks; the message names the plugin."""

    exit_code = EXIT_INTERNAL


class AmbiguousWrite(ItemError):
    """A create or other non-idempotent write failed without a clear answer: it may or may not
    have happened. It is never re-sent blindly; the next run finds it by its marker instead."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint or "the next run looks the record up by its marker "
                         "before creating anything, so no duplicate is made", retryable=True)
