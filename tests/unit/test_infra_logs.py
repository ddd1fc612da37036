"""What `gongji infra up` prints is what its operator must read."""

from __future__ import annotations

import logging

from gongji.ops.infra import _authorization_refusals_unlogged


def test_the_refusals_expected_while_acls_arrive_are_not_logged_and_other_errors_are(caplog) -> None:
    sender = logging.getLogger("aiokafka.producer.sender")
    with caplog.at_level(logging.ERROR, logger="aiokafka.producer.sender"):
        with _authorization_refusals_unlogged():
            sender.error("Unexpected error during InitProducerIdRequest: %s", "ClusterAuthorizationFailedError")
            sender.error("Unexpected error during InitProducerIdRequest: %s", "KafkaStorageError")
        sender.error("Unexpected error during InitProducerIdRequest: %s", "ClusterAuthorizationFailedError")
    assert [record.getMessage().rsplit(" ", 1)[1] for record in caplog.records] == [
        "KafkaStorageError",
        "ClusterAuthorizationFailedError",  # after the wait, logged as before
    ]
