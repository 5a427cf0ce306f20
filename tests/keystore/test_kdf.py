"""Argon2id calibration: its ceiling and its floor."""

from __future__ import annotations

import logging

import pytest

from unlocker.errors import InvalidInput
from unlocker.keystore import kdf


def test_a_tiny_kdf_time_warns_that_it_is_below_owasp_and_rfc_9106(caplog):
    with caplog.at_level(logging.WARNING, logger="unlocker"):
        params = kdf.calibrate(1)
    assert params.memory_kib * params.iterations < kdf.OWASP_MIN_WORK_KIB
    assert "below OWASP's minimum (19 MiB x 2) and RFC 9106's recommendation" in caplog.text


def test_the_default_kdf_time_does_not_warn(caplog, monkeypatch):
    # What the default 2 s gives on a small machine: 64 MiB x 3 passes is at RFC 9106's recommendation.
    monkeypatch.setattr(kdf, "_time_once", lambda p: 0.1 * p.iterations * p.memory_kib / (64 * 1024))
    with caplog.at_level(logging.WARNING, logger="unlocker"):
        params = kdf.calibrate(2000)
    assert params.memory_kib >= 64 * 1024 and params.iterations >= 3
    assert caplog.text == ""


def test_calibration_never_exceeds_the_work_ceiling(monkeypatch):
    monkeypatch.setattr(kdf, "_time_once", lambda p: 1e-6 * p.iterations)  # an absurdly fast machine
    params = kdf.calibrate(kdf.MAX_KDF_TIME_MS, 8192)
    assert params.memory_kib * params.iterations <= kdf.MAX_WORK_KIB


@pytest.mark.parametrize("ms", [0, kdf.MAX_KDF_TIME_MS + 1])
def test_kdf_time_out_of_range_is_refused(ms):
    with pytest.raises(InvalidInput, match="--kdf-time must be between 1 and 60000 ms"):
        kdf.calibrate(ms)
