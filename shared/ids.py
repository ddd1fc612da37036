"""Resident ID numbers (GB 11643), pooling-region codes, masking, and derived event ids."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import uuid
from json.encoder import encode_basestring_ascii

from stdnum.cn import ric
from stdnum.exceptions import ValidationError as StdnumValidationError

# The 31 provincial regions and the Xinjiang Production and Construction Corps (66).
PROVINCE_CODES: frozenset[str] = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65 66".split()
)

_EVENT_NAMESPACE = uuid.UUID("5b0c1f4e-3a1d-4c8e-9a57-1d6f0e3c2b11")
_EVENT_NAMESPACE_BYTES = _EVENT_NAMESPACE.bytes


def validate_person_id(value: str) -> str:
    """Return the ID unchanged if it is an 18-character resident ID with a valid check character."""
    _check_person_id(value)
    return value


# Every hop of a claim validates the same few ids again, and the check (a region lookup, then the
# check character) was a tenth of a service's time: a valid id is remembered.
@functools.lru_cache(maxsize=1 << 16)
def _check_person_id(value: str) -> None:
    if ric.compact(value) != value:
        raise ValueError("person id must be 18 characters, digits and an upper-case X check character")
    try:
        ric.validate(value)
    except StdnumValidationError as error:
        raise ValueError(f"invalid resident ID number: {error.message}") from None


def validate_region(value: str) -> str:
    if len(value) != 6 or not (value.isascii() and value.isdigit()):  # "٤٤" is a digit to isdigit
        raise ValueError("region must be a 6-digit pooling-region code")
    if value[:2] not in PROVINCE_CODES:
        raise ValueError(f"region {value} names no province (first two digits {value[:2]})")
    return value


def province_of(region: str) -> str:
    return region[:2]


def claim_id_prefix(service_region: str, institution_code: str | None) -> str:
    """What a claim's id begins with: its service region and, for care at an institution or a
    pharmacy, the institution's code (`440300-H44030500012-`, then the institution's own serial).
    An id names its sender, so that no one else can take it first."""
    return f"{service_region}-{institution_code}-" if institution_code else f"{service_region}-"


def claim_id_region(claim_id: str) -> str | None:
    """The service region a claim id begins with, or None if it begins with none."""
    region, dash, _ = claim_id.partition("-")
    return region_or_none(region) if dash else None


def region_or_none(value: str) -> str | None:
    try:
        return validate_region(value)
    except ValueError:
        return None


def mask_person_id(person_id: str) -> str:
    """Logs show only the first 6 and last 4 characters of an ID."""
    return f"{person_id[:6]}********{person_id[-4:]}"


# An 18-character resident ID standing alone in a text (not inside a longer run of letters or digits).
_PERSON_ID_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])(\d{6})\d{8}(\d{3}[0-9X])(?![0-9A-Za-z])")


def mask_person_ids(text: str) -> str:
    """Masks every resident ID in a text as mask_person_id does: for logs and tables."""
    return _PERSON_ID_IN_TEXT.sub(r"\1********\2", text)


class _MaskedLogRecord(logging.LogRecord):
    """A log record whose message, exception and stack text show person ids masked, whichever
    library logged it and whatever its handler: a traceback may quote a message's content."""

    def getMessage(self) -> str:  # noqa: N802 - logging's interface
        return mask_person_ids(super().getMessage())

    @property
    def exc_text(self) -> str | None:
        return self._exc_text

    @exc_text.setter
    def exc_text(self, value: str | None) -> None:
        self._exc_text = mask_person_ids(value) if value else value

    @property
    def stack_info(self) -> str | None:
        return self._stack_info

    @stack_info.setter
    def stack_info(self, value: str | None) -> None:
        self._stack_info = mask_person_ids(value) if value else value


def mask_person_ids_in_logs() -> None:
    """Every log record of this process from now on masks person ids."""
    logging.setLogRecordFactory(_MaskedLogRecord)


def derived_event_id(*parts: str) -> str:
    """A deterministic id for an output, so that re-publishing after a crash repeats the same id.
    It is the UUID 5 of the parts JSON-encoded as a list: a part may hold any character, and no two
    different lists of parts give the same name. Built by hand, byte for byte what
    `str(uuid.uuid5(_EVENT_NAMESPACE, json.dumps(parts)))` gives (tests/unit/test_ids.py holds them
    equal), in a fifth of its time: a claim derives several, on every hop."""
    name = "[" + ", ".join(map(encode_basestring_ascii, parts)) + "]"
    digest = bytearray(hashlib.sha1(_EVENT_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    hexadecimal = digest.hex()
    return f"{hexadecimal[:8]}-{hexadecimal[8:12]}-{hexadecimal[12:16]}-{hexadecimal[16:20]}-{hexadecimal[20:]}"


def fingerprint(canonical_json: str) -> str:
    """Identifies an input's content, to tell a redelivery (same) from a conflict (different)."""
    return hashlib.sha256(canonical_json.encode()).hexdigest()[:32]


def make_person_id(birth_place: str, birth_date: str, serial: int) -> str:
    """Builds a valid resident ID: 6-digit birth place, YYYYMMDD, 3-digit serial, check character."""
    body = f"{birth_place}{birth_date}{serial:03d}"
    return body + ric.calc_check_digit(body + "0")
