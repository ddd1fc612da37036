"""The launcher: idempotent `up`, a status that names the broker, one clear sentence when a tool is missing."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from gongji.ops import infra


def gongji(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gongji", *args], capture_output=True, text=True, timeout=300)


def listeners(port: int) -> set[str]:
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {part.split("pid=")[1].split(",")[0] for part in out.split() if "pid=" in part}


def test_up_twice_leaves_one_broker_and_one_redis(infrastructure) -> None:
    paths = infra.Paths(infrastructure.state_dir)
    before = (paths.kafka_pid.read_text(), paths.redis_pid.read_text())
    for _ in range(2):
        result = gongji("infra", "up")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "already running" in result.stdout
    assert (paths.kafka_pid.read_text(), paths.redis_pid.read_text()) == before
    kafka_port = int(infrastructure.kafka_bootstrap.rsplit(":", 1)[1])
    assert listeners(kafka_port) == {before[0]}
    assert listeners(int(infrastructure.redis_url.rsplit(":", 1)[1].split("/")[0])) == {before[1]}


def test_status_names_the_apache_kafka_version(infrastructure) -> None:
    result = gongji("infra", "status")
    assert "Apache Kafka 4." in result.stdout and "(KRaft)" in result.stdout and "running" in result.stdout
    assert "Redis 7." in result.stdout


def test_a_missing_tool_is_one_sentence_naming_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(infra.shutil, "which", lambda tool: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(infra.InfraError, match=r"`java` was not found on PATH: install a Java 17 runtime"):
        infra._java()
    with pytest.raises(infra.InfraError, match=r"`mvn` was not found on PATH: install Maven"):
        infra.fetch_kafka_jars(infra.Paths(infra.Path("/nonexistent")))


def test_kafka_storage_formats_with_a_cluster_id_that_starts_with_a_dash(infrastructure, tmp_path) -> None:
    own = infra.Paths(infrastructure.state_dir)
    scratch = infra.Paths(tmp_path)
    scratch.kafka_config.parent.mkdir(parents=True)
    config = own.kafka_config.read_text().replace(f"log.dirs={own.kafka_data}", f"log.dirs={scratch.kafka_data}")
    scratch.kafka_config.write_text(config)
    scratch.kafka_libs.symlink_to(own.kafka_libs)
    (node,) = infra.kafka_nodes(infrastructure.model_copy(update={"state_dir": tmp_path}))
    infra.format_kafka_storage(infra._java(), scratch, node, "-iBg2lTuRKWv6CqVtSPNbg", infrastructure, None)
    assert "cluster.id=-iBg2lTuRKWv6CqVtSPNbg" in (scratch.kafka_data / "meta.properties").read_text()
    # The users' passwords went in through an argument file, and it is gone.
    assert not list(scratch.java_arguments.parent.glob("java-arguments*"))
    with pytest.raises(infra.InfraError, match="formatting Kafka's storage .* failed: .*Invalid cluster.id"):
        infra.format_kafka_storage(infra._java(), scratch, node, "AAAAAAAAAAAAAAAAAAAAAA", infrastructure, None)


def test_only_the_locked_kafka_jars_are_run(infrastructure, tmp_path) -> None:
    """The broker runs exactly the jars of deploy/kafka/jars.sha256: one jar present is not trusted,
    and a jar changed, added or missing sends `infra up` back to Maven Central (checksums enforced)."""
    assert infra.kafka_jars_verified(infra.Paths(infrastructure.state_dir))
    copy = infra.Paths(tmp_path)
    copy.kafka_libs.mkdir(parents=True)
    (copy.kafka_libs / "kafka_2.13-4.4.0.jar").write_bytes(b"not Kafka")
    assert not infra.kafka_jars_verified(copy)
    shutil.rmtree(copy.kafka_libs)
    shutil.copytree(infra.Paths(infrastructure.state_dir).kafka_libs, copy.kafka_libs)
    assert infra.kafka_jars_verified(copy)
    with (copy.kafka_libs / "kafka-clients-4.4.0.jar").open("ab") as jar:
        jar.write(b"\0")
    assert not infra.kafka_jars_verified(copy)
    shutil.copy(infra.Paths(infrastructure.state_dir).kafka_libs / "kafka-clients-4.4.0.jar", copy.kafka_libs)
    (copy.kafka_libs / "extra.jar").write_bytes(b"")
    assert not infra.kafka_jars_verified(copy)
