"""What the books held at a checkpoint's cut, folded: the figures every later record adds to.

A deep audit that starts from a checkpoint reads the records after its cut (and, before it, as far
back as a later record may name one: the horizon), judges those after the cut, and adds what they
change to these figures. Everything else the books once held (each claim, each input and answer)
has left Redis with its window and can never be named again, so it is judged once and folded here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PairChange:
    """The newest change of a relationship pair, as far as the audit compares it."""

    type: str
    version: int | None  # None: an event of the release before versions
    region: str | None  # the recipient's region it named


@dataclass
class PairState:
    newest: PairChange | None = None  # the relationship service's
    wallet: PairChange | None = None  # the newest the wallet applies (established, dissolved, terminated)
    established: bool = False  # ever: quota may be granted to the recipient (rules 2, 8)


@dataclass
class Opening:
    records: int = 0  # every record folded
    # person -> money figures of their wallet events: credited, spent, debited, refunded
    accounts: dict[str, Counter[str]] = field(default_factory=dict)
    quotas: dict[str, Counter[str]] = field(default_factory=dict)  # provider -> recipient -> fen
    pairs: dict[tuple[str, str], PairState] = field(default_factory=dict)  # (provider, recipient)
    standing: dict[str, int] = field(default_factory=dict)  # provider -> freezes standing (rule 16)
    last_seq: dict[str, int] = field(default_factory=dict)  # provider -> the newest step folded
    unstepped: set[str] = field(default_factory=set)  # providers with events of before step numbers
    # Persons ever insured as residents (rule 12). An enrollment in flight at the cut counts, though
    # it may then be refused as too old: the rule may miss a premium paid for such a person, never
    # name one wrongly.
    resident: set[str] = field(default_factory=set)
    clearing: dict[str, Counter[str]] = field(default_factory=dict)  # month -> "44>51" (#claims, #reversals)
    claims_final: int = 0
    reversals: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "accounts": {person: _nonzero(sums) for person, sums in sorted(self.accounts.items())},
            "quotas": {person: _nonzero(quotas) for person, quotas in sorted(self.quotas.items())},
            "pairs": {
                f"{provider}|{recipient}": {
                    "newest": _change_json(state.newest),
                    "wallet": _change_json(state.wallet),
                    "established": state.established,
                }
                for (provider, recipient), state in sorted(self.pairs.items())
            },
            "standing": {provider: count for provider, count in sorted(self.standing.items()) if count},
            "last_seq": dict(sorted(self.last_seq.items())),
            "unstepped": sorted(self.unstepped),
            "resident": sorted(self.resident),
            # every figure: a pair whose claims and reversals cancel out has an amount of 0, and is listed
            "clearing": {month: dict(sorted(totals.items())) for month, totals in sorted(self.clearing.items())},
            "claims_final": self.claims_final,
            "reversals": self.reversals,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Opening:
        return cls(
            records=int(document["records"]),
            accounts={person: Counter(sums) for person, sums in document["accounts"].items()},
            quotas={person: Counter(quotas) for person, quotas in document["quotas"].items()},
            pairs={
                tuple(pair.split("|", 1)): PairState(  # type: ignore[misc]
                    _change(state["newest"]), _change(state["wallet"]), bool(state["established"])
                )
                for pair, state in document["pairs"].items()
            },
            standing=dict(document["standing"]),
            last_seq=dict(document["last_seq"]),
            unstepped=set(document["unstepped"]),
            resident=set(document["resident"]),
            clearing={month: Counter(totals) for month, totals in document["clearing"].items()},
            claims_final=int(document["claims_final"]),
            reversals=int(document["reversals"]),
        )


def _nonzero(figures: Counter[str]) -> dict[str, int]:
    return {name: value for name, value in sorted(figures.items()) if value}


def _change_json(change: PairChange | None) -> list[Any] | None:
    return None if change is None else [change.type, change.version, change.region]


def _change(document: list[Any] | None) -> PairChange | None:
    return None if document is None else PairChange(str(document[0]), document[1], document[2])
