"""lazydrift.analogy: coverage counted by hand, analogies built to be solvable, features = the model's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lazydrift import NTKMLP, analogy
from lazydrift.recipes import RecipeError, recipe_from_dict

QUESTIONS = """\
: capital-common-countries
Athens Greece Baghdad Iraq
Athens Greece Paris France
: family
man king woman queen
man boy woman girl
"""


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "questions.txt"
    path.write_text(QUESTIONS)
    return path


def test_gensim_ships_mikolovs_19544_questions():
    # Mikolov et al. (2013): 8,869 semantic + 10,675 syntactic questions.
    assert analogy.count_in_vocab([], None) == (0, 19544)
    assert len(analogy.read_questions()) == 19544


def test_coverage_is_case_insensitive_and_needs_all_four_words(questions):
    words = ["athens", "greece", "baghdad", "iraq", "man", "king", "woman", "queen", "boy"]
    # question 1: all four words (lower-case vocab, capitalised questions); 2: no paris/france;
    # 3: all four; 4: no girl.
    assert analogy.count_in_vocab(words, questions) == (2, 4)


def test_accuracy_on_vectors_built_to_answer_one_question(questions):
    """king - man + woman lands on queen by construction; athens/greece/baghdad/iraq are random.

    Directions: e0 royal, e1 male, e2 female.  man = e1, woman = e2, king = e0 + e1, queen = e0 + e2:
    with unit vectors, king^ - man^ + woman^ = e0/sqrt2 + (1/sqrt2 - 1) e1 + e2, whose cosine with
    queen^ is (1/2 + 1/sqrt2) / |.| ~ 0.93, far above any other word's.  The capital question's
    answer iraq is made orthogonal to the query (and a decoy placed on it), so it is wrong.
    """
    dim = 12
    rng = np.random.default_rng(0)
    vec = {w: np.zeros(dim) for w in ["man", "king", "woman", "queen", "athens", "greece", "baghdad", "iraq", "decoy"]}
    vec["man"][1] = vec["woman"][2] = 1
    vec["king"][[0, 1]] = 1
    vec["queen"][[0, 2]] = 1
    vec["athens"][3], vec["greece"][4], vec["baghdad"][5], vec["iraq"][6] = 1, 1, 1, 1
    vec["decoy"][[4, 5]] = 1  # greece - athens + baghdad points at the decoy, not at iraq
    words = list(vec)
    vectors = np.stack([vec[w] for w in words]) + 0.01 * rng.random((len(words), dim))
    result = analogy.evaluate(words, vectors, questions)
    assert result["questions_in_vocab"] == 2 and result["total_questions"] == 4
    assert result["correct"] == 1 and result["accuracy"] == pytest.approx(0.5)
    assert result["coverage"] == pytest.approx(0.5)
    assert result["chance"] == pytest.approx(1 / (len(words) - 3))


def test_no_covered_question_gives_nan_accuracy(questions):
    result = analogy.evaluate(["alpha", "beta", "gamma", "delta"], np.eye(4), questions)
    assert result["questions_in_vocab"] == 0 and np.isnan(result["accuracy"])


def test_features_are_the_last_hidden_layers_output():
    model = NTKMLP(40, 24, 40, hidden_layers=3, parameterization="mup", input_scale="embedding", seed=3)
    with torch.no_grad():  # by hand: the hidden blocks called one after the other, no hooks
        expected = torch.arange(40)
        for block in model.hidden:
            expected = block(expected)
    feats = analogy.last_hidden_features(model, 40, batch_size=7)  # several batches
    assert feats.shape == (40, 24) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-5, atol=1e-6)  # batching may reorder sums


def test_evaluate_cell_writes_t0_from_the_seed_and_tT(tmp_path, questions):
    words = ["man", "king", "woman", "queen", "boy", "girl", "athens", "greece"]
    trained = NTKMLP(len(words), 16, len(words), hidden_layers=2, input_scale="embedding", seed=5)
    with torch.no_grad():
        trained.readout.weight.zero_()  # not the features: h is unchanged
        trained.hidden[1][0].weight.mul_(2)  # the last hidden layer: h_T = 2 h_0 after ReLU
    fresh = lambda: NTKMLP(len(words), 16, len(words), hidden_layers=2, input_scale="embedding", seed=5)
    extras = analogy.evaluate_cell(trained, fresh, words, step=9, cell_dir=tmp_path, path=questions)
    frame = pd.read_csv(tmp_path / "analogy.csv")
    assert list(frame.columns) == analogy.COLUMNS
    assert list(frame.features) == ["t0", "tT"] and list(frame.step) == [0, 9]
    assert (frame.questions_in_vocab == 2).all() and (frame.total_questions == 4).all()
    # cosines are scale-invariant and h_T = 2 h_0: both give the same answers
    assert frame.correct.iloc[0] == frame.correct.iloc[1]
    assert extras["analogy_coverage"] == pytest.approx(0.5)


def test_recipe_key_is_validated():
    base = {"data": {"dataset": "mnist"}, "record": {"analogies": True}}
    with pytest.raises(RecipeError, match=r"\[record\] analogies"):
        recipe_from_dict(base)
    with pytest.raises(RecipeError, match="true or false"):
        recipe_from_dict({"record": {"analogies": "yes"}})
    assert recipe_from_dict({"record": {"analogies": True}}).record.analogies
    assert not recipe_from_dict({}).record.analogies
