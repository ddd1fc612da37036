"""Every money-safety defect fixed so far, as a short scripted run of the simulator: the steps that
used to break an invariant, checked by the same books as a random run (and by `expect` steps
that the path the defect took is taken). `gongji simulate --scenario NAME` runs one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from gongji.simulation.cast import Cast
from gongji.simulation.world import START, Op
from shared.ids import province_of
from shared.money import MAX_AMOUNT_FEN

AT = START.isoformat()
DAY = START.strftime("%Y%m%d")  # the claims of a scenario occur on its first day


class Script:
    """Builds a scenario's operations; people by alias (P0…R3), messages by the start of their label."""

    def __init__(self, cast: Cast) -> None:
        self.cast = cast
        self.ops: list[Op] = []
        self.regions = {alias: person.region for alias, person in cast.people.items()}

    def add(self, kind: str, **args) -> Script:
        self.ops.append(Op(kind, args))
        return self

    def expect(self, text: str) -> Script:
        return self.add("expect", text=text)

    def deliver(self, inbox: str, *labels: str, fault: str = "") -> Script:
        return self.add("deliver", inbox=inbox, labels=list(labels), **({"fault": fault} if fault else {}))

    def everything(self, *inboxes: str) -> Script:
        return self.add("deliver_all", inboxes=list(inboxes))

    def enroll(self, person: str, id: str, region: str | None = None, status: str = "normal") -> Script:
        region = region or self.regions[person]
        self.regions[person] = region
        return self.add(
            "enroll",
            person=person,
            insurance_type=self.cast.people[person].insurance_type,
            region=region,
            status=status,
            id=id,
            at=AT,
        )

    def moved(self, person: str, id: str) -> Script:
        """An insurance change: the person moves to another district of their province."""
        region = self.regions[person]
        return self.enroll(person, id, self.cast.region(province_of(region), 2 if region.endswith("0100") else 1))

    def command(self, action: str, provider: str, recipient: str, id: str, actor: str | None = None) -> Script:
        actor = actor or (provider if action in ("request", "dissolve") else recipient)
        extra = (
            {"region": self.regions[recipient], "kinship": self.kinship(provider, recipient)}
            if action == "request"
            else {}
        )
        return self.add(
            "command", action=action, actor=actor, provider=provider, recipient=recipient, id=id, at=AT, **extra
        )

    def kinship(self, provider: str, recipient: str) -> str:
        return next(
            link.kinship for link in self.cast.links if (link.provider, link.recipient) == (provider, recipient)
        )

    def grant(self, provider: str, recipient: str, amount: int, id: str, at: str = AT) -> Script:
        return self.add(
            "grant",
            actor=provider,
            provider=provider,
            recipient=recipient,
            region=self.regions[recipient],
            amount=amount,
            id=id,
            at=at,
        )

    def claim(
        self,
        recipient: str,
        id: str,
        amount: int,
        category: str = "institution",
        service_region: str | None = None,
        code: str | None = None,
        items: list | None = None,
    ) -> Script:
        service_region = service_region or self.regions[recipient]
        if code is None and category in ("institution", "pharmacy"):
            code = f"{'H' if category == 'institution' else 'P'}{service_region}0001"
        return self.add(
            "settle",
            recipient=recipient,
            id=id,
            category=category,
            service_region=service_region,
            recipient_region=self.regions[recipient],
            amount=amount,
            code=code,
            items=items,
            at=AT,
        )

    def settled(self, recipient: str, id: str, amount: int, status: str = "settled", **fields) -> Script:
        """A claim through the whole saga."""
        self.claim(recipient, id, amount, **fields)
        self.deliver("settlement/claim-path", f"claim {id}").expect("DrawRequested")
        self.deliver("wallet/draw-requests", f"draw {id}").deliver("settlement/claim-path", f"answer {id}")
        return self.expect(f"1 {status}")

    def reverse(self, recipient: str, id: str, reverses: str) -> Script:
        return self.add("reverse", recipient=recipient, id=id, reverses=reverses, at=AT)

    def supervise(self, person: str, action: str, id: str, lifts: str | None = None, reason: str = "case") -> Script:
        return self.add("supervise", person=person, action=action, reason=reason, id=id, lifts=lifts, at=AT)

    def families(self, *pairs: tuple[str, str, int | None]) -> Script:
        """Everyone enrolled; each (provider, recipient, grant) related through the public topics, and granted."""
        for alias in self.cast.people:
            self.enroll(alias, f"e-{alias}")
        providers = sorted({provider for provider, _, _ in pairs})
        for provider, recipient, _ in pairs:
            self.add(
                "kinship",
                person=provider,
                relative=recipient,
                kinship=self.kinship(provider, recipient),
                id=f"k-{provider}-{recipient}",
                at=AT,
            )
        for provider in providers:
            self.add("credit", person=provider, amount=1_000_000, id=f"cr-{provider}", at=AT)
        self.everything()
        for provider, recipient, _ in pairs:
            self.command("request", provider, recipient, f"q-{provider}-{recipient}")
        self.everything()
        for provider, recipient, _ in pairs:
            self.command("accept", provider, recipient, f"a-{provider}-{recipient}")
        self.everything()
        for provider, recipient, amount in pairs:
            if amount:
                self.grant(provider, recipient, amount, f"g-{provider}-{recipient}")
        return self.everything()


