"""Benchmarks print numbers and compare them with a baseline measured in the same run; they are
outside the default test run: `.venv/bin/pytest tests/benchmarks -s` with the broker's development listener open
(`GONGJI_KAFKA_PLAINTEXT_DEV=1 gongji infra up`): the end-to-end one starts the services itself, once
per listener, so nothing else may hold their HTTP ports."""
