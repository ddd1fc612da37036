"""The deep audit's books and its copy of Redis's state on disk, so that its memory does not grow
with the records it reads.

One private SQLite database per audit (deleted when its connection closes: SQLite's own temporary
database, with a bounded page cache; SQLite for ordered keys and grouped reads, which the standard
library's `shelve` and `dbm` do not give), holding shelves: values grouped under keys, read back in
their keys' order and each key's values in the order they were added, as the dicts of lists they
replace were sorted and read. A key is a string or a tuple of strings; a value goes in as JSON (or
as the encoder given says) and comes out decoded each time it is read: nothing read stays behind.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from functools import partial
from itertools import count, groupby
from operator import itemgetter
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

Key = str | tuple[str, ...]
V = TypeVar("V")
M = TypeVar("M", bound=BaseModel)

# SQLite's page cache for the audit's database (negative: KiB). What does not fit is on disk.
CACHE_KIB = 64 * 1024
WRITE_BATCH = 1000  # rows a shelf holds before it writes them (one statement for all)


class Spill:
    """The audit's database: one connection, one transaction never committed (nothing outlives it)."""

    def __init__(self) -> None:
        # "" is a private temporary database on disk, deleted when the connection closes.
        self.db = sqlite3.connect("", isolation_level=None, cached_statements=1024)
        self.db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self.db.execute("PRAGMA journal_mode = OFF")  # never rolled back: nothing to journal
        self.db.execute("BEGIN")
        self._tables = count()

    def table(self, unique: bool) -> str:
        name = f"shelf{next(self._tables)}"
        self.db.execute(f"CREATE TABLE {name} (ordered BLOB NOT NULL, value TEXT NOT NULL)")
        self.db.execute(f"CREATE {'UNIQUE' if unique else ''} INDEX {name}_by_key ON {name} (ordered)")
        return name


def _ordered(key: Key) -> bytes:
    """Bytes that sort as the keys do: the strings' UTF-8 (code point order), each with its NULs
    escaped (NUL, 1) and ended by two NULs, which sort before anything a string goes on with."""
    parts = (key,) if isinstance(key, str) else key
    if "\0" in "".join(parts):
        parts = tuple(part.replace("\0", "\0\1") for part in parts)
    return ("\0\0".join(parts) + "\0\0").encode("utf-8", "surrogatepass")


def _key(ordered: bytes) -> Key:
    """The key of `_ordered`'s bytes (a raw NUL is always escaped, so two NULs always end a string);
    a key of one string is that string."""
    parts = tuple(part.replace(b"\0\1", b"\0").decode("utf-8", "surrogatepass") for part in ordered.split(b"\0\0")[:-1])
    return parts[0] if len(parts) == 1 else parts


# What a shelf keeps of a key's values: every one (a `defaultdict(list)`), the first (a dict's
# `setdefault`) or the last (a dict's assignment).
KEEP_CLAUSE = {"all": "", "first": "OR IGNORE", "last": "OR REPLACE"}


