"""What the dashboard shows, pure: the exact statistics and reconciliations as published (the
highest revision of each minute and each province's day), the services' health and lag, and the
page's parts rendered on the server as HTML and SVG (no chart library, no script from elsewhere).
Aggregates only: no person is named anywhere on the page."""

from __future__ import annotations

import html
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.clock import shanghai_minute
from shared.contracts import ReconciliationDay, StatisticsSnapshot
from shared.topics import PROVINCES

PROVINCE_NAMES = {
    "11": "北京 Beijing", "12": "天津 Tianjin", "13": "河北 Hebei", "14": "山西 Shanxi",
    "15": "内蒙古 Inner Mongolia", "21": "辽宁 Liaoning", "22": "吉林 Jilin", "23": "黑龙江 Heilongjiang",
    "31": "上海 Shanghai", "32": "江苏 Jiangsu", "33": "浙江 Zhejiang", "34": "安徽 Anhui", "35": "福建 Fujian",
    "36": "江西 Jiangxi", "37": "山东 Shandong", "41": "河南 Henan", "42": "湖北 Hubei", "43": "湖南 Hunan",
    "44": "广东 Guangdong", "45": "广西 Guangxi", "46": "海南 Hainan", "50": "重庆 Chongqing", "51": "四川 Sichuan",
    "52": "贵州 Guizhou", "53": "云南 Yunnan", "54": "西藏 Tibet", "61": "陕西 Shaanxi", "62": "甘肃 Gansu",
    "63": "青海 Qinghai", "64": "宁夏 Ningxia", "65": "新疆 Xinjiang", "66": "兵团 XPCC",
}  # fmt: skip
CATEGORIES = {
    "institution": "门诊 Clinic",
    "pharmacy": "药店 Pharmacy",
    "resident_premium": "居民医保缴费 Resident premium",
    "ltc_premium": "长护险缴费 LTC premium",
}
RATE_SECONDS = 300  # the rate chart's span
RATE_SAMPLES = 5  # the rates are over this many samples (seconds)
DEAD_LETTER_MINUTES = 30


@dataclass(frozen=True)
class ServiceState:
    """A service as its operations port answers: healthy or why not, and its consumers' lag."""

    name: str
    healthy: bool
    detail: str
    lag: int | None


