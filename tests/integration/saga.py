"""The claim saga without Kafka: the settlement and wallet handlers on the real Redis functions,
their messages passed by hand, so that a test can redeliver, reorder, drop or crash between any
two steps."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from services.settlement.handlers import SettlementHandlers
from services.settlement.store import SettlementStore
from services.wallet.domain import account_breaches
from services.wallet.handlers import WalletHandlers
from services.wallet.store import WalletStore
from shared.clock import FixedClock
from shared.contracts import (
    AccountCredited,
    Claim,
    DrawAnswered,
    DrawRequested,
    EnrollmentChanged,
    RefundRequested,
    RelationshipEvent,
    SettlementEvent,
    WalletCommand,
    WalletEvent,
)
from shared.policy import PolicyCache
from shared.window import ClaimWindow
from tests.support import new_id, new_person_id, new_reversal_id, through_claim_path, with_claim_id

NOON = datetime.fromisoformat("2026-03-02T12:00:00+08:00")
SHARDS = 64


class Saga:
    def __init__(self, redis, shards: int = SHARDS, at: datetime = NOON, window: ClaimWindow | None = None) -> None:
        self.redis = redis
        self.clock = FixedClock(at)
        self.wstore = WalletStore(redis)
        self.sstore = SettlementStore(redis, shards)
        self.wallet = WalletHandlers(self.wstore, self.clock, PolicyCache(redis, 0), window=window)
        self.settlement = SettlementHandlers(self.sstore, self.clock, window=window)
        self.people: set[str] = set()

    async def load(self) -> Saga:
        await self.wstore.load()
        await self.sstore.load()
        return self

    # ---- population ----
    async def recipient(self, region: str = "510100") -> str:
        person = new_person_id()
        change = EnrollmentChanged(
            event_id=new_id("enr"),
            person_id=person,
            insurance_type="resident",
            region=region,
            status="normal",
            occurred_at=self.clock.now(),
        )
        await self.settlement.on_enrollment([change])
        await self.wallet.on_enrollment([change])
        self.people.add(person)
        return person

    async def provider(self, balance_fen: int, region: str = "440300") -> str:
        person = new_person_id()
        await self.wallet.on_enrollment(
            [
                EnrollmentChanged(
                    event_id=new_id("enr"),
                    person_id=person,
                    insurance_type="employee",
                    region=region,
                    status="normal",
                    occurred_at=self.clock.now(),
                )
            ]
        )
        if balance_fen:
            await self.wallet.on_credits(
                [
                    AccountCredited(
                        event_id=new_id("cr"), person_id=person, amount_fen=balance_fen, occurred_at=self.clock.now()
                    )
                ]
            )
        self.people.add(person)
        return person

    async def relate(
        self,
        provider: str,
        recipient: str,
        kind: str = "established",
        region: str = "510100",
        version: int | None = None,
    ) -> list:
        return await self.wallet.on_relationship_events(
            [
                RelationshipEvent(
                    event_id=new_id("rel"),
                    cause_id=new_id(),
                    type=kind,
                    provider_id=provider,
                    recipient_id=recipient,
                    recipient_region=region,
                    kinship="parent",
                    version=version,
                    occurred_at=self.clock.now(),
                )
            ]
        )

    async def grant(self, provider: str, recipient: str, amount_fen: int, region: str = "510100") -> WalletEvent:
        (event,) = await self.wallet.on_commands(
            [
                WalletCommand(
                    command_id=new_id("g"),
                    action="grant",
                    actor_id=provider,
                    provider_id=provider,
                    recipient_id=recipient,
                    recipient_region=region,
                    amount_fen=amount_fen,
                    requested_at=self.clock.now(),
                )
            ]
        )
        return event

    async def family(self, grants: list[int], balance_fen: int = 1_000_000, provider_region: str = "440300"):
        recipient = await self.recipient()
        providers = []
        for amount in grants:
            provider = await self.provider(balance_fen, provider_region)
            await self.relate(provider, recipient)
            event = await self.grant(provider, recipient, amount)
            assert event.type == "granted", event
            providers.append(provider)
            self.clock.set(self.clock.at.replace(microsecond=(self.clock.at.microsecond + 1000) % 1_000_000))
        return recipient, providers

    # ---- claims ----
    def settle(self, recipient: str, amount_fen: int, **fields) -> Claim:
        return Claim.model_validate(
            with_claim_id(
                {
                    "kind": "settle",
                    "recipient_id": recipient,
                    "recipient_region": "510100",
                    "category": "institution",
                    "institution_code": "H51010000001",
                    "service_region": "510100",
                    "amount_fen": amount_fen,
                    "occurred_at": self.clock.now().isoformat(),
                    **fields,
                }
            )
        )

    def reverse(self, recipient: str, reverses: str, **fields) -> Claim:
        return Claim.model_validate(
            {
                "claim_id": new_reversal_id(reverses),
                "kind": "reverse",
                "recipient_id": recipient,
                "reverses": reverses,
                "occurred_at": self.clock.now().isoformat(),
                **fields,
            }
        )

    async def run_claims(self, claims: list[Claim]) -> list[BaseModel]:
        """Claims through settlement, its draw requests through the wallet, the answers back, and the
        refund requests through the wallet. Returns every output."""
        outputs = list(await through_claim_path(self.settlement, claims))
        draws = [o for o in outputs if isinstance(o, DrawRequested)]
        refunds = [o for o in outputs if isinstance(o, RefundRequested)]
        if draws:
            wallet_out = await self.wallet.on_draw_requests(draws)
            outputs += wallet_out
            answers = [o for o in wallet_out if isinstance(o, DrawAnswered)]
            outputs += await through_claim_path(self.settlement, answers)
        if refunds:
            outputs += await self.wallet.on_refund_requests(refunds)
        return outputs

    async def breaches(self, *people: str) -> list[str]:
        found = []
        for person in people or self.people:
            found += account_breaches(await self.wstore.snapshot(person))
        return found


def settlements(outputs) -> list[SettlementEvent]:
    return [o for o in outputs if isinstance(o, SettlementEvent)]


def of_type(outputs, kind):
    return [o for o in outputs if isinstance(o, kind)]
