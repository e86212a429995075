"""Start-up time of the command line: `bwarea --help`, `bwarea <command> --help` and `import agents`, each in a
fresh process, median of --repeats runs (issue 15: under 2 s). pretrain and finetune are measured twice: with an
empty help cache (LightningCLI builds the text, Lightning imported) and with the text cached (cli/help_cache.py).

    python benchmarks/bench_startup.py                 # every command, 3 runs each
    python benchmarks/bench_startup.py --repeats 5

What dominates where it is slow: `python -X importtime -c "import training.finetune"` (Lightning alone ~4 s on
the 2-core Xeon of RESULTS.md).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ("", "evaluate", "play", "plot", "data", "generate", "convert", "view", "quickstart")
LIGHTNING_COMMANDS = ("pretrain", "finetune")     # their --help is cached (cli/help_cache.py)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def seconds(command: list[str], repeats: int, cache: str | None = None) -> float:
    """Median wall time; with `cache`, BWAREA_CACHE_DIR points there ("fresh": a new empty one for every run)."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as empty:
            env = dict(os.environ, BWAREA_CACHE_DIR=empty if cache == "fresh" else cache) if cache else None
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bwarea = str(Path(sys.executable).with_name("bwarea"))
    rows = [("import agents", seconds([sys.executable, "-c", "import agents"], args.repeats))]
    rows += [(f"bwarea {name} --help".replace("  ", " "), seconds([bwarea, *([name] if name else []), "--help"], args.repeats))
             for name in COMMANDS]
    with tempfile.TemporaryDirectory() as cache:
        for name in LIGHTNING_COMMANDS:
            rows.append((f"bwarea {name} --help (first: no cached help)", seconds([bwarea, name, "--help"], args.repeats,
                                                                                "fresh")))
            seconds([bwarea, name, "--help"], 1, cache)        # fills the cache
            rows.append((f"bwarea {name} --help (cached)", seconds([bwarea, name, "--help"], args.repeats, cache)))
    print(f"Start-up, median of {args.repeats} fresh processes ({cpu_name()}):\n")
    print("| command | seconds | under 2 s |\n|---|---:|---|")
    for name, value in rows:
        print(f"| `{name}` | {value:.2f} | {'yes' if value < 2 else 'no'} |")


if __name__ == "__main__":
    main()
