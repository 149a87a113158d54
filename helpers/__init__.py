"""Helpers for the hands-on Temporal course.

One module per concept: ``server`` (find/start/stop the dev server), ``runtime`` (client, workers and runs
inside a notebook kernel), ``history`` and ``plots`` (what a run did), ``checks`` (exercise verdicts),
``build`` (learner notebooks from solutions) and ``grade`` (the instructor's gradebook).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
