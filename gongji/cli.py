"""`gongji …`: the one command line for operators, developers and tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from gongji.ops import infra, launcher
from shared.credentials import CredentialsMissing, kafka_client_settings, redis_options
from shared.ids import mask_person_id, mask_person_ids, mask_person_ids_in_logs, validate_person_id
from shared.money import format_fen
from shared.policy import read_policy, validate_area, write_policy
from shared.principals import OPERATOR, principal
from shared.redis_client import connect, in_database
from shared.settings import Settings

app = typer.Typer(
    help="Gongji (共济): cross-provincial mutual aid of medical-insurance personal accounts.", no_args_is_help=True
)
infra_app = typer.Typer(help="The local Apache Kafka (KRaft) and Redis.", no_args_is_help=True)
policy_app = typer.Typer(help="Run-time policy: opened regions, the cross-province date.", no_args_is_help=True)
relationships_app = typer.Typer(help="Relationships (共济关系).", no_args_is_help=True)
wallet_app = typer.Typer(help="Personal accounts and quotas (医保钱包).", no_args_is_help=True)
claims_app = typer.Typer(help="Claims and their results.", no_args_is_help=True)
clearing_app = typer.Typer(help="Monthly clearing between provinces (按月全额清算).", no_args_is_help=True)
credentials_app = typer.Typer(help="Each principal's credentials (shared/principals.py).", no_args_is_help=True)
app.add_typer(credentials_app, name="credentials")
app.add_typer(wallet_app, name="wallet")
app.add_typer(claims_app, name="claims")
app.add_typer(clearing_app, name="clearing")
app.add_typer(infra_app, name="infra")
app.add_typer(policy_app, name="policy")
app.add_typer(relationships_app, name="relationships")
console = Console()
FullIds = Annotated[bool, typer.Option("--full-ids", help="show person ids in full (personal data)")]


def _shown(person_id: str, full_ids: bool) -> str:
    return person_id if full_ids else mask_person_id(person_id)


@app.callback()
def _every_command() -> None:
    """Person ids are personal data: every log line of every command masks them."""
    mask_person_ids_in_logs()


def _fail(message: str) -> None:
    console.print(f"[red]{message}[/red]")
    raise typer.Exit(1)


UseDocker = Annotated[bool, typer.Option("--docker", help="in containers (deploy/compose.yaml; needs Docker)")]


@infra_app.command("up")
def infra_up(
    use_docker: UseDocker = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="three Kafka nodes and a Redis Cluster (3 primaries, 3 replicas) instead of one of each; "
            "the same as GONGJI_CLUSTER=true, which every other command then needs too",
        ),
    ] = False,
) -> None:
    """Start Kafka and Redis unless running, wait until both answer, create the topics."""
    from gongji.ops import docker

    settings = Settings(cluster=True) if cluster else Settings()
    if settings.cluster and use_docker:
        _fail("--docker starts one broker and one Redis; the clusters run with the launcher only")
    try:
        notes = docker.up(settings) if use_docker else infra.up(settings)
    except infra.InfraError as error:
        _fail(str(error))
    for note in notes or ["already running"]:
        console.print(note)
    for line in infra.status(settings).values():
        console.print(line)
    if cluster and not Settings().cluster:
        console.print("the other commands reach the clusters with GONGJI_CLUSTER=true in their environment")


@infra_app.command("down")
def infra_down(use_docker: UseDocker = False) -> None:
    """Stop the Kafka and Redis that `infra up` started."""
    from gongji.ops import docker

    try:
        notes = docker.down(Settings()) if use_docker else infra.down(Settings())
    except infra.InfraError as error:
        _fail(str(error))
    for note in notes or ["nothing was running"]:
        console.print(note)


@infra_app.command("status")
def infra_status() -> None:
    """Name the Apache Kafka and Redis versions, whether they run, and Redis's memory; exits 2 when
    Redis nears its memory bound (for a monitor to alert on)."""
    report = infra.status(Settings())
    for line in report.values():
        console.print(line)
    if "redis_memory" in report:
        raise typer.Exit(2)


@infra_app.command("reset")
def infra_reset() -> None:
    """Stop both and delete their data (the cached Kafka jars stay)."""
    for note in infra.reset(Settings()):
        console.print(note)


@app.command("run")
def run(
    service: Annotated[str, typer.Argument(help="relationship | wallet | settlement | all")],
    instances: Annotated[
        int,
        typer.Option(
            min=1,
            max=launcher.MAX_INSTANCES,
            help="processes of each service, sharing its consumer groups (instance i listens on port base + 100 × i)",
        ),
    ] = 1,
    instance: Annotated[int, typer.Option(hidden=True, min=0, max=launcher.MAX_INSTANCES - 1)] = 0,
) -> None:
    """Run one service in this process, or `all` as separate processes (and the dashboard); with
    `--instances N`, N processes of each."""
    settings = Settings()
    if service != "all" and service not in launcher.SERVICE_NAMES:
        _fail(f"unknown service {service!r}: choose relationship, wallet, settlement or all")
    if service == "all" or instances > 1:
        names = launcher.SERVICE_NAMES if service == "all" else (service,)
        raise typer.Exit(launcher.run_instances(names, instances, dashboard=service == "all"))
    launcher.run_service(service, settings, instance)


@app.command("dashboard")
def dashboard(
    port: Annotated[int | None, typer.Option(help="the port on 127.0.0.1 (GONGJI_DASHBOARD_PORT, 18090)")] = None,
) -> None:
    """The live dashboard at http://127.0.0.1:18090/: exact statistics, flows between provinces,
    latency, dead letters, the services' health and lag, today's reconciliation per province.
    Reads as the `dashboard` principal: aggregates only."""
    from gongji.dashboard.server import serve

    settings = Settings()
    port = port or settings.dashboard_port
    console.print(f"dashboard at http://127.0.0.1:{port}/")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, port))


async def _with_redis(action, as_principal: str = OPERATOR.name):
    settings = Settings()
    redis = connect(settings, as_principal)
    try:
        return await action(redis)
    finally:
        await redis.aclose()


@policy_app.command("show")
def policy_show() -> None:
    policy = asyncio.run(_with_redis(read_policy))
    console.print(f"cross-province relationships in force since {policy.cross_province_since.isoformat()}")
    console.print(f"regions with the wallet closed: {' '.join(sorted(policy.closed_regions)) or '(none)'}")


@policy_app.command("set")
def policy_set(
    cross_province_since: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
    close: Annotated[list[str], typer.Option(help="a region (6 digits) or province (2 digits)")] = [],  # noqa: B006
    open_: Annotated[list[str], typer.Option("--open", help="a region or province to open again")] = [],  # noqa: B006
) -> None:
    """Change the policy; services pick it up within `GONGJI_POLICY_CACHE_SECONDS`. Nothing changes
    unless every option is valid."""
    try:
        closing, opening = {validate_area(code) for code in close}, {validate_area(code) for code in open_}
        new_since = date.fromisoformat(cross_province_since) if cross_province_since else None
    except ValueError as error:
        _fail(str(error))

    async def change(redis: Redis) -> None:
        policy = await read_policy(redis)
        closed = (set(policy.closed_regions) | closing) - opening
        since = new_since or policy.cross_province_since
        await write_policy(redis, type(policy)(cross_province_since=since, closed_regions=frozenset(closed)))

    asyncio.run(_with_redis(change))
    policy_show()


@relationships_app.command("show")
def relationships_show(
    person_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    full_ids: FullIds = False,
) -> None:
    """A person's relationships in both directions, from the relationship service's state."""
    from services.relationship.store import RelationshipStore

    try:
        validate_person_id(person_id)
    except ValueError as error:
        _fail(str(error))
    rows = asyncio.run(_with_redis(lambda redis: RelationshipStore(redis).relationships_of(person_id)))
    if as_json:
        print(
            json.dumps(
                [
                    row
                    | {
                        "provider_id": _shown(row["provider_id"], full_ids),
                        "recipient_id": _shown(row["recipient_id"], full_ids),
                    }
                    for row in rows
                ],
                ensure_ascii=False,
            )
        )
        return
    table = Table(title=f"Relationships of {_shown(person_id, full_ids)}")
    for column in ("provider", "recipient", "kinship", "state", "since"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            _shown(row["provider_id"], full_ids),
            _shown(row["recipient_id"], full_ids),
            row["kinship"],
            row["state"],
            row["since"][:19],
        )
    console.print(table)


@wallet_app.command("show")
def wallet_show(person_id: str, full_ids: FullIds = False) -> None:
    """A person's account: balance, frozen, the running totals and the quotas they granted."""
    from services.wallet.store import WalletStore

    snapshot = asyncio.run(_with_redis(lambda redis: WalletStore(redis).snapshot(person_id)))
    table = Table(title=f"Wallet of {_shown(person_id, full_ids)}")
    table.add_column("item")
    table.add_column("fen", justify="right")
    for name in ("balance", "frozen", "credited", "spent", "paid", "refunded"):
        table.add_row(name, f"{getattr(snapshot, f'{name}_fen'):,}")
    for recipient_id, remaining in snapshot.grants_fen.items():
        table.add_row(f"quota for {_shown(recipient_id, full_ids)}", f"{remaining:,}")
    console.print(table)
    console.print(f"available: {format_fen(snapshot.balance_fen - snapshot.frozen_fen)}")


