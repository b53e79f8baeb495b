"""Atomic writes: an interrupted write leaves the previous complete file, and no debris."""

import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from lazydrift.export import atomic_write, write_csv


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "summary.csv"
    write_csv(pd.DataFrame({"a": [1, 2]}), target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("a\n9")  # half a file ...
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


def test_sigkill_mid_write_leaves_old_file_or_none(tmp_path):
    target = tmp_path / "big.csv"
    target.write_text("old,complete\n")
    code = (f"from lazydrift.export import atomic_write\n"
            f"with atomic_write({str(target)!r}) as f:\n"
            f"    f.write('partial,' * 1000); f.flush(); print('writing', flush=True)\n"
            f"    import time; time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_text() == "old,complete\n"  # the reader never sees the partial file


def test_written_files_are_readable_by_others(tmp_path):
    path = write_csv(pd.DataFrame({"a": [1]}), tmp_path / "x.csv")
    assert path.stat().st_mode & 0o044  # not mkstemp's private 0600
