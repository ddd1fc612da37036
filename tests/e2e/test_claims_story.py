"""The whole story across the three running services over the real Kafka and Redis: a family in
several provinces, relationships, grants, claims of each category, reversals, the month closed and
its statement checked against figures computed by hand; then duplicates, conflicts and restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.settlement.domain import gross_lines, net_positions
from shared.topics import (
    CLAIMS,
    CLEARING,
    RECONCILIATION,
    SETTLEMENTS,
    STATISTICS,
    SUPERVISION,
    WALLET_EVENTS,
    province_clearing,
)
from tests.e2e.world import World
from tests.support import new_id, new_person_id, now_iso

pytestmark = pytest.mark.timeout(300)


def gongji(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gongji", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def after_the_month(month: str) -> dict[str, str]:
    """A clock at midnight Asia/Shanghai after `month`: only an ended month may be closed."""
    year, number = int(month[:4]), int(month[5:])
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return {"GONGJI_CLOCK_FIXED_AT": f"{year:04d}-{number:02d}-01T00:00:00+08:00"}


async def test_the_whole_story_and_its_monthly_statement(world: World, kafka, tmp_path: Path) -> None:
    # The statement is checked against figures computed by hand, on top of whatever other tests and
    # load runs put into the same month before.
    before_by_month = await world.clearing_totals()
    daughter = await world.person("employee", "350100")
    son = await world.person("employee", "620100")
    mother = await world.person("resident", "530100")
    for child in (daughter, son):
        await world.credit(child, 500_000)
        await world.establish(child, mother, "530100", kinship="parent")
    assert (await world.grant(daughter, mother, "530100", 100_000))["frozen_fen"] == 100_000
    assert (await world.grant(son, mother, "530100", 20_000))["type"] == "granted"

    clinic = await world.settle(world.claim_message(mother, "530100", 30_000))
    assert (clinic["status"], clinic["paid_fen"], clinic["self_pay_fen"]) == ("settled", 30_000, 0)
    assert clinic["payers"] == [{"provider_id": daughter, "provider_region": "350100", "amount_fen": 30_000}]

    pharmacy = await world.settle(
        world.claim_message(
            mother,
            "530100",
            10_000,
            "pharmacy",
            items=[
                {"code": "XB01AC06", "in_catalogue": True, "amount_fen": 8_000},
                {"code": "HEALTH-TEA", "in_catalogue": False, "amount_fen": 2_000},
            ],
        )
    )
    assert (pharmacy["status"], pharmacy["paid_fen"], pharmacy["self_pay_fen"], pharmacy["reason"]) == (
        "partial",
        8_000,
        2_000,
        "NOT_IN_CATALOGUE",
    )

    premium = await world.settle(world.claim_message(mother, "530100", 38_000, "resident_premium"))
    assert (premium["status"], premium["paid_fen"]) == ("settled", 38_000)

    care = await world.settle(world.claim_message(mother, "530100", 30_000, "ltc_premium"))
    assert care["status"] == "settled"
    assert [(p["provider_id"], p["amount_fen"]) for p in care["payers"]] == [(daughter, 24_000), (son, 6_000)]

    short = await world.settle(world.claim_message(mother, "530100", 20_000))
    assert (short["status"], short["paid_fen"], short["self_pay_fen"], short["reason"]) == (
        "partial",
        14_000,
        6_000,
        "NO_QUOTA",
    )

    cash = await world.settle(world.claim_message(mother, "530100", 5_000, "cash_withdrawal"))
    assert (cash["status"], cash["paid_fen"], cash["reason"]) == ("rejected", 0, "CATEGORY_NOT_ALLOWED")

    refund = await world.reverse(mother, pharmacy["claim_id"])
    assert (refund["status"], refund["paid_fen"], refund["reverses"]) == ("reversed", 8_000, pharmacy["claim_id"])
    refunded = await kafka.wait_for(
        WALLET_EVENTS, lambda m: m["type"] == "refunded" and m["claim_id"] == pharmacy["claim_id"]
    )
    assert (refunded[0]["provider_id"], refunded[0]["amount_fen"], refunded[0]["frozen_fen"]) == (
        daughter,
        8_000,
        8_000,
    )  # back into the daughter's grant: the relationship lasts

    # The daughter's own money: 500,000 − 30,000 − 8,000 − 38,000 − 24,000 + 8,000 refunded.
    dissolved = await world.relationship_command("dissolve", daughter, daughter, mother)
    assert dissolved["type"] == "dissolved"
    released = await kafka.wait_for(
        WALLET_EVENTS, lambda m: m["type"] == "released" and m["cause_id"] == dissolved["event_id"]
    )
    assert (released[0]["amount_fen"], released[0]["balance_fen"], released[0]["frozen_fen"]) == (8_000, 408_000, 0)

    months = {event["clearing_month"] for event in (clinic, pharmacy, premium, care, short, refund)}
    assert len(months) == 1
    month = months.pop()
    assert gongji("clearing", "close", month).returncode == 1  # the month has not ended yet
    closed = gongji("clearing", "close", month, env=after_the_month(month))
    assert closed.returncode == 0, closed.stderr
    await kafka.wait_for(CLEARING, lambda m: m["month"] == month and m.get("province") in {"35", "62", "53"}, count=3)
    await kafka.settle_quietly()  # the rest of the statement, published in the same go
    rows = kafka.matching(CLEARING, lambda m: m["month"] == month)
    gross = {
        (r["payer_province"], r["payee_province"]): (r["amount_fen"], r["claims"], r["reversals"])
        for r in rows
        if r["row"] == "gross"
    }
    net = {r["province"]: r["amount_fen"] for r in rows if r["row"] == "net"}
    earlier_lines = gross_lines(before_by_month.get(month, {}))
    earlier = {
        (line.payer_province, line.payee_province): (line.amount_fen, line.claims, line.reversals)
        for line in earlier_lines
    }
    earlier_net = net_positions(earlier_lines)

    def this_test(pair: tuple[str, str]) -> tuple[int, int, int]:
        return tuple(now - before for now, before in zip(gross[pair], earlier.get(pair, (0, 0, 0)), strict=True))

    # Daughter (35) paid 30,000 + 8,000 + 38,000 + 24,000 in 4 claims, less the 8,000 of 1 reversal.
    assert this_test(("35", "53")) == (92_000, 4, 1)
    assert this_test(("62", "53")) == (20_000, 2, 0)  # the son: 6,000 + 14,000
    assert {province: net[province] - earlier_net.get(province, 0) for province in ("35", "62", "53")} == {
        "35": -92_000,
        "62": -20_000,
        "53": 112_000,
    }
    assert sum(net.values()) == 0
    # Each province gets the rows that concern it on its own topic, and no other province's.
    for province in ("35", "62", "53"):
        own = kafka.matching(province_clearing(province), lambda m: m["month"] == month)
        assert {row["event_id"] for row in own} == {
            row["event_id"]
            for row in rows
            if province in (row.get("payer_province"), row.get("payee_province"), row.get("province"))
        }

    again = gongji("clearing", "close", month, env=after_the_month(month))  # the same statement, however often
    assert again.returncode == 0
    await kafka.settle_quietly()
    ours = kafka.matching(CLEARING, lambda m: m["month"] == month)
    by_id: dict[str, dict] = {}
    for row in ours:
        row = {k: v for k, v in row.items() if not k.startswith("_")}
        assert by_id.setdefault(row["event_id"], row) == row
    assert len(ours) == 2 * len(by_id)

    # The closed month archived for the son's province, read from the topics: it adds up to the statement.
    archived = gongji("archive", "--month", month, "--province", "62", "--out", str(tmp_path))
    assert archived.returncode == 0, archived.stdout + archived.stderr
    manifest = json.loads((tmp_path / month / "manifest-62.json").read_text())
    assert manifest["provinces"]["62"]["sums"]["cross_province"]["62>53"]["amount_fen"] == gross[("62", "53")][0]
    assert gongji("archive", "--month", month, "--province", "62", "--out", str(tmp_path), "--verify").returncode == 0

    # A claim after the close counts in the next month.
    sister = await world.person("employee", "360100")
    await world.credit(sister, 10_000)
    await world.establish(sister, mother, "530100", kinship="sibling")
    assert (await world.grant(sister, mother, "530100", 1_000))["type"] == "granted"
    late = await world.settle(world.claim_message(mother, "530100", 1_000, "institution"))
    assert late["status"] == "settled" and late["clearing_month"] > month  # after the close: the next month

    audit = gongji("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr


async def test_the_same_claim_delivered_50_times_pays_once(world: World, kafka) -> None:
    provider, recipient = await world.funded_family()
    message = world.claim_message(recipient, "510100", 1_234)
    for _ in range(50):
        await kafka.publish(CLAIMS, message)
    results = await kafka.wait_for(SETTLEMENTS, lambda m: m["claim_id"] == message["claim_id"], count=50)
    assert {(r["event_id"], r["status"], r["paid_fen"]) for r in results} == {
        (results[0]["event_id"], "settled", 1_234)
    }
    await kafka.settle_quietly()
    debits = kafka.matching(WALLET_EVENTS, lambda m: m["type"] == "debited" and m["claim_id"] == message["claim_id"])
    assert len({d["event_id"] for d in debits}) == 1
    assert int(await world.redis.hget(f"wal:{{p:{provider}}}:account", "balance")) == 1_000_000 - 1_234


async def test_a_conflicting_duplicate_is_refused_and_the_first_result_stands(world: World) -> None:
    provider, recipient = await world.funded_family()
    first = world.claim_message(recipient, "510100", 2_000)
    assert (await world.settle(first))["status"] == "settled"
    conflict = await world.settle({**first, "amount_fen": 9_000})
    assert (conflict["status"], conflict["reason"], conflict["paid_fen"]) == ("rejected", "CONFLICT", 0)
    shown = gongji("claims", "show", first["claim_id"])
    assert shown.returncode == 0 and '"paid": 2000' in shown.stdout
    assert int(await world.redis.hget(f"wal:{{p:{provider}}}:account", "balance")) == 1_000_000 - 2_000


async def test_a_claim_without_quota_is_refused_no_quota(world: World) -> None:
    recipient = await world.person("resident", "510100")
    result = await world.settle(world.claim_message(recipient, "510100", 5_000))
    assert (result["status"], result["reason"], result["self_pay_fen"]) == ("rejected", "NO_QUOTA", 5_000)


async def test_claims_for_people_not_insured_or_elsewhere_are_refused(world: World) -> None:
    stranger = new_person_id()
    assert (await world.settle(world.claim_message(stranger, "510100", 100)))["reason"] == "RECIPIENT_NOT_INSURED"
    suspended = await world.person("resident", "510100", "suspended")
    assert (await world.settle(world.claim_message(suspended, "510100", 100)))["reason"] == "RECIPIENT_STATUS_ABNORMAL"
    elsewhere = await world.person("resident", "510100")
    assert (await world.settle(world.claim_message(elsewhere, "510700", 100)))["reason"] == "RECIPIENT_MISMATCH"


async def test_reversal_refusals_and_a_reversal_after_the_relationship_ended(world: World, kafka) -> None:
    provider, recipient = await world.funded_family()
    assert (await world.reverse(recipient, "510100-no-such-claim"))["reason"] == "UNKNOWN_CLAIM"
    paid = await world.settle(world.claim_message(recipient, "510100", 3_000))
    dissolved = await world.relationship_command("dissolve", provider, provider, recipient)
    await kafka.wait_for(WALLET_EVENTS, lambda m: m["type"] == "released" and m["cause_id"] == dissolved["event_id"])
    reversed_ = await world.reverse(recipient, paid["claim_id"])
    assert reversed_["status"] == "reversed"
    refunded = await kafka.wait_for(
        WALLET_EVENTS, lambda m: m["type"] == "refunded" and m["claim_id"] == paid["claim_id"]
    )
    assert (refunded[0]["balance_fen"], refunded[0]["frozen_fen"]) == (1_000_000, 0)  # to the account
    assert (await world.reverse(recipient, paid["claim_id"]))["reason"] == "ALREADY_REVERSED"


async def test_a_frozen_account_pays_no_claim(world: World, kafka) -> None:
    provider, recipient = await world.funded_family()
    event_id = new_id("sup")
    await kafka.publish(
        SUPERVISION,
        {
            "event_id": event_id,
            "person_id": recipient,
            "action": "freeze",
            "reason": "违规使用",
            "occurred_at": now_iso(),
        },
    )
    await kafka.wait_for(WALLET_EVENTS, lambda m: m["cause_id"] == event_id)
    result = await world.settle(world.claim_message(recipient, "510100", 1_000))
    assert (result["status"], result["reason"]) == ("rejected", "ACCOUNT_FROZEN")


async def test_grant_limits_through_the_wallet_service(world: World) -> None:
    provider, recipient = await world.funded_family(quota_fen=200_000)
    assert (await world.grant(provider, recipient, "510100", 200_001))["reason"] == "TRANSFER_AMOUNT_OVER_LIMIT"
    assert (await world.grant(provider, recipient, "510100", 1))["type"] == "granted"
    assert (await world.grant(provider, recipient, "510100", 1))["type"] == "granted"
    assert (await world.grant(provider, recipient, "510100", 1))["reason"] == "DAILY_TRANSFER_LIMIT"
    assert (await world.grant(provider, recipient, "510700", 1))["reason"] == "RECIPIENT_MISMATCH"
    stranger = new_person_id()
    assert (await world.grant(provider, recipient, "510100", 1, actor_id=stranger))["reason"] == "NOT_AUTHORIZED"


async def test_an_insurance_change_releases_the_quota(world: World, kafka) -> None:
    provider, recipient = await world.funded_family(quota_fen=50_000)
    await world.enroll(recipient, "employee", "510100")  # became an employee: an insurance change
    released = await kafka.wait_for(
        WALLET_EVENTS,
        lambda m: m["type"] == "released" and m["provider_id"] == provider and m["recipient_id"] == recipient,
    )
    assert (released[0]["amount_fen"], released[0]["frozen_fen"]) == (50_000, 0)


async def test_statistics_and_the_days_reconciliation_are_published_and_match_the_ledger(world: World, kafka) -> None:
    provider, recipient = await world.funded_family()
    for _ in range(2):
        await world.settle(world.claim_message(recipient, "510100", 700, "resident_premium"))
    snapshots = await kafka.wait_for(
        STATISTICS,
        lambda m: any(c["key"] == "resident_premium" and c["count"] >= 2 for c in m["by_category"]),
    )
    assert snapshots[-1]["instance"] == "gongji" and snapshots[-1]["latency_p99_ms"] is not None
    days = await kafka.wait_for(
        RECONCILIATION, lambda m: m["province"] == "51" and m["as_insured"]["total"]["settlements"] >= 2
    )
    assert days[-1]["as_insured"]["by_clearing_type"][3]["key"] == "99"  # a premium is "other"
    checked = gongji("reconcile", "--date", days[-1]["day"], "--province", "51", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["matches_ledger"] is True


@pytest.mark.parametrize("service", ["settlement", "wallet"])
async def test_a_restart_mid_stream_leaves_every_claim_with_one_result_and_audit_clean(
    world: World, kafka, service_processes, service: str
) -> None:
    provider, recipient = await world.funded_family(quota_fen=200_000)
    claims = [world.claim_message(recipient, "510100", 1_000 + n) for n in range(120)]
    for number, claim in enumerate(claims):
        if number == 60:
            service_processes[service].stop(signal.SIGKILL)
            service_processes[service].start()
        await kafka.publish(CLAIMS, claim)
    ids = {claim["claim_id"] for claim in claims}
    results = await kafka.wait_for_each(SETTLEMENTS, "claim_id", ids, timeout=120)
    by_claim: dict[str, set] = {}
    for result in results:
        by_claim.setdefault(result["claim_id"], set()).add((result["event_id"], result["status"], result["paid_fen"]))
    assert len(by_claim) == len(ids) and all(len(outcomes) == 1 for outcomes in by_claim.values())
    paid = sum(next(iter(outcomes))[2] for outcomes in by_claim.values())
    assert paid == 200_000 or paid == sum(claim["amount_fen"] for claim in claims)
    balance = int(await world.redis.hget(f"wal:{{p:{provider}}}:account", "balance"))
    assert balance == 1_000_000 - paid
    audit = gongji("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
