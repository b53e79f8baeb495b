"""Recipe validation: every mistake is one line that names the file and the key."""

import pytest

from lazydrift.recipes import Protocol, RecipeError, load_recipe


def write(tmp_path, text):
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("[train]\nlrr = 1.0\n", r"r\.toml: unknown key \[train\] 'lrr'"),
    ("colour = 1\n", r"r\.toml: unknown key 'colour'"),
    ("seed = 4611686018427387904\n", r"r\.toml: seed must be in \[0, 2\*\*62\), got 4611686018427387904"),
    ("seeds = [0, -1]\n", r"r\.toml: seeds\[1\] must be in \[0, 2\*\*62\), got -1"),
    ("[train]\nlr = 'fast'\n", r"r\.toml: \[train\] lr must be a finite number"),
    ("[train]\nsteps = 1.5\n", r"r\.toml: \[train\] steps must be an integer"),
    ("[train]\nsteps = true\n", r"r\.toml: \[train\] steps must be an integer"),
    ("[model]\nwidths = 100\n", r"r\.toml: \[model\] widths must be a list of int"),
    ("[model]\nwidths = [100, 0]\n", r"r\.toml: \[model\] widths\[1\] must be >= 1"),
    ("[model]\nhidden_layers = 0\n", r"r\.toml: \[model\] hidden_layers must be >= 1"),
    ("[model]\ndepth = 3\n", r"^[^\n]*r\.toml: \[model\] depth is now called hidden_layers .*rename it to hidden_layers = 3$"),
    ("[train]\nlr = -0.1\n", r"r\.toml: \[train\] lr must be a positive"),
    ("[train]\nlr = 0\n", r"r\.toml: \[train\] lr must be a positive"),
    ("[data]\nvocab_size = 100\nn_probes = 200\n", r"r\.toml: \[data\] n_probes \(200\) cannot exceed .*vocab_size"),
    ("[data]\ndataset = 'imagenet'\n", r"r\.toml: \[data\] dataset must be one of"),
    ("[model]\nparameterization = 'sp'\n", r"r\.toml: \[model\] parameterization must be one of"),
    ("train = 3\n", r"r\.toml: \[train\] must be a table"),
    ("[train\nlr = 1\n", r"r\.toml: TOML syntax error"),
    # protocols: the grid keys, [[protocol]] tables and the optimizers' hyperparameters
    ("[train]\noptimizer = 'rmsprop'\n", r"r\.toml: \[train\] optimizer must be one of sgd, momentum, adam"),
    ("[train]\nloss = 'hinge'\n", r"r\.toml: \[train\] loss must be one of mse, cross_entropy"),
    ("[train]\nlr = [0.1, -1.0]\n", r"r\.toml: \[train\] lr must be a positive"),
    ("[train]\nlr = [0.1, 0.1]\n", r"r\.toml: \[train\] lr lists a value twice"),
    ("[train]\noptimizer = []\n", r"r\.toml: \[train\] optimizer must list at least one value"),
    ("[train]\nbetas = [0.9, 0.99]\n", r"r\.toml: unknown key \[train\] 'betas' \(known: .*beta1, beta2, eps"),
    ("[train]\nbeta1 = 0.8\n", r"r\.toml: \[train\] beta1 is a hyperparameter of adam, which no protocol"),
    ("[train]\noptimizer = 'momentum'\nmomentum = 1.0\n", r"r\.toml: \[train\] momentum must be in \[0, 1\)"),
    ("[train]\noptimizer = 'adam'\neps = 0.0\n", r"r\.toml: \[train\] eps must be > 0"),
    ("[train]\noptimizer = 'adam'\nbeta2 = 'x'\n", r"r\.toml: \[train\] beta2 must be a finite number, got 'x'"),
    ("[[protocol]]\nname = 'a b'\n", r"r\.toml: \[\[protocol\]\] #1 name must be letters, digits"),
    ("[[protocol]]\nname = 'a'\n[[protocol]]\nname = 'a'\n", r"r\.toml: \[\[protocol\]\] #2 name 'a' names two"),
    ("[[protocol]]\nname = 'a'\noptimiser = 'adam'\n", r"r\.toml: unknown key \[\[protocol\]\] #1 'optimiser'"),
    ("[[protocol]]\nname = 'a'\nloss = 'l1'\n", r"r\.toml: \[\[protocol\]\] 'a' loss must be one of"),
    ("[[protocol]]\nname = 'a'\nlr = 0\n", r"r\.toml: \[\[protocol\]\] 'a' lr must be a positive"),
    ("[train]\nlr = [0.1, 1.0]\n[[protocol]]\nname = 'a'\n", r"r\.toml: \[train\] lr is a list, which \[\[protocol\]\]"),
    ("protocol = 3\n", r"r\.toml: protocol must be \[\[protocol\]\] tables"),
    ("[model]\nparameterization = 'pytorch'\ninput_scale = 'unit'\n", r"r\.toml: \[model\] input_scale must be one of"),
    ("[train]\nsteps = 10\n[record]\nsteps = [5, 11]\n", r"r\.toml: \[record\] steps\[1\] must be a training step in \[1, "),
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
    assert r.data.dataset == "mnist" and r.seed_list == [0]
    assert r.protocols() == [Protocol("ntk", "ntk", "embedding", "sgd", "mse", 2.0)]  # one protocol: today's names
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


