"""docs/integrating.md's examples, run as a province runs them: province-44's own credentials (from
`gongji credentials show province-44 --json`), a claim on its own topic, the answer read from its
own settlements topic, paid, the payer's id masked. Python with aiokafka and with confluent-kafka
(librdkafka), and Java with kafka-clients (compiled with javac against the broker's own jar)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gongji.ops.infra import Paths
from shared.settings import PROJECT_ROOT
from tests.e2e.world import World

pytestmark = pytest.mark.timeout(240)
EXAMPLES = PROJECT_ROOT / "docs" / "examples"
PROVINCE = "44"


@pytest.fixture
def credentials(infrastructure, tmp_path) -> Path:
    shown = subprocess.run(
        [sys.executable, "-m", "gongji", "credentials", "show", f"province-{PROVINCE}", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    path = tmp_path / f"province-{PROVINCE}.json"
    path.write_text(shown.stdout)
    path.chmod(0o600)
    return path


def paid_and_masked(output: str, provider: str, recipient: str) -> None:
    answer = json.loads(output)
    assert (answer["recipient_id"], answer["status"], answer["paid_fen"]) == (recipient, "settled", 12_850), answer
    assert [payer["amount_fen"] for payer in answer["payers"]] == [12_850]
    assert provider not in output  # another province's resident: masked on the province's topic


@pytest.mark.parametrize("example", ["province_aiokafka.py", "province_confluent.py"])
async def test_a_python_example_sends_a_claim_and_reads_its_answer(world: World, credentials, example) -> None:
    provider, recipient = await world.funded_family(provider_region="510100", recipient_region="440300")
    ran = subprocess.run(
        [sys.executable, str(EXAMPLES / example), str(credentials), PROVINCE, recipient],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    paid_and_masked(ran.stdout, provider, recipient)


async def test_the_java_example_sends_a_claim_and_reads_its_answer(
    world: World, infrastructure, credentials, tmp_path
) -> None:
    libs = Paths(infrastructure.state_dir).kafka_libs
    (client,) = libs.glob("kafka-clients-*.jar")
    subprocess.run(
        ["javac", "-cp", str(client), "-d", str(tmp_path), str(EXAMPLES / "ProvinceClaim.java")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    provider, recipient = await world.funded_family(provider_region="510100", recipient_region="440300")
    settings = json.loads(credentials.read_text())
    ran = subprocess.run(
        [
            "java",
            "-cp",
            f"{tmp_path}:{libs}/*",
            "ProvinceClaim",
            settings["bootstrap_servers"],
            settings["sasl_plain_password"],
            settings["ssl_cafile"],
            PROVINCE,
            recipient,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    paid_and_masked(ran.stdout.strip().splitlines()[-1], provider, recipient)