@dataclass(frozen=True)
class Scenario:
    name: str
    defect: str  # what used to go wrong
    build: Callable[[Script], Script]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, defect: str):
    def register(build: Callable[[Script], Script]) -> Callable[[Script], Script]:
        SCENARIOS[name] = Scenario(name, defect, build)
        return build

    return register


def scenario_ops(name: str, cast: Cast) -> list[Op]:
    return SCENARIOS[name].build(Script(cast)).ops


@scenario("reversal-of-a-reversal", "a reversal could itself be reversed, paying the claim back twice")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 50_000)).settled("R0", "c1", 20_000)
    s.reverse("R0", "r1", "c1").deliver("settlement/claim-path", "reversal r1").expect("1 reversed")
    s.reverse("R0", "r2", "r1").deliver("settlement/claim-path", "reversal r2").expect("1 rejected")
    return s.everything()


@scenario("reversal-by-another-recipient", "another recipient could reverse a claim and have its money put back")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 50_000), ("P0", "R1", 50_000)).settled("R0", "c1", 20_000)
    s.reverse("R1", "r1", "c1").deliver("settlement/claim-path", "reversal r1").expect("1 rejected")
    s.reverse("R0", "r2", "c1").deliver("settlement/claim-path", "reversal r2").expect("1 reversed")
    return s.everything()


@scenario("reversal-of-a-pending-claim", "a claim still drawing could be reversed, and its draw then paid too")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 50_000)).claim("R0", "c1", 20_000).deliver("settlement/claim-path", "claim c1")
    s.reverse("R0", "r1", "c1").deliver("settlement/claim-path", "reversal r1").expect("1 rejected")
    s.deliver("wallet/draw-requests", "draw c1").deliver("settlement/claim-path", "answer c1").expect("1 settled")
    s.reverse("R0", "r2", "c1").deliver("settlement/claim-path", "reversal r2").expect("1 reversed")
    return s.everything()


@scenario(
    "replayed-draw-after-the-recipient-froze",
    "a draw retried after a freeze planned again: it answered 'frozen, nothing paid' while a provider stayed debited",
)
def _(s: Script) -> Script:
    s.families(("P0", "R0", 40_000), ("P1", "R0", 40_000)).claim("R0", "c1", 60_000).deliver(
        "settlement/claim-path", "claim c1"
    )
    s.add("rebalance", labels=["draw c1"], takes=1).expect("took 40000")
    s.supervise("R0", "freeze", "f1").deliver("wallet/supervision", "freeze f1")
    s.deliver("wallet/draw-requests", "draw c1").expect("2 debited")
    s.deliver("settlement/claim-path", "answer c1").expect("1 settled")
    return s.everything()