@claims_app.command("show")
def claims_show(claim_id: str, full_ids: FullIds = False) -> None:
    """A claim's record and result, as JSON (person ids masked unless --full-ids)."""
    from services.settlement.store import SettlementStore

    settings = Settings()
    record = asyncio.run(_with_redis(lambda redis: SettlementStore(redis, settings.settlement_shards).claim(claim_id)))
    if record is None:
        _fail(f"no claim {claim_id}")
    shown = json.dumps(record.stored(), ensure_ascii=False)  # as Redis holds it (docs/state.md)
    console.print_json(shown if full_ids else mask_person_ids(shown))


@clearing_app.command("close")
def clearing_close(month: Annotated[str, typer.Argument(help="YYYY-MM")]) -> None:
    """Close a month and publish its statement to gongji.clearing.v1, and each row to the topics of
    the provinces it concerns (the same however often run). Runs as the settlement principal: the
    monthly job of the settlement service."""
    from gongji.ops.kafka_io import publish_routed
    from services.settlement.app import SERVICE
    from services.settlement.clearing import MonthNotEnded, close_month, statement_destinations
    from services.settlement.store import SettlementStore
    from shared.clock import clock_from_settings

    _require_month(month)
    settings = Settings()
    now = clock_from_settings(settings).now()

    async def close(redis: Redis):
        store = SettlementStore(redis, settings.settlement_shards)
        await store.ready()
        return await close_month(store, month, now)

    try:
        rows = asyncio.run(_with_redis(close, SERVICE))
    except MonthNotEnded as error:
        _fail(f"not closed: {error}")
    asyncio.run(publish_routed(settings, statement_destinations(rows), SERVICE))
    table = Table(title=f"Clearing statement {month}")
    for column in ("row", "payer", "payee / province", "amount", "claims"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.row,
            row.payer_province or "",
            row.payee_province or row.province or "",
            format_fen(row.amount_fen),
            str(row.claims),
        )
    console.print(table)


