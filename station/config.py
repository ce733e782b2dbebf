"""Settings: what a lab may change, validated, persisted as settings.json in the data dir."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Annotated

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"

# Names a lab can use in allowed_networks instead of spelling out every range.
NETWORK_CLASSES = ("private", "link-local", "loopback")

Seconds = Annotated[float, Field(gt=0, le=60)]


def default_data_dir() -> Path:
    return platformdirs.user_data_path("station", appauthor=False)


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    allowed_networks: list[str] = Field(default_factory=lambda: list(NETWORK_CLASSES))
    connect_timeout: Seconds = 2.0
    read_timeout: Seconds = 3.0
    command_retries: int = Field(2, ge=0, le=10)
    retry_backoff: Seconds = 0.2
    reply_wait: Seconds = 10.0
    poll_interval: Seconds = 1.0
    poll_concurrency: int = Field(32, ge=1, le=1024)
    missed_polls_offline: int = Field(3, ge=1, le=100)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)

    @field_validator("allowed_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry not in NETWORK_CLASSES:
                ipaddress.ip_network(entry, strict=False)
        return value

    @classmethod
    def load(cls, data_dir: Path) -> Settings:
        path = data_dir / SETTINGS_FILE
        if not path.exists():
            return cls()
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable settings in %s: %s", path, exc)
            return cls()
        if not isinstance(values, dict):
            log.warning("ignoring %s: it does not hold an object of settings", path)
            return cls()
        while True:
            try:
                return cls.model_validate(values)
            except ValidationError as exc:
                # Keep every good setting: one bad value must not silently reset, say, the
                # bind address to every interface.
                bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
                for name in sorted(bad):
                    log.warning(
                        "ignoring setting %s=%r in %s: %s",
                        name,
                        values.get(name),
                        path,
                        _first_message(exc, name),
                    )
                values = {k: v for k, v in values.items() if k not in bad}
                if not bad:
                    return cls()

    def save(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / SETTINGS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(path)

    def allows(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        for entry in self.allowed_networks:
            if entry == "private" and address.is_private and not address.is_loopback:
                return True
            if entry == "link-local" and address.is_link_local:
                return True
            if entry == "loopback" and address.is_loopback:
                return True
            if entry not in NETWORK_CLASSES and address in ipaddress.ip_network(entry, False):
                return True
        return False


def _first_message(exc: ValidationError, name: str) -> str:
    for error in exc.errors():
        if error["loc"] and str(error["loc"][0]) == name:
            return str(error["msg"])
    return "invalid"
