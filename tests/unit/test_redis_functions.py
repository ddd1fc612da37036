"""The Python↔Lua boundary, held together: each Redis Function declared in a service's store.py
names its KEYS and ARGV in the order its Lua function unpacks them into locals of the same names,
every registered function is declared, and every reason code written in Lua is a ReasonCode."""

from __future__ import annotations

import re

import pytest

from services.relationship.store import LIBRARY as RELATIONSHIP
from services.settlement.store import LIBRARY as SETTLEMENT
from services.wallet.store import LIBRARY as WALLET
from shared.contracts import ReasonCode
from shared.records import AccountStep
from shared.redis_functions import PRELUDE_LUA, Function, Library

LIBRARIES = (RELATIONSHIP, SETTLEMENT, WALLET)
REGISTERED = re.compile(r"^register\('(\w+)', (\w+)\)$", re.MULTILINE)


def unpacked(source: str, function: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names a Lua function gives its KEYS and its ARGV, in order, on its first lines."""
    found = re.search(
        rf"local function {function}\(keys, args\)\n\s*local ([\w,\s]+?) = unpack\(keys\)\n"
        rf"\s*local ([\w,\s]+?) = unpack\(args\)\n",
        source,
    )
    assert found, f"{function} does not begin by unpacking its keys and args into named locals"
    keys, args = (tuple(re.split(r",\s*", names.strip())) for names in found.groups())
    return keys, args


def source_of(library: Library) -> str:
    return f"{PRELUDE_LUA.read_text()}\n{library.lua_file.read_text()}"


@pytest.mark.parametrize(
    "declared",
    [function for library in LIBRARIES for function in library.functions],
    ids=lambda function: function.name,
)
def test_a_declaration_names_the_keys_and_args_as_its_lua_function_unpacks_them(declared: Function) -> None:
    source = source_of(declared.library)
    lua_function = dict(REGISTERED.findall(source))[declared.name]
    assert unpacked(source, lua_function) == (declared.keys, declared.args)
    assert all(key.endswith("_key") for key in declared.keys)


@pytest.mark.parametrize("library", LIBRARIES, ids=lambda library: library.lua_file.name)
def test_every_registered_function_is_declared_once(library: Library) -> None:
    registered = [name for name, _ in REGISTERED.findall(library.lua_file.read_text())]
    assert sorted(function.name for function in library.functions) == sorted(registered)


def body_of(source: str, lua_function: str) -> str:
    start = source.index(f"local function {lua_function}(")
    return source[start : source.index("\nend\n", start)]


@pytest.mark.parametrize(
    "declared",
    [function for library in LIBRARIES for function in library.functions],
    ids=lambda function: function.name,
)
def test_a_step_declares_the_record_it_answers_with(declared: Function) -> None:
    """A function that answers (outcome, stored record) — every step — is read through the model it
    declares; one that answers anything else declares none and cannot be read as a step."""
    source = source_of(declared.library)
    body = body_of(source, dict(REGISTERED.findall(source))[declared.name])
    is_step = re.search(r"remember(ed)?\(|\{'(applied|duplicate)'", body) is not None
    assert (declared.result is not None) == is_step


def test_a_reply_is_read_as_its_declared_record() -> None:
    step = Function(WALLET, "example", (), (), AccountStep).call()
    applied = step.step("applied", b'{"type": "credited", "amount": 5, "balance": "105", "frozen": "0", "at": "t"}')
    assert (applied.outcome, applied.result.amount_fen, applied.result.balance_fen) == ("applied", 5, 105)
    assert step.step("conflict", b"").result is None
    refused = step.step("refused", b'{"why": "unknown"}')
    assert (refused.result, refused.why) == (None, "unknown")
    with pytest.raises(TypeError, match="not a step"):
        Function(WALLET, "example", (), (), None).call().step("applied", b"{}")


def test_a_call_names_every_key_and_argument_and_nothing_else() -> None:
    (declared, *_) = WALLET.functions
    values = {name: "x" for name in (*declared.keys, *declared.args)}
    assert declared.call(**values).keys == ["x"] * len(declared.keys)
    with pytest.raises(TypeError, match="missing"):
        declared.call(**{name: value for name, value in values.items() if name != declared.args[0]})
    with pytest.raises(TypeError, match="unknown"):
        declared.call(**values, amount_in_yuan=1)


def test_none_and_booleans_cross_as_lua_reads_them() -> None:
    function = Function(WALLET, "example", ("a_key",), ("missing", "yes", "no", "amount"), None)
    assert function.call(a_key="k", missing=None, yes=True, no=False, amount=7).args == ["", "1", "0", 7]


# Uppercase literals in Lua that are Redis's words, not reasons (after `redis.call(` they are skipped).
REDIS_WORDS = frozenset({"NX", "XX", "PX", "WITHSCORES"})


@pytest.mark.parametrize("library", LIBRARIES, ids=lambda library: library.lua_file.name)
def test_every_reason_code_written_in_lua_is_a_reason_code(library: Library) -> None:
    written = set(re.findall(r"(?<!redis\.call\()'([A-Z][A-Z_]+)'", source_of(library))) - REDIS_WORDS
    assert written, "no reason code found: the pattern no longer reads the Lua"
    assert written <= {code.value for code in ReasonCode}, written - {code.value for code in ReasonCode}
