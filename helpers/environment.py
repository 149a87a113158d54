"""What this kernel runs on: versions of the course's parts, checked against what the course needs."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from helpers import server

PACKAGES = ["temporalio", "jupyterlab", "ipywidgets", "matplotlib", "nbval"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cli_version() -> str | None:
    """``temporal --version`` (the CLI that runs the dev server), or None if it is not installed."""
    try:
        cli = server.find_cli()
    except server.ServerError:
        return None
    out = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    return out.removeprefix("temporal version ") or None


def report() -> bool:
    """Print one line per part (✅ found / ❌ missing with a fix); True if everything is there."""
    ok = sys.version_info >= (3, 10)
    py = ".".join(map(str, sys.version_info[:3]))
    print(f"{'✅' if ok else '❌'} Python {py}" + ("" if ok else " (the course needs 3.10 or newer)"))
    for dist in PACKAGES:
        v = _version(dist)
        ok &= v is not None
        print(f"✅ {dist} {v}" if v else f"❌ {dist} is missing: run `make lab` from the course folder")
    cli = cli_version()
    print(f"✅ temporal CLI {cli}" if cli else "⚠️ temporal CLI not found: the course needs a server it can reach")
    test_server = server.find_binary("temporal-test-server")
    print("✅ time-skipping test server" if test_server else "⚠️ time-skipping test server not found (notebook 06/07)")
    return ok
