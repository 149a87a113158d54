"""Operating workflows: find the ones in trouble, see why, and the ``temporal`` CLI for the same.

* :func:`ensure_search_attributes` registers custom search attributes in the namespace through the operator
  service (what ``temporal operator search-attribute create`` does); it is idempotent, so a notebook may run it
  every time.
* :func:`find` lists the runs a visibility query matches, with their status and search attributes.
* :func:`why` reads what the server knows about one run: its status, the activities it is waiting for (attempt,
  last failure), or the failure that closed it.
* :func:`reset` starts a run again from a point in its history, so that fixed code takes over from there.
* :func:`cli` runs the ``temporal`` CLI against the course's server and shows what it printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from helpers import server
from helpers.errors import CourseError, short_failure
from helpers.failures import describe
from helpers.history import text_table

CLI_TIMEOUT_S = 10.0
KINDS = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}


async def ensure_search_attributes(client: Client, attributes: Mapping[str, str]) -> dict[str, str]:
    """Register ``{name: kind}`` (kind: ``Keyword``, ``Int``, …) in the client's namespace if missing; returns them
    as the server lists them afterwards, ``{name: kind}`` (a name it does not list is missing)."""
    unknown = sorted(set(attributes.values()) - set(KINDS))
    if unknown:
        raise CourseError(f"Unknown search attribute kind(s) {unknown}: use one of {', '.join(KINDS)}.")
    request = AddSearchAttributesRequest(
        namespace=client.namespace, search_attributes={name: KINDS[kind] for name, kind in attributes.items()}
    )
    try:
        await asyncio.wait_for(client.operator_service.add_search_attributes(request), 10)
        listed = await asyncio.wait_for(
            client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=client.namespace)),
            10,
        )
    except Exception as err:
        raise CourseError(
            f"The server did not register the search attributes ({short_failure(err)}). On Temporal Cloud, add them "
            "in the UI or with `tcld namespace search-attributes add`; on a shared server, ask its operator."
        ) from None
    names = {v: k for k, v in KINDS.items()}
    custom = listed.custom_attributes
    return {name: names.get(custom[name], str(custom[name])) for name in sorted(attributes) if name in custom}


# --------------------------------------------------------------------------- finding runs


@dataclass(frozen=True)
class Run:
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    attributes: dict[str, str]


class Runs(list[Run]):
    """Runs a visibility query found, shown as a table (id, type, status, the custom search attributes asked for)."""

    def __init__(self, runs: Sequence[Run], columns: Sequence[str]) -> None:
        super().__init__(runs)
        self.columns = list(columns)

    def __repr__(self) -> str:
        if not self:
            return "(no run matches)"
        rows = [
            (r.workflow_id, r.workflow_type, r.status, *(r.attributes.get(c, "") for c in self.columns)) for r in self
        ]
        return text_table(("workflow id", "type", "status", *self.columns), rows)


async def find(client: Client, query: str, *, attributes: Sequence[str] = (), limit: int = 50) -> Runs:
    """The runs ``query`` matches (at most ``limit``), sorted by workflow id, with the search attributes named in
    ``attributes``."""
    runs = []
    async for execution in client.list_workflows(query, limit=limit):
        values = {key.name: str(value) for key, value in execution.typed_search_attributes}
        status = execution.status.name if execution.status is not None else "UNKNOWN"
        runs.append(
            Run(
                execution.id,
                execution.run_id,
                execution.workflow_type,
                status,
                {a: values.get(a, "") for a in attributes},
            )
        )
    return Runs(sorted(runs, key=lambda r: (r.workflow_id, r.run_id)), attributes)


# --------------------------------------------------------------------------- why


@dataclass(frozen=True)
class Why:
    """What the server says about one run: its status, what it waits for, how it ended."""

    workflow_id: str
    status: str
    pending: list[tuple[str, int, str]]  # (activity type, attempt, last failure)
    failure: str | None

    def __repr__(self) -> str:
        lines = [f"{self.workflow_id}: {self.status}"]
        for name, attempt, last in self.pending:
            lines.append(f"  waiting for activity {name}: attempt {attempt}, last failure: {last or 'none'}")
        if self.failure:
            lines.append(f"  failed with {self.failure}")
        return "\n".join(lines)


async def why(client: Client, workflow_id: str, run_id: str | None = None) -> Why:
    """Describe a run the way the UI's pending-activities panel and its failure banner do."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    desc = await asyncio.wait_for(handle.describe(), 5)
    pending = []
    for act in desc.raw_description.pending_activities:
        last = act.last_failure
        text = ""
        if act.HasField("last_failure"):
            kind = last.application_failure_info.type if last.HasField("application_failure_info") else ""
            text = f"{kind}: {last.message}" if kind else last.message
        pending.append((act.activity_type.name, act.attempt, text))
    failure = None
    if desc.status == WorkflowExecutionStatus.FAILED:
        try:
            await asyncio.wait_for(handle.result(), 5)
        except WorkflowFailureError as err:
            failure = describe(err.cause)
    status = desc.status.name if desc.status is not None else "UNKNOWN"
    return Why(workflow_id, status, pending, failure)


# --------------------------------------------------------------------------- reset


async def reset(client: Client, workflow_id: str, event_id: int, reason: str) -> str:
    """Reset the latest run of ``workflow_id`` to the workflow task ``event_id`` ended (the id of a
    ``WorkflowTaskCompleted`` event, say): a new run starts with the history up to there, and the worker's current
    code carries on from that point. Returns the new run's id (``temporal workflow reset -w … -e … --reason …``)."""
    request = ResetWorkflowExecutionRequest(
        namespace=client.namespace,
        workflow_execution=WorkflowExecution(workflow_id=workflow_id),
        reason=reason,
        workflow_task_finish_event_id=event_id,
        request_id=str(uuid.uuid4()),  # the same request sent twice resets once
    )
    response = await asyncio.wait_for(client.workflow_service.reset_workflow_execution(request), 10)
    return response.run_id


# --------------------------------------------------------------------------- the CLI


@dataclass(frozen=True)
class CliResult:
    command: str
    output: str
    exit_code: int | None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def __repr__(self) -> str:
        return f"$ {self.command}\n{self.output.rstrip()}"


async def cli(*args: str, target: server.Target | None = None, timeout: float = CLI_TIMEOUT_S) -> CliResult:
    """Run ``temporal <args>`` against ``target`` (default: the course's server), bounded; the address and
    namespace travel as ``TEMPORAL_ADDRESS`` / ``TEMPORAL_NAMESPACE``, the variables the CLI reads itself."""
    if target is None:
        from helpers import runtime

        target = runtime.current().target
    env = {**os.environ, "TEMPORAL_ADDRESS": target.address, "TEMPORAL_NAMESPACE": target.namespace, "NO_COLOR": "1"}
    process = await asyncio.create_subprocess_exec(
        server.find_cli(),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        out = f"(stopped after {timeout:g} s)".encode()
    return CliResult(" ".join(["temporal", *map(_quote, args)]), out.decode(errors="replace"), process.returncode)


def _quote(arg: str) -> str:
    """How a person would type ``arg`` in a shell: a query in double quotes, its single quotes left alone."""
    if arg and all(c.isalnum() or c in "-_.=/:@,+" for c in arg):
        return arg
    if not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)
