"""Benchmark the generator: events/s and peak memory (all processes together) at a target size.

    python bench/generate.py                 # 10M events, no oracle, then the default preset with its oracle
    python bench/generate.py --events 100e6  # the large size (bounded memory is the point)

Peak memory is the largest sum of resident memory over the generator and its workers,
sampled every 50 ms, so it is what the machine actually had to hold.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from ml.synth.generate import expected_events_per_user, generate
from ml.synth.params import PRESETS, GeneratorConfig
from ml.task import load_task


class PeakMemory:
    """Largest total RSS of this process and its children while the block runs."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # a child that ended meanwhile
                    total += child.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(label: str, cfg: GeneratorConfig, out: Path) -> None:
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        m = generate(cfg, out, progress=True)
        wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*.parquet"))
    print(
        f"{label:<28} {m['events']:>13,} events  {wall:7.1f} s  {m['events'] / wall:>12,.0f} events/s  "
        f"peak {mem.peak / 2**30:5.2f} GiB  parquet {size / 2**20:7.1f} MiB  "
        f"oracle cpu {m['oracle_cpu_seconds']:.1f} s  ({cfg.sizes.users:,} users, {m['workers']} workers)"
    )
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=float, default=10e6, help="target number of events (sizes the users)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--skip-default", action="store_true", help="skip the default preset with its oracle")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crowd-bench-"))
    base = GeneratorConfig(sizes=PRESETS["large"].sizes, workers=args.workers)
    users = int(args.events / expected_events_per_user(base))
    cfg = base.with_sizes(users=users)
    run(f"log only, ~{args.events / 1e6:.0f}M events", cfg, tmp / "log")
    if not args.skip_default:
        dflt = dataclasses.replace(base, sizes=PRESETS["default"].sizes,
                                   oracle_dates=tuple(load_task("tmall-2013").labelled_dates))
        run("default preset + oracle", dflt, tmp / "default")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
