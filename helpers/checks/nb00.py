"""Checks for notebook 00 (welcome): run a workflow, read its history."""

from __future__ import annotations

from typing import Any

from helpers import history, runtime
from helpers.checks import Wrong, exercise, require, worker_for

NAMES = ["Ada", "Grace", "Linus"]


@exercise("00.1")
async def check_greet_team(workflow_cls: type, compose_greeting: Any) -> str:
    course = runtime.current()
    async with worker_for([workflow_cls], [compose_greeting]) as queue:
        # result_type=Any: compare what the workflow really returned, not its conversion to list[str].
        handle = await course.start_workflow(
            workflow_cls.run, NAMES, task_queue=queue, id_prefix="check-00-1", show=False, result_type=Any
        )
        result = await course.result(handle, 10, activity_retries=2)
    expected = [f"Hello, {n}!" for n in NAMES]
    if result != expected:
        raise Wrong(f"for {NAMES} your workflow returned {result!r}; expected {expected!r}.")
    scheduled = history.table(await handle.fetch_history()).counts()["ActivityTaskScheduled"]
    if scheduled != len(NAMES):
        raise Wrong(
            f"the greetings are right, but the history shows {scheduled} activity call(s) for {len(NAMES)} names. "
            "Call compose_greeting once per name with workflow.execute_activity, so each step is recorded."
        )
    return f"{len(NAMES)} names, {scheduled} activity calls, {len(NAMES)} greetings, each one recorded in the history."


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
    if str(result_event).strip() != holder:
        raise Wrong(
            f"RESULT_EVENT = {result_event!r} is not it. Look for the row whose details show the greeting "
            "coming back from compose_greeting."
        )
    return f"{actual_tasks} workflow tasks, and the greeting comes back in {holder}."