def _require_month(month: str) -> None:
    digits = month[:4] + month[5:]
    if len(month) != 7 or month[4] != "-" or not digits.isascii() or not digits.isdigit():
        _fail("month must be YYYY-MM")


@app.command("archive")
def archive_command(
    month: Annotated[str, typer.Option(help="the closed clearing month, YYYY-MM")],
    province: Annotated[str | None, typer.Option(help="one province's files only (PP)")] = None,
    out: Annotated[Path, typer.Option(help="where <month>/<province>/*.parquet and the manifest go")] = Path("archive"),
    verify: Annotated[bool, typer.Option("--verify", help="read an archive back and check it")] = False,
) -> None:
    """Write a closed month's settlements, reversals and clearing statement per province as Parquet,
    with a manifest (checksums, rows, sums); exit 1 unless the sums equal the published statement.
    Files hold resident IDs: for the operator alone (0600)."""
    from gongji.archive import NotArchivable, month_of, verify_month, write
    from gongji.audit.deep import read_topics
    from shared.topics import CLEARING, SETTLEMENTS

    _require_month(month)
    if province is not None and not (len(province) == 2 and province.isascii() and province.isdigit()):
        _fail("province must be two digits, e.g. 44")
    manifest_name = "manifest.json" if province is None else f"manifest-{province}.json"
    if verify:
        problems = verify_month(out / month, manifest_name)
        for problem in problems:
            console.print(f"[red]DIFFERS[/red] {problem}")
        if problems:
            raise typer.Exit(1)
        console.print(f"[green]{out / month} stands: every file, row and sum as its manifest says[/green]")
        return
    records = asyncio.run(read_topics(Settings(), [SETTLEMENTS, CLEARING]))
    try:
        manifest = write(month_of(records, month), month, out, province)
    except NotArchivable as error:
        _fail(str(error))
    table = Table(title=f"Archive {month} ({out / month})")
    for column in ("province", "settlements", "paid", "reversals", "reversed", "net (clearing)"):
        table.add_column(column)
    for code, written in manifest["provinces"].items():
        sums = written["sums"]
        table.add_row(
            code,
            f"{sums['settlements']:,}",
            format_fen(sums["paid_fen"]),
            f"{sums['reversals']:,}",
            format_fen(sums["reversed_fen"]),
            format_fen(sums["net_fen"]),
        )
    console.print(table)
    console.print("[green]the settlements add up to the clearing statement published[/green]")


