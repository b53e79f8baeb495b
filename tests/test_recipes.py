"""Recipe validation: every mistake is one line that names the file and the key."""

import pytest

from lazydrift.recipes import RecipeError, load_recipe


def write(tmp_path, text):
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("[train]\nlrr = 1.0\n", r"r\.toml: unknown key \[train\] 'lrr'"),
    ("colour = 1\n", r"r\.toml: unknown key 'colour'"),
    ("[train]\nlr = 'fast'\n", r"r\.toml: \[train\] lr must be a finite number"),
    ("[train]\nsteps = 1.5\n", r"r\.toml: \[train\] steps must be an integer"),
    ("[train]\nsteps = true\n", r"r\.toml: \[train\] steps must be an integer"),
    ("[model]\nwidths = 100\n", r"r\.toml: \[model\] widths must be a list of int"),
    ("[model]\nwidths = [100, 0]\n", r"r\.toml: \[model\] widths\[1\] must be >= 1"),
    ("[model]\ndepth = 0\n", r"r\.toml: \[model\] depth must be >= 1"),
    ("[train]\nlr = -0.1\n", r"r\.toml: \[train\] lr must be a positive"),
    ("[train]\nlr = 0\n", r"r\.toml: \[train\] lr must be a positive"),
    ("[data]\nvocab_size = 100\nn_probes = 200\n", r"r\.toml: \[data\] n_probes \(200\) cannot exceed .*vocab_size"),
    ("[data]\ndataset = 'imagenet'\n", r"r\.toml: \[data\] dataset must be one of"),
    ("[model]\nparameterization = 'sp'\n", r"r\.toml: \[model\] parameterization must be one of"),
    ("train = 3\n", r"r\.toml: \[train\] must be a table"),
    ("[train\nlr = 1\n", r"r\.toml: TOML syntax error"),
])
def test_bad_recipes_name_file_and_key(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message) as e:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="nope.toml: recipe file not found"):
        load_recipe(tmp_path / "nope.toml")


def test_defaults_overrides_and_name(tmp_path):
    r = load_recipe(write(tmp_path, "[train]\nlr = 2\n"), ["train.steps=7", "model.widths=[5, 6]", "data.dataset=mnist"])
    assert r.name == "r" and r.train.lr == 2.0 and r.train.steps == 7 and r.model.widths == [5, 6]
    assert r.data.dataset == "mnist" and r.parameterizations == ["ntk"] and r.seed_list == [0]
    with pytest.raises(RecipeError, match=r"unknown key \[train\] 'stepz'"):
        load_recipe(write(tmp_path, ""), ["train.stepz=7"])


def test_shipped_recipes_are_valid():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
    assert recipes
    for path in recipes:
        load_recipe(path)


def test_the_fingerprint_is_every_key_that_can_change_a_number(tmp_path):
    from lazydrift.recipes import NOT_IN_FINGERPRINT, fingerprint_differences

    base = load_recipe(write(tmp_path, ""))
    cosmetic = ["name='other'", "description='x'", "device='cpu'", "data.data_dir='elsewhere'", "data.download=true",
                "data.mnist_root='/m'", "checkpoint.every_steps=7", "checkpoint.every_minutes=1.5"]
    assert len(cosmetic) == len(NOT_IN_FINGERPRINT)
    assert load_recipe(write(tmp_path, ""), cosmetic).fingerprint() == base.fingerprint()
    for override, difference in (("train.lr=0.5", "[train] lr: 1.0 there, 0.5 here"),
                                 ("seed=3", "seed: 0 there, 3 here"),
                                 ("model.widths=[8]", "[model] widths: [1000, 3000] there, [8] here"),
                                 ("record.probe_batch_size=7", "[record] probe_batch_size: 1024 there, 7 here")):
        other = load_recipe(write(tmp_path, ""), [override])
        assert fingerprint_differences(base.fingerprint(), other.fingerprint()) == [difference]


def test_cells_are_the_grid_in_order(tmp_path):
    r = load_recipe(write(tmp_path, "seeds = [1, 2]\n[model]\nwidths = [8, 16]\nparameterization = ['ntk', 'mup']\n"))
    assert [c.name for c in r.cells()] == ["ntk-s1-w8", "ntk-s1-w16", "ntk-s2-w8", "ntk-s2-w16",
                                           "mup-s1-w8", "mup-s1-w16", "mup-s2-w8", "mup-s2-w16"]
