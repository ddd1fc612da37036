"""The deep audit's checkpoint: the books folded up to a cut, written by a clean audit and sealed
(HMAC-SHA256), so that the next audit reads only the records since (and the horizon before them).

A cut is where an audit took the topics' end offsets, and when (on the services' clock). A
checkpoint holds the last clean audit's cut, the figures the books held there (`Opening`) and the
cuts of earlier audits: the next audit reads from the newest of those at least a horizon older
than the cut (gongji/audit/window.py), so that every record a later one may name is read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gongji.audit.books import Offsets
from gongji.audit.opening import Opening
from shared.settings import Settings

FORMAT = 1


class CheckpointInDoubt(Exception):
    """A checkpoint that cannot be trusted: its seal fails, or it names records the topics do not
    hold. Said in words; `gongji audit --deep --from-scratch` rebuilds everything."""


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


def _seal(key: bytes, body: dict[str, Any]) -> str:
    """HMAC-SHA256 of the body: a checkpoint changed by anyone without the audit's key (a balance
    edited in Redis and in the checkpoint alike) is in doubt."""
    return hmac.new(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class CheckpointStore:
    """One file per Kafka cluster, written whole (a file of its own, renamed over the old), 0600 in
    a 0700 directory: it names persons and their money. Sealed with a key of the operator's."""

    directory: Path
    key: bytes

    @classmethod
    def of(cls, settings: Settings) -> CheckpointStore:
        return cls(Path(settings.state_dir) / "audit", _key(Path(settings.state_dir) / "secrets" / KEY_FILE))

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
        if not isinstance(body, dict) or not hmac.compare_digest(str(document.get("seal")), _seal(self.key, body)):
            raise CheckpointInDoubt(f"{path} fails its seal: audit --deep --from-scratch")
        if body.get("format") != FORMAT or body.get("cluster_id") != cluster_id:
            raise CheckpointInDoubt(f"{path} is of another format or cluster: audit --deep --from-scratch")
        try:
            return Checkpoint.from_body(body)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointInDoubt(f"{path} is incomplete ({error!r}): audit --deep --from-scratch") from None

    def save(self, checkpoint: Checkpoint) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        path = self.path(checkpoint.cluster_id)
        body = checkpoint.body()
        descriptor, written = tempfile.mkstemp(dir=self.directory, prefix=path.name, suffix=".new")  # 0600
        with os.fdopen(descriptor, "w") as file:
            json.dump({"seal": _seal(self.key, body), "body": body}, file, sort_keys=True, separators=(",", ":"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(written, path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        return path


KEY_FILE = "audit-checkpoint.key"


def _key(path: Path) -> bytes:
    """The audit's sealing key, made once (0600) beside the operator's other secrets."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another audit made it meanwhile
            return path.read_bytes()
        with os.fdopen(descriptor, "wb") as file:
            file.write(secrets.token_bytes(32))
        return path.read_bytes()