@app.command("reconcile")
def reconcile_command(
    date: Annotated[str, typer.Option(help="the Asia/Shanghai day, YYYY-MM-DD (today: the day so far)")],
    province: Annotated[str | None, typer.Option(help="one province (PP); else every province")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    wait: Annotated[
        float, typer.Option(help="seconds to let results in flight be counted before a difference is one")
    ] = 30.0,
) -> None:
    """A day's reconciliation (对账) per province as the settlement service holds it, checked against
    the ledger rebuilt from the settlements topic; exit 1, showing each difference, unless they agree.
    A result published but not yet counted differs for a moment: it is compared again, every second,
    for `--wait` seconds."""
    from gongji.audit.deep import read_topics
    from gongji.reconcile import checked, held
    from shared.clock import clock_from_settings
    from shared.topics import SETTLEMENTS

    try:
        datetime.strptime(date, "%Y-%m-%d")
    except ValueError:
        _fail("date must be YYYY-MM-DD")
    if province is not None and not (len(province) == 2 and province.isascii() and province.isdigit()):
        _fail("province must be two digits, e.g. 44")
    settings = Settings()

    async def run() -> list:
        redis = connect(settings, "operator")
        deadline = time.monotonic() + wait
        try:
            while True:
                days = await held(
                    redis,
                    settings.statistics_shards,
                    date,
                    clock_from_settings(settings),
                    settings.reconciliation_settle_seconds,
                )
                results = checked(
                    [day for day in days if province in (None, day.province)],
                    await read_topics(settings, [SETTLEMENTS]),
                )
                if all(not result.differences for result in results) or time.monotonic() >= deadline:
                    return results
                await asyncio.sleep(1)
        finally:
            await redis.aclose()

    results = asyncio.run(run())
    agree = all(not result.differences for result in results)
    if as_json:
        print(
            json.dumps(
                {
                    "day": date,
                    "matches_ledger": agree,
                    "provinces": [
                        {**result.day.model_dump(mode="json"), "differences": result.differences} for result in results
                    ],
                },
                ensure_ascii=False,
            )
        )
    else:
        final = results[0].day.final if results else False
        table = Table(title=f"Reconciliation {date} ({'final' if final else 'the day so far'})")
        for column in ("province", "side", "settlements", "medical", "mutual aid", "refunds", "refunded", "ledger"):
            table.add_column(column)
        for result in results:
            for side in ("as_service", "as_insured"):
                total = getattr(result.day, side).total
                if not (total.settlements or total.refunds) and province is None:
                    continue
                table.add_row(
                    result.day.province,
                    "service (就医地)" if side == "as_service" else "insured (参保地)",
                    f"{total.settlements:,}",
                    format_fen(total.medical_fen),
                    format_fen(total.mutual_aid_fen),
                    f"{total.refunds:,}",
                    format_fen(total.refunded_fen),
                    "[green]matches[/green]"
                    if not result.differences
                    else f"[red]{len(result.differences)} differ[/red]",
                )
        console.print(table)
        for result in results:
            for difference in result.differences:
                console.print(f"[red]DIFFERS[/red] {result.day.province} {difference}")
    if not agree:
        raise typer.Exit(1)


@credentials_app.command("show")
def credentials_show(
    name: Annotated[str, typer.Argument(help="a principal, e.g. province-11 or operator")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object: the aiokafka client settings")] = False,
) -> None:
    """A principal's aiokafka client settings, password included (secret: keep it off logs)."""
    try:
        principal(name)
        client = kafka_client_settings(Settings(), name)
    except (ValueError, CredentialsMissing) as error:
        _fail(str(error))
    if as_json:
        print(json.dumps(client))
        return
    for key, value in client.items():
        console.print(f"{key}: {value}", markup=False)


@credentials_app.command("rotate")
def credentials_rotate(name: Annotated[str, typer.Argument(help="a principal, e.g. wallet")]) -> None:
    """Give a principal a new password, on the running broker (SCRAM) and Redis (ACL), no restart.
    Connections already open stay authenticated; new ones need the new password."""
    try:
        principal(name)
        for note in infra.rotate(Settings(), name):
            console.print(note)
    except (ValueError, CredentialsMissing, infra.InfraError) as error:
        _fail(str(error))


@app.command("audit")
def audit_command(
    deep: Annotated[
        bool, typer.Option("--deep", help="rebuild the books from the Kafka topics and compare them with Redis")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="with --deep: one JSON object, person ids masked")] = False,
    full_ids: Annotated[bool, typer.Option("--full-ids", help="with --json: person ids unmasked")] = False,
    wait: Annotated[
        float,
        typer.Option(
            help="with --deep: seconds to let what is in flight land; what was "
            "pending at the start and still is after them is a difference"
        ),
    ] = 30.0,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="with --deep: read and judge every record, not only those since the checkpoint "
            "(for when the checkpoint itself is in doubt); a clean audit writes a new one",
        ),
    ] = False,
) -> None:
    """Check the money invariants over the whole state; exit 1 on any breach. `--deep` recomputes
    the books from the topics instead of re-reading Redis's own totals: from the last clean deep
    audit's checkpoint on, reading the records since (and a horizon before them)."""
    if deep:
        _deep_audit(as_json, full_ids, wait, from_scratch)
        return
    from gongji.audit import audit
    from gongji.audit.window import Window
    from shared.clock import clock_from_settings

    settings = Settings()
    window = Window.from_settings(settings, clock_from_settings(settings).now())
    report = asyncio.run(_with_redis(lambda redis: audit(redis, settings.settlement_shards, window)))
    console.print(f"{report.accounts} accounts, {report.claims} claims ({report.pending_claims} in flight)")
    if not report.history_held:
        console.print("claims have left Redis with their window: the totals across services are the deep audit's")
    for name, value in report.totals.items():
        console.print(f"  {name}: {format_fen(value)}")
    for breach in report.breaches:
        console.print(f"[red]BREACH[/red] {breach}")
    if not report.clean:
        raise typer.Exit(1)
    console.print("[green]all invariants hold[/green]")


