"""A synthetic national population: valid resident IDs, families spread over provinces, and the
2024 mix of shared uses (domain.md: 34.31 bn yuan at institutions, 2.07 bn at pharmacies, 7.48 bn
for other uses such as resident-insurance contributions; about 135 yuan per use)."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from stdnum import numdb

from shared.contracts import Kinship
from shared.ids import PROVINCE_CODES, make_person_id

PROVINCES = sorted(PROVINCE_CODES)


@dataclass(frozen=True)
class UseCategory:
    name: str
    amount_share: float  # share of the money (2024)
    mean_fen: int  # mean amount per use (our assumption, chosen so the overall mean is ≈ 135 yuan)


CATEGORIES = (
    UseCategory("institution", 34.31, 16_000),
    UseCategory("pharmacy", 2.07, 4_500),
    UseCategory("resident_premium", 5.98, 10_500),
    UseCategory("ltc_premium", 1.50, 10_500),
)
# How often each use occurs: its share of the money divided by its mean amount.
COUNT_WEIGHTS = [category.amount_share / category.mean_fen for category in CATEGORIES]


@functools.cache
def birth_places() -> list[str]:
    """One valid birth-place code per province (the Corps' people were born in Xinjiang's)."""
    places = []
    lookup = numdb.get("cn/loc")
    for province in PROVINCES:
        for suffix in ("0101", "0102", "0103", "0104", "0105", "0111", "0121", "2101", "2201"):
            info = {k: v for _, props in lookup.info(province + suffix) for k, v in props.items()}
            if info.get("county") and not info["county"].startswith("["):
                places.append(province + suffix)
                break
    return places


@dataclass(frozen=True)
class Person:
    person_id: str
    insurance_type: str
    region: str


@dataclass
class Family:
    provider: Person
    recipients: list[tuple[Person, str]] = field(default_factory=list)  # (recipient, kinship to provider)
    balance_fen: int = 0


class PopulationBuilder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.used: set[str] = set()

    def _person_id(self) -> str:
        while True:
            birth = date(1940, 1, 1) + timedelta(days=self.rng.randrange(70 * 365))
            candidate = make_person_id(
                self.rng.choice(birth_places()), birth.strftime("%Y%m%d"), self.rng.randrange(1000)
            )
            if candidate not in self.used:
                self.used.add(candidate)
                return candidate

    def _region(self, province: str) -> str:
        return f"{province}{self.rng.choice(['01', '02', '03'])}00"

    def families(self, persons: int) -> list[Family]:
        """Families of one provider and 1–3 close relatives; half of the relatives live in another province."""
        families = []
        made = 0
        while made < persons:
            home = self.rng.choice(PROVINCES)
            family = Family(
                Person(self._person_id(), "employee", self._region(home)),
                balance_fen=self.rng.randint(2_000, 20_000) * 100,
            )
            for _ in range(self.rng.choice([1, 1, 2, 2, 3])):
                province = home if self.rng.random() < 0.5 else self.rng.choice(PROVINCES)
                insurance = "resident" if self.rng.random() < 0.6 else "employee"
                kinship = self.rng.choice(list(Kinship)).value
                family.recipients.append((Person(self._person_id(), insurance, self._region(province)), kinship))
            families.append(family)
            made += 1 + len(family.recipients)
        return families

    def claim_amount(self, category: UseCategory) -> int:
        """Log-normal amounts around the category's mean: many small uses, a long tail of large ones."""
        sigma = 0.9
        mu = math.log(category.mean_fen) - sigma * sigma / 2
        return max(100, int(self.rng.lognormvariate(mu, sigma)))

    def category(self, insurance_type: str) -> UseCategory:
        """A use for a recipient of this insurance: only the resident-insured pay resident premiums."""
        allowed = [
            (category, weight)
            for category, weight in zip(CATEGORIES, COUNT_WEIGHTS, strict=True)
            if insurance_type == "resident" or category.name != "resident_premium"
        ]
        return self.rng.choices([category for category, _ in allowed], weights=[weight for _, weight in allowed])[0]
