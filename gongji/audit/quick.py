"""`gongji audit` (quick): the money invariants over the whole Redis state, as Redis holds it.

It reads the records it checks, so it finds what breaks them in place, not what they lost: the
deep audit (`gongji audit --deep`) recomputes the books from the topics. Read at a quiet moment
(no claim in flight), every line must hold; while sagas are in flight the cross-service totals may
differ by the claims in flight, and the audit says which are pending.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from redis.asyncio import Redis

from gongji.audit.window import Window
from services.settlement.store import SettlementStore
from services.wallet.domain import account_breaches
from services.wallet.store import WalletStore


@dataclass
class QuickReport:
    accounts: int = 0
    claims: int = 0
    pending_claims: int = 0
    breaches: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    history_held: bool = True  # no claim has left Redis yet: the totals across the services are checked

    @property
    def clean(self) -> bool:
        return not self.breaches


async def _history_held(redis: Redis, window: Window) -> bool:
    """Whether every claim ever recorded is still held: none can have left Redis before the claims of
    the oldest clearing month's first day could (claims settled in a month occurred at most a
    window before it). Once some may have, the totals over all history are the deep audit's."""
    months = {key.decode().rsplit(":", 1)[1] async for key in redis.scan_iter(match="stl:{s*}:clearing:*", count=5000)}
    if not months:
        return True
    first = datetime.strptime(min(months), "%Y-%m").replace(tzinfo=window.now.tzinfo)
    return not window.left_redis(first - window.length - timedelta(days=1))


async def audit(redis: Redis, settlement_shards: int, window: Window) -> QuickReport:
    report = QuickReport()
    wallet = WalletStore(redis)
    settlement = SettlementStore(redis, settlement_shards)
    wallet_paid = wallet_refunded = 0
    async for person_id in wallet.account_holders():
        account = await wallet.snapshot(person_id)
        report.accounts += 1
        report.breaches += account_breaches(account)
        wallet_paid += account.paid_fen
        wallet_refunded += account.refunded_fen
        for key in ("balance", "frozen", "credited", "spent"):
            report.totals[key] = report.totals.get(key, 0) + getattr(account, f"{key}_fen")

    paid_by_claims = reversed_by_claims = 0
    owed_by_month: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    async for claim_id, record in settlement.all_claims():
        report.claims += 1
        result = record.result
        if record.state == "pending" or result is None:
            report.pending_claims += 1
            continue
        sign = {"reversed": -1, "settled": 1, "partial": 1}.get(result.status, 0)
        if sign == 0 and result.paid_fen != 0:
            report.breaches.append(f"claim {claim_id}: rejected yet paid {result.paid_fen}")
        if record.kind == "settle":
            if result.paid_fen > record.requested_fen:
                report.breaches.append(f"claim {claim_id}: paid {result.paid_fen} > requested {record.requested_fen}")
            if sum(payer.amount_fen for payer in result.payers) != result.paid_fen:
                report.breaches.append(f"claim {claim_id}: payers do not add up to paid")
            paid_by_claims += result.paid_fen
        elif result.status == "reversed":
            reversed_by_claims += result.paid_fen
        for pair, amount in result.owed_fen.items():
            owed_by_month[result.month or ""][pair] += sign * amount

    report.totals |= {"paid": wallet_paid, "refunded": wallet_refunded}
    report.history_held = await _history_held(redis, window)
    if not report.history_held:
        return report  # the account lines above still hold; the cross-service totals need all history
    if report.pending_claims == 0:
        # Each claim paid at most once: what the wallet took equals what settlement recorded.
        if wallet_paid != paid_by_claims:
            report.breaches.append(f"wallet paid {wallet_paid} != settled claims paid {paid_by_claims}")
        if wallet_refunded > reversed_by_claims:
            report.breaches.append(f"wallet refunded {wallet_refunded} > reversed claims {reversed_by_claims}")
    ledger = report.totals.get("credited", 0) - report.totals.get("spent", 0) - wallet_paid + wallet_refunded
    if ledger != report.totals.get("balance", 0):
        report.breaches.append(f"credits - spends - paid + refunds = {ledger} != sum of balances")

    for month, owed in owed_by_month.items():
        accumulated = await settlement.accumulators(month)
        for pair, amount in owed.items():
            if accumulated.get(pair, 0) != amount:
                report.breaches.append(
                    f"clearing {month} {pair}: accumulated {accumulated.get(pair, 0)} != claims {amount}"
                )
    return report
