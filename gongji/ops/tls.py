"""The local certificate authority that `gongji infra up` creates (with `cryptography`): a CA whose
certificate clients trust, and the broker's key and certificate (for 127.0.0.1 and localhost),
signed by it. Kafka reads both as PEM. The broker's key stays in `.gongji/secrets/` (0600); the
CA's key apart from every service's secrets, in `.gongji/ca/` (GONGJI_CA_KEY_DIR), and it is read
only to issue or renew the broker's certificate: an operator may keep it offline the rest of the
time."""

from __future__ import annotations

import datetime
import ipaddress
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


def _broker_certificate_fits(settings: Settings, hosts: set[str]) -> bool:
    try:
        pem = broker_keystore(settings).read_bytes()
    except FileNotFoundError:
        return False
    certificate = x509.load_pem_x509_certificates(pem)[0]
    covered = set(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    return set(_names(hosts)) <= covered and certificate.not_valid_after_utc - _now() > RENEW_BEFORE


def _make_broker_certificate(settings: Settings, hosts: set[str]) -> None:
    try:
        ca_key = serialization.load_pem_private_key(ca_key_file(settings).read_bytes(), password=None)
    except FileNotFoundError:
        raise CAKeyOffline(
            f"the broker's certificate must be issued or renewed (it expires within "
            f"{RENEW_BEFORE.days} days, or misses a host name), and the CA's key is not at "
            f"{ca_key_file(settings)}: put it back (or set GONGJI_CA_KEY_DIR) and run again"
        ) from None
    ca_certificate = x509.load_pem_x509_certificate(ca_file(settings).read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        # Its CN is its principal on the controller's listener (mutual TLS, ssl.principal.mapping.rules).
        x509.CertificateBuilder()
        .subject_name(_name(BROKER.name))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=BROKER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        # Server on every listener, and client of the controller listener (mutual TLS).
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain = certificate.public_bytes(serialization.Encoding.PEM) + ca_certificate.public_bytes(
        serialization.Encoding.PEM
    )
    write_secret(broker_keystore(settings), _private_pem(key) + chain)


def ensure_certificates(settings: Settings, host: str) -> list[str]:
    """Creates the CA once, and the broker's certificate when missing, about to expire, or not
    covering `host`; returns what it made."""
    made = []
    if not ca_file(settings).exists():
        _make_ca(settings)
        broker_keystore(settings).unlink(missing_ok=True)
        made.append("a local CA")
    hosts = {"127.0.0.1", "localhost", host}
    if not _broker_certificate_fits(settings, hosts):
        _make_broker_certificate(settings, hosts)
        made.append(f"the broker's certificate for {', '.join(sorted(hosts))}")
    return made
