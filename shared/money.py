"""Money is integer fen (1 yuan = 100 fen), never a float."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictInt

FEN_PER_YUAN = 100

# Every amount on the wire is at most 10^12 fen (10 billion yuan): far above any real payment, and
# small enough that sums of many stay exact in Redis (int64) and in Lua (a double, exact to 2^53).
MAX_AMOUNT_FEN = 10**12

PositiveFen = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT_FEN)]


def yuan(amount: int) -> int:
    """Yuan to fen: `yuan(2000) == 200_000`."""
    return amount * FEN_PER_YUAN


def format_fen(amount_fen: int) -> str:
    sign = "-" if amount_fen < 0 else ""
    whole, cents = divmod(abs(amount_fen), FEN_PER_YUAN)
    return f"{sign}¥{whole:,}.{cents:02d}"
