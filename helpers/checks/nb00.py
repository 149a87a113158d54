"""Checks for notebook 00 (welcome): run a workflow, read its history."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from temporalio.api.enums.v1 import EventType

from helpers import errors, history, runtime
from helpers.checks import Wrong, exercise, require, worker_for

# Teams that tell a right answer from plausible wrong ones: not sorted (a sorted answer differs), a name twice
# (de-duplicating differs: two people can share a name), one name, and nobody.
TEAMS = [["Linus", "Ada", "Grace", "Ada"], ["Zoë"], []]


@exercise("00.1")
async def check_greet_team(workflow_cls: type, compose_greeting: Any) -> str:
    course = runtime.current()
    async with worker_for([workflow_cls], [compose_greeting]) as queue:
        # result_type=Any: compare what the workflow really returned, not its conversion to list[str].
        handles = [
            await course.start_workflow(
                workflow_cls.run, team, task_queue=queue, id_prefix="check-00-1", show=False, result_type=Any
            )
            for team in TEAMS
        ]
        outcomes = await asyncio.gather(
            *(course.result(h, 10, activity_retries=2) for h in handles), return_exceptions=True
        )
    for team, outcome in zip(TEAMS, outcomes, strict=True):
        if isinstance(outcome, runtime.WorkflowTaskFailed) and not outcome.failure.startswith("NotImplementedError"):
            # Say which input broke it: the learner's own run may have used other names.
            raise Wrong(
                f"for the team {team!r} your workflow code raised {outcome.failure}."
                + (f" Hint: {hint}" if (hint := errors.hint_for(outcome.failure)) else "")
            )
    if errors_seen := [o for o in outcomes if isinstance(o, BaseException)]:
        raise errors_seen[0]
    results = outcomes
    for team, handle, result in zip(TEAMS, handles, results, strict=True):
        expected = [f"Hello, {n}!" for n in team]
        if result != expected:
            raise Wrong(
                f"for {team} your workflow returned {result!r}; expected {expected!r}: one greeting per name, "
                "in the order given, even when a name comes twice."
            )
        scheduled = history.table(await handle.fetch_history()).counts()["ActivityTaskScheduled"]
        if scheduled != len(team):
            raise Wrong(
                f"the greetings are right, but for {team} the history shows {scheduled} activity call(s) for "
                f"{len(team)} names. Call compose_greeting once per name with workflow.execute_activity, so each "
                "step is recorded."
            )
    sizes = ", ".join(str(len(t)) for t in TEAMS[:-1]) + f" and {len(TEAMS[-1])}"
    return (
        f"teams of {sizes} names: one activity call per name, greetings in the given order (repeats included), "
        "each one recorded in the history."
    )


def _event_key(name: Any) -> str:
    """One spelling for an event name: ``ActivityTaskCompleted``, ``EVENT_TYPE_ACTIVITY_TASK_COMPLETED``,
    ``activity_task_completed``, ``EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED`` (an int) all read the same."""
    if isinstance(name, int) and not isinstance(name, bool):
        try:
            name = EventType.Name(name)
        except ValueError:
            return str(name)
    text = str(name).strip()
    text = re.sub(r"^(EventType\.)?EVENT_TYPE_", "", text)
    return re.sub(r"[^a-z]", "", text.lower())


@exercise("00.2")
async def check_history_quiz(workflow_cls: type, compose_greeting: Any, workflow_tasks: Any, result_event: Any) -> str:
    workflow_tasks = require(workflow_tasks, "set WORKFLOW_TASKS to the number of workflow tasks in the run above.")
    result_event = require(result_event, "set RESULT_EVENT to the name of the event that holds the activity's result.")
    course = runtime.current()
    async with worker_for([workflow_cls], [compose_greeting]) as queue:
        handle = await course.start_workflow(
            workflow_cls.run, "Ada", task_queue=queue, id_prefix="check-00-2", show=False
        )
        await course.result(handle, 10, activity_retries=2)
    table = history.table(await handle.fetch_history())
    actual_tasks = table.counts()["WorkflowTaskCompleted"]
    holder = next(r.event for r in table.rows if r.event.startswith("Activity") and "Hello, Ada!" in r.details)
    if isinstance(workflow_tasks, str):
        raise Wrong(f"WORKFLOW_TASKS = {workflow_tasks!r} is text; write the number itself, without quotes.")
    if workflow_tasks != actual_tasks:
        raise Wrong(
            f"WORKFLOW_TASKS = {workflow_tasks!r} is not it. Count the WorkflowTaskCompleted rows: each is one "
            "workflow task, in which the worker ran your workflow code until it had to wait."
        )
    if _event_key(result_event) != _event_key(holder):
        raise Wrong(
            f"RESULT_EVENT = {result_event!r} is not it. Look for the row whose details show the greeting "
            "coming back from compose_greeting, and write its name as the table shows it (e.g. 'WorkflowTaskStarted')."
        )
    return f"{actual_tasks} workflow tasks, and the greeting comes back in {holder}."
