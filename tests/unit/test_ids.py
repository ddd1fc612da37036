"""Output ids are derived, never drawn: the same parts give the same id in every release, so that an
output published again after a crash or an upgrade keeps its id."""

from __future__ import annotations

import json
import random
import uuid

from shared.ids import _EVENT_NAMESPACE, derived_event_id

# Characters a part may hold: ids and topic names, and what JSON escapes or a part may carry
# beyond ASCII (quotes, backslashes, controls, Chinese, an emoji outside the basic plane).
_ALPHABET = 'abcXYZ019-._:/ "\\\n\t\x00\x7f\u00e9\u5171\u6d4e\U0001f600'


def test_a_derived_id_is_the_uuid5_of_the_parts_as_a_json_list() -> None:
    chosen = random.Random(20261206)
    for _ in range(2_000):
        parts = tuple(
            "".join(chosen.choice(_ALPHABET) for _ in range(chosen.randrange(0, 40)))
            for _ in range(chosen.randrange(0, 7))
        )
        assert derived_event_id(*parts) == str(uuid.uuid5(_EVENT_NAMESPACE, json.dumps(parts))), parts


def test_an_id_published_before_keeps_its_value() -> None:
    # Pinned: a change of derivation would give outputs published again new ids, counted twice.
    assert derived_event_id("wallet", "gongji.internal.draw-requests.v1", "c-1", "answered") == (
        "34d6e7f0-de59-5e8e-aee6-c0263d2cdfc6"
    )
