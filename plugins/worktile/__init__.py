"""Worktile: a local emulator of the team Open API (``python -m plugins.worktile.emulator``)."""
