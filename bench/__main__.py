"""`python -m bench [--quick] [NAME ...]`: run the benchmarks (all or those named), show them.

Each benchmark module has `run(quick: bool) -> list[Figure]`. The full run takes a few
minutes on two cores; --quick scales every workload down, under two minutes in all.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from bench.report import Figure, machine, markdown, save, show

BENCHES = ("send", "tick", "signup", "newsletter", "durability", "metrics", "funnel")
#: Run only when named: a newsletter delivered end to end takes most of an hour.
LONG = ("campaign",)
RESULTS = Path(__file__).resolve().parent / "results.json"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small workloads, under two minutes")
    parser.add_argument(
        "names", nargs="*", metavar="name", help=f"any of {', '.join(BENCHES + LONG)}"
    )
    args = parser.parse_args()
    names = args.names or list(BENCHES)
    if unknown := set(names) - set(BENCHES + LONG):
        parser.error(f"no benchmark named {', '.join(sorted(unknown))}")
    figures: list[Figure] = []
    started = time.monotonic()
    for name in names:
        began = time.monotonic()
        print(f"bench {name}{' (quick)' if args.quick else ''} ...", flush=True)
        module = importlib.import_module(f"bench.{name}")
        figures.extend(module.run(args.quick))
        print(f"bench {name}: {time.monotonic() - began:.0f} s", flush=True)
    title = f"drip benchmarks{' (quick)' if args.quick else ''}: {machine()}"
    show(figures, title)
    print(f"\nall benchmarks: {time.monotonic() - started:.0f} s\n")
    print(markdown(figures))
    save(figures, RESULTS, title)
    missed = [f for f in figures if f.met is False]
    if missed:
        print(f"\n{len(missed)} target(s) not met: " + ", ".join(f.name for f in missed))


if __name__ == "__main__":
    main()
