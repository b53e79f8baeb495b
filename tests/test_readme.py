"""The README's copy-paste examples run as printed (at a smaller size)."""

import os
import re
from pathlib import Path

import pytest
import torch

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


def _examples(heading: str) -> list[str]:
    section = (ROOT / "README.md").read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _shrink(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, old  # the README still says what this test shrinks
        code = code.replace(old, new)
    return code


@pytest.mark.slow  # a resnet18 trained for two steps: 3 s to 11 s here, with the load
def test_readme_resnet_example_records_the_reused_relu_per_call():
    resnet, _ = _examples("## Recording any model")
    small = _shrink(resnet, {"randn(16, 3, 224, 224)": "randn(3, 3, 32, 32)", "randn(8, 3, 224, 224)": "randn(2, 3, 32, 32)",
                             "range(1, 11)": "range(1, 3)", "probe_batch_size=8": "probe_batch_size=2", "(8,)": "(2,)",
                             "images[:8]": "images[:2]"})
    scope: dict = {}
    exec(compile(small, "README.md", "exec"), scope)
    rec = scope["rec"]
    assert rec.layers == ["layer3", "layer4.1.relu#0", "layer4.1.relu#1"]
    # the second call of layer4.1.relu is the block's output: the same values, by hand
    model, images = scope["model"], scope["images"]
    model.eval()
    with torch.no_grad():
        block_out = model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(images[:2]))))))))
    assert scope["feats"]["layer4.1.relu#1"].shape == (2, 512, 1, 1)
    assert (scope["feats"]["layer4.1.relu#1"] - block_out).abs().max() < 1e-5 * block_out.abs().max()
    assert set(rec.frame().step) == {1, 2} and (rec.frame().l2 > 0).all()


def test_readme_transformer_example_runs():
    _, transformer = _examples("## Recording any model")
    small = _shrink(transformer, {"(128, 16)": "(6, 5)", "(32, 16)": "(4, 5)", "range(1, 101)": "range(1, 5)",
                                  "step % 20 == 0": "step % 2 == 0"})
    scope: dict = {}
    exec(compile(small, "README.md", "exec"), scope)
    rec = scope["rec"]
    assert rec.layers == ["encoder.layers.0", "encoder.layers.1"]
    assert rec.h0["encoder.layers.1"].shape == (6, 5 * 64)  # probes first, after select
    assert set(rec.summary().step) == {2, 4} and (rec.frame().l2 > 0).all()
