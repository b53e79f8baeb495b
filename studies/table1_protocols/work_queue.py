"""A tiny work queue for run.py: workers pop lines from a task file until it is empty.

    python work_queue.py add TASKS "--candidates sgd-ntk-mse-lr1 --widths 512 1024 --seeds 0 --steps 300"
    nice -n 19 python work_queue.py work TASKS results/worker0.csv &
    nice -n 19 python work_queue.py work TASKS results/worker1.csv &

Each task line is run.py's arguments without --out.  Tasks can be appended while workers run,
so the order of the study follows what the screen shows.  Each worker writes its own CSV;
run.py skips cells already in any CSV of that folder.  A lock file serializes the pops.
"""

from __future__ import annotations

import fcntl
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

import run


@contextmanager
def locked(tasks: Path):
    with open(f"{tasks}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pop(tasks: Path) -> str | None:
    with locked(tasks):
        lines = [ln for ln in tasks.read_text().splitlines() if ln.strip()] if tasks.exists() else []
        if not lines:
            return None
        tasks.write_text("".join(ln + "\n" for ln in lines[1:]))
        return lines[0]


def add(tasks: Path, line: str) -> None:
    with locked(tasks):
        with open(tasks, "a") as f:
            f.write(line.strip() + "\n")


def work(tasks: Path, out: str) -> None:
    while (line := pop(tasks)) is not None:
        print(f"== {line}", flush=True)
        run.main(shlex.split(line) + ["--threads", "1", "--out", out])


if __name__ == "__main__":
    cmd, tasks = sys.argv[1], Path(sys.argv[2])
    if cmd == "add":
        for line in sys.argv[3:]:
            add(tasks, line)
    elif cmd == "work":
        work(tasks, sys.argv[3])
    else:
        raise SystemExit("usage: work_queue.py add TASKS LINE... | work_queue.py work TASKS OUT.csv")
