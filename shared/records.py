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
    """A claim or a reversal as settlement holds it, under its claim id (`stl:{s<N>}:claims`)."""

    model_config = ConfigDict(populate_by_name=True)

    fingerprint: str  # the content's hash: the same id with other content is a conflict
    kind: Literal["settle", "reverse"]
    recipient_id: str
    category: str | None = None
    service_region: str | None = None
    reverses: str | None = None
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
