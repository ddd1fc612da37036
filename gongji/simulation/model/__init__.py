"""The simulator's model (its own books, apart from the audit's): a plain model of every account,
quota, draw, claim, refund, clearing sum and relationship, updated from each input a handler
consumed and the outputs it produced (also the outputs of an instance that crashed before
publishing them: its steps are stored). Each decision of the system is checked where it is made —
money only moves where the rules allow, exactly as much as they say — and after every step the
books are compared with what Redis holds. Where the answer legitimately depends on order (which of
two refusal reasons, which instance wrote first) the model asserts the decision, never the wording.
Each service's part lives in its own module (wallet.py, settlement.py, relationship.py)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from gongji.simulation.model.base import Account, Breach, RelPair, Take, WalletPair, require
from gongji.simulation.model.relationship import RelationshipModel
from gongji.simulation.model.settlement import SettlementModel
from gongji.simulation.model.wallet import WalletModel
from services.relationship.store import RelationshipStore
from services.settlement.store import SettlementStore
from services.wallet.domain import account_breaches
from services.wallet.store import PREFIX as WALLET_PREFIX
from services.wallet.store import WalletStore
from shared.records import ClaimRecord


class Model(WalletModel, SettlementModel, RelationshipModel):
    """What the rules say every account, quota, draw, claim and relationship must be now: each
    service's part in its own module, and here the books against what Redis holds."""

    # ---- after every step: the books against what Redis holds ------------------------------

    async def check(
        self, wallet: WalletStore, relationships: RelationshipStore, settlement: SettlementStore, quiet: bool
    ) -> int:
        """Every invariant; `quiet`: nothing is in flight, so every saga has ended. Returns how many were checked."""
        people = [person.person_id for person in self.cast.people.values()]
        results = await asyncio.gather(
            self._check_accounts(wallet, people),
            self._check_relationships(wallet, relationships, people, quiet),
            self._check_claims(settlement, quiet),
            return_exceptions=True,
        )
        for result in results:  # the first breach in a fixed order, so that a replay names the same one
            if isinstance(result, BaseException):
                raise result
        return sum(results)  # type: ignore[arg-type]

    async def _check_accounts(self, wallet: WalletStore, people: list[str]) -> int:
        snapshots = await asyncio.gather(*(wallet.snapshot(person) for person in people))
        for snapshot in snapshots:
            breaches = account_breaches(snapshot)
            require(not breaches, "account", "; ".join(breaches))
            books = self.accounts.get(snapshot.person_id, Account())
            held = (
                snapshot.balance_fen,
                snapshot.frozen_fen,
                snapshot.credited_fen,
                snapshot.spent_fen,
                snapshot.paid_fen,
                snapshot.refunded_fen,
                snapshot.grants_fen,
            )
            kept = (books.balance, books.frozen, books.credited, books.spent, books.paid, books.refunded, books.grants)
            require(
                held == kept,
                "books",
                lambda: (
                    f"{self.a(snapshot.person_id)}: wallet holds balance, frozen, credited, spent, paid, refunded, "
                    "grants = "
                    f"{held[:6]} {self._aliased(held[6])}, the books {kept[:6]} {self._aliased(kept[6])}"
                ),
            )
            require(
                snapshot.grants_by_day == books.grants_by_day,
                "daily-count",
                lambda: (
                    f"{self.a(snapshot.person_id)}: grants by day {snapshot.grants_by_day}, books {books.grants_by_day}"
                ),
            )
        return 4 * len(snapshots)

    def _aliased(self, amounts: dict[str, int]) -> dict[str, int]:
        return {self.a(person): amount for person, amount in amounts.items()}

    async def _check_relationships(
        self, wallet: WalletStore, relationships: RelationshipStore, people: list[str], quiet: bool
    ) -> int:
        pairs = sorted(
            set(self.pairs) | {(self.cast.id(link.provider), self.cast.id(link.recipient)) for link in self.cast.links}
        )
        held_by_wallet, stored = await asyncio.gather(
            asyncio.gather(
                *(wallet.redis.hgetall(f"{WALLET_PREFIX}{{p:{person}}}:relationships") for person in people)
            ),
            asyncio.gather(*(relationships.relationship(*pair) for pair in pairs)),
        )
        for provider, held in zip(people, held_by_wallet, strict=True):
            active = {recipient.decode(): region.decode() for recipient, region in held.items()}
            kept = {
                recipient: pair.region
                for (p, recipient), pair in self.wallet_pairs.items()
                if p == provider and pair.active
            }
            require(
                active == kept,
                "wallet-relationships",
                lambda: (
                    f"{self.a(provider)}: the wallet holds {self._aliased(active)} active, books {self._aliased(kept)}"
                ),
            )
        for (provider, recipient), relationship in zip(pairs, stored, strict=True):
            kept = self.pairs.get((provider, recipient), RelPair())
            what = f"{self.a(provider)}>{self.a(recipient)}"
            if kept.state == "none":
                require(
                    relationship is None,
                    "relationship-state",
                    lambda: (
                        f"{what}: the relationship service holds {relationship}, its events ended it (v{kept.version})"
                    ),
                )
            else:
                require(
                    relationship is not None
                    and (relationship.state, relationship.recipient_region, relationship.version)
                    == (kept.state, kept.region, kept.version),
                    "relationship-state",
                    lambda: f"{what}: the relationship service holds {relationship}, its events say {kept}",
                )
                assert relationship is not None
                generation = self.rel_enrollment[recipient].generation
                require(
                    relationship.recipient_generation == generation,
                    "rule-7",
                    lambda: (
                        f"{what} is {kept.state}, decided on the recipient's enrollment generation "
                        f"{relationship.recipient_generation}; the recipient has changed since (now {generation})"
                    ),
                )
            in_wallet = self.wallet_pairs.get((provider, recipient), WalletPair())
            if quiet:
                require(
                    in_wallet.version == kept.wallet_version,
                    "relationship-delivery",
                    f"{what}: nothing in flight, yet the wallet applied v{in_wallet.version} of v{kept.wallet_version}",
                )
            if in_wallet.version == kept.wallet_version:
                require(
                    in_wallet.active == (kept.state == "active"),
                    "wallet-relationships",
                    lambda: (
                        f"{what}: active in the wallet {in_wallet.active}, in the relationship service {kept.state}"
                    ),
                )
        return len(people) + 2 * len(pairs)

    async def _check_claims(self, settlement: SettlementStore, quiet: bool) -> int:
        months = sorted(set(self.clearing) | set(self.closed))
        stored, accumulated = await asyncio.gather(
            self._stored_claims(settlement), asyncio.gather(*(settlement.accumulators(month) for month in months))
        )
        require(
            set(stored) == set(self.claims),
            "claims",
            lambda: (
                f"settlement holds claims {sorted(set(stored) - set(self.claims))} the books never saw and lacks "
                f"{sorted(set(self.claims) - set(stored))}"
            ),
        )
        takes_by_claim: dict[tuple[str, str], list[Take]] = defaultdict(list)
        for (claim_id, _), take in self.takes.items():
            takes_by_claim[(claim_id, take.recipient)].append(take)
        for claim_id, book in self.claims.items():
            record = stored[claim_id]
            result = record.result
            held = (
                record.recipient_id,
                record.kind,
                record.state == "pending",
                result.status if result else "",
                result.paid_fen if result else 0,
                [(p.provider_id, p.provider_region, p.amount_fen) for p in result.payers] if result else [],
                (result.month if result else None) or None,
                record.reversed_by,
            )
            kept = (
                book.recipient,
                book.kind,
                book.status == "pending",
                book.result,
                book.paid,
                book.payers,
                book.month,
                book.reversed_by,
            )
            require(held == kept, "claims", lambda: f"claim {claim_id}: settlement holds {held}, books {kept}")
            if book.kind != "settle":
                continue
            takes = takes_by_claim.pop((claim_id, book.recipient), [])
            drawn = sum(take.amount for take in takes)
            refunded = sum(take.amount for take in takes if take.refunded_by)
            if book.status == "pending":
                require(not quiet, "saga-ended", f"claim {claim_id}: still pending with nothing in flight")
                require(drawn <= book.payable, "paid-once", f"claim {claim_id}: drew {drawn} of {book.payable} asked")
            else:
                require(
                    drawn == book.paid, "paid-once", f"claim {claim_id}: settled {book.paid}, the wallet drew {drawn}"
                )
            require(
                refunded <= (book.paid if book.reversed_by else 0),
                "refunded-once",
                f"claim {claim_id}: refunded {refunded} of {book.paid} paid, reversed by {book.reversed_by}",
            )
            if quiet and book.reversed_by:
                require(
                    refunded == book.paid,
                    "refunded-once",
                    f"claim {claim_id}: reversed by {book.reversed_by}, yet only {refunded} of {book.paid} went back",
                )
        for (
            claim_id,
            recipient,
        ), takes in takes_by_claim.items():  # drawn for a claim never recorded for that recipient
            kept_back = sum(take.amount for take in takes if not take.refunded_by)
            require(
                not quiet or kept_back == 0,
                "unclaimed-draw",
                f"claim {claim_id} of {self.a(recipient)}: {kept_back} drawn for no recorded claim "
                "was never given back",
            )
        for month, totals in zip(months, accumulated, strict=True):
            kept_totals = {name: value for name, value in self.clearing[month].items()}
            require(
                totals == kept_totals,
                "clearing",
                lambda: f"{month}: the accumulators hold {totals}, the claims of the month add up to {kept_totals}",
            )
        return 3 * len(self.claims) + len(months)

    @staticmethod
    async def _stored_claims(settlement: SettlementStore) -> dict[str, ClaimRecord]:
        return {claim_id: record async for claim_id, record in settlement.all_claims()}


__all__ = ["Breach", "Model", "require"]