@scenario(
    "replayed-draw-after-a-provider-was-indexed",
    "a draw retried after another provider granted planned again and paid more than the claim asked",
)
def _(s: Script) -> Script:
    s.families(("P0", "R0", 20_000), ("P1", "R0", None)).claim("R0", "c1", 30_000).deliver(
        "settlement/claim-path", "claim c1"
    )
    s.add("rebalance", labels=["draw c1"], takes=1).expect("took 20000")
    s.add("advance", minutes=-24 * 60)  # the new provider's first grant sorts ahead of the first one's
    a_day_before = (START - timedelta(days=1)).isoformat()
    s.grant("P1", "R0", 15_000, "g2", at=a_day_before).deliver("wallet/commands", "grant g2").expect("1 granted")
    s.add("advance", minutes=24 * 60)
    s.deliver("wallet/draw-requests", "draw c1").expect("1 debited")
    s.deliver("settlement/claim-path", "answer c1").expect("1 partial")
    return s.everything()


@scenario(
    "one-claim-id-for-two-recipients",
    "a provider's take was keyed by claim only: another recipient's draw under the same id was paid from it",
)
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000), ("P0", "R1", 30_000)).settled("R0", "c1", 10_000)
    s.claim("R1", "c1", 5_000, service_region=s.regions["R0"]).deliver("settlement/claim-path", "claim c1").expect(
        "1 rejected"
    )
    s.add(
        "inject",
        topic="gongji.internal.draw-requests.v1",
        message={
            "request_id": "forged-draw",
            "claim_id": "c1",
            "recipient_id": "R1",
            "amount_fen": 5_000,
            "context": {"requested_fen": 5_000, "service_region": s.regions["R1"], "claim_day": DAY},
            "requested_at": AT,
        },
    )
    s.deliver("wallet/draw-requests", "draw c1").expect("out: 1 DrawAnswered")
    return s.everything()


@scenario(
    "output-ids-across-people",
    "two people whose provinces number their events alike got the same output id: the second was dropped",
)
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000))
    s.moved("P0", "2").deliver("relationship/enrollment", "enrollment 2").expect("1 terminated").everything()
    s.command("request", "P0", "R0", "q2").everything().command("accept", "P0", "R0", "a2").everything()
    s.grant("P0", "R0", 20_000, "g2").everything()
    s.moved("R0", "2").deliver("relationship/enrollment", "enrollment 2").expect("1 terminated")
    s.deliver("wallet/relationship-events", "terminated v6 P0>R0").expect("1 released")
    return s.everything()


@scenario("redelivered-dissolve", "a redelivered dissolve marked a relationship made since as ended: rule 7 missed it")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000))
    s.command("dissolve", "P0", "R0", "d1").deliver("relationship/commands", "dissolve d1").expect(
        "1 dissolved"
    ).everything()
    s.command("request", "P0", "R0", "q2").everything().command("accept", "P0", "R0", "a2").everything()
    s.add("redeliver", inbox="relationship/commands", labels=["dissolve d1"]).expect("1 dissolved")
    s.moved("R0", "e2").deliver("relationship/enrollment", "enrollment e2").expect("1 terminated")
    return s.everything()


@scenario("redelivered-decline", "a redelivered decline marked a relationship made since as ended: rule 7 missed it")
def _(s: Script) -> Script:
    s.families(("P1", "R0", None))
    s.command("request", "P1", "R2", "q1").add("kinship", person="P1", relative="R2", kinship="spouse", id="k1", at=AT)
    s.everything().command("decline", "P1", "R2", "n1").deliver("relationship/commands", "decline n1").expect(
        "1 declined"
    )
    s.command("request", "P1", "R2", "q2").everything().command("accept", "P1", "R2", "a2").everything()
    s.add("redeliver", inbox="relationship/commands", labels=["decline n1"]).expect("1 declined")
    s.moved("R2", "e2").deliver("relationship/enrollment", "enrollment e2").expect("1 terminated")
    return s.everything()


