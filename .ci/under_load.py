"""Run a command beside CPU burners, as on a loaded CI machine.

    python .ci/under_load.py [--burners 2] [--repeat 1] -- COMMAND [ARGS...]

Starts ``--burners`` processes that each spin one core (``while True: pass``),
runs the command (``--repeat`` times, stopping at the first failure), then
stops the burners it started, also on Ctrl-C or SIGTERM. Exits with the command's exit
code. Works wherever Python does (no shell needed).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burners", type=int, default=2, help="CPU burners (2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the command")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("give the command after --")
    if args.burners < 0 or args.repeat < 1:
        parser.error("--burners must be >= 0 and --repeat >= 1")

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # run the clean-up below on SIGTERM too

    signal.signal(signal.SIGTERM, stop)
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(args.burners)
    ]
    rc = 0
    try:
        for i in range(args.repeat):
            t0 = time.perf_counter()
            rc = subprocess.call(cmd)
            print(
                f"under_load: run {i + 1}/{args.repeat} beside {args.burners} "
                f"burners: exit {rc} in {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            if rc != 0:
                break
    finally:
        for p in burners:
            p.terminate()
        for p in burners:
            p.wait()
    return rc


if __name__ == "__main__":
    sys.exit(main())
