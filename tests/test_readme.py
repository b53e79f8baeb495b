"""The README's copy-paste example of the hooks runs as printed (at a smaller size)."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_hooks_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text.split("## The hooks in your own training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "DriftRecorder" in code and "rec.record(step)" in code
    small = code.replace("width=4096", "width=64").replace("steps = 1000", "steps = 5")
    assert small != code
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(small, "README.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    summary = scope["rec"].summary()
    assert set(summary.layer) == {"hidden.0", "hidden.1"} and summary.step.max() == 5
    assert (tmp_path / "results" / "my-run" / "drift.csv").is_file()


def test_readme_kernel_example_runs():
    text = (ROOT / "README.md").read_text()
    section = text.split("## The kernel side", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    K, Kb, Kx = scope["K"], scope["Kb"], scope["Kx"]
    assert K.shape == (500, 500) and Kx.shape == (10, 500)
    assert abs(float(Kb[0, 0]) - 1.0) < 1e-12  # Definition 4: ones on the diagonal
    assert (K - K.T).abs().max() == 0
