"""Guards: judge a whole plan before anything in it is written.

- ``max_creates``: a run that would create more requirements than this stops (a widened
  selection must not flood a product manager's tracker). The first run of a new pair says so.
- ``max_change_share``: a run that would change or orphan more than this share of the
  established links stops, once there are ``guard_min_links`` of them. A link is established
  once both sides agreed on every mirrored field (it has a base for each); new links, and
  links whose first sync a killed run left unfinished, do not count.

A guard that trips raises ``SafetyStop`` (exit code 5) naming the number and the way past it;
``--force`` goes past every guard; a dry run shows the plan with the stop instead of raising.
The third guard, a side that suddenly returns nothing, is a read (``read.probe_empty_sides``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SafetyStop
from .actions import Action, CreateRequirement, OrphanLink, UpdateDeal, UpdateRequirement
from .view import View


@dataclass(frozen=True)
class Limits:
    pair: str
    tracker: str
    max_creates: int
    max_change_share: float
    guard_min_links: int
    first_run: bool
    fields: tuple[str, ...]  # the mirrored fields: a link with a base for each is established


def judge(actions: list[Action], view: View, limits: Limits, *, existing_seq: int,
          force: bool, dry_run: bool) -> list[str]:
    """Raise ``SafetyStop`` if the plan trips a guard; in a dry run, return the reasons as
    warnings instead. ``existing_seq``: links up to this sequence number existed before the run."""
    if force:
        return []
    reasons = [r for r in (_creates(actions, limits),
                           _share(actions, view, limits, existing_seq)) if r]
    if not reasons or dry_run:
        return [f"{message}; a real run stops here without --force" for message, _ in reasons]
    message, hint = reasons[0]
    raise SafetyStop(message + "; nothing was written", hint)


def _creates(actions: list[Action], limits: Limits) -> tuple[str, str] | None:
    creates = sum(isinstance(a, CreateRequirement) for a in actions)
    if creates <= limits.max_creates:
        return None
    first = " (the first run of this pair)" if limits.first_run else ""
    return (f"this run{first} would create {creates} requirements in {limits.tracker!r}, more "
            f"than max_creates = {limits.max_creates}",
            f"look at them with `dealsync sync --dry-run --pair {limits.pair}`; if they are "
            f"wanted, run with --force, or raise max_creates in [pair.{limits.pair}]")


def _share(actions: list[Action], view: View, limits: Limits,
           existing_seq: int) -> tuple[str, str] | None:
    existing = [link for link in view.links if link.seq <= existing_seq and not link.orphaned
                and all((link.deal_id, link.req_id, name) in view.bases
                        for name in limits.fields)]
    if len(existing) < limits.guard_min_links or not existing:
        return None
    affected: set[tuple[str, str]] = set()
    changed_reqs = {a.req_id for a in actions if isinstance(a, UpdateRequirement) and a.fields}
    changed_deals = {a.deal_id for a in actions if isinstance(a, UpdateDeal) and a.bases}
    for a in actions:
        if isinstance(a, OrphanLink):
            affected.add((a.deal_id, a.req_id))
    for link in existing:
        if link.req_id in changed_reqs or link.deal_id in changed_deals:
            affected.add((link.deal_id, link.req_id))
    share = len(affected) / len(existing)
    if share <= limits.max_change_share:
        return None
    return (f"this run would change or orphan {len(affected)} of {len(existing)} links "
            f"({share:.0%}, limit max_change_share = {limits.max_change_share:.0%})",
            "look at `dealsync sync --dry-run`; if the changes are intended, run with --force")
