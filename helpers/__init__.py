"""Helpers for the hands-on Temporal course.

One module per concept: ``server`` (find/start/stop the dev server), ``runtime`` (client, in-kernel workers, UI
links), ``waits`` (bounded waits that say why a run did not finish), ``errors`` (the course's errors and hints,
importable from anywhere), ``kernel`` (``%%module`` and short error display in Jupyter), ``watchdog`` (stops an
``async def`` activity that never awaits), ``worker`` (workers, scripts and throwaway servers in their own
processes, for crash demos), ``history`` and ``plots`` (what a run did), ``ledger`` (what really happened in the
outside world), ``sqlite_world`` (a service whose state is a SQLite file every process shares), ``replay``
(replaying histories), ``widgets`` (with their text fallback), ``environment``, ``checks`` (exercise verdicts),
``contract`` (the notebook contract), ``build`` (learner notebooks from solutions), the package ``grading`` (the
instructor's gradebook; ``grade`` is its command). Notebook 04's: ``shop_world`` (a shop and a travel agency in
SQLite, with injected failures), ``saga_lab`` (saga runs, their timeline, the failure matrix), ``activity_probe``
(runs one activity as a compensation, for checks). Notebook 03's: ``payments`` (a payment provider in SQLite with
idempotency keys, a card gateway that fails by card), ``backup`` (a storage service that logs every chunk),
``failures`` (what a workflow receives from a failed activity, in one line), ``timeouts`` (the four timeouts drawn),
``retries`` (backoff formula, real attempts plotted, explorer), ``heartbeats`` (progress read from the server, a
resume drawn), ``activity_harness`` (workflows that drive a learner's activity, for checks). Notebook 05's:
``throughput`` (workflows per second against in flight, slots and worker processes, with the CPU of each part),
``worklog`` (which worker process ran which attempt, a crash included), ``task_queues`` (a queue's backlog and
pollers, waited for), ``history_sizes`` (event counts against the history limits, continue-as-new chains). Notebook
06's: ``mailroom`` (messages sent to people and banks, requests waiting at an outside agency, in SQLite),
``time_skipping`` (the time-skipping test server inside a kernel, quiet, stopped with it), ``approvals`` (an
approval's timeline drawn from its history, Approve / Reject buttons). Notebook 07's: ``billing_world`` (a card
gateway, a mailer and accounts in SQLite), ``pytest_runs`` (a learner's test module run by real pytest from a cell,
against other versions of the code; its plugin ``pytest_plugin``), ``health`` (the SDK's metrics in-process, the
four health signals, a live dashboard, Prometheus), ``operations`` (search attributes, finding runs, why one is
stuck, reset, the ``temporal`` CLI).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
