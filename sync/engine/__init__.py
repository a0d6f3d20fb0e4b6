"""The sync engine: one run of one pair, as a plan of typed actions guarded as a whole and
applied in steps that each stick (see ``docs/engine.md``).

- ``run``: the orchestration of a run (``run_pair``, ``Pair``, ``Options``);
- ``read``: every read, into a view;
- ``view``: what one run knows, and the pure questions asked of it;
- ``grammar``: what a request on a deal asks for;
- ``planners``: view in, actions out, no I/O;
- ``merge``: the three-way merge of one field over a requirement and its deals;
- ``actions``: the frozen action types, each able to describe itself;
- ``guards``: the safety guards that judge a whole plan;
- ``apply``: running actions in steps that each stick.
"""

from .run import DEFAULT_MAX_CREATES, Options, Pair, Run, run_pair

__all__ = ["DEFAULT_MAX_CREATES", "Options", "Pair", "Run", "run_pair"]