@scenario(
    "terminated-before-established",
    "a `terminated` that overtook its `established` was undone by it: the wallet kept a relationship that had ended",
)
def _(s: Script) -> Script:
    s.families(("P0", "R1", None))
    s.command("request", "P0", "R0", "q1").add("kinship", person="P0", relative="R0", kinship="parent", id="k1", at=AT)
    s.everything().command("accept", "P0", "R0", "a1").deliver("relationship/commands", "accept a1").expect(
        "1 established"
    )
    s.moved("R0", "e2").deliver("relationship/enrollment", "enrollment e2").expect("1 terminated")
    s.deliver("wallet/relationship-events", "terminated v3 P0>R0", "established v2 P0>R0")
    s.grant("P0", "R0", 10_000, "g1").deliver("wallet/commands", "grant g1").expect("1 grant_rejected")
    return s.everything()


@scenario(
    "newer-established-before-older-terminated",
    "a newer `established` arriving before the older `terminated` left the old quota frozen for good",
)
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000))
    s.moved("R0", "e2").deliver("relationship/enrollment", "enrollment e2").expect("1 terminated")
    s.command("request", "P0", "R0", "q2").deliver("relationship/commands", "request q2")
    s.command("accept", "P0", "R0", "a2").deliver("relationship/commands", "accept a2").expect("1 established")
    s.deliver("wallet/relationship-events", "established v5 P0>R0").expect("1 released")
    s.deliver("wallet/relationship-events", "terminated v3 P0>R0").expect("out: nothing")
    s.grant("P0", "R0", 20_000, "g2").deliver("wallet/commands", "grant g2").expect("1 granted")
    return s.everything()


@scenario(
    "recipient-moves-while-a-request-is-decided",
    "rule 7 raced a request: a recipient who moved while it was decided stayed pending under the old region",
)
def _(s: Script) -> Script:
    s.families(("P2", "R3", None))
    for provider, recipient, pause in (("P0", "R0", 6), ("P1", "R0", 8), ("P0", "R1", 9)):
        s.add(
            "kinship",
            person=provider,
            relative=recipient,
            kinship=s.kinship(provider, recipient),
            id=f"k-{provider}-{recipient}",
            at=AT,
        ).everything()
        s.command("request", provider, recipient, f"q-{pause}").moved(recipient, f"e-{pause}")
        # before the index (6), before the step (8), between the step and the index (9)
        s.add(
            "race",
            inbox="relationship/commands",
            labels=[f"request q-{pause}"],
            pause=pause,
            other_inbox="relationship/enrollment",
            other_labels=[f"enrollment e-{pause}"],
        )
        s.expect("out: 1 rejected" if pause < 9 else "meanwhile 1 in, out: 1 terminated").everything()
    return s


@scenario(
    "recipient-moves-while-an-acceptance-is-decided",
    "rule 7 raced an acceptance: a recipient who moved while it was decided was accepted under the old region",
)
def _(s: Script) -> Script:
    s.families(("P2", "R3", None))
    for provider, recipient, pause in (("P0", "R0", 5), ("P1", "R2", 6)):
        s.add(
            "kinship",
            person=provider,
            relative=recipient,
            kinship=s.kinship(provider, recipient),
            id=f"k-{provider}-{recipient}",
            at=AT,
        )
        s.command("request", provider, recipient, f"q-{pause}").everything()
        s.command("accept", provider, recipient, f"a-{pause}").moved(recipient, f"e-{pause}")
        s.add(
            "race",
            inbox="relationship/commands",
            labels=[f"accept a-{pause}"],
            pause=pause,
            other_inbox="relationship/enrollment",
            other_labels=[f"enrollment e-{pause}"],
        )
        s.expect("A: 1 in, out: 1 rejected").everything()
    return s


@scenario("freeze-needs-a-reason", "a freeze with an empty reason was taken")
def _(s: Script) -> Script:
    s.supervise("P0", "freeze", "f1", reason="   ").ops[-1].args["invalid"] = True
    return s.expect("refused at the edge")


