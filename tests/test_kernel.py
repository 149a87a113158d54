"""The kernel extension (loaded at kernel start by .venv/etc/ipython): what a learner sees after a kernel restart,
before running the setup cell, and the short error display."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from helpers import kernel


def _run(*sources: str) -> list[str]:
    """Run cells in a fresh kernel of this venv (errors allowed); each cell's error text, or its stdout."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True).execute()
    out = []
    for cell in nb.cells:
        texts = []
        for o in cell.outputs:
            if o.output_type == "error":
                texts.append("\n".join(o.traceback))
            elif o.output_type == "stream":
                texts.append(o.text)
        out.append("\n".join(texts))
    return out


def test_before_setup_the_magic_and_name_errors_say_run_the_cells_above():
    """Issue 7.5: 'Cell magic `%%module` not found' and a bare NameError after a kernel restart."""
    magic, name = _run("%%module orders\nx = 1", "await nb01.check_timeouts(TIMEOUTS)")
    assert "not found" not in magic
    assert "the course is not set up in this kernel yet" in magic and "setup cell" in magic
    assert "NameError: name 'nb01' is not defined (line 1 of this cell)" in name
    assert kernel.SETUP_FIRST in name
    assert "Traceback" not in name and "Traceback" not in magic


def test_after_setup_module_lines_match_the_cell():
    """Issue 7.12: %%module errors pointed one line above the cell's line."""
    setup = "from helpers import runtime\ncourse = await runtime.start('t', quiet=True)"
    broken = "%%module lines_mod\nx = 1\ny = undefined_name\n"
    _, err = _run(setup, broken)
    assert 'lines_mod.py", line 3' in err or "line 3" in err, err


