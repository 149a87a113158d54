"""Checks for notebook 02 (determinism): a deterministic workflow, a safe patch, a replay check.

Every check runs the learner's code for real: workflows on a temporary worker (sandbox on), histories replayed
with the SDK's ``Replayer``.
"""

from __future__ import annotations

import inspect
import re
import uuid
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

from temporalio.api.enums.v1 import EventType

from helpers import history, replay, runtime
from helpers.checks import NotDone, Wrong, exercise, worker_for

# --------------------------------------------------------------------------- 02.1

SANDBOX_FIXES = {
    "datetime": "workflow.now() instead of datetime.now()",
    "random": "workflow.random() instead of the random module",
    "uuid": "workflow.uuid4() instead of uuid.uuid4()",
    "time.": "workflow.now() or workflow.time() instead of the time module",
}
_CANNOT_ACCESS = re.compile(r"Cannot access (\S+?)(?:\.__call__)? from inside a workflow")


def sandbox_hint(failure: str) -> str | None:
    """For a RestrictedWorkflowAccessError text: what was blocked and what to use instead."""
    m = _CANNOT_ACCESS.search(failure)
    if m is None:
        return None
    blocked = m[1]
    fix = next((f for key, f in SANDBOX_FIXES.items() if blocked.startswith(key)), None)
    text = f"the sandbox stopped your workflow when it called {blocked}()"
    return f"{text}: use {fix}." if fix else f"{text}: move that call into an activity."


async def _run(course: runtime.Course, cls: type, *args: Any, queue: str, prefix: str) -> Any:
    handle = await course.start_workflow(cls.run, *args, task_queue=queue, id_prefix=prefix, show=False)
    try:
        result = await course.result(handle, 10)
    except runtime.WorkflowTaskFailed as err:
        if (hint := sandbox_hint(err.failure)) is not None:
            raise Wrong(hint) from None
        raise
    return handle, result


