"""The README's command line section names real commands, so it cannot rot."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from gongji.cli import app
from shared.settings import PROJECT_ROOT

GROUPS = {"infra", "policy", "relationships", "wallet", "claims", "clearing", "credentials"}


def test_every_command_in_the_readme_exists() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith("gongji ")]
    assert len(lines) >= 10
    runner = CliRunner()
    for line in lines:
        words = [word for word in line.split("  ")[0].split()[1:] if re.fullmatch(r"[a-z|]+", word)]
        invocations = [[words[0], sub] for sub in words[1].split("|")] if words[0] in GROUPS else [[words[0]]]
        for invocation in invocations:
            result = runner.invoke(app, [*invocation, "--help"])
            assert result.exit_code == 0, (line, result.output)
