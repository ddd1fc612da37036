"""Every place where Gongji reaches past FastStream's public API, in one module, each checked
against FastStream CHECKED_WITH (pinned in pyproject.toml). tests/unit/test_faststream_hooks.py
fails loudly when an upgrade moves one: read this module again before changing the pin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from faststream.exceptions import IncorrectState
from faststream.kafka import KafkaBroker

CHECKED_WITH = "0.7.8"


def replace_batch_poll(subscriber: Any, get_msg: Callable[[Any], Awaitable[tuple]]) -> None:
    """A batch subscriber's consume loop fetches each batch with its `get_msg(consumer)`, which
    sleeps a whole batch timeout after an empty poll (shared/runtime.py says why that is replaced)."""
    subscriber.get_msg = get_msg


def aiokafka_producer(broker: KafkaBroker) -> Any | None:
    """The broker's aiokafka producer, once it is started; None if FastStream moved it (there is no
    public handle)."""
    try:
        return broker.config.producer._producer.producer
    except (AttributeError, IncorrectState):  # moved, or not started yet
        return None


def set_batch_payload(handler: Callable[..., Any], payload: Any) -> None:
    """FastStream reads a subscriber's payload schema (for its own validation and the AsyncAPI
    document) from its handler's annotation: a handler built at run time gets one set here."""
    handler.__annotations__ = {"batch": payload, "return": None}