def _first_task_time(hist: Any) -> datetime:
    """When the first workflow task started: what ``workflow.now()`` returns during that task."""
    started = next(e for e in hist.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
    return started.event_time.ToDatetime().replace(tzinfo=timezone.utc)


@exercise("02.1")
async def check_deterministic_ticket(tickets: ModuleType) -> str:
    course = runtime.current()
    agents = list(tickets.AGENTS)
    async with worker_for([tickets.OpenTicket], [tickets.notify_agent]) as queue:
        runs = [await _run(course, tickets.OpenTicket, s, queue=queue, prefix="check-02-1") for s in SUBJECTS]
    results = [r for _, r in runs]
    for result in results:
        if not isinstance(result, dict) or not {"ticket_id", "agent", "due"} <= set(result):
            raise Wrong(f"OpenTicket should return a dict with ticket_id, agent and due; it returned {result!r}.")
    ids = [str(r["ticket_id"]) for r in results]
    for ticket_id in ids:
        try:
            uuid.UUID(ticket_id)
        except ValueError:
            raise Wrong(f"ticket_id {ticket_id!r} is not a UUID: use str(workflow.uuid4()).") from None
    if len(set(ids)) != len(ids):
        raise Wrong(
            f"{len(ids)} tickets all got the id {ids[0]!r}. workflow.uuid4() gives every run a different id "
            "(and the same one again on replay); a fixed seed or a constant does not."
        )
    if bad := [r["agent"] for r in results if r["agent"] not in agents]:
        raise Wrong(f"agent {bad[0]!r} is not one of AGENTS: pick one with workflow.random().choice(AGENTS).")
    for handle, result in runs:
        hist = await handle.fetch_history()
        due = datetime.fromisoformat(str(result["due"]))
        if due.tzinfo is None:
            due = due.replace(tzinfo=timezone.utc)
        expected = _first_task_time(hist) + timedelta(hours=4)
        if abs((due - expected).total_seconds()) > 5:
            raise Wrong(
                "due should be 4 hours after the workflow's own clock (workflow.now() + timedelta(hours=4)); "
                f"it is {(due - expected + timedelta(hours=4)).total_seconds() / 3600:.2f} h after the run started."
            )
        outcome = await replay.replay(tickets.OpenTicket, hist)
        if not outcome.ok:
            raise Wrong(f"a finished run does not replay on your code: {outcome.reason}")
    return (
        f"{len(runs)} runs, {len(set(ids))} different ticket ids, due 4 h after workflow.now(), "
        "and every history replays."
    )


SUBJECTS = ["printer on fire", "forgot my password", "coffee machine empty"]

# --------------------------------------------------------------------------- 02.2


def patch_ids(hist: Any) -> list[str]:
    """The ``workflow.patched`` ids recorded in a history (its patch markers)."""
    rows = history.table(hist).rows
    return [m[1] for r in rows if r.event == "MarkerRecorded" and (m := re.match(r"patch '([^']+)'", r.details))]


NEW_PATH = ["create_account", "verify_email", "send_welcome"]
OLD_PATH = ["create_account", "send_welcome"]


@exercise("02.2")
async def check_patched_signup(signup: ModuleType, patched_cls: type) -> str:
    course = runtime.current()
    activities = [signup.create_account, signup.verify_email, signup.send_welcome]
    async with worker_for([signup.Signup], activities, purpose="v1") as queue:
        old_handle, _ = await _run(course, signup.Signup, "ada@example.com", queue=queue, prefix="check-02-2-v1")
    old_history = await old_handle.fetch_history()
    async with worker_for([patched_cls], activities, purpose="v2") as queue:
        new_handle, _ = await _run(course, patched_cls, "grace@example.com", queue=queue, prefix="check-02-2-v2")
    new_history = await new_handle.fetch_history()
    calls = replay.activity_calls(new_history)
    if "verify_email" not in calls:
        raise Wrong(
            f"a new run called {', '.join(calls)} but not verify_email. New runs must take the new path: "
            "workflow.patched(...) returns True for them."
        )
    if calls != NEW_PATH:
        raise Wrong(f"a new run called {', '.join(calls)}; expected {', '.join(NEW_PATH)} in that order.")
    outcome = await replay.replay(patched_cls, old_history)
    if not outcome.ok:
        hint = (
            ' Guard the new step with `if workflow.patched("..."):` so runs recorded without it keep the old path.'
            if outcome.nondeterministic
            else ""
        )
        raise Wrong(f"a run recorded by the old code no longer replays on yours: {outcome.reason}.{hint}")
    again = await replay.replay(patched_cls, new_history)
    if not again.ok:
        raise Wrong(f"a new run does not replay on your own code: {again.reason}")
    patches = patch_ids(new_history)
    if not patches:
        raise Wrong("the new run recorded no patch marker: use workflow.patched(...) (not deprecate_patch) for now.")
    return (
        f"an old run replays on the old path, and a new run calls {', '.join(NEW_PATH)} "
        f"(patch {patches[0]!r} recorded in its history)."
    )


# --------------------------------------------------------------------------- 02.3

PARCEL_V1 = """
from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
async def pack(parcel: str) -> str:
    return f"{parcel} packed"


@activity.defn
async def label(parcel: str) -> str:
    return f"{parcel} labelled"


@workflow.defn
class Parcel:
    @workflow.run
    async def run(self, parcel: str) -> list[str]:
        packed = await workflow.execute_activity(pack, parcel, start_to_close_timeout=timedelta(seconds=5))
        labelled = await workflow.execute_activity(label, parcel, start_to_close_timeout=timedelta(seconds=5))
        return [packed, labelled]
"""

PARCEL_CHANGED = """
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from {v1} import label, pack


@workflow.defn
class Parcel:
    @workflow.run
    async def run(self, parcel: str) -> list[str]:
{body}
"""

COMPATIBLE = """        # longer timeouts, a different result format: the same commands in the same order
        packed = await workflow.execute_activity(pack, parcel, start_to_close_timeout=timedelta(seconds=30))
        labelled = await workflow.execute_activity(label, parcel, start_to_close_timeout=timedelta(seconds=30))
        return [packed.upper(), labelled.upper()]"""

SWAPPED = """        # label before packing: the first command changes
        labelled = await workflow.execute_activity(label, parcel, start_to_close_timeout=timedelta(seconds=5))
        packed = await workflow.execute_activity(pack, parcel, start_to_close_timeout=timedelta(seconds=5))
        return [packed, labelled]"""


def parcel_versions(course: runtime.Course) -> dict[str, ModuleType]:
    """Three versions of a small workflow, written as modules in the kernel's scratch dir (the sandbox needs files)."""
    v1 = "_check02_parcel_v1"
    return {
        "v1": runtime.write_module(course.scratch, v1, PARCEL_V1),
        "compatible": runtime.write_module(
            course.scratch, "_check02_parcel_compatible", PARCEL_CHANGED.format(v1=v1, body=COMPATIBLE)
        ),
        "swapped": runtime.write_module(
            course.scratch, "_check02_parcel_swapped", PARCEL_CHANGED.format(v1=v1, body=SWAPPED)
        ),
    }


CASES = [
    ("the unchanged code", "v1", True),
    ("a backward-compatible change (longer timeouts)", "compatible", True),
    ("a change that swaps the two activities", "swapped", False),
]


async def _call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


@exercise("02.3")
async def check_replays_ok(replays_ok: Any) -> str:
    course = runtime.current()
    versions = parcel_versions(course)
    v1 = versions["v1"]
    async with worker_for([v1.Parcel], [v1.pack, v1.label]) as queue:
        handle, _ = await _run(course, v1.Parcel, "parcel-7", queue=queue, prefix="check-02-3")
    history_json = (await handle.fetch_history()).to_json()
    for what, version, expected in CASES:
        try:
            said = await _call(replays_ok, versions[version].Parcel, history_json)
        except (NotImplementedError, NotDone):
            raise
        except Exception as err:
            name = type(err).__name__
            raise Wrong(
                f"replays_ok raised {name} for {what}; return False instead "
                "(replay_workflow(..., raise_on_replay_failure=False), or catch the error)."
                if not expected
                else f"replays_ok raised {name}: {replay.reason(err)[:120]} for {what}."
            ) from None
        if not isinstance(said, bool):
            shown = repr(said) if len(repr(said)) <= 40 else f"a {type(said).__name__}"
            raise Wrong(f"replays_ok should return True or False; for {what} it returned {shown}.")
        if said != expected:
            raise Wrong(f"replays_ok said {said} for {what}; it should say {expected}.")
    return "True for the unchanged code and for a compatible change, False when two activities swap places."


__all__ = [
    "check_deterministic_ticket",
    "check_patched_signup",
    "check_replays_ok",
    "patch_ids",
    "sandbox_hint",
]