def _deep_audit(as_json: bool, full_ids: bool, wait: float, from_scratch: bool) -> None:
    from gongji.audit.checkpoint import CheckpointInDoubt, CheckpointStore
    from gongji.audit.deep import AuditUnavailable, deep_audit, report_json, report_lines

    settings = Settings()
    checkpoints = CheckpointStore.of(settings)
    try:
        result = asyncio.run(
            _with_redis(lambda redis: deep_audit(settings, redis, wait, checkpoints, from_scratch=from_scratch))
        )
    except (AuditUnavailable, CheckpointInDoubt) as error:
        _fail(str(error))
    if as_json:
        print(json.dumps(report_json(result, full_ids), ensure_ascii=False))
    else:
        for line in report_lines(result):
            console.print(line)
    if not result.report.valid:
        raise typer.Exit(1)


@app.command("simulate")
def simulate_command(
    seed: Annotated[int, typer.Option(help="the (first) seed: the same seed and steps replay the same run")] = 0,
    steps: Annotated[int, typer.Option(help="random operations after the prelude that sets the families up")] = 300,
    seeds: Annotated[int, typer.Option(help="how many seeds to run, from --seed on")] = 1,
    scenario: Annotated[str | None, typer.Option(help="run one named scenario instead (see --list-scenarios)")] = None,
    list_scenarios: Annotated[
        bool, typer.Option("--list-scenarios", help="name every scenario and its defect")
    ] = False,
    replay: Annotated[
        Path | None, typer.Option(help="operations to run: a JSON list, or a --json report's shortest")
    ] = None,
    shrink_seconds: Annotated[float, typer.Option(help="time to shrink a failure to its shortest sequence")] = 120.0,
    db: Annotated[int, typer.Option(help="the Redis database the simulation flushes and uses")] = 14,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """A seeded, replayable simulation of the three services' handlers on the real Redis, with
    faults between steps and every invariant checked after each; exit 1 on a breach, printing its
    seed and the shortest sequence found."""
    import logging

    from gongji.simulation import SCENARIOS, execute, run_scenario, simulate
    from gongji.simulation.report import as_json as report_json
    from gongji.simulation.report import read_ops, render

    if list_scenarios:
        for known in SCENARIOS.values():
            console.print(f"[bold]{known.name}[/bold]: {known.defect}")
        return
    if scenario is not None and scenario not in SCENARIOS:
        _fail(f"no scenario {scenario!r}: see --list-scenarios")
    settings = Settings()
    if in_database(settings.redis_url, db) == settings.redis_url:
        _fail(f"database {db} is the services' own: the simulation flushes its database, choose another --db")
    logging.getLogger("gongji").setLevel(logging.CRITICAL)  # the handlers log the refusals the simulation provokes

    async def run():
        redis = Redis.from_url(in_database(settings.redis_url, db), **redis_options(settings, OPERATOR.name))
        try:
            if scenario is not None:
                return [await run_scenario(redis, scenario, seed)]
            if replay is not None:
                return [await execute(redis, seed, read_ops(replay.read_text()))]
            return [await simulate(redis, first, steps, shrink_seconds) for first in range(seed, seed + seeds)]
        finally:
            await redis.aclose()

    outcomes = asyncio.run(run())
    if as_json:
        print(json.dumps(report_json(outcomes), ensure_ascii=False))
    else:
        render(
            console,
            outcomes,
            f"gongji simulate --scenario {scenario} --seed {{seed}}"
            if scenario
            else "gongji simulate --replay FILE --seed {seed}"
            if replay
            else f"gongji simulate --seed {{seed}} --steps {steps}",
        )
    if any(outcome.failure for outcome in outcomes):
        raise typer.Exit(1)


@app.command("publish")
def publish(
    topic: Annotated[str, typer.Argument(help="an input topic, e.g. gongji.wallet-commands.v1")],
    message: Annotated[str, typer.Argument(help="the JSON message, or - to read lines from stdin")],
    as_principal: Annotated[str, typer.Option("--as", help="publish as this principal")] = OPERATOR.name,
) -> None:
    """Validate messages against the contract and publish them (one JSON object per line)."""
    from pydantic import ValidationError

    from gongji.ops.kafka_io import publish_models
    from shared.runtime import describe_validation_error
    from shared.topics import ALL_TOPICS, PROVINCE_TOPICS

    found = {known.name: known for known in (*ALL_TOPICS, *PROVINCE_TOPICS)}.get(topic)
    if found is None:
        _fail(f"unknown topic {topic}")
    lines = sys.stdin.read().splitlines() if message == "-" else [message]
    try:
        models = [found.model.model_validate_json(line) for line in lines if line.strip()]
    except ValidationError as error:
        _fail(f"not a valid {found.model.__name__}: {describe_validation_error(error)}")
    count = asyncio.run(publish_models(Settings(), found, models, as_principal))
    console.print(f"published {count} message(s) to {topic} as {as_principal}")


@app.command("docs")
def docs() -> None:
    """Write docs/asyncapi.json, generated from the three services' code (open it in any AsyncAPI
    viewer; nothing serves it: a served page would load its scripts from public CDNs)."""
    from gongji.ops.asyncapi import write_docs

    console.print(f"wrote {write_docs(Settings())}")


@app.command("load")
def load(
    persons: Annotated[int, typer.Option(help="population size")] = 3_000,
    rate: Annotated[float, typer.Option(help="claims per second offered")] = 400.0,
    duration: Annotated[float, typer.Option(help="seconds of claims")] = 30.0,
    duplicates: Annotated[float, typer.Option(help="share of claims sent again")] = 0.01,
    malformed: Annotated[float, typer.Option(help="share of malformed messages")] = 0.001,
    seed: Annotated[int, typer.Option(help="0: a new population each run")] = 0,
    report_dir: Annotated[Path, typer.Option()] = Path("reports"),
    picture: Annotated[
        Path | None,
        typer.Option(help="a picture of the running dashboard (`gongji dashboard`) two thirds into the claims"),
    ] = None,
) -> None:
    """Build a synthetic population, stream claims at a target rate, and report throughput,
    latency percentiles, results by status and reason, and the audit."""
    from gongji.perf.load import LoadOptions, write_report

    options = LoadOptions(
        persons=persons,
        rate=rate,
        duration_seconds=duration,
        duplicate_share=duplicates,
        malformed_share=malformed,
        seed=seed,
        report_dir=report_dir,
    )
    settings = Settings()
    report = asyncio.run(_load_with_picture(settings, options, picture))
    json_path, png_path = write_report(report, report_dir)
    summary = {
        key: report[key]
        for key in (
            "population",
            "claims",
            "mix",
            "throughput",
            "latency_ms",
            "by_status",
            "rejections_by_reason",
            "dead_letters_seen",
            "audit",
        )
    }
    console.print_json(json.dumps(summary, ensure_ascii=False))
    if report["budget"]:
        from gongji.perf.latency_budget import budget_table

        console.print(budget_table(report["budget"]))
    console.print(f"report: {json_path}\nplot:   {png_path}")
    ok = (
        report["audit"]["valid?"]
        and not report["audit"]["pending"]
        and not report["claims"]["without_result"]
        and not report["claims"]["with_more_than_one_result"]
        and all(entry["answered"] == entry["sent"] for entry in report["mix"].values())
    )
    if not ok:
        raise typer.Exit(1)


async def _load_with_picture(settings: Settings, options: Any, picture: Path | None) -> dict[str, Any]:
    """The load; with `picture`, the dashboard's page taken in headless Chromium mid-way through."""
    from gongji.perf.load import run_load

    taking: list[asyncio.Task] = []

    async def take_picture() -> None:
        from gongji.dashboard.browser import picture as take

        await asyncio.sleep(options.duration_seconds * 2 / 3)
        url = f"http://127.0.0.1:{settings.dashboard_port}/"
        try:
            errors = await take(url, picture)
        except Exception as error:  # noqa: BLE001 - the load's report stands without its picture
            console.print(f"[yellow]no picture of {url}: {error}[/yellow]")
            return
        console.print(f"dashboard picture: {picture}" + (f" (console errors: {errors})" if errors else ""))

    def on_phase(phase: str) -> None:
        if phase == "claims" and picture is not None:
            taking.append(asyncio.get_running_loop().create_task(take_picture()))

    report = await run_load(settings, options, console, on_phase)
    await asyncio.gather(*taking)
    return report


@app.command("bench")
def bench(
    duration: Annotated[float, typer.Option(min=1, help="seconds of claims in each run")] = 60.0,
    runs: Annotated[int, typer.Option(min=1, help="runs, each with its own baseline; the medians are reported")] = 3,
    rate: Annotated[
        float,
        typer.Option(
            min=1, help="claims per second offered: beyond what is settled, so that the run measures the maximum"
        ),
    ] = 2_500.0,
    persons: Annotated[int, typer.Option(min=10, help="population size")] = 3_000,
    as_json: Annotated[bool, typer.Option("--json", help="also one JSON object on the last line")] = False,
) -> None:
    """Measure a raw Kafka consume → produce pass-through of claim messages on the services' broker
    and listener, then Gongji end to end (it starts and stops the three services itself: `gongji
    infra up` first, no `gongji run`), and the CPU per claim of each process; print each run and the
    medians. Exit 1 if a claim lacks exactly one result or the audit is not valid."""
    from gongji.perf.bench import BenchOptions, run_bench, tables

    options = BenchOptions(duration_seconds=duration, runs=runs, rate=rate, persons=persons)
    try:
        result = asyncio.run(run_bench(Settings(), options, console))
    except RuntimeError as error:  # a service that did not start or stop, a population never ready
        _fail(str(error))
    for table in tables(result):
        console.print(table)
    for failure in result["failures"]:
        console.print(f"[red]FAILED[/red] {failure}")
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    if result["failures"]:
        raise typer.Exit(1)


@app.command("soak")
def soak(
    days: Annotated[int, typer.Option(min=1, help="simulated days")] = 40,
    claims_per_day: Annotated[int, typer.Option(min=1, help="claims sent each simulated day")] = 1_000,
    persons: Annotated[int, typer.Option(min=10, help="population size")] = 900,
    day_seconds: Annotated[float, typer.Option(min=5, help="real seconds a simulated day lasts")] = 40.0,
    start: Annotated[str, typer.Option(help="the first simulated moment (RFC 3339)")] = "2026-03-01T00:00:00+08:00",
    window_days: Annotated[int, typer.Option(min=1, help="the claims' and inputs' windows for the run")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="also one JSON object on the last line")] = False,
) -> None:
    """Live through DAYS days of claims in minutes: the three services (started here, on a clock
    86,400/DAY_SECONDS times as fast) against the real Kafka and Redis, emptied first (`infra
    reset`). A month that ends is closed and archived. Per day: Redis's memory, claims settled, the
    deep audit's result and time. Exit 1 if an audit is not clean, an archive does not add up to its
    statement, or (from 40 days) memory or the audit's time grows from day 30 to day 40."""
    from datetime import datetime

    from gongji.perf.soak import SoakOptions, failures, run_soak

    options = SoakOptions(
        days=days,
        claims_per_day=claims_per_day,
        persons=persons,
        day_seconds=day_seconds,
        start=datetime.fromisoformat(start),
        window_days=window_days,
    )
    try:
        result = asyncio.run(run_soak(Settings(), options, Console(stderr=True) if as_json else console))
    except RuntimeError as error:  # a service that did not start, a population never ready
        _fail(str(error))
    summary = {key: value for key, value in result.items() if key != "per_day"}
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        console.print_json(json.dumps(summary))
    for failure in failures(result):
        (Console(stderr=True) if as_json else console).print(f"[red]FAILED[/red] {failure}")
    if failures(result):
        raise typer.Exit(1)


