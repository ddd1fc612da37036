"""The local certificate authority that `gongji infra up` creates (with `cryptography`): a CA whose
certificate clients trust, and the servers' keys and certificates (for 127.0.0.1 and localhost),
signed by it: the Kafka brokers', and the Redis Cluster nodes' (`--cluster`). Kafka and Redis read
both as PEM. The servers' keys stay in `.gongji/secrets/` (0600); the CA's key apart from every
service's secrets, in `.gongji/ca/` (GONGJI_CA_KEY_DIR), and it is read only to issue or renew a
server's certificate: an operator may keep it offline the rest of the time."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.credentials import ca_file, secrets_dir, write_secret
from shared.principals import BROKER
from shared.settings import Settings

CA_DAYS = 3650
BROKER_DAYS = 397
RENEW_BEFORE = datetime.timedelta(days=30)


class CAKeyOffline(RuntimeError):
    """A certificate must be issued and the CA's key is not where it is looked for."""


def ca_key_file(settings: Settings) -> Path:
    return (settings.ca_key_dir or settings.state_dir / "ca") / "ca-key.pem"


def broker_keystore(settings: Settings) -> Path:
    """The broker's private key and certificate chain in one PEM file (ssl.keystore.type=PEM)."""
    return secrets_dir(settings) / "broker-keystore.pem"


def redis_keystore(settings: Settings) -> Path:
    """A Redis Cluster node's private key and certificate chain in one PEM file (Redis reads the
    key and the certificates from it by their PEM headers)."""
    return secrets_dir(settings) / "redis-keystore.pem"


# Each server's certificate: its file and its common name. A broker's CN is its principal on the
# controller's listener (mutual TLS, ssl.principal.mapping.rules); Redis nodes present theirs to
# each other on the cluster bus and to their primary when they replicate (mutual TLS).
SERVERS = {"broker": (broker_keystore, BROKER.name), "redis": (redis_keystore, "redis-node")}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(settings: Settings) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("Gongji local CA"))
        .issuer_name(_name("Gongji local CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    ca_key_file(settings).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret(ca_key_file(settings), _private_pem(key))
    write_secret(ca_file(settings), certificate.public_bytes(serialization.Encoding.PEM))


def _names(hosts: set[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in sorted(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _certificate_fits(keystore: Path, hosts: set[str]) -> bool:
    try:
        pem = keystore.read_bytes()
    except FileNotFoundError:
        return False
    certificate = x509.load_pem_x509_certificates(pem)[0]
    covered = set(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    return set(_names(hosts)) <= covered and certificate.not_valid_after_utc - _now() > RENEW_BEFORE


def _make_certificate(settings: Settings, server: str, hosts: set[str]) -> None:
    where, common_name = SERVERS[server]
    keystore = where(settings)
    try:
        ca_key = serialization.load_pem_private_key(ca_key_file(settings).read_bytes(), password=None)
    except FileNotFoundError:
        raise CAKeyOffline(
            f"the {server}'s certificate must be issued or renewed (it expires within "
            f"{RENEW_BEFORE.days} days, or misses a host name), and the CA's key is not at "
            f"{ca_key_file(settings)}: put it back (or set GONGJI_CA_KEY_DIR) and run again"
        ) from None
    ca_certificate = x509.load_pem_x509_certificate(ca_file(settings).read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=BROKER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        # A server to its clients, and a client of its peers (mutual TLS).
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain = certificate.public_bytes(serialization.Encoding.PEM) + ca_certificate.public_bytes(
        serialization.Encoding.PEM
    )
    write_secret(keystore, _private_pem(key) + chain)


def ensure_certificates(settings: Settings, hosts: Iterable[str], servers: tuple[str, ...] = ("broker",)) -> list[str]:
    """Creates the CA once, and each server's certificate when missing, about to expire, or not
    covering every one of `hosts` (the addresses clients reach its nodes at); returns what it made."""
    made = []
    if not ca_file(settings).exists():
        _make_ca(settings)
        for keystore, _ in SERVERS.values():
            keystore(settings).unlink(missing_ok=True)
        made.append("a local CA")
    hosts = {"127.0.0.1", "localhost", *hosts}
    for server in servers:
        if not _certificate_fits(SERVERS[server][0](settings), hosts):
            _make_certificate(settings, server, hosts)
            made.append(f"the {server}'s certificate for {', '.join(sorted(hosts))}")
    return made
