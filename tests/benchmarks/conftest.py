"""Benchmarks print numbers and compare them with a baseline measured in the same run; they are
outside the default test run: `.venv/bin/pytest tests/benchmarks -s` with the services running
(`gongji run all`) for the end-to-end one."""
