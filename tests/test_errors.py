"""drip's exceptions are one family, and drip.errors maps all of it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from typer.testing import CliRunner

import drip
from drip import errors
from drip.errors import DripError


def _drip_exceptions() -> list[type[BaseException]]:
    found = []
    for module in pkgutil.walk_packages(drip.__path__, "drip."):
        if ".migrations" in module.name or module.name.endswith("__main__"):
            continue
        loaded = importlib.import_module(module.name)
        for _, value in inspect.getmembers(loaded, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.name:
                found.append(value)
    return found


def test_every_exception_drip_defines_is_a_drip_error() -> None:
    found = _drip_exceptions()
    assert len(found) >= 10
    for exception in found:
        assert issubclass(exception, DripError), exception


def test_the_map_in_drip_errors_names_every_public_one() -> None:
    for exception in _drip_exceptions():
        if not exception.__name__.startswith("_") and exception is not DripError:
            assert exception.__name__ in (errors.__doc__ or ""), exception


@pytest.mark.parametrize(
    "args",
    [["preview", "no-such-email"], ["pack", "build", "--source", "/nonexistent/pack.md"]],
)
def test_a_drip_error_in_any_command_is_one_line_and_exit_2(args: list[str]) -> None:
    from drip.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("drip: ")
