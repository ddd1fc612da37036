"""The deep audit's checkpoint: the books folded up to a cut, written by a clean audit with its own
checksum, so that the next audit reads only the records since (and the horizon before them).

A cut is where an audit took the topics' end offsets, and when (on the services' clock). A
checkpoint holds the last clean audit's cut, the figures the books held there (`Opening`) and the
cuts of earlier audits: the next audit reads from the newest of those at least a horizon older
than the cut (gongji/audit/window.py), so that every record a later one may name is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gongji.audit.books import Offsets
from gongji.audit.opening import Opening
from shared.settings import Settings

FORMAT = 1


class CheckpointInDoubt(Exception):
    """A checkpoint that cannot be trusted: its checksum fails, or it names records the topics do
    not hold. Said in words; `gongji audit --deep --from-scratch` rebuilds everything."""


@dataclass(frozen=True)
class Cut:
    at: datetime  # the services' clock when the end offsets were taken
    offsets: Offsets  # (topic, partition) -> the first offset after the cut

    def to_json(self) -> dict[str, Any]:
        topics: dict[str, dict[str, int]] = {}
        for (topic, partition), offset in sorted(self.offsets.items()):
            topics.setdefault(topic, {})[str(partition)] = offset
        return {"at": self.at.isoformat(), "offsets": topics}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Cut:
        return cls(
            datetime.fromisoformat(document["at"]),
            {
                (topic, int(partition)): int(offset)
                for topic, partitions in document["offsets"].items()
                for partition, offset in partitions.items()
            },
        )


@dataclass(frozen=True)
class Checkpoint:
    cluster_id: str  # the Kafka cluster whose offsets these are
    cut: Cut
    opening: Opening
    earlier_cuts: list[Cut] = field(default_factory=list)  # oldest first

    def starts(self, horizon: timedelta) -> Offsets:
        """Where to read from: the newest earlier cut a horizon older than this one, else the beginning."""
        old_enough = [cut for cut in self.earlier_cuts if cut.at <= self.cut.at - horizon]
        return old_enough[-1].offsets if old_enough else {}

    def followed_by(self, cut: Cut, opening: Opening, horizon: timedelta) -> Checkpoint:
        """The checkpoint at a later cut; it keeps the cuts a later audit may still read from."""
        cuts = [*self.earlier_cuts, self.cut]
        old_enough = [one for one in cuts if one.at <= cut.at - horizon]
        kept = old_enough[-1:] + [one for one in cuts if one.at > cut.at - horizon]
        return Checkpoint(self.cluster_id, cut, opening, kept)

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "cluster_id": self.cluster_id,
            "cut": self.cut.to_json(),
            "earlier_cuts": [cut.to_json() for cut in self.earlier_cuts],
            "opening": self.opening.to_json(),
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Checkpoint:
        return cls(
            body["cluster_id"],
            Cut.from_json(body["cut"]),
            Opening.from_json(body["opening"]),
            [Cut.from_json(cut) for cut in body["earlier_cuts"]],
        )


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class CheckpointStore:
    """One file per Kafka cluster, written whole (a new file renamed over the old), 0600: it names
    persons and their money."""

    directory: Path

    @classmethod
    def of(cls, settings: Settings) -> CheckpointStore:
        return cls(Path(settings.state_dir) / "audit")

    def path(self, cluster_id: str) -> Path:
        return self.directory / f"checkpoint-{cluster_id}.json"

    def load(self, cluster_id: str) -> Checkpoint | None:
        path = self.path(cluster_id)
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise CheckpointInDoubt(f"{path} is not JSON ({error}): audit --deep --from-scratch") from None
        body = document.get("body") if isinstance(document, dict) else None
        if not isinstance(body, dict) or document.get("sha256") != _checksum(body):
            raise CheckpointInDoubt(f"{path} fails its checksum: audit --deep --from-scratch")
        if body.get("format") != FORMAT or body.get("cluster_id") != cluster_id:
            raise CheckpointInDoubt(f"{path} is of another format or cluster: audit --deep --from-scratch")
        return Checkpoint.from_body(body)

    def save(self, checkpoint: Checkpoint) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path(checkpoint.cluster_id)
        body = checkpoint.body()
        written = path.with_suffix(".new")
        descriptor = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump({"sha256": _checksum(body), "body": body}, file, sort_keys=True, separators=(",", ":"))
            file.flush()
            os.fsync(file.fileno())
        written.replace(path)
        return path
