"""``python bench/profiled_wicket.py STATS_FILE run ...``: ``wicket run ...`` with a switchable cProfile.

``python bench/profiled_wicket.py STATS_FILE bench/floor.py ...`` profiles the floor proxy the same way.

SIGUSR1 starts profiling, SIGUSR2 stops it and writes the statistics to STATS_FILE, so a profile
covers the measured calls only, not start-up, imports or warm-up (``bench/hotspots.py`` drives it).
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time

if __name__ == "__main__":
    # CPU time, not wall time: other processes on the machine must not count as Wicket's.
    profiler = cProfile.Profile(time.thread_time)
    stats_file = sys.argv[1]
    script = sys.argv[2] if sys.argv[2].endswith(".py") else None
    sys.argv = [script, *sys.argv[3:]] if script else ["wicket", *sys.argv[2:]]

    def stop(_signum: int, _frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(stats_file)

    signal.signal(signal.SIGUSR1, lambda _signum, _frame: profiler.enable())
    signal.signal(signal.SIGUSR2, stop)
    if script:
        runpy.run_path(script, run_name="__main__")
    else:
        runpy.run_module("proxy", run_name="__main__", alter_sys=True)
