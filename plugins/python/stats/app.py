"""The stats plugin: summary statistics of the numbers given as arguments.

`stats 1 2 3 4` replies `count=4 mean=2.5 median=2.5 min=1 max=4 stdev=1.29099`.
Written in Python against plugboard's WIT contract, built with componentize-py.
"""

import math
import statistics

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def commands(self) -> list[types.CommandInfo]:
        return [
            types.CommandInfo(
                "stats",
                "Count, mean, median, min, max and standard deviation of numbers",
            )
        ]

    def handle(self, request: types.Request) -> str:
        if request.command != "stats":
            raise Err(f"unexpected command '{request.command}'")
        if not request.args:
            raise Err("stats needs numbers, e.g. `stats 1 2 3`")
        numbers = [parse(arg) for arg in request.args]
        host.log(host.Level.DEBUG, f"stats over {len(numbers)} numbers")
        stdev = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
        return (
            f"count={len(numbers)} mean={statistics.fmean(numbers):g} "
            f"median={statistics.median(numbers):g} min={min(numbers):g} "
            f"max={max(numbers):g} stdev={stdev:g}"
        )


def parse(arg: str) -> float:
    try:
        number = float(arg)
    except ValueError:
        raise Err(f"not a number: {arg!r}")
    if not math.isfinite(number):
        raise Err(f"not a finite number: {arg!r}")
    return number
