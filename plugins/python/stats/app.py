"""The stats plugin: summary statistics of the numbers given as arguments.

`stats 1 2 3 4` replies `count=4 mean=2.5 median=2.5 min=1 max=4 stdev=1.29099`.
Written in Python against plugboard's WIT contract, built with componentize-py.
"""

import math

import plugboard
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(plugboard.Plugin):
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
        numbers = sorted(parse(arg) for arg in request.args)
        host.log(host.Level.DEBUG, f"stats over {len(numbers)} numbers")
        mean = math.fsum(numbers) / len(numbers)
        return (
            f"count={len(numbers)} mean={mean:g} median={median(numbers):g} "
            f"min={numbers[0]:g} max={numbers[-1]:g} stdev={stdev(numbers, mean):g}"
        )


# Plain float arithmetic (math.fsum keeps sums exact enough): the statistics
# module computes variance with exact fractions, which made it most of a
# call's time in the load benchmark.


def median(ordered: list[float]) -> float:
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def stdev(numbers: list[float], mean: float) -> float:
    """Sample standard deviation, 0 for a single number."""
    if len(numbers) < 2:
        return 0.0
    return math.sqrt(math.fsum((x - mean) ** 2 for x in numbers) / (len(numbers) - 1))


def parse(arg: str) -> float:
    try:
        number = float(arg)
    except ValueError:
        raise Err(f"not a number: {arg!r}")
    if not math.isfinite(number):
        raise Err(f"not a finite number: {arg!r}")
    return number
