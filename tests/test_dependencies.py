"""The dependencies: floors past known advisories, and lock files that match pyproject.toml.

`make run`, `make test` and CI install from the lock files with `--require-hashes`, then
drip itself with `--no-deps`; these tests fail when pyproject.toml asks for something
the locks do not pin (run `make lock`), or a floor is lowered below a fixed advisory.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = {"runtime": ROOT / "requirements.lock", "test": ROOT / "requirements-test.lock"}

#: The first release of each package past the advisories that reach drip.
FIXED = {
    "idna": "3.7",  # CVE-2024-3651
    "starlette": "0.49.1",  # CVE-2025-62727, StaticFiles/FileResponse Range
    "fastapi": "0.120.1",  # the first to allow that Starlette
    "python-multipart": "0.0.18",  # CVE-2024-53981
    "jinja2": "3.1.6",  # CVE-2025-27516
    "h11": "0.16",  # CVE-2025-43859
    "aiosmtpd": "1.4.6",  # CVE-2024-27305, CVE-2024-34083
}

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def _pins(lock: Path) -> dict[str, tuple[Version, str | None]]:
    pins: dict[str, tuple[Version, str | None]] = {}
    for line in lock.read_text().splitlines():
        if match := _PIN.match(line):
            name, version, marker = match.groups()
            pins[canonicalize_name(name)] = (Version(version), marker)
    return pins


def _requirements(*extras: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def _floor(requirement: Requirement) -> Version | None:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(floors) if floors else None


@pytest.mark.parametrize("name, fixed", sorted(FIXED.items()))
def test_floors_exclude_releases_with_known_advisories(name: str, fixed: str) -> None:
    found = [r for r in _requirements() if canonicalize_name(r.name) == name]
    assert found, f"{name} has no floor in pyproject.toml"
    floor = _floor(found[0])
    assert floor is not None, f"{name}: floor {floor} < {fixed}"
    assert floor >= Version(fixed), f"{name}: floor {floor} < {fixed}"


@pytest.mark.parametrize("lock, extras", [("runtime", ()), ("test", ("test",))])
def test_the_lock_pins_every_requirement_within_its_range(lock: str, extras: tuple[str]) -> None:
    pins = _pins(LOCKS[lock])
    for requirement in _requirements(*extras):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {LOCKS[lock].name}: run `make lock`"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{LOCKS[lock].name} pins {name}=={version}, outside {requirement}: run `make lock`"
        )


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_carries_hashes(lock: str) -> None:
    text = LOCKS[lock].read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert blocks
    for block in blocks:
        name, *_ = block.split("==", 1)
        assert "--hash=sha256:" in block, f"{name} has no hash in {LOCKS[lock].name}"


def test_the_locks_hold_the_fixed_releases() -> None:
    for lock in LOCKS.values():
        pins = _pins(lock)
        for name, fixed in FIXED.items():
            version, marker = pins[name]
            assert marker is None or Marker(marker).evaluate()
            assert version >= Version(fixed), f"{lock.name}: {name}=={version} < {fixed}"
