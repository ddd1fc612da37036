"""The AsyncAPI document is generated from the code and lists every public topic with its schema."""

from __future__ import annotations

import json

from gongji.ops.asyncapi import DOCS_DIR, asyncapi_specification
from shared.settings import Settings
from shared.topics import ALL_TOPICS


def _document() -> dict:
    # The document kept in the repository names the default servers, whatever this machine's settings.
    return asyncapi_specification(Settings.model_construct()).to_jsonable()


def test_every_public_topic_appears_with_its_schema() -> None:
    document = _document()
    addresses = {channel["address"]: name for name, channel in document["channels"].items()}
    schemas = document["components"]["schemas"]
    for topic in ALL_TOPICS:
        assert topic.name in addresses, topic.name
        assert topic.model.__name__ in schemas, topic.model.__name__
        for field in topic.model.model_fields:
            assert field in schemas[topic.model.__name__]["properties"], (topic.name, field)


def test_the_document_kept_in_the_repository_is_current() -> None:
    kept = json.loads((DOCS_DIR / "asyncapi.json").read_text())
    assert kept == json.loads(json.dumps(_document())), "run `gongji docs` and commit docs/asyncapi.json"
