"""A province's system on Gongji, in Python with confluent-kafka (librdkafka 2.6.1 or newer: an
older one cannot authenticate with SCRAM against Kafka 4.x): send one claim on the province's own
topic and read its answer from the province's own settlements topic.

    gongji credentials show province-44 --json > province-44.json   # a secret: keep it off logs
    python province_confluent.py province-44.json 44 <recipient id>
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

SHANGHAI = timezone(timedelta(hours=8))


def main(settings_file: str, province: str, recipient_id: str) -> int:
    settings = json.loads(open(settings_file).read())
    connection = {
        "bootstrap.servers": settings["bootstrap_servers"],
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": settings["sasl_plain_username"],
        "sasl.password": settings["sasl_plain_password"],
        "ssl.ca.location": settings["ssl_cafile"],  # Gongji's CA; host names checked
    }
    answers = f"gongji.province.{province}.settlements.v1"
    # Assigned by hand from the end (librdkafka wants a group id even so; nothing is committed): a
    # system that reads all its answers subscribes with a group named `province-<PP>…`.
    consumer = Consumer({**connection, "group.id": f"province-{province}-example", "enable.auto.commit": False})
    producer = Producer({**connection, "acks": "all", "enable.idempotence": True})
    try:
        partitions = consumer.list_topics(answers, timeout=10).topics[answers].partitions
        consumer.assign(
            [
                TopicPartition(
                    answers, number, consumer.get_watermark_offsets(TopicPartition(answers, number), timeout=10)[1]
                )
                for number in partitions
            ]
        )
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
        producer.produce(f"gongji.province.{province}.claims.v1", json.dumps(claim).encode(), key=recipient_id)
        if producer.flush(30) != 0:
            raise KafkaException("the claim was not confirmed within 30 s")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = consumer.poll(1.0)
            if record is None or record.error():
                continue
            answer = json.loads(record.value())
            if answer.get("claim_id") == claim["claim_id"]:
                print(json.dumps(answer, ensure_ascii=False))
                return 0
        print(f"no answer to {claim['claim_id']} within 60 s", file=sys.stderr)
        return 1
    finally:
        consumer.close()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
