"""The commands' shared argparse checkers."""

from __future__ import annotations

import argparse

import pytest

from ferkit.argtypes import number, whole_number


def test_whole_number_bounds_and_messages():
    port = whole_number(0, 65535)
    assert port("8000") == 8000 and port("0") == 0 and port("65535") == 65535
    for text, message in (("x", "not a whole number: 'x'"), ("1.5", "not a whole number"),
                          ("-1", "at least 0, not -1"), ("65536", "at most 65535, not 65536")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            port(text)
    assert whole_number()("-7") == -7


def test_number_open_and_closed_bounds():
    alpha = number(0.0, 1.0, open_high=True)
    assert alpha("0") == 0.0 and alpha("0.8") == 0.8
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be in \[0.0, 1.0\), not 1"):
        alpha("1")
    positive = number(0.0, open_low=True)
    assert positive("1e-9") == 1e-9
    for bad in ("0", "-2", "nan", "inf", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"\(0.0, inf\)"):
        positive("0")