class Shelf(Generic[V]):
    """Values grouped under keys, on disk (a dict of lists that holds nothing in memory)."""

    def __init__(
        self,
        spill: Spill,
        encode: Callable[[V], str] = json.dumps,
        decode: Callable[[str], V] = json.loads,
        keep: Literal["all", "first", "last"] = "all",
    ) -> None:
        self._db, self._table = spill.db, spill.table(unique=keep != "all")
        self._encode, self._decode = encode, decode
        self._first_only = keep == "first"
        self._insert = f"INSERT {KEEP_CLAUSE[keep]} INTO {self._table} VALUES (?, ?)"
        self._added = 0  # none: every question is answered without asking the database
        self._unwritten: list[tuple[bytes, str]] = []  # written a batch at a time, before any read

    def add(self, key: Key, value: V) -> bool:
        """Whether it was added (kept first: the key had no value yet)."""
        row = (_ordered(key), self._encode(value))
        if self._first_only:
            added = self._db.execute(self._insert, row).rowcount == 1
        else:
            self._unwritten.append(row)
            if len(self._unwritten) >= WRITE_BATCH:
                self._write()
            added = True
        self._added += added
        return added

    def _write(self) -> None:
        if self._unwritten:
            self._db.executemany(self._insert, self._unwritten)
            self._unwritten.clear()

    def _rows(self, query: str, *parameters: object) -> sqlite3.Cursor:
        self._write()
        return self._db.execute(query.format(table=self._table), parameters)

    def get(self, key: Key) -> list[V]:
        """Its values in the order added; none: an empty list."""
        if not self._added:
            return []
        rows = self._rows("SELECT value FROM {table} WHERE ordered = ? ORDER BY rowid", _ordered(key))
        return [self._decode(value) for (value,) in rows]

    def first(self, key: Key) -> V | None:
        if not self._added:
            return None
        row = self._rows("SELECT value FROM {table} WHERE ordered = ? ORDER BY rowid LIMIT 1", _ordered(key)).fetchone()
        return None if row is None else self._decode(row[0])

    def __contains__(self, key: object) -> bool:
        if not self._added or not isinstance(key, str | tuple):
            return False
        return self._rows("SELECT 1 FROM {table} WHERE ordered = ? LIMIT 1", _ordered(key)).fetchone() is not None

    def keys(self) -> Iterator[Key]:
        """Each key once, in order."""
        for (ordered,) in self._rows("SELECT DISTINCT ordered FROM {table} ORDER BY 1"):
            yield _key(ordered)

    def keys_under(self, first: str) -> Iterator[Key]:
        """Each key of tuples whose first string is `first`, once, in order."""
        low = _ordered((first,))
        high = low[:-1] + b"\1"  # past every key going on from `first` (its end, two NULs, sorts first)
        rows = self._rows(
            "SELECT DISTINCT ordered FROM {table} WHERE ordered >= ? AND ordered < ? ORDER BY 1", low, high
        )
        for (ordered,) in rows:
            yield _key(ordered)

    def items(self) -> Iterator[tuple[Key, list[V]]]:
        """Each key, in order, with its values in the order added: one key's values in memory at a time."""
        rows = self._rows("SELECT ordered, value FROM {table} ORDER BY ordered, rowid")
        for ordered, group in groupby(rows, key=itemgetter(0)):
            yield _key(ordered), [self._decode(value) for _, value in group]

    def kept(self) -> Iterator[tuple[Key, V]]:
        """Each key, in order, with the one value a shelf that keeps the first or the last holds."""
        for key, (value,) in self.items():
            yield key, value

    def values(self) -> Iterator[V]:
        """Every value, in the order added."""
        for (value,) in self._rows("SELECT value FROM {table} ORDER BY rowid"):
            yield self._decode(value)

    def __bool__(self) -> bool:
        return self._added > 0


def _model_json(model: BaseModel) -> str:
    """Its JSON; a model holding a string no JSON encoder writes as UTF-8 (a lone surrogate, from a
    record's escape) goes through Python's `json`, which escapes it, marked by a leading `~`."""
    try:
        return model.model_dump_json()
    except PydanticSerializationError:
        return "~" + json.dumps(model.model_dump(mode="json"))


def _model(kind: type[M], text: str) -> M:
    if text.startswith("~"):
        return kind.model_validate(json.loads(text[1:]))
    return kind.model_validate_json(text)


def models(spill: Spill, model: type[M]) -> Shelf[M]:
    """A shelf of one contract's models, kept as their JSON and validated again when read."""
    return Shelf(spill, encode=_model_json, decode=partial(_model, model))


def tagged(spill: Spill, *kinds: type[BaseModel]) -> Shelf[BaseModel]:
    """A shelf of models of several contracts, each kept as its contract's name and its JSON."""
    by_name = {kind.__name__: kind for kind in kinds}

    def decode(text: str) -> BaseModel:
        name, document = text.split(" ", 1)
        return _model(by_name[name], document)

    return Shelf(spill, encode=lambda model: f"{type(model).__name__} {_model_json(model)}", decode=decode)
