"""A province's system on Gongji, in Python with aiokafka: send one claim on the province's own
topic and read its answer from the province's own settlements topic (a record that could not be
read at all is answered on its dead-letters topic instead).

    gongji credentials show province-44 --json > province-44.json   # a secret: keep it off logs
    python province_aiokafka.py province-44.json 44 <recipient id>
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import datetime, timedelta, timezone

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.helpers import create_ssl_context

SHANGHAI = timezone(timedelta(hours=8))


async def main(settings_file: str, province: str, recipient_id: str) -> int:
    settings = json.loads(open(settings_file).read())
    connection = {
        "bootstrap_servers": settings["bootstrap_servers"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": settings["sasl_plain_username"],
        "sasl_plain_password": settings["sasl_plain_password"],
        "ssl_context": create_ssl_context(cafile=settings["ssl_cafile"]),  # Gongji's CA; host names checked
    }
    answers = [f"gongji.province.{province}.settlements.v1", f"gongji.province.{province}.dead-letters.v1"]
    # Assigned by hand from the end: this example reads only the answers to what it sends. A
    # system that reads all its answers joins a consumer group named `province-<PP>…`.
    consumer = AIOKafkaConsumer(**connection, enable_auto_commit=False)
    producer = AIOKafkaProducer(**connection, acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    try:
        partitions = [  # the producer's metadata call is the public one that waits for a topic's partitions
            TopicPartition(topic, number)
            for topic in answers
            for number in sorted(await producer.partitions_for(topic))
        ]
        consumer.assign(partitions)
        for partition, end in (await consumer.end_offsets(partitions)).items():
            consumer.seek(partition, end)
        region, hospital = f"{province}0300", f"H{province}030500012"
        claim = {
            "claim_id": f"{region}-{hospital}-{uuid.uuid4().hex[:16]}",  # the service region and institution first
            "kind": "settle",
            "recipient_id": recipient_id,
            "recipient_region": region,
            "category": "institution",
            "institution_code": hospital,
            "service_region": region,
            "amount_fen": 12_850,  # integer fen: 128.50 yuan, the recipient's own share
            "occurred_at": datetime.now(SHANGHAI).isoformat(),
        }
        # The key is the recipient: a recipient's claims stay in order.
        await producer.send_and_wait(
            f"gongji.province.{province}.claims.v1", json.dumps(claim).encode(), key=recipient_id.encode()
        )
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=1_000)).values():
                for record in records:
                    answer = json.loads(record.value)
                    if answer.get("claim_id") == claim["claim_id"]:
                        print(json.dumps(answer, ensure_ascii=False))
                        return 0
        print(f"no answer to {claim['claim_id']} within 60 s", file=sys.stderr)
        return 1
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
