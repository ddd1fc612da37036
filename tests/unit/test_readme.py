"""The README is the entry: short, its command line names real commands, and every document it
links to exists, so it cannot rot."""

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


def test_the_readme_is_an_entry_and_its_links_lead_somewhere() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 8 * 1024, "each subject has its home in docs/: move it there"
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links and all((PROJECT_ROOT / link).exists() for link in links), links
