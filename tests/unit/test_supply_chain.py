"""What the project installs is pinned: every Python dependency at one version with its hashes
(requirements.lock, installed with --require-hashes), in step with pyproject.toml."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shared.settings import PROJECT_ROOT


def _locked() -> dict[str, tuple[str, list[str]]]:
    """{name: (version, hashes)} of requirements.lock."""
    text = (PROJECT_ROOT / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)((?:\s*\\\s*\n\s*--hash=sha256:[0-9a-f]{64})+)", text, re.M)
    return {
        canonicalize_name(name): (version, re.findall(r"sha256:([0-9a-f]{64})", hashes))
        for name, version, hashes in entries
    }


def test_every_locked_package_has_hashes() -> None:
    locked = _locked()
    pinned = re.findall(r"^[A-Za-z0-9_.\-]+==", (PROJECT_ROOT / "requirements.lock").read_text(), re.M)
    assert len(locked) == len(pinned) > 40  # every pin was matched with its hashes
    assert all(hashes for _, hashes in locked.values())


def test_the_lock_satisfies_every_dependency_pyproject_declares() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    locked = _locked()
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock: run pip-compile (see its header)"
        assert requirement.specifier.contains(locked[name][0], prereleases=True), (line, locked[name][0])
