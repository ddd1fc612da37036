"""Random operations from a seed: first a prelude that sets the families up (enrolled, related,
credited, granted), then a random mix of inputs, deliveries and faults. The generator looks at the
world only to choose operations that mean something (a pending request to accept, a claim to
reverse, a message in flight to deliver); every choice comes from the seed's random generator."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

from gongji.simulation.network import ROUTES, alike
from gongji.simulation.world import START, Op, World
from services.relationship.domain import INVERSE
from shared.clock import shanghai_month
from shared.contracts import Claim, DrawAnswered, DrawRequested, Kinship, RefundRequested
from shared.ids import province_of
from shared.money import MAX_AMOUNT_FEN

SHAPED_IDS = ("draw:{n}", "refund:{n}", "E/P", "1|2", "seen:credits", "{person}", "unclaimed draw")


class Generator:
    def __init__(self, seed: int, world: World, steps: int) -> None:
        self.rng = random.Random(seed)
        self.world = world
        self.cast = world.cast
        self.steps = steps
        self.made = 0
        self.counter = 0
        self.published: list[Op] = []  # inputs, to send again (same id and content, or other content)
        self.enrolled = {alias: (p.insurance_type, p.region, "normal") for alias, p in self.cast.people.items()}
        self.claims: list[tuple[str, str, str]] = []  # (claim id, recipient alias, the region its id names)
        self.freezes: dict[str, list[str]] = defaultdict(list)
        self.prelude = self._prelude()

    def next(self) -> Op | None:
        if self.prelude:
            return self.prelude.pop(0)
        if self.made >= self.steps:
            return None
        self.made += 1
        while True:
            weights, makers = zip(*self._menu(), strict=True)
            if op := self.rng.choices(makers, weights)[0]():
                return op

    # ---- the prelude: families set up through the public topics ----------------------------

    def _prelude(self) -> list[Op]:
        rng = self.rng
        everything = Op("deliver_all", {"inboxes": []})
        steps = [self._enroll(alias, *self.enrolled[alias]) for alias in self.cast.people]
        steps.append(everything)
        steps += [
            self._input("kinship", "k", person=link.provider, relative=link.recipient, kinship=link.kinship)
            for link in self.cast.links
        ]
        steps += [
            self._input("credit", "cr", person=alias, amount=rng.randrange(300_000, 3_000_000, 100))
            for alias in self.cast.providers
        ]
        steps.append(everything)
        related = [link for link in self.cast.links if rng.random() < 0.85]
        steps += [self._request(link.provider, link.recipient, link.kinship) for link in related]
        steps.append(everything)
        steps += [
            self._input(
                "command",
                "cmd",
                action="accept",
                actor=link.recipient,
                provider=link.provider,
                recipient=link.recipient,
            )
            for link in related
        ]
        steps.append(everything)
        steps += [self._grant(link.provider, link.recipient, rng.randrange(5_000, 150_000, 100)) for link in related]
        steps.append(everything)
        return steps

    # ---- the random mix ---------------------------------------------------------------------

    def _menu(self) -> list[tuple[float, Callable[[], Op | None]]]:
        return [
            (30, self._delivery),
            (1, self._quiet_moment),
            (3, self._crash),
            (2, self._twin),
            (3, self._redelivery),
            (2, self._zombie),
            (1.5, self._race),
            (2, self._rebalance),
            (12, self._claim),
            (5, self._reversal),
            (8, self._random_grant),
            (2, self._credit),
            (2, self._spend),
            (0.7, self._freeze),
            (1.5, self._unfreeze),
            (8, self._relationship_command),
            (1.5, self._enrollment_change),
            (0.7, self._kinship_fact),
            (2, self._resend),
            (1.5, self._reuse),
            (3, self._advance),
            (0.7, self._policy_change),
            (0.7, self._close_month),
            (0.3, self._invalid),
        ]

    def _id(self, prefix: str) -> str:
        """Mostly fresh ids; some small numbers (reused across topics and people, sometimes for other
        content: a conflict), some shaped like another topic's or an internal record's key."""
        self.counter += 1
        roll = self.rng.random()
        # Ids are used again only within one generation of the inputs' memory (their window and the
        # grace), where they are recognised: the contract forbids using an id again, and one used
        # again once forgotten would be another input under the same id (nothing can tell).
        generation = (self.world.clock.now() - START) // self.world.model.memory
        if roll < 0.08:
            return str(self.counter % 7) + (f"g{generation}" if generation else "")
        if roll < 0.12 and not generation:  # a person's id, say: used again whenever it comes up
            shape = self.rng.choice(SHAPED_IDS)
            return shape.format(
                n=f"{prefix}{self.counter}", person=self.cast.id(self.rng.choice(list(self.cast.people)))
            )
        return f"{prefix}{self.counter}"

    def _at(self) -> str:
        return self.world.clock.now().isoformat()

    def _input(self, kind: str, prefix: str, **args) -> Op:
        op = Op(kind, {**args, "id": self._id(prefix), "at": self._at()})
        self.published.append(op)
        return op

    def _someone(self, providers: float = 0.5) -> str:
        pool = self.cast.providers if self.rng.random() < providers else self.cast.recipients
        return self.rng.choice(pool)

    def _region_of(self, alias: str) -> str:
        return self.enrolled[alias][1]

    def _elsewhere(self, alias: str) -> str:
        here = province_of(self._region_of(alias))
        return self.cast.region(self.rng.choice([p for p in self.cast.provinces if p != here]))

    def _enroll(self, alias: str, insurance_type: str, region: str, status: str) -> Op:
        self.enrolled[alias] = (insurance_type, region, status)
        return self._input("enroll", "e", person=alias, insurance_type=insurance_type, region=region, status=status)

    def _request(self, provider: str, recipient: str, kinship: str) -> Op:
        region = self._region_of(recipient) if self.rng.random() < 0.9 else self._elsewhere(recipient)
        return self._input(
            "command",
            "cmd",
            action="request",
            actor=provider,
            provider=provider,
            recipient=recipient,
            region=region,
            kinship=kinship,
        )

    def _grant(self, provider: str, recipient: str, amount: int) -> Op:
        region = self._region_of(recipient) if self.rng.random() < 0.92 else self._elsewhere(recipient)
        actor = provider if self.rng.random() < 0.95 else recipient
        return self._input(
            "grant", "g", actor=actor, provider=provider, recipient=recipient, region=region, amount=amount
        )

    def _inflight(self, inboxes: list[str] | None = None) -> str | None:
        waiting = {
            inbox: len(queue)
            for inbox, queue in self.world.network.inflight.items()
            if queue and (inboxes is None or inbox in inboxes)
        }
        if not waiting:
            return None
        return self.rng.choices(list(waiting), list(waiting.values()))[0]

    def _batch(self, inbox: str, most: int = 4) -> list[str]:
        """Some messages of one key (of any key where batches run in one pipeline), in any order:
        deliveries overtake each other across producers and partitions."""
        route = ROUTES[inbox]
        queue = self.world.network.inflight[inbox]
        first = self.rng.choice(queue)
        queue = [envelope for envelope in queue if alike(route, first, envelope)]
        chosen = self.rng.sample(queue, self.rng.randint(1, min(most, len(queue))))
        return [envelope.label for envelope in chosen]

    def _delivery(self, fault: str = "") -> Op | None:
        inbox = self._inflight()
        if inbox is None:
            return None
        return Op("deliver", {"inbox": inbox, "labels": self._batch(inbox), **({"fault": fault} if fault else {})})

    def _quiet_moment(self) -> Op:
        """Everything in flight delivered: every saga has ended, so every invariant applies."""
        return Op("deliver_all", {"inboxes": []})

    def _crash(self) -> Op | None:
        return self._delivery("crash")

    def _twin(self) -> Op | None:
        op = self._delivery("twin")
        if op is not None:
            op.args["pattern"] = self.rng.getrandbits(12)
        return op

    def _redelivery(self) -> Op | None:
        handled = {inbox: envelopes for inbox, envelopes in self.world.network.handled.items() if envelopes}
        if not handled:
            return None
        inbox = self.rng.choice(sorted(handled))
        envelopes = handled[inbox][-12:]  # a consumer rewinds a little, not to the beginning
        first = envelopes[-1]
        envelopes = [envelope for envelope in envelopes if envelope.topic.model is first.topic.model]
        chosen = self.rng.sample(envelopes, self.rng.randint(1, min(3, len(envelopes))))
        return Op("redeliver", {"inbox": inbox, "labels": [envelope.label for envelope in chosen]})

    def _zombie(self) -> Op | None:
        inbox = self._inflight()
        if inbox is None:
            return None
        return Op("zombie", {"inbox": inbox, "labels": self._batch(inbox, 3), "pause": self.rng.randint(1, 6)})

    def _race(self) -> Op | None:
        inbox = self._inflight(["relationship/commands"])
        other = self._inflight(["relationship/enrollment", "relationship/commands", "relationship/kinship"])
        if inbox is None or other is None:
            return None
        labels = self._batch(inbox, 1)
        others = [label for label in self._batch(other, 2) if label not in labels]
        if not others:
            return None
        return Op(
            "race",
            {
                "inbox": inbox,
                "labels": labels,
                "pause": self.rng.randint(1, 9),
                "other_inbox": other,
                "other_labels": others,
            },
        )

    def _rebalance(self) -> Op | None:
        if self._inflight(["wallet/draw-requests"]) is None:
            return None
        return Op("rebalance", {"labels": self._batch("wallet/draw-requests", 2), "takes": self.rng.randint(1, 2)})

    def _claim(self) -> Op:
        rng = self.rng
        with_quota = sorted(
            {
                self.cast.alias(recipient)
                for account in self.world.model.accounts.values()
                for recipient, left in account.grants.items()
                if left > 0
            }
        )
        if with_quota and rng.random() < 0.6:
            recipient = rng.choice(with_quota)
        else:
            recipient = rng.choice(self.cast.recipients + ["P0"]) if rng.random() < 0.95 else self._someone()
        away = rng.random() < 0.3
        service_region = self._elsewhere(recipient) if away else self._region_of(recipient)
        category = rng.choices(
            ["institution", "pharmacy", "resident_premium", "ltc_premium", "massage"], [60, 15, 10, 8, 3]
        )[0]
        amount = MAX_AMOUNT_FEN if rng.random() < 0.01 else rng.randint(1, 40_000)
        args: dict = {
            "recipient": recipient,
            "category": category,
            "service_region": service_region,
            "recipient_region": self._region_of(recipient) if rng.random() < 0.92 else self._elsewhere(recipient),
            "amount": amount,
        }
        if category in ("institution", "pharmacy"):
            letter = {"institution": "H", "pharmacy": "P"}[category]
            if rng.random() < 0.05:
                letter = "P" if letter == "H" else "H"  # a pharmacy passing as an institution, or the reverse
            code_region = service_region if rng.random() < 0.95 else self._elsewhere(recipient)
            args["code"] = f"{letter}{code_region}0001"
        if category == "pharmacy":
            args["items"] = [[f"drug{i}", rng.random() < 0.7, rng.randint(1, amount)] for i in range(rng.randint(1, 3))]
        op = self._input("settle", "cl", **args, via=self._sender(service_region))
        self.claims.append((op.args["id"], recipient, service_region))
        return op

    def _sender(self, region: str) -> str | None:
        """Who sends a claim about care in `region`: the national platform (None), the region's
        province on its own topic, or now and then another province (a claim it must not send)."""
        roll = self.rng.random()
        if roll < 0.5:
            return None
        here = province_of(region)
        return here if roll < 0.93 else self.rng.choice([p for p in self.cast.provinces if p != here])

    def _reversal(self) -> Op | None:
        if not self.claims:
            return None
        claim_id, recipient, region = self.rng.choice(self.claims)
        roll = self.rng.random()
        if roll < 0.12:
            recipient = self.rng.choice(self.cast.recipients)  # another recipient tries
        elif roll < 0.2:
            claim_id, region = f"never-{self.counter}", "110100"  # the world's region of a claim never sent
        op = self._input("reverse", "rv", recipient=recipient, reverses=claim_id, via=self._sender(region))
        self.claims.append((op.args["id"], recipient, region))
        return op

    def _random_grant(self) -> Op:
        active = [
            (self.cast.alias(p), self.cast.alias(r))
            for (p, r), pair in self.world.model.wallet_pairs.items()
            if pair.active
        ]
        if active and self.rng.random() < 0.7:
            provider, recipient = self.rng.choice(sorted(active))
        elif self.rng.random() < 0.85:
            link = self.rng.choice(self.cast.links)
            provider, recipient = link.provider, link.recipient
        else:
            provider, recipient = self._someone(0.8), self._someone(0.2)
        amount = 200_001 if self.rng.random() < 0.03 else self.rng.randrange(100, 120_000, 100)
        return self._grant(provider, recipient, amount)

    def _credit(self) -> Op:
        amount = MAX_AMOUNT_FEN if self.rng.random() < 0.02 else self.rng.randrange(10_000, 2_000_000, 100)
        return self._input("credit", "cr", person=self._someone(0.9), amount=amount)

    def _spend(self) -> Op:
        return self._input("spend", "sp", person=self._someone(0.9), amount=self.rng.randint(1, 800_000))

    def _freeze(self) -> Op:
        person = self._someone()
        op = self._input(
            "supervise", "sv", person=person, action="freeze", reason=self.rng.choice(["misuse", "audit case 7"])
        )
        self.freezes[person].append(op.args["id"])
        return op

    def _unfreeze(self) -> Op:
        frozen = sorted(
            self.cast.alias(person) for person, account in self.world.model.accounts.items() if account.freezes
        )
        person = self.rng.choice(frozen) if frozen and self.rng.random() < 0.8 else self._someone()
        standing = self.world.model.accounts[self.cast.id(person)].freezes if person in frozen else []
        lifts = None
        if standing and self.rng.random() < 0.6:
            lifts = self.rng.choice(standing)
        elif self.freezes[person] and self.rng.random() < 0.2:
            lifts = self.rng.choice(self.freezes[person])  # perhaps lifted already
        elif self.rng.random() < 0.1:
            lifts = "no-such-freeze"
        return self._input("supervise", "sv", person=person, action="unfreeze", reason="cleared", lifts=lifts)

    def _relationship_command(self) -> Op:
        rng = self.rng
        if rng.random() < 0.9:
            link = rng.choice(self.cast.links)
            provider, recipient, kinship = link.provider, link.recipient, link.kinship
        else:
            provider, recipient, kinship = self._someone(0.8), self._someone(0.2), rng.choice(list(Kinship)).value
        held = self.world.model.pairs.get((self.cast.id(provider), self.cast.id(recipient)))
        state = held.state if held else "none"
        action = rng.choices(
            ["request", "accept", "decline", "dissolve"],
            {"none": [8, 1, 0.5, 0.5], "pending": [1, 8, 1, 1], "active": [1, 1, 1, 3]}[state],
        )[0]
        if action == "request":
            return self._request(
                provider, recipient, kinship if rng.random() < 0.9 else rng.choice(["cousin", "sibling"])
            )
        actor = {"accept": recipient, "decline": recipient, "dissolve": rng.choice([provider, recipient])}[action]
        if rng.random() < 0.08:
            actor = provider if actor == recipient else recipient
        return self._input("command", "cmd", action=action, actor=actor, provider=provider, recipient=recipient)

    def _enrollment_change(self) -> Op:
        person = self._someone(0.4)
        insurance_type, region, status = self.enrolled[person]
        if status != "normal" and self.rng.random() < 0.6:
            change = "status"  # a suspension usually ends
        else:
            change = self.rng.choices(
                ["move", "district", "status", "type", "none"], [2, 2, 2, 1 if person.startswith("R") else 0.2, 1]
            )[0]
        if change == "move":
            region = self._elsewhere(person)
        elif change == "district":
            region = self.cast.region(province_of(region), 2 if region.endswith("0100") else 1)
        elif change == "status":
            status = "suspended" if status == "normal" else "normal"
        elif change == "type":
            insurance_type = "resident" if insurance_type == "employee" else "employee"
        return self._enroll(person, insurance_type, region, status)

    def _kinship_fact(self) -> Op:
        link = self.rng.choice(self.cast.links)
        if self.rng.random() < 0.5:  # the recipient's own fact: what the provider is to them
            return self._input(
                "kinship",
                "k",
                person=link.recipient,
                relative=link.provider,
                kinship=INVERSE[Kinship(link.kinship)].value,
            )
        return self._input(
            "kinship",
            "k",
            person=link.provider,
            relative=link.recipient,
            kinship=self.rng.choice([link.kinship, link.kinship, "sibling"]),
        )

    def _resend(self) -> Op | None:
        """An input sent again unchanged: the same id, one effect."""
        return self.rng.choice(self.published) if self.published else None

    def _reuse(self) -> Op | None:
        """An id used again for other content: refused as a conflict, nothing changes."""
        candidates = [op for op in self.published if "amount" in op.args or op.kind == "enroll"]
        if not candidates:
            return None
        op = self.rng.choice(candidates)
        if op.kind == "enroll":
            changed = {"status": "suspended" if op.args["status"] == "normal" else "normal"}
        else:
            changed = {"amount": max(1, op.args["amount"] - 1)}
        return Op(op.kind, {**op.args, **changed})

    def _advance(self) -> Op | None:
        now = self.world.clock.now()
        roll = self.rng.random()
        if roll < 0.15:  # to one minute before midnight: the day's limit turns over next
            minutes = (23 - now.hour) * 60 + (59 - now.minute) or 1
        elif roll < 0.2:  # past a claim's window, or its records' grace: claims come late, records expire
            minutes = self.rng.randint(20, 40) * 24 * 60
        elif roll < 0.35:
            minutes = self.rng.randint(1, 12) * 24 * 60
        else:
            minutes = self.rng.randint(1, 240)
        # Never so far that a draw, an answer or a refund already on its way finds its claim's day
        # gone: that would leave a claim pending for good (an operator's case, not a run's end).
        minutes = min(minutes, self._minutes_while_in_flight_days_hold())
        return Op("advance", {"minutes": minutes}) if minutes > 0 else None

    def _minutes_while_in_flight_days_hold(self) -> int:
        """Also never past the window of a claim recorded whose copy is on its way (its answer was
        lost to a crash): refused as too old, its stored result would never be published."""
        model, now = self.world.model, self.world.clock.now()
        messages = [envelope.message for queue in self.world.network.inflight.values() for envelope in queue]
        deadlines = [model.kept_until(day) - model.grace / 2 for m in messages if (day := _claim_day(m)) is not None]
        deadlines += [
            book.occurred_at + model.window
            for m in messages
            if isinstance(m, Claim) and (book := model.claims.get(m.claim_id)) and book.occurred_at is not None
        ]
        return min((int((deadline - now).total_seconds() // 60) - 1 for deadline in deadlines), default=10**9)

    def _policy_change(self) -> Op:
        closed = [self.rng.choice(self.cast.provinces)] if self.rng.random() < 0.4 else []
        since = "2026-12-01" if self.rng.random() < 0.3 else "2026-01-09"
        return Op("policy", {"closed": closed, "since": since})

    def _close_month(self) -> Op | None:
        current = shanghai_month(self.world.clock.now())
        months = sorted(
            month for month in self.world.model.clearing if month < current and month not in self.world.model.closed
        )
        return Op("close", {"month": months[0]}) if months else None

    def _invalid(self) -> Op:
        """Input the contract must refuse at the edge."""
        person = self._someone()
        if self.rng.random() < 0.5:
            return Op(
                "supervise",
                {
                    "person": person,
                    "action": "freeze",
                    "reason": "   ",
                    "id": f"blank{self.counter}",
                    "at": self._at(),
                    "invalid": True,
                },
            )
        return Op(
            "credit",
            {
                "person": person,
                "amount": MAX_AMOUNT_FEN + 1,
                "id": f"huge{self.counter}",
                "at": self._at(),
                "invalid": True,
            },
        )


def _claim_day(message: object) -> str | None:
    """The claim's day an internal message of the claim path carries (a draw, its answer, a refund)."""
    if isinstance(message, DrawRequested | DrawAnswered):
        return message.context.claim_day
    if isinstance(message, RefundRequested):
        return message.claim_day
    return None
