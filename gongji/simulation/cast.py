"""The people of a simulated world: three providers and four recipients in three provinces, drawn
from the seed. One recipient has two providers (so draws cross accounts in order), one provider
is also a recipient (a sibling's), and the others are plain families."""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.ids import make_person_id, mask_person_id

# Birth places the ID checker knows; where a person is insured is independent of where they were born.
BIRTH_PLACES = ("110101", "120101", "310101")
PROVINCES = ("11", "31", "35", "44", "51", "53", "61", "65")


@dataclass(frozen=True)
class Person:
    alias: str
    person_id: str
    insurance_type: str
    region: str


@dataclass(frozen=True)
class Link:
    """A close relative: `recipient` is `provider`'s `kinship` (what the registry records)."""

    provider: str
    recipient: str
    kinship: str


LINKS = (
    Link("P0", "R0", "parent"),
    Link("P1", "R0", "parent"),
    Link("P0", "R1", "child"),
    Link("P1", "R2", "spouse"),
    Link("P2", "R3", "parent"),
    Link("P2", "P0", "sibling"),
)


class Cast:
    def __init__(self, seed: int) -> None:
        rng = random.Random(f"cast-{seed}")
        self.provinces = rng.sample(PROVINCES, 3)
        self.people: dict[str, Person] = {}
        used: set[str] = set()
        for alias in ("P0", "P1", "P2", "R0", "R1", "R2", "R3"):
            while (
                person_id := make_person_id(
                    rng.choice(BIRTH_PLACES),
                    f"{rng.randint(1940, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                    rng.randrange(1000),
                )
            ) in used:
                pass
            used.add(person_id)
            insurance_type = "employee" if alias.startswith("P") else rng.choice(["resident", "resident", "employee"])
            self.people[alias] = Person(alias, person_id, insurance_type, self.region(rng.choice(self.provinces)))
        self.links = LINKS
        self._aliases = {person.person_id: alias for alias, person in self.people.items()}
        # A claim's id begins with its service region (and institution): a script names it by its serial.
        self._claim_ids: dict[str, str] = {}
        self._claim_aliases: dict[str, str] = {}

    @staticmethod
    def region(province: str, district: int = 1) -> str:
        return f"{province}0{district}00"

    def id(self, alias: str) -> str:
        return self.people[alias].person_id

    def alias(self, person_id: str | None) -> str:
        if person_id is None:
            return "-"
        return self._aliases.get(person_id) or mask_person_id(person_id)

    def name_claim(self, alias: str, prefix: str) -> str:
        """The claim id a sender gives the claim a script calls `alias`: the prefix, then the alias."""
        claim_id = prefix + alias
        self._claim_ids[alias], self._claim_aliases[claim_id] = claim_id, alias
        return claim_id

    def claim_id(self, alias: str) -> str | None:
        """The id last given to the claim called `alias`, None if none was."""
        return self._claim_ids.get(alias)

    def claim_alias(self, claim_id: str) -> str:
        return self._claim_aliases.get(claim_id, claim_id)

    @property
    def providers(self) -> list[str]:
        return [alias for alias in self.people if alias.startswith("P")]

    @property
    def recipients(self) -> list[str]:
        return [alias for alias in self.people if alias.startswith("R")]

    def describe(self) -> list[str]:
        return [
            f"{alias} {mask_person_id(p.person_id)} {p.insurance_type} in {p.region}"
            for alias, p in self.people.items()
        ]