@app.command("faults")
def faults_command(
    rate: Annotated[float, typer.Option(min=1, help="claims offered per second")] = 300.0,
    duration: Annotated[float, typer.Option(min=10, help="seconds of claims; the faults are spread over them")] = 120.0,
    persons: Annotated[int, typer.Option(min=10, help="population size")] = 1_500,
    instances: Annotated[int, typer.Option(min=2, max=launcher.MAX_INSTANCES, help="instances of each service")] = 2,
    restore_after: Annotated[float, typer.Option(min=1, help="seconds before a killed part is started again")] = 10.0,
    fault: Annotated[
        list[str] | None, typer.Option(help="a fault to inject, in order (repeat it); all of them by default")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="also one JSON object on the last line")] = False,
) -> None:
    """Kill parts of the platform under load and check that nothing was lost or paid twice: one
    instance of each service, the Kafka node leading the claims and a Redis primary, each killed
    with SIGKILL and started again; a Kafka node cut off and joined again; a rolling restart
    (`infra up --cluster` first, here if need be; on the single nodes, GONGJI_CLUSTER unset, only
    `instances` and `rolling`). Reports each fault's gap in settlements and the longest a claim
    waited meanwhile. Exit 1 if a claim lacks exactly one result or the deep audit is not valid."""
    from gongji.perf.faults import FAULTS, FaultOptions, run_faults

    for name in fault or ():
        if name not in FAULTS:
            _fail(f"unknown fault {name!r}: choose from {', '.join(FAULTS)}")
    settings = Settings()
    options = FaultOptions(
        rate=rate,
        duration_seconds=duration,
        persons=persons,
        instances=instances,
        restore_after_seconds=restore_after,
        faults=tuple(fault or FAULTS),
    )
    out = Console(stderr=True) if as_json else console
    try:
        result = asyncio.run(run_faults(settings, options, out))
    except (RuntimeError, ValueError, infra.InfraError) as error:
        _fail(str(error))
    summary = {
        "faults": result["faults"],
        "longest_wait_before_faults_s": result["longest_wait_before_faults_s"],
        "claims": result["load"]["claims"],
        "failures": result["failures"],
    }
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        console.print_json(json.dumps(summary))
        console.print(f"load report: {result['load_report']}")
    for failure in result["failures"]:
        out.print(f"[red]FAILED[/red] {failure}")
    if result["failures"]:
        raise typer.Exit(1)


@app.command("status")
def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object: lists kafka, redis and services")] = False,
) -> None:
    """The whole system at a glance: each Kafka node (role, partitions it leads, under-replicated
    ones), each Redis node (primary or replica, slots, replication lag) and each service instance
    (address, pid, health, partitions held, consumer lag)."""
    from rich.table import Table

    from gongji.ops.status import system_status

    found = system_status(Settings())
    if as_json:
        print(json.dumps(found))
        return
    columns = {
        "kafka": ("node_id", "address", "pid", "role", "up", "leader_of", "under_replicated"),
        "redis": ("address", "pid", "role", "up", "slots", "replica_of", "replication_lag_bytes", "memory_bytes"),
        "services": ("name", "instance", "address", "pid", "healthy", "partitions", "lag"),
    }
    for part, names in columns.items():
        table = Table(title=part, title_justify="left")
        for name in names:
            table.add_column(name.replace("_", " "))
        for item in found[part]:
            table.add_row(*("" if item.get(name) is None else str(item.get(name)) for name in names))
        console.print(table)
