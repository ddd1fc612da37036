"""The audits of the money invariants: `quick` reads the Redis state alone; the deep audit rebuilds
the books from the Kafka topics (`books`), reads Redis (`state`), and compares the two (`compare`),
with the reading done in `deep`."""

from gongji.audit.quick import audit

__all__ = ["audit"]