def test_a_stopped_server_in_a_real_kernel_reads_as_infrastructure_and_setup_recovers(tmp_path, monkeypatch):
    """Issue 7.3 as a learner meets it: the server stops mid-notebook. Every cell says so in a few lines (no SDK
    traceback, no stderr noise), a check says "could not be checked", and re-running setup brings it all back."""
    from helpers import server

    port = server.free_port()
    env = {
        "TEMPORAL_ADDRESS": f"localhost:{port}",
        "TEMPORAL_UI_PORT": str(server.free_port()),
        "TEMPORAL_COURSE_DATA": str(tmp_path),
    }
    setup = "from helpers import runtime, server\ncourse = await runtime.start('t')"
    module = (
        "%%module hello_k\nfrom datetime import timedelta\nfrom temporalio import activity, workflow\n\n"
        "@activity.defn\nasync def hi(name: str) -> str:\n    return 'hi ' + name\n\n"
        "@workflow.defn\nclass Hi:\n    @workflow.run\n    async def run(self, name: str) -> str:\n"
        "        return await workflow.execute_activity(hi, name, start_to_close_timeout=timedelta(seconds=5))"
    )
    check = (
        "from helpers.checks import exercise\n\n@exercise('09.1')\nasync def check():\n"
        "    assert await course.run(hello_k.Hi.run, 'x', show=False) == 'hi x'\n\nawait check()"
    )
    start_worker = "await course.start_worker(workflows=[hello_k.Hi], activities=[hello_k.hi])"
    process = (
        "from helpers import worker\nproc = await worker.start_process(course, workflows=['hello_k:Hi'], "
        "activities=['hello_k:hi'], task_queue=course.new_task_queue('p'))"
    )
    cells = [
        setup,
        module,
        start_worker,
        "print(await course.run(hello_k.Hi.run, 'up', show=False))",
        process,
        "print(server.stop(course.target))",
        "await course.run(hello_k.Hi.run, 'down', show=False)",
        "await course.history()",
        check,
        start_worker,  # re-running the worker cell while the server is down must keep the worker
        process,  # and a worker process cannot start either
        setup,
        "print(await course.run(hello_k.Hi.run, 'back', show=False, timeout=15))",
        "print(await course.run(hello_k.Hi.run, 'p', show=False, timeout=15, task_queue=course.new_task_queue('p')))",
    ]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(s) for s in cells]
        NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True).execute()
    finally:  # with this test's data dir still set: the state file of the server the kernel started is there
        server.stop(server.target())
        assert server.probe_sync(server.target(), 1) == "closed", "the test leaves no server behind"
    outs = [cell.outputs for cell in nb.cells]
    stderr = [o.text for cell in outs for o in cell if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, stderr
    errors = {i: "\n".join(o.traceback) for i, cell in enumerate(outs) for o in cell if o.output_type == "error"}
    assert sorted(errors) == [6, 7, 9, 10], errors  # the run, the history, the worker and the process cells
    for text in errors.values():
        assert "is not answering" in text and "not a problem with your code" in text
        assert "Traceback" not in text and "RPCError" not in text and "backtrace" not in text
    verdict = outs[8][0].text
    assert verdict.startswith("⚠️ 09.1 could not be checked: the Temporal server is not answering"), verdict
    rerun = outs[11][0].text
    assert "it had stopped, so the course started it again; reconnected" in rerun
    assert "Still running from before: 1 background worker(s)" in rerun
    assert "Restarted 1 worker process(es) on it" in rerun
    assert outs[12][0].text == "hi back\n"
    assert outs[13][0].text == "hi p\n"


def test_a_stopped_demo_server_is_not_blamed_on_the_course_server():
    """Walkthrough finding: after 01's clean-up stopped the throwaway server, re-running its cells said the
    *course's* server was not answering and to re-run setup, which could not help."""
    from helpers import errors, kernel

    demo = str(errors.server_not_answering("localhost:36099", course_server=False))
    assert "re-run the cell that starts it" in demo and "setup" not in demo
    raw = kernel._unavailable_text()
    assert "if it is the course's server" in raw and "re-run the cell that starts it" in raw


def test_a_cpu_bound_activity_in_a_real_kernel_ends_in_a_verdict_and_the_kernel_lives_on():
    """Issue 7.1 as a learner met it: the kernel hung for good (interrupts did nothing). Now the check's verdict
    names the activity within its bound, and the next cell runs."""
    setup = "from helpers import runtime\ncourse = await runtime.start('t', quiet=True)"
    module = (
        "%%module spin_k\nfrom datetime import timedelta\nfrom temporalio import activity, workflow\n\n"
        "@activity.defn\nasync def crunch(n: int) -> int:\n    total = 0\n    while True:\n        total += n\n\n"
        "@workflow.defn\nclass Crunch:\n    @workflow.run\n    async def run(self) -> int:\n"
        "        return await workflow.execute_activity(crunch, 1, start_to_close_timeout=timedelta(seconds=60))"
    )
    check = (
        "from helpers.checks import exercise\n\n@exercise('09.2')\nasync def check():\n"
        "    await course.run(spin_k.Crunch.run, show=False)\n\nawait check()"
    )
    outs = _run(
        setup,
        module,
        "await course.start_worker(workflows=[spin_k.Crunch], activities=[spin_k.crunch])",
        check,
        "print('still alive')",
    )
    assert outs[3].startswith("❌ 09.2 not right yet: activity crunch never lets the worker breathe"), outs[3]
    assert "async def" in outs[3]
    assert outs[4] == "still alive\n"


def test_what_a_learner_breaks_in_module_cells_is_said_plainly():
    """Walkthrough findings: a %%module that stops importing kept the older version for the check (a false ✅); a
    deleted %%module line made a workflow in __main__; a renamed class gave a raw AttributeError traceback; an
    interrupted cell a CancelledError traceback."""
    setup = "from helpers import runtime\ncourse = await runtime.start('t', quiet=True)"
    good = "%%module team_k\nfrom temporalio import workflow\n\n@workflow.defn\nclass Team:\n    @workflow.run\n"
    good += "    async def run(self) -> int:\n        return 1"
    broken = good.replace("    @workflow.run\n", "")
    outs = _run(
        setup,
        good,
        broken,
        "team_k.Team",
        good.removeprefix("%%module team_k\n"),
        good,
        "team_k.Teams",
        "import asyncio\nraise asyncio.CancelledError()",
    )
    assert "failed to import" in outs[2]
    assert "%%module team_k did not import the last time its cell ran" in outs[3]
    assert outs[4].startswith("Note: Team is a workflow defined in the notebook itself") and "%%module" in outs[4]
    assert outs[5] == ""
    assert "AttributeError: module 'team_k' has no attribute 'Teams' (line 1 of this cell)" in outs[6]
    assert "keep Teams as it was named in %%module team_k" in outs[6] and "Traceback" not in outs[6]
    assert outs[7].startswith("\x1b[0;31mInterrupted: the cell was stopped")
