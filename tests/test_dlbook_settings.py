"""dlbook.settings: DLBOOK_FAST switches the test suite's small settings on."""

from __future__ import annotations

import pytest

from dlbook import settings


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " yes ", "Yes"])
def test_fast_mode_on(monkeypatch, value):
    monkeypatch.setenv("DLBOOK_FAST", value)
    assert settings.fast_mode() is True
    assert settings.choose(full=30, fast=2) == 2


@pytest.mark.parametrize("value", ["", "0", "false", "No", " 0 "])
def test_fast_mode_off(monkeypatch, value):
    monkeypatch.setenv("DLBOOK_FAST", value)
    assert settings.fast_mode() is False
    assert settings.choose(full=30, fast=2) == 30


def test_fast_mode_off_when_unset(monkeypatch):
    monkeypatch.delenv("DLBOOK_FAST", raising=False)
    assert settings.fast_mode() is False
    assert settings.choose(full="full", fast="fast") == "full"


@pytest.mark.parametrize("value", ["2", "fast", "on", "-1"])
def test_bad_fast_value_raises(monkeypatch, value):
    monkeypatch.setenv("DLBOOK_FAST", value)
    with pytest.raises(ValueError, match="DLBOOK_FAST must be 1 or 0"):
        settings.fast_mode()
    with pytest.raises(ValueError):
        settings.choose(full=1, fast=2)


def test_package_exports():
    import dlbook

    assert dlbook.choose is settings.choose and dlbook.fast_mode is settings.fast_mode
