"""`row_is_clean`, the live bar's scalar fast path, never keeps a row `validate` would refuse."""

import itertools
import math

import numpy as np

from scalpd.data.bars import BarColumns, row_is_clean, validate
from scalpd.events import Bar
from scalpd.live.source import bar_problem

VALUES = (math.nan, math.inf, -math.inf, -1.0, 0.0, 1.0, 2.0, 3.0)


def _validate_keeps(open_time_ms: int, o: float, h: float, low: float, c: float, v: float) -> bool:
    one = BarColumns(
        "BTC/USDT",
        *(np.array([x]) for x in (open_time_ms, o, h, low, c, v, math.nan, -1, math.nan)),
    )
    return not validate(one)[1]


def test_row_is_clean_agrees_with_validate_on_every_combination() -> None:
    for o, h, low, c in itertools.product(VALUES, repeat=4):
        for v in (math.nan, -1.0, 0.0, 5.0, math.inf):
            for t in (60_000, 60_001):
                assert row_is_clean(t, o, h, low, c, v) == _validate_keeps(t, o, h, low, c, v), (
                    t, o, h, low, c, v,
                )  # fmt: skip


def test_bar_problem_still_gives_validates_reason() -> None:
    good = Bar("BTC/USDT", 60_000, 2.0, 3.0, 1.0, 2.5, 4.0, math.nan, -1, math.nan)
    assert bar_problem(good) is None
    assert bar_problem(good._replace(close=math.nan)) == "NaN or infinite value"
    assert bar_problem(good._replace(high=0.5)) == "high below low"
    assert bar_problem(good._replace(close=3.5)) == "open or close outside high-low range"
    assert bar_problem(good._replace(open_time_ms=60_001)) == "open_time not on a minute boundary"
