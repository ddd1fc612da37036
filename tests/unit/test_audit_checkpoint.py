"""The deep audit's checkpoint: written with its own checksum, refused when in doubt, and the
cuts it keeps are those a later audit reads from (a horizon before its own)."""

from __future__ import annotations

import hmac
import json
import stat
from collections import Counter
from datetime import datetime, timedelta

import pytest

from gongji.audit.checkpoint import Checkpoint, CheckpointInDoubt, CheckpointStore, Cut
from gongji.audit.opening import Opening, PairChange, PairState
from gongji.audit.window import Window
from shared.settings import Settings

T0 = datetime.fromisoformat("2026-03-01T00:00:00+08:00")
HORIZON = timedelta(days=25)
KEY = b"k" * 32


def cut(days: int, offset: int) -> Cut:
    return Cut(T0 + timedelta(days=days), {("gongji.claims.v1", 0): offset, ("gongji.settlements.v1", 3): 2 * offset})


def opening() -> Opening:
    return Opening(
        records=42,
        accounts={"P": Counter(credited=100_000, debited=30_000)},
        quotas={"P": Counter(R=20_000)},
        pairs={
            ("P", "R"): PairState(PairChange("established", 2, "510100"), PairChange("established", 2, "510100"), True)
        },
        standing={"P": 1},
        unstepped={"Q"},
        resident={"R"},
        # 44>63: a claim and its reversal in one month, 0 fen in all: still a line of the month
        clearing={
            "2026-03": Counter(
                {"44>51": 30_000, "44>51#claims": 1, "44>63": 0, "44>63#claims": 1, "44>63#reversals": 1}
            )
        },
        claims_final=1,
    )


def test_a_checkpoint_reads_back_as_written_and_only_its_owner_may_read_it(tmp_path) -> None:
    store = CheckpointStore(tmp_path / "audit", KEY)
    written = Checkpoint("cluster-1", cut(30, 500), opening(), [cut(1, 10), cut(4, 40)])
    path = store.save(written)
    assert (loaded := store.load("cluster-1")) == written
    assert (
        "44>63" in loaded.opening.clearing["2026-03"]
    )  # a pair that nets to 0 fen is kept (Counters equal without it)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.load("cluster-2") is None  # another cluster (a reset Kafka): no checkpoint, from scratch


@pytest.mark.parametrize(
    "tamper",
    [
        lambda document: document["body"]["opening"]["accounts"]["P"].update(credited=200_000),
        lambda document: document["body"]["cut"]["offsets"]["gongji.claims.v1"].update({"0": 1}),
        lambda document: document.update(seal="0" * 64),
        # changed and sealed again by someone without the audit's key
        lambda document: document.update(
            body=(body := {**document["body"], "format": 1}),
            seal=hmac.new(
                b"not the key", json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), "sha256"
            ).hexdigest(),
        ),
    ],
    ids=["money", "offsets", "seal", "resealed"],
)
def test_a_checkpoint_changed_after_it_was_written_is_in_doubt(tmp_path, tamper) -> None:
    store = CheckpointStore(tmp_path, KEY)
    path = store.save(Checkpoint("cluster-1", cut(30, 500), opening()))
    document = json.loads(path.read_text())
    tamper(document)
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointInDoubt, match="from-scratch"):
        store.load("cluster-1")


def test_a_checkpoint_that_is_not_json_or_incomplete_is_in_doubt(tmp_path) -> None:
    store = CheckpointStore(tmp_path, KEY)
    store.path("cluster-1").write_text("{half")
    with pytest.raises(CheckpointInDoubt, match="not JSON"):
        store.load("cluster-1")
    body = {"format": 1, "cluster_id": "cluster-1", "cut": {"at": T0.isoformat(), "offsets": {}}}
    seal = hmac.new(KEY, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), "sha256").hexdigest()
    store.path("cluster-1").write_text(json.dumps({"seal": seal, "body": body}))
    with pytest.raises(CheckpointInDoubt, match="incomplete"):
        store.load("cluster-1")


def test_the_sealing_key_is_made_once_and_kept_for_the_operator_alone(tmp_path) -> None:
    first = CheckpointStore.of(Settings(state_dir=tmp_path))
    assert len(first.key) == 32 and CheckpointStore.of(Settings(state_dir=tmp_path)).key == first.key
    assert stat.S_IMODE((tmp_path / "secrets" / "audit-checkpoint.key").stat().st_mode) == 0o600


def test_an_audit_reads_from_the_newest_cut_a_horizon_before_its_checkpoint() -> None:
    checkpoint = Checkpoint("c", cut(30, 500), Opening(), [cut(1, 10), cut(4, 40), cut(5, 50), cut(20, 200)])
    assert checkpoint.starts(HORIZON) == cut(5, 50).offsets  # 25 days before day 30, the newest
    assert Checkpoint("c", cut(30, 500), Opening(), [cut(20, 200)]).starts(HORIZON) == {}  # none: the beginning


def test_the_next_checkpoint_keeps_only_the_cuts_a_later_audit_may_read_from() -> None:
    checkpoint = Checkpoint("c", cut(30, 500), Opening(), [cut(1, 10), cut(4, 40), cut(5, 50), cut(20, 200)])
    following = checkpoint.followed_by(cut(31, 510), opening(), HORIZON)
    assert following.cut == cut(31, 510) and following.opening == opening()
    assert following.earlier_cuts == [cut(5, 50), cut(20, 200), cut(30, 500)]  # day 5: the newest 25 days before 31
    assert following.starts(HORIZON) == cut(5, 50).offsets


def test_the_horizon_reaches_back_past_everything_redis_may_still_hold() -> None:
    """Two generations of seen ids (window and grace, twice) and a day for a consumer's lag: 65 days
    with the default 30-day windows; the claims' records (their day, window and grace) are shorter."""
    window = Window.from_settings(Settings(), T0)
    assert window.horizon == timedelta(days=65)
    short = Window.from_settings(Settings(input_window_seconds=3600, claim_window_seconds=20 * 86400), T0)
    assert short.horizon == timedelta(days=1) + timedelta(days=22) + timedelta(seconds=300) + timedelta(days=1)