@scenario("one-unfreeze-lifts-one-freeze", "one unfreeze lifted every freeze, ending other cases' freezes too")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000))
    s.supervise("P0", "freeze", "f1").supervise("P0", "freeze", "f2").supervise("P0", "unfreeze", "u1")
    s.deliver("wallet/supervision", "freeze f1", "freeze f2", "unfreeze u1").expect("1 unfrozen")
    s.grant("P0", "R0", 10_000, "g2").deliver("wallet/commands", "grant g2").expect("1 grant_rejected")
    s.claim("R0", "c1", 5_000).deliver("settlement/claim-path", "claim c1").deliver("wallet/draw-requests", "draw c1")
    s.deliver("settlement/claim-path", "answer c1").expect("1 rejected")
    s.supervise("P0", "unfreeze", "u2", lifts="f2").deliver("wallet/supervision", "unfreeze u2")
    s.grant("P0", "R0", 10_000, "g3").deliver("wallet/commands", "grant g3").expect("1 granted")
    return s.everything()


@scenario("grants-follow-the-run-time-policy", "grants ignored the policy set at run time (closed regions, the date)")
def _(s: Script) -> Script:
    s.families(*((link.provider, link.recipient, None) for link in s.cast.links[:4]))
    s.add("policy", closed=[s.regions["R0"]], since="2026-01-09")
    s.grant("P0", "R0", 10_000, "g1").deliver("wallet/commands", "grant g1").expect("1 grant_rejected")
    s.add("policy", closed=[], since="2026-12-01")
    for link in s.cast.links[:4]:
        s.grant(link.provider, link.recipient, 10_000, f"g-late-{link.provider}-{link.recipient}")
    s.everything("wallet/commands")  # refused where the pair crosses provinces (the books know which)
    s.add("policy", closed=[], since="2026-01-09")
    s.grant("P0", "R0", 10_000, "g2").deliver("wallet/commands", "grant g2").expect("1 granted")
    return s.everything()


@scenario(
    "ids-of-one-topic-meet-another",
    "an id of one topic equal to another topic's, or shaped like an internal key, was taken for a duplicate",
)
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000))
    s.add("credit", person="P0", amount=5_000, id="7", at=AT).add("spend", person="P0", amount=1_000, id="7", at=AT)
    s.grant("P0", "R0", 2_000, "7").supervise("P0", "freeze", "7").supervise("P0", "unfreeze", "draw:7", lifts="7")
    s.deliver("wallet/credits", "credit 7").expect("1 credited").deliver("wallet/spends", "spend 7").expect("1 spent")
    s.deliver("wallet/commands", "grant 7").expect("1 granted")
    s.deliver("wallet/supervision", "freeze 7", "unfreeze draw:7").expect("1 unfrozen")
    for claim_id in ("draw:7", "refund:7", "E/P", "7"):
        s.settled("R0", claim_id, 1_000)
    s.reverse("R0", "refund:draw:7", "draw:7").deliver("settlement/claim-path", "reversal refund:draw:7").expect(
        "1 reversed"
    )
    return s.everything()


@scenario(
    "amounts-near-the-limit",
    "amounts near 10^12 fen and balances past 10^14 lost precision in cjson; larger amounts were taken",
)
def _(s: Script) -> Script:
    s.families(("P0", "R0", 200_000))
    credits = [f"big{n}" for n in range(101)]
    for credit in credits:
        s.add("credit", person="P0", amount=MAX_AMOUNT_FEN, id=credit, at=AT)
    s.deliver("wallet/credits", *(f"credit {credit}" for credit in credits)).expect("101 credited")
    s.add("credit", person="P0", amount=MAX_AMOUNT_FEN + 1, id="too-big", at=AT, invalid=True).expect(
        "refused at the edge"
    )
    s.add("spend", person="P0", amount=MAX_AMOUNT_FEN - 1, id="s1", at=AT).deliver("wallet/spends", "spend s1").expect(
        "1 spent"
    )
    s.settled("R0", "c1", MAX_AMOUNT_FEN, status="partial")
    return s.everything()


