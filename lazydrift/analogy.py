"""Word analogies on the learned features: is h_t (or h_0) a useful word vector?

Yang & Hu (2021, TP4, their Word2Vec experiments) evaluate word2vec embeddings on the analogy task and report
accuracy 0 for the NTK limit (its embeddings stay at their random initialization) against
non-zero accuracy for muP.  Here the "embedding" of vocabulary word w is the last hidden
layer's post-ReLU output h_t(e_w) of our network, for every word of the training vocabulary
(not only the recorder's probes), at the end of training (``tT``) and at initialization
(``t0``, a model rebuilt from the cell's seed: the same weights bit for bit, see
tests/test_model.py, so no copy has to be kept during training).

Evaluation is gensim's :meth:`KeyedVectors.evaluate_word_analogies` (3CosAdd over the whole
vocabulary: argmax_w cos(w, b - a + c) on unit vectors, excluding a, b, c) on the analogy set
that ships with gensim, ``questions-words.txt`` (Mikolov et al. 2013: 19,544 questions in 14
sections).  gensim's defaults are used: ``case_insensitive=True`` (both sides upper-cased;
our text8 vocabulary is lower-case a-z only, so no two words collide) and questions with a
word outside the vocabulary are skipped (``dummy4unknown=False``), with ``restrict_vocab`` set
to the whole vocabulary.  Accuracy is therefore over the questions whose four words are all
in the vocabulary, which we count ourselves and report beside it:

    coverage = questions_in_vocab / total_questions,   accuracy = correct / questions_in_vocab

(accuracy is NaN when no question is covered).  ``chance`` = 1 / (V - 3) is the accuracy of a
uniformly random guess among the V - 3 allowed words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .export import write_csv, write_text
from .features import extract_features
from .model import PARAMETERIZATIONS

COLUMNS = ["features", "step", "accuracy", "correct", "questions_in_vocab", "total_questions", "coverage",
           "vocab_size", "chance", "zero_vectors"]


def questions_path() -> str:
    """gensim's copy of Mikolov et al.'s ``questions-words.txt``."""
    from gensim.test.utils import datapath

    return datapath("questions-words.txt")


def read_questions(path: str | Path | None = None) -> list[tuple[str, str, str, str, str]]:
    """(section, a, b, c, d) for every well-formed question line (4 words) of an analogy file."""
    section, out = "", []
    for line in Path(path or questions_path()).read_text(encoding="utf-8").splitlines():
        if line.startswith(": "):
            section = line[2:].strip()
            continue
        words = line.split()
        if len(words) == 4:
            out.append((section, *words))
    return out


def count_in_vocab(words: list[str], path: str | Path | None = None) -> tuple[int, int]:
    """(questions whose 4 words are all in ``words``, all questions), comparing upper-cased words."""
    vocab = {w.upper() for w in words}
    qs = read_questions(path)
    return sum(all(w.upper() in vocab for w in q[1:]) for q in qs), len(qs)


def keyed_vectors(words: list[str], vectors: np.ndarray):
    """gensim KeyedVectors holding ``vectors[k]`` for ``words[k]``, in that (frequency) order."""
    from gensim.models import KeyedVectors

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape[0] != len(words):
        raise ValueError(f"{len(words)} words but {vectors.shape[0]} vectors")
    kv = KeyedVectors(vector_size=vectors.shape[1], dtype=np.float32)
    kv.add_vectors(list(words), vectors)
    return kv


def evaluate(words: list[str], vectors: np.ndarray, path: str | Path | None = None) -> dict:
    """Analogy accuracy of ``vectors`` as embeddings of ``words`` (see the module docstring)."""
    path = str(path or questions_path())
    in_vocab, total = count_in_vocab(words, path)
    zero = int((np.abs(vectors).sum(axis=1) == 0).sum())
    out = {"correct": 0, "questions_in_vocab": in_vocab, "total_questions": total,
           "coverage": in_vocab / total if total else float("nan"), "accuracy": float("nan"),
           "vocab_size": len(words), "chance": 1 / (len(words) - 3) if len(words) > 3 else float("nan"),
           "zero_vectors": zero}
    if in_vocab == 0:
        return out
    kv = keyed_vectors(words, vectors)
    with np.errstate(invalid="ignore", divide="ignore"):  # an all-zero (dead) feature vector has no direction
        _, sections = kv.evaluate_word_analogies(path, restrict_vocab=len(words), case_insensitive=True,
                                                 dummy4unknown=False)
    total_section = sections[-1]
    correct, incorrect = len(total_section["correct"]), len(total_section["incorrect"])
    if correct + incorrect != in_vocab:  # gensim skipped a different set of questions than we counted
        raise RuntimeError(f"gensim evaluated {correct + incorrect} analogy questions, we counted {in_vocab} in vocabulary")
    out.update(correct=correct, accuracy=correct / in_vocab)
    return out


def last_hidden_features(model, n_inputs: int, batch_size: int = 1024) -> np.ndarray:
    """h(e_w) of the last hidden layer for every token id w < ``n_inputs`` (float32, on the CPU),
    through the one feature extractor (:func:`lazydrift.features.extract_features`)."""
    ids = torch.arange(n_inputs)
    feats = extract_features(model, ids, [model.last_hidden], batch_size=batch_size, dtype=torch.float32)
    return feats[model.last_hidden].cpu().numpy()


def evaluate_cell(model, build_init_model: Callable[[], torch.nn.Module], words: list[str], step: int,
                  cell_dir: str | Path, batch_size: int = 1024, path: str | Path | None = None) -> dict:
    """Evaluate h_T (``model``) and h_0 (``build_init_model()``, rebuilt from the seed); write analogy.csv.

    Returns fields for cell.json: analogy accuracies, correct counts and the coverage.
    """
    rows = []
    h_t = last_hidden_features(model, len(words), batch_size)
    rows.append({"features": "tT", "step": step, **evaluate(words, h_t, path)})
    del h_t
    init = build_init_model()
    h_0 = last_hidden_features(init, len(words), batch_size)
    del init
    rows.insert(0, {"features": "t0", "step": 0, **evaluate(words, h_0, path)})
    frame = pd.DataFrame(rows)[COLUMNS]
    write_csv(frame, Path(cell_dir) / "analogy.csv")
    t0, tT = rows
    return {"analogy_accuracy_t0": t0["accuracy"], "analogy_accuracy_tT": tT["accuracy"],
            "analogy_correct_t0": t0["correct"], "analogy_correct_tT": tT["correct"],
            "analogy_questions_in_vocab": tT["questions_in_vocab"], "analogy_coverage": tT["coverage"]}


# -- combining cells --------------------------------------------------------------------------------
def combine(cells: list[tuple[dict, Path]]) -> pd.DataFrame:
    """Every cell's analogy.csv with its parameterization, seed and width in front."""
    parts = []
    for info, folder in cells:
        f = folder / "analogy.csv"
        if f.is_file() and f.stat().st_size > 1:
            frame = pd.read_csv(f)
            parts.append(frame.assign(parameterization=info["parameterization"], seed=info["seed"],
                                      width=info["width"])[["parameterization", "seed", "width"] + list(frame.columns)])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def markdown(frame: pd.DataFrame) -> str:
    """Accuracy at t = 0 and t = T per parameterization and width (mean over seeds), with coverage."""
    if frame.empty:
        return ""
    first = frame.iloc[0]
    lines = ["# Word analogies on the last hidden layer's features", "",
             f"gensim `evaluate_word_analogies` (3CosAdd) on `questions-words.txt`: "
             f"{int(first.questions_in_vocab)} of {int(first.total_questions)} questions have all four words in the "
             f"V = {int(first.vocab_size)} vocabulary (coverage {first.coverage:.1%}); accuracy is over those. "
             f"Chance (a random guess among V - 3 words) is {first.chance:.2%}. "
             "h_0: the model at initialization; h_T: after training. Mean over seeds "
             "(correct answers summed over seeds in brackets); dead words: words whose h_T is all zero "
             "(every ReLU of the layer off), mean over seeds.", "",
             "| parameterization | width | seeds | accuracy h_0 | accuracy h_T | questions in vocab | coverage "
             "| dead words h_T |",
             "|---|---|---|---|---|---|---|---|"]
    order = {p: k for k, p in enumerate(PARAMETERIZATIONS)}
    for (p, w), g in sorted(frame.groupby(["parameterization", "width"]), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        t0, tT = g[g.features == "t0"], g[g.features == "tT"]
        lines.append(f"| {p} | {w} | {g.seed.nunique()} | {t0.accuracy.mean():.2%} ({int(t0.correct.sum())}) | "
                     f"{tT.accuracy.mean():.2%} ({int(tT.correct.sum())}) | {int(tT.questions_in_vocab.iloc[0])} | "
                     f"{tT.coverage.iloc[0]:.1%} | {tT.zero_vectors.mean():.0f} of {int(tT.vocab_size.iloc[0])} |")
    return "\n".join(lines) + "\n"


def write_combined(out: str | Path, cells: list[tuple[dict, Path]]) -> pd.DataFrame:
    """``out/analogy.csv`` and ``out/analogy.md`` from the cells that evaluated analogies."""
    frame = combine(cells)
    if len(frame):
        write_csv(frame, Path(out) / "analogy.csv")
        write_text(markdown(frame), Path(out) / "analogy.md")
    return frame
