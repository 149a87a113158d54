"""Server lifecycle: reuse, start, stop only our own, and one-line errors for what goes wrong."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import build, server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def private_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPORAL_COURSE_DATA", str(tmp_path))
    return tmp_path


def local_target(port: int) -> server.Target:
    return server.Target(f"localhost:{port}", "default")


def test_reuses_a_server_that_answers(private_data):
    status, started = server.ensure(server.target())
    assert (status.state, started, status.managed) == ("temporal", False, None)
    assert "not started by the course" in status.describe()


def test_starts_when_nothing_answers_then_stops_only_its_own(private_data, monkeypatch):
    port = server.free_port()
    monkeypatch.setenv("TEMPORAL_UI_PORT", str(server.free_port()))
    status, started = server.ensure(local_target(port))
    try:
        assert started and status.state == "temporal"
        mine = server.managed(port)
        assert mine is not None and mine.port == port
        assert (private_data / f"temporal-{port}.db").exists(), "SQLite persistence in the data dir, one per port"
        listening = [c.laddr.ip for c in psutil.Process(mine.pid).net_connections("tcp") if c.status == "LISTEN"]
        assert listening and set(listening) == {"127.0.0.1"}, listening
        # A second ensure reuses it: still one server process.
        again, started_again = server.ensure(local_target(port))
        assert not started_again and again.managed is not None and again.managed.pid == mine.pid
    finally:
        message = server.stop(local_target(port))
    assert "Stopped" in message
    assert not psutil.pid_exists(mine.pid) or psutil.Process(mine.pid).status() == psutil.STATUS_ZOMBIE
    assert server.probe_sync(local_target(port), 1) == "closed"
    assert "No course-started" in server.stop(local_target(port))


def test_servers_on_two_ports_each_have_their_own_database_and_stop_alone(private_data, monkeypatch):
    """Issue 7.6: one shared SQLite file made a second server fail ('database is locked'), and `stop` stopped
    whichever server the state file named, whatever TEMPORAL_ADDRESS said."""
    a, b = local_target(server.free_port()), local_target(server.free_port())
    monkeypatch.setenv("TEMPORAL_UI_PORT", str(server.free_port()))
    server.ensure(a)
    monkeypatch.setenv("TEMPORAL_UI_PORT", str(server.free_port()))
    try:
        _, started = server.ensure(b)
        assert started and server.probe_sync(b, 2) == "temporal"
        pid_a, pid_b = server.managed(a.port).pid, server.managed(b.port).pid
        assert pid_a != pid_b
        assert f"pid {pid_b}" in server.stop(b)
        assert server.probe_sync(b, 1) == "closed"
        assert server.probe_sync(a, 2) == "temporal", "stopping b left a alone"
        assert server.status(a).managed.pid == pid_a
    finally:
        server.stop(a)
        server.stop(b)
    assert server.probe_sync(a, 1) == "closed"


def test_port_taken_by_something_else_is_one_clear_error(private_data):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(server.ServerError, match="not a Temporal server"):
            server.ensure(local_target(port))
        assert time.monotonic() - started < 6, "probing a silent port is bounded"


def test_missing_cli_says_how_to_get_it(private_data, monkeypatch):
    monkeypatch.setattr(server, "find_binary", lambda name: None)
    with pytest.raises(server.ServerError, match=r"`temporal` CLI is not installed.*make lab"):
        server.ensure(local_target(server.free_port()))


def test_server_exiting_at_start_shows_the_log_tail(private_data):
    with pytest.raises(server.ServerError, match=r"exited at start(.|\n)*no such file or directory"):
        server.DevServer.start(headless=True, db_path=Path("/nonexistent-dir/x.db"))


def test_remote_address_is_never_started(private_data):
    where = server.Target("temporal.invalid:7233", "default")
    with pytest.raises(server.ServerError, match=r"No Temporal server answers at temporal\.invalid:7233"):
        server.ensure(where)


def cli(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m helpers.server COMMAND`` as `make server-*` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "helpers.server", command],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_status_exit_codes(private_data):
    ok = cli("status")
    assert ok.returncode == 0 and "answering" in ok.stdout
    down = cli("status", TEMPORAL_ADDRESS=f"localhost:{server.free_port()}")
    assert down.returncode == 3 and "No Temporal server answers" in down.stdout


def test_environment_config_is_read(monkeypatch):
    monkeypatch.setenv("TEMPORAL_ADDRESS", "example.test:7234")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "class-a")
    where = server.target()
    assert (where.address, where.namespace, where.is_local, where.ui_url) == (
        "example.test:7234",
        "class-a",
        False,
        None,
    )
    monkeypatch.setenv("TEMPORAL_UI_URL", "https://ui.example.test/")
    assert server.target().ui_url == "https://ui.example.test"


def test_cli_start_then_stop_leaves_nothing_running(private_data):
    port = server.free_port()
    env = {"TEMPORAL_ADDRESS": f"localhost:{port}", "TEMPORAL_UI_PORT": str(server.free_port())}
    started = cli("start", **env)
    assert started.returncode == 0, started.stderr
    assert "Started a Temporal dev server" in started.stdout and f"localhost:{port}" in started.stdout
    pid = server.managed(port).pid
    reused = cli("start", **env)
    assert "Started" not in reused.stdout and f"pid {pid}" in reused.stdout, "second start reuses the server"
    stopped = cli("stop", **env)
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert cli("status", **env).returncode == 3


SLOW_TEST = """
import os, time

def test_waits():
    from conftest import _STATE  # the course's root conftest, loaded with -p conftest

    print("SERVER", os.environ["TEMPORAL_ADDRESS"], _STATE["server"].pid, flush=True)
    time.sleep(60)
"""


def test_a_test_run_stopped_with_sigterm_stops_its_server(tmp_path):
    """`timeout` or a CI's time limit sends SIGTERM: the session's server (in a session of its own) must not outlive
    the run, as four did here when pytest runs were stopped that way."""
    (tmp_path / "test_slow.py").write_text(SLOW_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TEMPORAL_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-s", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--rootdir", str(tmp_path), str(tmp_path / "test_slow.py")],
        cwd=build.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    pid = None
    try:
        address, pid = next(line.split()[1:] for line in proc.stdout if line.startswith("SERVER"))  # type: ignore[union-attr]
        host, port = address.rsplit(":", 1)
        assert server._tcp_open(host, int(port), 2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        while server._tcp_open(host, int(port), 0.5) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not server._tcp_open(host, int(port), 0.5), f"the run's server on {address} outlived it"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if pid is not None and server._pid_alive(int(pid)):
            os.kill(int(pid), signal.SIGKILL)  # this test fails: its leftover server is not left to the machine