def test_grid_protocols_are_named_by_what_varies(tmp_path):
    """The grid: every combination, named by the parameterization and the list-valued keys' values."""
    r = load_recipe(write(tmp_path, "[model]\nparameterization = ['ntk', 'pytorch']\n"
                                    "[train]\noptimizer = ['sgd', 'adam']\nlr = [1.0, 1e-4]\nloss = 'cross_entropy'\n"))
    names = [p.name for p in r.protocols()]
    assert names == ["ntk-sgd-lr1", "ntk-sgd-lr0.0001", "ntk-adam-lr1", "ntk-adam-lr0.0001",
                     "pytorch-sgd-lr1", "pytorch-sgd-lr0.0001", "pytorch-adam-lr1", "pytorch-adam-lr0.0001"]
    assert r.protocols()[3] == Protocol("ntk-adam-lr0.0001", "ntk", "embedding", "adam", "cross_entropy", 1e-4)
    cell = r.cells()[0]
    assert cell.name == "ntk-sgd-lr1-s0-w1000"
    assert cell.keys() == {"protocol": "ntk-sgd-lr1", "parameterization": "ntk", "input_scale": "embedding",
                           "optimizer": "sgd", "loss": "cross_entropy", "lr": 1.0, "seed": 0, "width": 1000}


def test_protocol_tables_are_bundles_that_default_to_model_and_train(tmp_path):
    text = """seeds = [0, 1]
[model]
widths = [8, 16]
input_scale = "embedding"
[train]
lr = 0.5
beta2 = 0.99
[[protocol]]
name = "adam-pytorch"
parameterization = "pytorch"
input_scale = "fan_in"
optimizer = "adam"
loss = "cross_entropy"
lr = 1e-4
[[protocol]]
name = "control"
"""
    r = load_recipe(write(tmp_path, text))
    assert r.protocols() == [Protocol("adam-pytorch", "pytorch", "fan_in", "adam", "cross_entropy", 1e-4),
                             Protocol("control", "ntk", "embedding", "sgd", "mse", 0.5)]
    # protocols x seeds x widths, not a product of the protocols' keys
    assert [c.name for c in r.cells()] == [f"{p}-s{s}-w{w}" for p in ("adam-pytorch", "control")
                                           for s in (0, 1) for w in (8, 16)]
    assert r.optimizer_options("adam") == {"beta2": 0.99} and r.optimizer_options("sgd") == {}
    # every protocol key and hyperparameter is in the fingerprint
    other = load_recipe(write(tmp_path, text.replace("lr = 1e-4", "lr = 2e-4")))
    from lazydrift.recipes import fingerprint_differences
    assert fingerprint_differences(r.fingerprint(), other.fingerprint()) == ["protocol: " + __import__("json").dumps(
        r.to_dict()["protocol"]) + " there, " + __import__("json").dumps(other.to_dict()["protocol"]) + " here"]
    third = load_recipe(write(tmp_path, text.replace("beta2 = 0.99", "beta2 = 0.98")))
    assert fingerprint_differences(r.fingerprint(), third.fingerprint()) == ["[train] beta2: 0.99 there, 0.98 here"]


def test_recorded_steps(tmp_path):
    r = load_recipe(write(tmp_path, "[train]\nsteps = 300\n[record]\nsteps = [100, 1, 30]\n"))
    assert r.record_steps() == [0, 1, 30, 100, 300]
    from lazydrift.recorder import log_schedule
    r = load_recipe(write(tmp_path, "[train]\nsteps = 300\n[record]\npoints = 5\n"))
    assert r.record_steps() == log_schedule(300, 5)
