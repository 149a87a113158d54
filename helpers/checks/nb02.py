"""Checks for notebook 02 (determinism): a deterministic workflow, a safe patch, a replay check.

Every check runs the learner's code for real: workflows on a temporary worker (sandbox on), histories replayed
with the SDK's ``Replayer``.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import uuid
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

from temporalio.api.enums.v1 import EventType

from helpers import history, replay, runtime
from helpers.checks import NotDone, Wrong, exercise, worker_for
from helpers.errors import sandbox_hint

# --------------------------------------------------------------------------- 02.1


async def _run(course: runtime.Course, cls: type, *args: Any, queue: str, prefix: str) -> Any:
    handle = await course.start_workflow(cls.run, *args, task_queue=queue, id_prefix=prefix, show=False)
    try:
        result = await course.result(handle, 10)
    except runtime.WorkflowTaskFailed as err:
        if (hint := sandbox_hint(err.failure)) is not None:
            raise Wrong(hint) from None
        raise
    return handle, result


def follows_the_clock(by_second: dict[int, list[str]]) -> bool:
    """Agents picked per second (``{second: [agent of each ticket opened then]}``): one agent per second, over
    several seconds, is a pick made from the clock. (A random pick gives a group of n tickets one agent with
    chance 3^-(n-1): all groups at once, practically never.)"""
    together = [agents for agents in by_second.values() if len(agents) > 1]
    return len(by_second) > 1 and bool(together) and all(len(set(g)) == 1 for g in together)


CLOCK_RULES: dict[str, Any] = {
    **{f"int(time * {k}) % len(AGENTS)": (lambda t, k=k: int(t.timestamp() * k)) for k in (1, 10, 100, 1000)},
    "now.second % len(AGENTS)": lambda t: t.second,
    "now.minute % len(AGENTS)": lambda t: t.minute,
    "now.microsecond % len(AGENTS)": lambda t: t.microsecond,
    "(now.microsecond // 1000) % len(AGENTS)": lambda t: t.microsecond // 1000,
}


def clock_rule(agents: list[str], chosen: list[str], started: list[datetime]) -> str | None:
    """A rule that derives every chosen agent from when its run started, if one does (a random pick matches a
    given rule for all 15 tickets once in 3^15)."""
    for rule, number in CLOCK_RULES.items():
        if all(agent == agents[number(t) % len(agents)] for agent, t in zip(chosen, started, strict=True)):
            return rule
    return None


def _first_task_time(hist: Any) -> datetime:
    """When the first workflow task that completed started: what ``workflow.now()`` returns during that task.

    Not simply the first WorkflowTaskStarted: on a loaded machine that task can time out, and the SDK runs the code
    again in the next one (the timed-out attempt does not count, so ``workflow.now()`` is the later start)."""
    started = None
    for event in hist.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            started = event
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and started is not None:
            break
    if started is None:
        raise ValueError("the history has no workflow task")
    return started.event_time.ToDatetime().replace(tzinfo=timezone.utc)


SUBJECTS = ["printer on fire", "forgot my password", "coffee machine empty"]
# Every subject is opened this many times: a random pick then sends the tickets to more than one agent, and the
# same subject to different agents, except with a vanishing chance (3 agents: once in 3^14 and 3^12 checks).
TICKETS_PER_SUBJECT = 5
DETERMINISTIC = {"ticket_id": "workflow.uuid4()", "agent": "workflow.random().choice(AGENTS)", "due": "workflow.now()"}


async def _run_all(course: runtime.Course, cls: type, inputs: list[Any], *, queue: str, prefix: str) -> list[Any]:
    """Run ``cls`` once per input, all at once; the first problem is raised once every run has ended."""
    outcomes = await asyncio.gather(
        *(_run(course, cls, i, queue=queue, prefix=prefix) for i in inputs), return_exceptions=True
    )
    if errors := [o for o in outcomes if isinstance(o, BaseException)]:
        raise errors[0]
    return outcomes


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _and(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _changed_on_replay(outcome: replay.ReplayOutcome, module: ModuleType) -> str:
    """Why values that differ on replay are wrong, and what to use instead."""
    ran, again = outcome.recorded, outcome.result
    both = isinstance(ran, dict) and isinstance(again, dict)
    fields = [k for k in DETERMINISTIC if both and ran.get(k) != again.get(k)] or ["result"]
    what = _and(fields)
    fixes = _and([DETERMINISTIC[f] for f in fields if f in DETERMINISTIC])
    source = _source(module)
    if "sandbox_unrestricted" in source:
        why = (
            "workflow.unsafe.sandbox_unrestricted() only switches the sandbox's checks off: the calls inside it "
            "still give new values every time the code runs, and replay runs it again."
        )
    else:
        why = "Something in the workflow gives a new value every time the code runs, and replay runs it again."
    return (
        f"replaying a finished run, your workflow computes a different {what} than the run recorded. A worker that "
        f"rebuilds the ticket after a crash would carry on with values the history and the agent never saw. {why}"
        + (f" Use {fixes}." if fixes else "")
    )


@exercise("02.1")
async def check_deterministic_ticket(tickets: ModuleType) -> str:
    course = runtime.current()
    agents = list(tickets.AGENTS)
    subjects = SUBJECTS * TICKETS_PER_SUBJECT
    n = len(subjects)
    async with worker_for([tickets.OpenTicket], [tickets.notify_agent]) as queue:
        runs = await _run_all(course, tickets.OpenTicket, subjects, queue=queue, prefix="check-02-1")
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
        same = max(set(ids), key=ids.count)
        raise Wrong(
            f"{ids.count(same)} of {n} tickets got the id {same!r}. workflow.uuid4() gives every run a different id "
            "(and the same one again on replay); a fixed seed or a constant does not."
        )
    if bad := [r["agent"] for r in results if r["agent"] not in agents]:
        raise Wrong(f"agent {bad[0]!r} is not one of AGENTS: pick one with workflow.random().choice(AGENTS).")
    histories = [await handle.fetch_history() for handle, _ in runs]
    for hist in histories:
        outcome = await replay.replay(tickets.OpenTicket, hist)
        if not outcome.ok:
            raise Wrong(f"a finished run does not replay on your code: {outcome.reason}")
        if not outcome.same_result:
            raise Wrong(_changed_on_replay(outcome, tickets))
    chosen = [str(r["agent"]) for r in results]
    if len(set(chosen)) == 1:
        raise Wrong(
            f"all {n} tickets went to {chosen[0]!r}; the agent should be picked at random: "
            f"workflow.random().choice(AGENTS). (A random pick sends {n} tickets to one agent once in "
            f"{len(agents) ** (n - 1):,} checks.)"
        )
    by_second: dict[int, list[str]] = {}  # the tickets whose first workflow task ran in the same second
    for agent, hist in zip(chosen, histories, strict=True):
        by_second.setdefault(int(_first_task_time(hist).timestamp()), []).append(agent)
    if follows_the_clock(by_second):
        raise Wrong(
            "every ticket opened in the same second went to the same agent: the pick follows the workflow's clock, "
            "not chance (these runs straddled seconds, so the agents differ only between seconds). "
            "Pick with workflow.random().choice(AGENTS)."
        )
    if (rule := clock_rule(agents, chosen, [_first_task_time(h) for h in histories])) is not None:
        raise Wrong(
            f"every agent equals AGENTS[{rule}] at the moment its run started: the pick follows the workflow's "
            "clock, not chance (runs opened at the same moment would all go to one agent). "
            "Pick with workflow.random().choice(AGENTS)."
        )
    per_subject: dict[str, set[str]] = {}
    for subject, agent in zip(subjects, chosen, strict=True):
        per_subject.setdefault(subject, set()).add(agent)
    if all(len(a) == 1 for a in per_subject.values()):
        raise Wrong(
            f"each subject, opened {TICKETS_PER_SUBJECT} times, always went to the same agent: the pick depends on "
            "the subject, not on chance. Pick with workflow.random().choice(AGENTS)."
        )
    for (_, result), hist in zip(runs, histories, strict=True):
        due = datetime.fromisoformat(str(result["due"]))
        if due.tzinfo is None:
            due = due.replace(tzinfo=timezone.utc)
        expected = _first_task_time(hist) + timedelta(hours=4)
        if abs((due - expected).total_seconds()) > 5:
            raise Wrong(
                "due should be 4 hours after the workflow's own clock (workflow.now() + timedelta(hours=4)); "
                f"it is {(due - expected + timedelta(hours=4)).total_seconds() / 3600:.2f} h after the run started."
            )
    return (
        f"{n} tickets: {n} different ids, agents picked at random, due 4 h after workflow.now(), "
        "and every run replays to the same values."
    )


# --------------------------------------------------------------------------- 02.2


def patch_ids(hist: Any) -> list[str]:
    """The ``workflow.patched`` ids recorded in a history (its patch markers)."""
    rows = history.table(hist).rows
    return [m[1] for r in rows if r.event == "MarkerRecorded" and (m := re.match(r"patch '([^']+)'", r.details))]


def deprecated_patch_ids(hist: Any) -> list[str]:
    """The ``workflow.deprecate_patch`` ids recorded in a history."""
    rows = history.table(hist).rows
    return [
        m[1]
        for r in rows
        if r.event == "MarkerRecorded" and (m := re.match(r"patch '([^']+)' \(deprecated\)", r.details))
    ]


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
        if deprecated_patch_ids(new_history) or "deprecate_patch" in _source(patched_cls):
            hint = (
                " workflow.deprecate_patch(...) is for the later cleanup, once no run recorded without the patch is "
                "left: it does not keep old runs on the old path. For now guard the new step with "
                '`if workflow.patched("..."):`.'
            )
        elif outcome.nondeterministic:
            hint = (
                ' Guard the new step with `if workflow.patched("..."):` so runs recorded without it keep the old path.'
            )
        else:
            hint = ""
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


def _raised(err: Exception, what: str, expected: bool) -> str:
    """The verdict when ``replays_ok`` raised: the error once (type, then message), and a hint for the usual slips."""
    name = type(err).__name__
    text = replay.reason(err).removeprefix(f"{name}: ").removeprefix(name).strip(": ")
    if "coroutine" in text:
        hint = " Did you forget `await`?"
    elif "cannot be called from a running event loop" in text:
        hint = " Make replays_ok `async def` and `await` the replay instead of asyncio.run(...)."
    elif not expected:
        return (
            f"replays_ok raised {name} for {what}; return False instead "
            "(replay_workflow(..., raise_on_replay_failure=False), or catch the error)."
        )
    else:
        hint = ""
    shown = f"{name}: {text[:120]}" if text else name
    return f"replays_ok raised {shown} for {what}.{hint}"


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
            raise Wrong(_raised(err, what, expected)) from None
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
    "clock_rule",
    "deprecated_patch_ids",
    "follows_the_clock",
    "patch_ids",
    "sandbox_hint",
]
