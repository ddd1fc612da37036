"""Credentials, the one source every client reads: the services, the CLI, `gongji load`, the tests
and the benchmarks. One password per principal (shared/principals.py), generated at the first
`gongji infra up` with `secrets`, kept in `.gongji/secrets/` (directory 0700, files 0600): never in
git, in logs or in a process's arguments."""

from __future__ import annotations

import os
import secrets
import ssl
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context
from redis.credentials import CredentialProvider

from shared.principals import PRINCIPALS
from shared.settings import Settings

SCRAM_MECHANISM = "SCRAM-SHA-512"
PASSWORD_BYTES = 32  # 256 bits


class CredentialsMissing(RuntimeError):
    """No secret yet: `gongji infra up` makes them."""


def secrets_dir(settings: Settings) -> Path:
    return settings.state_dir / "secrets"


def ca_file(settings: Settings) -> Path:
    """The local CA's certificate, which clients trust (made by `gongji infra up`)."""
    return secrets_dir(settings) / "ca.pem"


def _password_file(settings: Settings, name: str) -> Path:
    return secrets_dir(settings) / f"{name}.password"


def make_secrets_dir(settings: Settings) -> Path:
    directory = secrets_dir(settings)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)  # also when it existed with looser rights
    return directory


def write_secret(path: Path, content: bytes) -> None:
    """Writes a file only its owner can read, atomically: it never exists with looser rights,
    and a crash leaves the old content or the new, never half."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
    os.replace(temporary, path)


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def ensure_passwords(settings: Settings) -> list[str]:
    """Generates a password for every declared principal that has none; returns their names."""
    make_secrets_dir(settings)
    made = []
    for principal in PRINCIPALS:
        path = _password_file(settings, principal.name)
        if not path.exists():
            write_secret(path, new_password().encode())
            made.append(principal.name)
    return made


def password(settings: Settings, name: str) -> str:
    try:
        return _password_file(settings, name).read_text().strip()
    except FileNotFoundError:
        raise CredentialsMissing(
            f"no credentials for {name!r} in {secrets_dir(settings)}: run `gongji infra up` (it makes them)"
        ) from None


def set_password(settings: Settings, name: str, value: str) -> None:
    write_secret(_password_file(settings, name), value.encode())


def kafka_bootstrap(settings: Settings) -> str:
    if settings.kafka_plaintext_dev:
        host = settings.kafka_bootstrap.rpartition(":")[0]
        return f"{host}:{settings.kafka_plaintext_dev_port}"
    return settings.kafka_bootstrap


def kafka_client_settings(settings: Settings, name: str) -> dict[str, Any]:
    """A principal's aiokafka client settings (what `gongji credentials show NAME --json` prints).
    TLS to the broker's client listener unless the development flag asks for the plaintext one."""
    return {
        "bootstrap_servers": kafka_bootstrap(settings),
        "security_protocol": "SASL_PLAINTEXT" if settings.kafka_plaintext_dev else "SASL_SSL",
        "sasl_mechanism": SCRAM_MECHANISM,
        "sasl_plain_username": name,
        "sasl_plain_password": password(settings, name),
        "ssl_cafile": str(ca_file(settings)),
    }


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Verifies the broker against the local CA (host name included); None on the plaintext listener."""
    return None if settings.kafka_plaintext_dev else create_ssl_context(cafile=str(ca_file(settings)))


def aiokafka_options(settings: Settings, name: str) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    options = kafka_client_settings(settings, name)
    del options["ssl_cafile"]  # aiokafka takes a context
    return options | {"ssl_context": ssl_context(settings)}


def librdkafka_options(settings: Settings, name: str) -> dict[str, Any]:
    """The same connection as librdkafka (confluent-kafka) configuration."""
    options = kafka_client_settings(settings, name)
    return {
        "bootstrap.servers": options["bootstrap_servers"],
        "security.protocol": options["security_protocol"],
        "sasl.mechanism": options["sasl_mechanism"],
        "sasl.username": options["sasl_plain_username"],
        "sasl.password": options["sasl_plain_password"],
        "ssl.ca.location": options["ssl_cafile"],
    }


class SecretFileCredentials(CredentialProvider):
    """A principal's Redis user and password, read when a connection opens: after `gongji
    credentials rotate`, new connections use the new password without a restart."""

    def __init__(self, settings: Settings, name: str) -> None:
        password(settings, name)  # missing credentials fail now, with the sentence that names the fix
        self._settings = settings
        self._name = name

    def get_credentials(self) -> tuple[str, str]:
        return self._name, password(self._settings, self._name)

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()


def redis_options(settings: Settings, name: str) -> dict[str, Any]:
    """Keyword arguments for redis-py: the principal's Redis ACL user, and on a TLS address
    (`rediss://`, a cluster's) the local CA to verify the node against."""
    options: dict[str, Any] = {"credential_provider": SecretFileCredentials(settings, name)}
    if settings.redis_url.startswith("rediss://"):
        options["ssl_ca_certs"] = str(ca_file(settings))
    return options
