"""Money is integer fen (1 yuan = 100 fen), never a float."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictInt

FEN_PER_YUAN = 100

Fen = Annotated[StrictInt, Field(ge=0)]
PositiveFen = Annotated[StrictInt, Field(gt=0)]


def yuan(amount: int) -> int:
    """Yuan to fen: `yuan(2000) == 200_000`."""
    return amount * FEN_PER_YUAN


def format_fen(amount_fen: int) -> str:
    sign = "-" if amount_fen < 0 else ""
    whole, cents = divmod(abs(amount_fen), FEN_PER_YUAN)
    return f"{sign}¥{whole:,}.{cents:02d}"
