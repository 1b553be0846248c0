"""Configuration: defaults, overrides, and errors that name the bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.config import load_gateway_config, load_service_config
from services.runtime.errors import ConfigError


def test_defaults_put_everything_under_the_data_dir(tmp_path: Path) -> None:
    config = load_service_config("objects", {"KILN_DATA_DIR": str(tmp_path)})
    assert (config.grpc_port, config.metrics_port) == (50051, 9101)
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path / 'objects.db'}"
    assert config.auth.public_key_files == str(tmp_path / "keys" / "jwt.pub.pem")
    assert config.storage.endpoint == "127.0.0.1:9000" and config.storage.secure is False
    assert config.jobs_target == "127.0.0.1:50052"


def test_every_setting_comes_from_its_variable(tmp_path: Path) -> None:
    config = load_service_config(
        "render",
        {
            "KILN_DATA_DIR": str(tmp_path),
            "KILN_RENDER_PORT": "6000",
            "KILN_RENDER_METRICS_PORT": "-1",
            "KILN_RENDER_DATABASE_URL": "postgresql+asyncpg://u@db/render",
            "KILN_S3_SECURE": "yes",
            "KILN_S3_BUCKET": "other",
            "KILN_PRESIGN_EXPIRY_SECONDS": "60",
            "KILN_JOBS_TARGET": "jobs.svc:80",
            "KILN_SHUTDOWN_GRACE_SECONDS": "2.5",
        },
    )
    assert (config.grpc_port, config.metrics_port) == (6000, -1)
    assert config.database_url == "postgresql+asyncpg://u@db/render"
    assert config.storage.secure is True and config.storage.bucket == "other"
    assert config.storage.presign_expiry_seconds == 60
    assert config.jobs_target == "jobs.svc:80"
    assert config.shutdown_grace_seconds == 2.5


def test_gateway_targets_follow_service_ports() -> None:
    config = load_gateway_config({"KILN_OBJECTS_PORT": "7001", "KILN_ARCHIVE_TARGET": "a:1"})
    assert config.targets["objects"] == "127.0.0.1:7001"
    assert config.targets["archive"] == "a:1"
    assert config.port == 8080 and config.demo_client_id == "demo"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"KILN_OBJECTS_PORT": "eighty"}, "KILN_OBJECTS_PORT"),
        ({"KILN_S3_SECURE": "maybe"}, "KILN_S3_SECURE"),
        ({"KILN_S3_PART_SIZE": "1024"}, "KILN_S3_PART_SIZE"),
        ({"KILN_PRESIGN_EXPIRY_SECONDS": "999999999"}, "KILN_PRESIGN_EXPIRY_SECONDS"),
        ({"KILN_LOG_FORMAT": "xml"}, "KILN_LOG_FORMAT"),
        ({"KILN_SHUTDOWN_GRACE_SECONDS": "soon"}, "KILN_SHUTDOWN_GRACE_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_service_config("objects", env)


def test_unknown_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown service"):
        load_service_config("billing", {})


def test_config_is_frozen() -> None:
    config = load_service_config("jobs", {})
    with pytest.raises(AttributeError):
        config.grpc_port = 1  # type: ignore[misc]
