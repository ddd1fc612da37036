"""Records the services keep in Redis, typed (docs/state.md lays out every key). The settlement
service writes them (and its Lua completes them); the audits and the simulation read them. In
Python each quantity has one name with its unit; the stored JSON keeps its field names, the
aliases, which the Lua functions read and write too."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.contracts import Payer


def _empty_as_list(value: Any) -> Any:
    """cjson writes an empty Lua table as an object: an empty list comes back as `{}`."""
    return [] if value == {} else value


def _empty_as_dict(value: Any) -> Any:
    return {} if value == [] else value


class ClaimResult(BaseModel):
    """How a claim or a reversal ended."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    status: Literal["settled", "partial", "rejected", "reversed"]
    paid_fen: int = Field(alias="paid")  # a reversal: what it gave back
    payers: list[Payer] = Field(default_factory=list)
    reason: str | None = None
    # Rule 15: the cross-province amounts, "<payer province>><payee province>" -> fen.
    owed_fen: dict[str, int] = Field(default_factory=dict, alias="owed")
    month: str | None = None  # the clearing month it counted in
    at: str  # RFC 3339, when it was decided

    _lists = field_validator("payers", mode="before")(_empty_as_list)
    _dicts = field_validator("owed_fen", mode="before")(_empty_as_dict)


class ClaimRecord(BaseModel):
    """A claim or a reversal as settlement holds it (`stl:{s<N>}:claims:<day it occurred>`, under its
    claim id), until that day's claims can no longer come, plus the grace."""

    model_config = ConfigDict(populate_by_name=True)

    fingerprint: str  # the content's hash: the same id with other content is a conflict
    kind: Literal["settle", "reverse"]
    recipient_id: str
    category: str | None = None  # a reversal: its claim's, once it has reversed it (so the service region)
    service_region: str | None = None
    recipient_region: str | None = None  # the recipient's insured region, as the claim stated it
    sent_at: str | None = None  # rfc3339: when the claim was sent (its Kafka record's time), of the copy taken
    reverses: str | None = None
    reverses_day: str | None = None  # a reversal: the day (YYYYMMDD) the claim it names occurred, if known
    occurred_at: str | None = None  # the claim's, rfc3339 in Asia/Shanghai: a reversal must come within its window
    requested_fen: int = Field(0, alias="requested")  # the claim's whole amount (a reversal: what it gave back)
    asked_fen: int = Field(0, alias="payable")  # what is asked of the grants: the share rule 12 allows
    shortfall: str | None = None  # why less than requested is asked (NOT_IN_CATALOGUE)
    # The record's state, not the result's status: pending until the wallet answers, then final.
    state: Literal["pending", "final"] = Field(alias="status")
    province: str = ""  # the province whose own topic sent it ("": the national topic)
    claim_province: str | None = None  # a reversal: the province that sent the claim it reversed
    reversed_by: str | None = None  # a settled claim: the reversal that cancelled it
    result: ClaimResult | None = None  # once final

    def stored(self) -> dict[str, Any]:
        """The record as it is written to Redis (its stored field names)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Recorded(BaseModel):
    """The result of a step that only records a fact (an enrollment copy, a kinship): nothing to say."""


# The wallet (`wal:{p:<person>}:…`). Balances travel as decimal strings: exact, where cjson would
# round a large number; pydantic reads them as int.


class AccountView(BaseModel):
    """The account after a step: its balance, what of it is frozen for grants, and its step number."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    balance_fen: int | None = Field(None, alias="balance")
    frozen_fen: int | None = Field(None, alias="frozen")
    seq: int | None = None  # orders one account's events as Redis applied them


class AccountStep(AccountView):
    """The stored result of a credit, spend, grant, relationship change or supervision action, under
    its input id (`…:seen:<topic>`). `type` is the wallet event it is answered with ('' when a
    relationship change moved no money)."""

    type: str
    amount_fen: int = Field(0, alias="amount")
    recipient_id: str | None = Field(None, alias="recipient")
    reason: str | None = None
    standing_freezes: int | None = Field(None, alias="freezes")  # supervision: freezes still standing
    lifted: str | None = None  # an unfreeze: the freeze it lifted
    stale: bool = False  # a relationship event older than one already applied
    at: str


class Take(AccountView):
    """What one claim took from one provider's grant (`…:takes`, under the claim id)."""

    recipient_id: str = Field(alias="recipient")
    amount_fen: int = Field(alias="amount")
    provider_region: str = Field(alias="region")
    since: str  # the relationship's version it drew under: a refund goes back to it while it lasts
    refunded_by: str | None = None
    at: str


class Refund(AccountView):
    """A reversal's refund from one provider (`…:refunds`, under the reversal's id)."""

    recipient_id: str = Field(alias="recipient")
    amount_fen: int = Field(alias="amount")
    to: Literal["grant", "account", "none"]
    at: str


class DrawPayer(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider_id: str
    provider_region: str
    amount_fen: int
    balance_fen: int | None
    frozen_fen: int | None
    account_seq: int | None = None  # the take's step number (answers stored before it have none)


class DrawAnswer(BaseModel):
    """The wallet's answer to a draw request, stored in the recipient's slot (`…:answers`, under the
    claim id): the first one stored stands."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    paid_fen: int = Field(alias="paid")
    reason: str | None
    payers: list[DrawPayer]
    at: str

    _lists = field_validator("payers", mode="before")(_empty_as_list)

    def stored(self) -> str:
        return self.model_dump_json(by_alias=True)


class DrawPlan(BaseModel):
    """A draw's plan, fixed at its first try (`…:plans`): whether the recipient was frozen, and the
    providers in draw order."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    recipient_frozen: bool = Field(alias="frozen")
    providers: list[str] = Field(default_factory=list)

    _lists = field_validator("providers", mode="before")(_empty_as_list)


# The relationship service (`rel:{p:<provider>}:…`).


class RelationshipRecord(BaseModel):
    """A pair as the provider's slot holds it (`…:rels`, under the recipient id); ended pairs leave."""

    model_config = ConfigDict(frozen=True)

    state: Literal["pending", "active"]
    kinship: str | None = None
    recipient_region: str | None = None
    recipient_generation: int  # the recipient's enrollment generation it was requested on
    since: str


class RelationshipStep(BaseModel):
    """The stored result of a relationship command, under its id (`…:seen:commands`), and of ending
    a pair (`…:terminations`). `version` and `state` are there when the pair changed."""

    model_config = ConfigDict(frozen=True)

    type: str | None = None  # the relationship event it is answered with
    ended: bool = False  # relationship_end: whether it ended the pair
    reason: str | None = None
    kinship: str | None = None
    recipient_region: str | None = None
    version: int | None = None
    state: str | None = None
    at: str | None = None


class EndedAsProvider(BaseModel):
    model_config = ConfigDict(frozen=True)

    recipient_id: str
    kinship: str | None = None
    recipient_region: str | None = None
    version: int


class EnrollmentStep(BaseModel):
    """The stored result of an enrollment change at the relationship service (rule 7)."""

    model_config = ConfigDict(frozen=True)

    changed: bool
    generation: int | None = None  # the generation the person's enrollment reached
    ended_as_provider: list[EndedAsProvider] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=list)  # whose pairs to the person must end, in their slots
    at: str

    _lists = field_validator("ended_as_provider", "providers", mode="before")(_empty_as_list)
