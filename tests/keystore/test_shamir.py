"""Shamir over GF(256): the in-project code against pyshamir (a port of OpenBao's, used only here as an
oracle), in both directions, and the field arithmetic against a plain textbook multiplication."""

from __future__ import annotations

import itertools
import os

import pyshamir
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unlocker.keystore import shamir


def _textbook_mul(a: int, b: int) -> int:
    r = 0
    while b:
        if b & 1:
            r ^= a
        a = (a << 1) ^ (0x11B if a & 0x80 else 0)
        b >>= 1
    return r


def test_every_3_of_5_opens_in_any_order_and_pyshamir_agrees():
    secret = os.urandom(32)
    shares = shamir.split(secret, 5, 3)
    for subset in itertools.permutations(shares, 3):
        assert shamir.combine(list(subset)) == secret
        assert pyshamir.combine([bytearray(s) for s in subset]) == secret


def test_shares_pyshamir_made_combine_here():
    secret = os.urandom(32)
    shares = pyshamir.split(secret, 5, 3)
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine(list(subset)) == secret


def test_two_of_three_shares_do_not_give_the_secret():
    secret = os.urandom(32)
    shares = shamir.split(secret, 5, 3)
    assert shamir.combine(shares[:2]) != secret


def test_x_coordinates_are_distinct_and_never_zero():
    shares = shamir.split(os.urandom(32), 255, 2)
    assert sorted(s[-1] for s in shares) == list(range(1, 256))


@given(st.integers(0, 255), st.integers(0, 255))
def test_branch_free_multiplication_is_field_multiplication(a, b):
    assert shamir._mul(a, b) == _textbook_mul(a, b)


def test_every_nonzero_element_has_its_inverse():
    assert all(shamir._mul(a, shamir._inverse(a)) == 1 for a in range(1, 256))


@pytest.mark.parametrize(("count", "threshold"), [(1, 1), (3, 1), (2, 3), (256, 2)])
def test_bad_parameters_are_refused(count, threshold):
    with pytest.raises(ValueError):
        shamir.split(b"x" * 32, count, threshold)


def test_repeated_shares_are_refused():
    shares = shamir.split(os.urandom(32), 3, 2)
    with pytest.raises(ValueError, match="distinct"):
        shamir.combine([shares[0], shares[0]])