@dataclass
class View:
    minutes: dict[str, StatisticsSnapshot] = field(default_factory=dict)
    days: dict[tuple[str, str], ReconciliationDay] = field(default_factory=dict)
    services: list[ServiceState] = field(default_factory=list)
    offered: float | None = None  # claims the settlement service has taken in, all told (a counter)
    caught_up: bool = False  # what was published before the start has been read: rates mean something
    # (monotonic seconds, claims offered, results settled): the rates are their differences.
    samples: deque[tuple[float, float | None, int]] = field(default_factory=lambda: deque(maxlen=RATE_SECONDS + 5))

    def take(self, message: StatisticsSnapshot | ReconciliationDay) -> None:
        """Keeps the highest revision of each minute and each province's day."""
        if isinstance(message, StatisticsSnapshot):
            held = self.minutes.get(message.minute)
            if held is None or message.revision >= held.revision:
                self.minutes[message.minute] = message
        else:
            key = (message.province, message.day)
            held_day = self.days.get(key)
            if held_day is None or (message.revision, message.final) >= (held_day.revision, held_day.final):
                self.days[key] = message

    def forget_before(self, day: str) -> None:
        self.minutes = {minute: one for minute, one in self.minutes.items() if minute[:10] >= day}
        self.days = {key: one for key, one in self.days.items() if key[1] >= day}

    def today(self, now: datetime) -> list[StatisticsSnapshot]:
        day = shanghai_minute(now)[:10]
        return [one for minute, one in sorted(self.minutes.items()) if minute[:10] == day]

    def sample(self, now: datetime, at: float | None = None) -> None:
        """Notes the totals now, for the rates (once caught up: the backlog read is no rate)."""
        if not self.caught_up:
            return
        settled = sum(count.count for one in self.today(now) for count in one.by_status)
        self.samples.append((time.monotonic() if at is None else at, self.offered, settled))

    def rates(self, over: int = RATE_SAMPLES) -> list[tuple[float, float | None, float]]:
        """(seconds ago, offered per second, results per second), each over the `over` samples before
        it (results are published a second at a time: a one-second rate would jump)."""
        samples = list(self.samples)
        if not samples:
            return []
        last = samples[-1][0]
        rates = []
        for before, after in zip(samples, samples[over:], strict=False):
            seconds = after[0] - before[0]
            if seconds <= 0:
                continue
            offered = (
                max(0.0, (after[1] - before[1]) / seconds) if after[1] is not None and before[1] is not None else None
            )
            rates.append((last - after[0], offered, max(0.0, (after[2] - before[2]) / seconds)))
        return rates

    # ---- the page's parts ----

    def parts(self, now: datetime) -> dict[str, str]:
        """Every live part of the page, by its element id (HTML to put in place)."""
        today = self.today(now)
        return {
            "settled-total": f"{sum(count.count for one in today for count in one.by_status):,}",
            "rates": self._rates(),
            "outcomes": self._outcomes(today),
            "categories": self._categories(today),
            "heatmap": self._heatmap(today),
            "latency": self._latency(now),
            "dead-letters": self._dead_letters(now),
            "services": self._services(),
            "reconciliation": self._reconciliation(now),
        }

    def _rates(self) -> str:
        rates = self.rates()
        now_offered = next((offered for _, offered, _ in reversed(rates) if offered is not None), None)
        now_settled = rates[-1][2] if rates else 0.0
        width, height = 1200, 160
        top = max([1.0, *(offered or 0 for _, offered, _ in rates), *(settled for _, _, settled in rates)]) * 1.1

        def line(values: list[tuple[float, float]], colour: str) -> str:
            points = " ".join(
                f"{width - ago / RATE_SECONDS * width:.1f},{height - value / top * height:.1f}" for ago, value in values
            )
            return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'

        offered_line = line([(ago, offered) for ago, offered, _ in rates if offered is not None], "#8a8a8a")
        settled_line = line([(ago, settled) for ago, _, settled in rates], "#c0392b")
        return (
            f'<p class="figures"><span class="offered">提交 offered <b>{_rate(now_offered)}</b>/s</span>'
            f'<span class="settled">结算 settled <b>{_rate(now_settled)}</b>/s</span></p>'
            f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="claims per second, last 5 minutes">'
            f'<rect width="{width}" height="{height}" class="plot"/>{offered_line}{settled_line}'
            f'<text x="4" y="12" class="axis">{top:,.0f}/s</text>'
            f'<text x="4" y="{height - 4}" class="axis">−5 min</text>'
            "</svg>"
        )

    def _outcomes(self, today: list[StatisticsSnapshot]) -> str:
        statuses = _summed(one.by_status for one in today)
        reasons = _summed(one.rejections_by_reason for one in today)
        accepted = statuses.get("settled", (0, 0))[0] + statuses.get("partial", (0, 0))[0]
        rows = [
            ("已支付 paid (全额 full / 部分 partial)", accepted, "accepted"),
            ("退费 reversed", statuses.get("reversed", (0, 0))[0], "reversed"),
            ("拒付 refused", statuses.get("rejected", (0, 0))[0], "refused"),
        ]
        rows += [
            (f"· {reason}", count, "reason") for reason, (count, _) in sorted(reasons.items(), key=lambda i: -i[1][0])
        ]
        return _bars(rows)

    def _categories(self, today: list[StatisticsSnapshot]) -> str:
        amounts = _summed(one.by_category for one in today)
        return _bars([(label, amounts.get(key, (0, 0))[1], "money") for key, label in CATEGORIES.items()], money=True)

    def _heatmap(self, today: list[StatisticsSnapshot]) -> str:
        pairs = _summed(one.by_province_pair for one in today)
        top = max([1, *(fen for _, fen in pairs.values())])
        head = "".join(f'<th scope="col" title="{PROVINCE_NAMES[code]}">{code}</th>' for code in PROVINCES)
        rows = []
        for payer in PROVINCES:
            cells = []
            for service in PROVINCES:
                count, fen = pairs.get(f"{payer}>{service}", (0, 0))
                shade = 0 if not count else 0.15 + 0.85 * fen / top
                title = f"{PROVINCE_NAMES[payer]} → {PROVINCE_NAMES[service]}: {count:,}, ¥{fen / 100:,.2f}"
                cells.append(
                    f'<td id="cell-{payer}-{service}" data-count="{count}" data-fen="{fen}" '
                    f'style="--shade:{shade:.3f}" title="{html.escape(title)}"></td>'
                )
            rows.append(f'<tr><th scope="row" title="{PROVINCE_NAMES[payer]}">{payer}</th>{"".join(cells)}</tr>')
        return (
            '<table class="heat"><caption>付款地 payer (行 rows) → 就医地 care (列 columns)</caption>'
            f"<tr><th></th>{head}</tr>{''.join(rows)}</table>"
        )

    def _latency(self, now: datetime) -> str:
        since = shanghai_minute(now - timedelta(minutes=5))
        buckets: dict[int, int] = {}
        for minute, one in self.minutes.items():
            if minute >= since:
                for bucket in one.latency:
                    buckets[bucket.le_ms] = buckets.get(bucket.le_ms, 0) + bucket.count
        ordered = sorted(buckets.items())
        return (
            f'<p class="figures"><span>p50 <b id="latency-p50">{_ms(_percentile(ordered, 0.5))}</b></span>'
            f'<span>p99 <b id="latency-p99">{_ms(_percentile(ordered, 0.99))}</b></span></p>'
            '<p class="note">最近 5 分钟 last 5 minutes: 提交到结算 from the claim sent to its result</p>'
        )

    def _dead_letters(self, now: datetime) -> str:
        minutes = [shanghai_minute(now - timedelta(minutes=ago)) for ago in range(DEAD_LETTER_MINUTES - 1, -1, -1)]
        counts = [sum(one.count for one in self.minutes[m].dead_letters) if m in self.minutes else 0 for m in minutes]
        width, height, top = 560, 70, max([1, *counts])
        step = width / len(minutes)
        bars = "".join(
            f'<rect x="{index * step + 1:.1f}" y="{height - count / top * height:.1f}" width="{step - 2:.1f}" '
            f'height="{count / top * height:.1f}" class="dead"><title>{minute[11:]} {count}</title></rect>'
            for index, (minute, count) in enumerate(zip(minutes, counts, strict=True))
        )
        return (
            f'<p class="figures"><span>本分钟 this minute <b>{counts[-1]}</b></span>'
            f"<span>30 分钟 30 minutes <b>{sum(counts)}</b></span></p>"
            f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="dead letters per minute">'
            f'<rect width="{width}" height="{height}" class="plot"/>{bars}</svg>'
        )

    def _services(self) -> str:
        if not self.services:
            return '<p class="note">…</p>'
        rows = "".join(
            f'<tr class="{"ok" if one.healthy else "bad"}"><td>{one.name}</td>'
            f"<td>{'✓ 正常 healthy' if one.healthy else '✗ ' + html.escape(one.detail)}</td>"
            f"<td>{'—' if one.lag is None else f'{one.lag:,}'}</td></tr>"
            for one in self.services
        )
        return f"<table><tr><th>服务 service</th><th>健康 health</th><th>积压 lag</th></tr>{rows}</table>"

    def _reconciliation(self, now: datetime) -> str:
        today = shanghai_minute(now)[:10]
        yesterday = shanghai_minute(now - timedelta(days=1))[:10]
        rows = []
        for province in PROVINCES:
            day, before = self.days.get((province, today)), self.days.get((province, yesterday))
            if day is None and before is None:
                continue
            side = day.as_service.total if day else None
            rows.append(
                f'<tr id="reconciliation-{province}"><td>{PROVINCE_NAMES[province]}</td>'
                f"<td>{side.settlements if side else 0:,}</td><td>{_yuan(side.mutual_aid_fen if side else 0)}</td>"
                f"<td>{side.refunds if side else 0:,}</td>"
                f"<td>{'进行中 open' if day and not day.final else '—'}</td>"
                f"<td>{'✓ 已对账 final' if before and before.final else '待对账 pending' if before else '—'}</td></tr>"
            )
        if not rows:
            return '<p class="note">今日尚无结算 nothing settled today yet</p>'
        return (
            "<table><tr><th>省份 province (就医地 care)</th><th>结算 settlements</th><th>共济支付 mutual aid</th>"
            f"<th>退费 refunds</th><th>今日 today</th><th>昨日 yesterday</th></tr>{''.join(rows)}</table>"
        )


def _summed(tables: Any) -> dict[str, tuple[int, int]]:
    summed: dict[str, tuple[int, int]] = {}
    for table in tables:
        for count in table:
            held = summed.get(count.key, (0, 0))
            summed[count.key] = (held[0] + count.count, held[1] + count.amount_fen)
    return summed


def _bars(rows: list[tuple[str, int, str]], money: bool = False) -> str:
    top = max([1, *(value for _, value, _ in rows)])
    return "".join(
        f'<div class="bar {kind}"><span class="label">{html.escape(label)}</span>'
        f'<span class="track"><span class="fill" style="width:{100 * value / top:.1f}%"></span></span>'
        f'<span class="value">{_yuan(value) if money else f"{value:,}"}</span></div>'
        for label, value, kind in rows
    )


def _percentile(buckets: list[tuple[int, int]], rank: float) -> int | None:
    total = sum(count for _, count in buckets)
    if not total:
        return None
    wanted, seen = rank * total, 0
    for bound, count in buckets:
        seen += count
        if seen >= wanted:
            return bound
    return buckets[-1][0]


def _ms(value: int | None) -> str:
    return "—" if value is None else f"{value:,} ms"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _yuan(fen: int) -> str:
    return f"¥{fen / 100:,.2f}"