@scenario(
    "reversal-after-its-month-closed", "a reversal of a claim from a closed month changed that month's count of claims"
)
def _(s: Script) -> Script:
    s.families(("P0", "R0", 50_000))
    away = next(p for p in s.cast.provinces if p != province_of(s.regions["P0"]))
    s.settled("R0", "c1", 20_000, service_region=s.cast.region(away))
    to_april = (START.replace(month=4, day=1, hour=10) - START) // timedelta(minutes=1)
    s.add("advance", minutes=to_april).add("close", month="2026-03").expect("closed 2026-03")
    s.reverse("R0", "r1", "c1").deliver("settlement/claim-path", "reversal r1").expect("1 reversed")
    return s.everything()


@scenario("claim-window", "a claim's records left Redis while a copy of it could still come: it was paid twice")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 50_000)).settled("R0", "c1", 20_000)
    day = 24 * 60
    s.add("advance", minutes=20 * day)  # within the window: the stored result again
    s.claim("R0", "c1", 20_000).deliver("settlement/claim-path", "claim c1").expect("1 settled")
    s.add("advance", minutes=11 * day)  # past it: too old, whatever Redis still holds
    s.claim("R0", "c1", 20_000).deliver("settlement/claim-path", "claim c1").expect("1 rejected")
    s.add("advance", minutes=3 * day).expect("expired")  # its day's records gone
    s.claim("R0", "c1", 20_000).deliver("settlement/claim-path", "claim c1").expect("1 rejected")
    s.reverse("R0", "r1", "c1").deliver("settlement/claim-path", "reversal r1").expect("1 rejected")
    return s.everything()


@scenario("input-window", "a credit's id was forgotten while a copy of it could still come: it was credited twice")
def _(s: Script) -> Script:
    s.families(("P0", "R0", None))  # P0's first credit begins the generation of its credits' ids

    def credit(id: str, day: int) -> Script:
        s.add("credit", person="P0", amount=100, id=id, at=(START + timedelta(days=day)).isoformat())
        return s.deliver("wallet/credits", f"credit {id}")

    day = 24 * 60
    s.add("advance", minutes=10 * day)
    credit("c10", 10).expect("1 credited")
    s.add("advance", minutes=23 * day)
    credit("c33", 33).expect("1 credited")  # the generation is 33 days old: c10 moves to the earlier one
    s.add("advance", minutes=6 * day)
    credit("c10", 10).expect("1 credited")  # 29 days on: its stored answer again, not a second credit
    s.add("advance", minutes=2 * day)
    credit("c10", 10).expect("1 credited")  # 31 days on, outside the window but remembered: the same
    credit("c11", 10).expect("1 Refused")  # as old, never applied: refused, nothing read but its id
    return s.everything()


@scenario("daily-limit-by-the-injected-clock", "the daily count of grants followed real time, not the injected clock")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 10_000))
    for n in (2, 3, 4):
        s.grant("P0", "R0", 10_000, f"g{n}").deliver("wallet/commands", f"grant g{n}")
    s.expect("1 grant_rejected")
    s.add("advance", minutes=15 * 60)  # past midnight, Asia/Shanghai
    s.grant("P0", "R0", 10_000, "g5").deliver("wallet/commands", "grant g5").expect("1 granted")
    return s.everything()


@scenario("pharmacy-code-as-institution", "a pharmacy claiming as an institution had items outside the catalogue paid")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 50_000))
    region = s.regions["R0"]
    s.claim("R0", "c1", 5_000, code=f"P{region}0001").deliver("settlement/claim-path", "claim c1").expect("1 rejected")
    s.claim("R0", "c2", 5_000, category="pharmacy", code=f"H{region}0001").deliver("settlement/claim-path", "claim c2")
    s.expect("1 rejected")
    s.settled(
        "R0",
        "c3",
        5_000,
        status="partial",
        category="pharmacy",
        items=[["listed", True, 3_000], ["unlisted", False, 2_000]],
    )
    return s.everything()


@scenario("answer-for-an-unknown-claim", "money drawn for a claim settlement never recorded stayed drawn")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000))
    s.add(
        "inject",
        topic="gongji.internal.draw-requests.v1",
        message={
            "request_id": "forged-draw",
            "claim_id": "ghost",
            "recipient_id": "R0",
            "amount_fen": 8_000,
            "context": {"requested_fen": 8_000, "service_region": s.regions["R0"], "claim_day": DAY},
            "requested_at": AT,
        },
    )
    s.deliver("wallet/draw-requests", "draw ghost").expect("1 debited")
    s.deliver("settlement/claim-path", "answer ghost").expect("1 RefundRequested")
    s.deliver("wallet/refund-requests", "refund").expect("1 refunded")
    return s.everything()


@scenario("answer-not-matching-its-claim", "a draw answer for another recipient or amount completed the claim")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000), ("P0", "R1", 30_000))
    s.claim("R0", "c1", 10_000).deliver("settlement/claim-path", "claim c1")
    for recipient, asked in (("R1", 10_000), ("R0", 9_999)):
        s.add(
            "inject",
            topic="gongji.internal.draw-answers.v1",
            message={
                "event_id": f"forged-{recipient}",
                "claim_id": "c1",
                "recipient_id": recipient,
                "requested_fen": asked,
                "paid_fen": 0,
                "payers": [],
                "context": {"requested_fen": asked, "service_region": s.regions["R0"], "claim_day": DAY},
                "answered_at": AT,
            },
        )
        s.deliver("settlement/claim-path", "answer c1").expect("Refused")
    s.deliver("wallet/draw-requests", "draw c1").deliver("settlement/claim-path", "answer c1").expect("1 settled")
    return s.everything()


@scenario(
    "refund-to-the-wrong-recipient", "a refund naming another recipient put the money into that recipient's grant"
)
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000), ("P0", "R1", 30_000)).settled("R0", "c1", 10_000)
    s.add(
        "inject",
        topic="gongji.internal.refund-requests.v1",
        message={
            "request_id": "forged-refund",
            "claim_id": "forged-refund",
            "original_claim_id": "c1",
            "recipient_id": "R1",
            "payers": [{"provider_id": "P0", "provider_region": s.regions["P0"], "amount_fen": 10_000}],
            "requested_at": AT,
            "claim_day": DAY,
        },
    )
    s.deliver("wallet/refund-requests", "refund forged-refund").expect("out: nothing")
    s.reverse("R0", "r1", "c1").everything("settlement/claim-path").deliver("wallet/refund-requests", "refund r1")
    return s.expect("1 refunded").everything()


@scenario("rebalance-mid-draw", "two instances drawing one claim during a rebalance could each take from the grants")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 20_000), ("P1", "R0", 20_000))
    s.claim("R0", "c1", 30_000).claim("R0", "c2", 5_000).deliver("settlement/claim-path", "claim c1", "claim c2")
    s.add("zombie", inbox="wallet/draw-requests", labels=["draw c1"], pause=2).expect(
        "meanwhile 1 in, out: 1 DrawAnswered, 2 debited"
    )
    s.deliver("wallet/draw-requests", "draw c2", fault="twin").deliver(
        "settlement/claim-path", "answer c1", fault="twin"
    )
    return s.expect("1 settled").everything()


@scenario("crash-before-publishing", "a crash between the Redis step and the publish repeated or lost an effect")
def _(s: Script) -> Script:
    s.families(("P0", "R0", 30_000))
    s.claim("R0", "c1", 10_000)
    for inbox, message in (
        ("settlement/claim-path", "claim c1"),
        ("wallet/draw-requests", "draw c1"),
        ("settlement/claim-path", "answer c1"),
    ):
        s.deliver(inbox, message, fault="crash").expect("crashed before publishing").deliver(inbox, message)
    s.reverse("R0", "r1", "c1").deliver("settlement/claim-path", "reversal r1", fault="crash")
    s.deliver("settlement/claim-path", "reversal r1").deliver("wallet/refund-requests", "refund r1", fault="crash")
    s.deliver("wallet/refund-requests", "refund r1").expect("1 refunded")
    return s.everything()
