"""text8: the corpus of Table 1, its offline stand-in text8-mini, and the skip-gram task.

text8 is the first 10^8 bytes of English Wikipedia (March 2006) after Matt Mahoney's
``wikifil.pl`` filter: lower-case words a-z separated by single spaces, digits spelled out.
:func:`wikifil` re-implements that filter in Python so that text8-mini, built offline from the
small Wikipedia dump that ships inside gensim's wheel, is cleaned exactly the same way.

Pipeline: :func:`load_tokens` -> :func:`build_vocab` -> :func:`encode` -> :class:`SkipGramSampler`,
which yields (centre word, context word) id pairs; the model reads both as one-hot vectors.

Files live in ``data_dir`` (``data/`` by convention); see ``data/README.md``.
"""

from __future__ import annotations

import bz2
import hashlib
import http.client
import os
import re
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

import numpy as np
import torch

from lazydrift.errors import UserError
from lazydrift.export import atomic_write

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_SIZE = 100_000_000
TEXT8_SHA256 = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"
TEXT8_ZIP_SIZE = 31_344_016
TEXT8_ZIP_SHA256 = "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"

# A 2016 dump cut down to ~200 pages (Anarchism, Autism, ...), shipped in gensim's wheel.
TEXT8_MINI_SOURCE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

_CHUNK = 1 << 20


class DataNotFoundError(Exception):
    """A data set is not on disk (or not usable); the message says how to get it."""


class CorruptDataError(DataNotFoundError):
    """A data file exists but its size or SHA-256 is not the published one, so it is not used."""


class VocabularyError(UserError, ValueError):
    """The corpus cannot give the vocabulary asked for (too few distinct words)."""


# --------------------------------------------------------------------------------------------
# wikifil: Wikipedia XML -> text8-style text
# --------------------------------------------------------------------------------------------
#
# wikifil.pl sets Perl's record separator to ">" ($/ = ">"), so it never sees lines: each record
# runs up to and including the next ">" (the last may lack one).  An XML tag therefore always ends
# its record, and the whole body of an article (whose own "<" and ">" are escaped as &lt; &gt; in
# the dump) is a single record ending in "</text>".  The rules are applied record by record, which
# is what the regexes below assume: e.g. "<.*>" (no /s, first match only) strips the one XML tag
# at the end of a record, and a flag carried from record to record marks article text.
#
# Perl reads bytes: its \d, /i and tr/A-Z/a-z/ only know ASCII, and every non-ASCII byte ends up a
# space.  We use re.ASCII and ASCII-only lower-casing to match; files are decoded as Latin-1,
# which maps each byte to one character, so chunk boundaries can never split a character.
# On gensim's bundled dump the output is byte-identical to the Perl script's.

_I = re.IGNORECASE | re.ASCII

# (pattern, replacement, count) applied in order to each visible record; count=0 means all.
_RULES: tuple[tuple[re.Pattern, str, int], ...] = (
    # XML markup of the dump itself: the tag that ends the record (e.g. <text ...> or </text>).
    # "." stops at a newline and only the first match is removed, as in Perl's s/<.*>//.
    (re.compile(r"<.*>"), "", 1),
    # The wiki text was XML-escaped in the dump; undo that so wiki-level HTML becomes visible.
    # &amp; first, as Perl does: "&amp;lt;" thus becomes "<" too.
    (re.compile(r"&amp;"), "&", 0),
    (re.compile(r"&lt;"), "<", 0),
    (re.compile(r"&gt;"), ">", 0),
    # Footnotes <ref ...>...</ref> are not running text.  Refs containing other tags survive
    # this rule; the next one then strips only their tags.
    (re.compile(r"<ref[^<]*</ref>"), "", 0),
    # Remaining XHTML tags and <!-- comments --> (the text between tags stays).
    (re.compile(r"<[^>]*>"), "", 0),
    # External links [http://url visible text]: drop the URL, keep the visible text.
    (re.compile(r"\[http:[^\] ]*"), "[", 0),
    # Image options are not shown; the caption is.
    (re.compile(r"\|thumb", _I), "", 0),
    (re.compile(r"\|left", _I), "", 0),
    (re.compile(r"\|right", _I), "", 0),
    (re.compile(r"\|\d+px", _I), "", 0),
    # [[Image:file.jpg|caption]] -> "caption]]": the file name is not visible.
    (re.compile(r"\[\[image:[^\[\]]*\|", _I), "", 0),
    # [[Category:Name|sort key]] -> [[Name]]: category names are kept as words.
    (re.compile(r"\[\[category:([^|\]]*)[^\]]*\]\]", _I), r"[[\1]]", 0),
    # Interlanguage links [[fr:...]] (any lower-case prefix) are not article text.
    (re.compile(r"\[\[[a-z\-]*:[^\]]*\]\]"), "", 0),
    # [[target|visible]] -> [[visible]]: only the visible text is read.
    (re.compile(r"\[\[[^|\]]*\|"), "[[", 0),
    # {{templates}} (infoboxes, icons), then {| tables |}; nesting is not tracked, as in Perl.
    (re.compile(r"\{\{[^}]*\}\}"), "", 0),
    (re.compile(r"\{[^}]*\}"), "", 0),
    # Link brackets go; their content stays.
    (re.compile(r"[\[\]]"), "", 0),
    # Any other entity (&nbsp; &mdash; ...) is a separator.
    (re.compile(r"&[^;]*;"), " ", 0),
)

_REDIRECT = re.compile(r"#redirect", _I)
_DIGIT_WORDS = tuple(enumerate("zero one two three four five six seven eight nine".split()))
_NOT_LETTERS = re.compile(r"[^a-z]+")


def clean_record(record: str) -> str:
    """Apply wikifil's text rules to one visible record; return " word word..." or "".

    After the markup rules, the record is padded with a space on each side, lower-cased
    (ASCII only), digits are spelled out (" zero " ... " nine ") and every run of other
    characters becomes one space.  The trailing space is then chopped, so each record's output
    is either empty or starts with a space and ends with a letter: concatenating records never
    produces two spaces in a row, and the corpus starts with a space, as text8 does.
    """
    for pattern, replacement, count in _RULES:
        record = pattern.sub(replacement, record, count=count)
    # Non-ASCII characters would become spaces anyway; turning them into "?" first makes
    # str.lower() ASCII-only, like Perl's tr/A-Z/a-z/ (and much faster than a translate table).
    record = f" {record} ".encode("ascii", "replace").decode("ascii").lower()
    for digit, word in _DIGIT_WORDS:
        record = record.replace(str(digit), f" {word} ")
    return _NOT_LETTERS.sub(" ", record)[:-1]


def split_records(chunks: Iterable[str]) -> Iterator[str]:
    """Re-cut text chunks into Perl ``$/ = ">"`` records: each ends with ">" (the last may not)."""
    rest = ""
    for chunk in chunks:
        pieces = (rest + chunk).split(">")
        rest = pieces.pop()
        for piece in pieces:
            yield piece + ">"
    if rest:
        yield rest


def iter_wikifil(chunks: Iterable[str]) -> Iterator[str]:
    """Streaming wikifil: yield the cleaned text of a Wikipedia XML dump given as text chunks.

    Only article text is kept: a record containing ``<text `` opens it, one containing
    ``</text>`` closes it after being printed, and a record containing ``#redirect`` (any case)
    closes it at once, so redirect pages print nothing.  Titles, comments, contributors and
    other XML outside ``<text ...>`` are dropped.  Joining the pieces gives :func:`wikifil`.
    """
    in_text = False
    for record in split_records(chunks):
        if "<text " in record:
            in_text = True
        if _REDIRECT.search(record):
            in_text = False
        if in_text:
            if "</text>" in record:
                in_text = False
            cleaned = clean_record(record)
            if cleaned:
                yield cleaned


def wikifil(xml: str) -> str:
    """Clean a Wikipedia XML dump to text8-style text (Mahoney's ``wikifil.pl`` rules).

    The result is lower-case words a-z, each preceded by exactly one space, so that only what
    a reader of the rendered page sees becomes words:

    - only article text (``<text ...>`` ... ``</text>``) is kept, and ``#REDIRECT`` pages drop;
    - ``&amp; &lt; &gt;`` are decoded, then ``<ref>`` footnotes and XHTML tags are removed;
    - ``[http:url text]`` keeps ``text``; images keep their caption (``|thumb``, ``|left``,
      ``|right``, ``|NNNpx`` and ``[[Image:file|`` go); ``[[Category:Name|key]]`` keeps
      ``Name``; interlanguage links ``[[xx:...]]`` go; ``[[target|visible]]`` keeps ``visible``;
    - ``{{templates}}`` and ``{| tables |}`` go, other ``&entities;`` become spaces;
    - letters are lower-cased, digits spelled out (``7`` -> ``seven``), anything else is a
      separator, never two spaces in a row.

    Each rule is commented in ``_RULES``; :func:`iter_wikifil` is the streaming form.
    """
    return "".join(iter_wikifil([xml]))


def _read_chunks(f: IO[bytes], size: int = _CHUNK) -> Iterator[str]:
    # Latin-1 maps each byte to one character: Perl's byte semantics, and no split characters.
    while block := f.read(size):
        yield block.decode("latin-1")


def wikifil_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Stream ``src`` (an XML dump, ``.bz2`` or plain) through wikifil into ``dst``, atomically."""
    src, dst = Path(src), Path(dst)
    opener = bz2.open if src.suffix == ".bz2" else open
    with opener(src, "rb") as f, atomic_write(dst, "w", encoding="ascii", newline="") as out:
        for piece in iter_wikifil(_read_chunks(f)):
            out.write(piece)
    return dst


# --------------------------------------------------------------------------------------------
# text8-mini (offline) and text8 (download, checksums)
# --------------------------------------------------------------------------------------------

def text8_mini_source() -> Path:
    """The small Wikipedia dump in gensim's installed test data (found, never hard-coded)."""
    from gensim.test.utils import datapath

    path = Path(datapath(TEXT8_MINI_SOURCE))
    if not path.is_file():
        raise DataNotFoundError(
            f"gensim's test data file {TEXT8_MINI_SOURCE} is missing (looked at {path}); "
            "reinstall gensim from its wheel (pip install --force-reinstall gensim)")
    return path


def build_text8_mini(data_dir: str | os.PathLike) -> Path:
    """Build ``data_dir/text8-mini`` from gensim's bundled dump via :func:`wikifil` (cached).

    The file is one line of space-separated tokens, like text8 (about 0.5M tokens, starting
    with the Anarchism article).  It is only rebuilt when missing; writes are atomic, so an
    existing file is always complete.
    """
    path = Path(data_dir) / "text8-mini"
    if not path.is_file():
        try:
            wikifil_file(text8_mini_source(), path)
        except OSError as e:  # a read-only working directory, a full disk
            raise DataNotFoundError(f"cannot build text8-mini in {path.parent}/ ({e.strerror or e}); "
                                    "point [data] data_dir at a writable folder") from None
    return path


def text8_instructions(data_dir: str | os.PathLike) -> str:
    """How to get the real text8 by hand, in one line (used in error messages)."""
    d = Path(data_dir)
    return (f"text8 is not in {d}/ (looked for {d / 'text8'} and {d / 'text8.zip'}); get it with "
            f"`curl -L -o {d / 'text8.zip'} {TEXT8_URL} && unzip {d / 'text8.zip'} -d {d}` "
            f"(or `wget -P {d} {TEXT8_URL}` then unzip), or rerun with --download to fetch it "
            f"({TEXT8_ZIP_SIZE:,} bytes); the offline corpus text8-mini needs no download")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (text8 is 100 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256-ok")


def _stamp(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {sha256}\n"


def _remember_verified(path: Path, sha256: str) -> None:
    with atomic_write(_marker(path)) as f:
        f.write(_stamp(path, sha256))


def _check(path: Path, size: int, sha256: str | None, expected_size: int,
           expected_sha256: str) -> None:
    """Raise CorruptDataError unless size and digest match (``sha256=None``: size only)."""
    if size != expected_size or (sha256 is not None and sha256 != expected_sha256):
        actual = f"{size:,} bytes" + (f" with SHA-256 {sha256}" if sha256 is not None else "")
        raise CorruptDataError(
            f"{path} is corrupt or incomplete, so it is not used: expected {expected_size:,} "
            f"bytes with SHA-256 {expected_sha256}, got {actual}. Delete it and fetch it again.")


def verify_file(path: str | os.PathLike, expected_size: int, expected_sha256: str) -> None:
    """Raise :class:`CorruptDataError` unless ``path`` has the expected size and SHA-256.

    Hashing 100 MB takes a while, so a success is remembered in ``<path>.sha256-ok`` (size,
    mtime and digest); later calls only compare the file's stat with it.
    """
    path = Path(path)
    marker = _marker(path)
    if marker.is_file() and marker.read_text() == _stamp(path, expected_sha256):
        return
    size = path.stat().st_size
    _check(path, size, None, expected_size, expected_sha256)  # a partial file fails unhashed
    _check(path, size, sha256_file(path), expected_size, expected_sha256)
    _remember_verified(path, expected_sha256)


def _extract_text8(zip_path: Path, dest: Path) -> None:
    """Extract member ``text8`` of ``zip_path`` to ``dest``, checking it while it is written."""
    with zipfile.ZipFile(zip_path) as zf:
        if "text8" not in zf.namelist():
            raise CorruptDataError(f"{zip_path} has no member 'text8' (it has {zf.namelist()})")
        with zf.open("text8") as src, atomic_write(dest, "wb") as out:
            digest, size = hashlib.sha256(), 0
            while block := src.read(_CHUNK):
                out.write(block)
                digest.update(block)
                size += len(block)
            # Raising here discards the temporary file: a bad extraction never lands.
            _check(dest, size, digest.hexdigest(), TEXT8_SIZE, TEXT8_SHA256)
    _remember_verified(dest, TEXT8_SHA256)


def _download_text8_zip(dest: Path, data_dir: Path) -> None:
    """Download text8.zip to ``dest`` with a progress bar; only a verified file lands there."""
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(TEXT8_URL, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with atomic_write(dest, "wb") as out, tqdm(
                    total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                digest, size = hashlib.sha256(), 0
                while block := response.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    bar.update(len(block))
                _check(dest, size, digest.hexdigest(), TEXT8_ZIP_SIZE, TEXT8_ZIP_SHA256)
    except (OSError, http.client.HTTPException) as exc:  # offline, timeout, reset, cut short
        raise DataNotFoundError(
            f"downloading {TEXT8_URL} failed ({exc}); " + text8_instructions(data_dir)) from exc
    _remember_verified(dest, TEXT8_ZIP_SHA256)


def text8_path(data_dir: str | os.PathLike, download: bool = False) -> Path:
    """Return the path of a verified ``data_dir/text8``, extracting or downloading it if needed.

    Looks for ``text8``, then ``text8.zip`` (extracted in place), then, only with
    ``download=True``, fetches ``text8.zip`` from mattmahoney.net.  Every file is checked
    against the published size and SHA-256 (once; see :func:`verify_file`).  Raises
    :class:`CorruptDataError` for a bad file and :class:`DataNotFoundError` (with instructions)
    when there is nothing to use.
    """
    data_dir = Path(data_dir)
    text8, zip_path = data_dir / "text8", data_dir / "text8.zip"
    if text8.is_file():
        verify_file(text8, TEXT8_SIZE, TEXT8_SHA256)
        return text8
    if not zip_path.is_file():
        if not download:
            raise DataNotFoundError(text8_instructions(data_dir))
        _download_text8_zip(zip_path, data_dir)
    verify_file(zip_path, TEXT8_ZIP_SIZE, TEXT8_ZIP_SHA256)
    _extract_text8(zip_path, text8)
    return text8


# --------------------------------------------------------------------------------------------
# Tokens, vocabulary, ids
# --------------------------------------------------------------------------------------------

def corpus_path(corpus: str | os.PathLike, data_dir: str | os.PathLike,
                download: bool = False) -> Path:
    """Resolve ``"text8"``, ``"text8-mini"`` or a path to a text8-format file."""
    if corpus == "text8":
        return text8_path(data_dir, download=download)
    if corpus == "text8-mini":
        return build_text8_mini(data_dir)
    path = Path(corpus)
    if not path.is_file():
        raise DataNotFoundError(
            f"corpus {str(corpus)!r} is neither 'text8', 'text8-mini' nor an existing file")
    return path


def load_tokens(corpus: str | os.PathLike, data_dir: str | os.PathLike,
                max_tokens: int | None = None, download: bool = False) -> list[str]:
    """Read the tokens of a text8-format corpus; ``max_tokens`` keeps only the first N.

    ``corpus`` is ``"text8"``, ``"text8-mini"`` or a path.  Reading goes through gensim's
    ``Text8Corpus``; equal tokens share one string object, so the 17M tokens of text8 cost
    a list of pointers rather than 17M separate strings.
    """
    from gensim.models.word2vec import Text8Corpus

    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    path = corpus_path(corpus, data_dir, download=download)
    tokens: list[str] = []
    shared: dict[str, str] = {}
    if max_tokens == 0:
        return tokens
    for sentence in Text8Corpus(str(path)):
        tokens.extend(shared.setdefault(word, word) for word in sentence)
        if max_tokens is not None and len(tokens) >= max_tokens:
            del tokens[max_tokens:]
            break
    return tokens


@dataclass(frozen=True)
class Vocabulary:
    """The kept words, most frequent first: id ``i`` is ``words[i]``, seen ``counts[i]`` times."""

    words: list[str]
    counts: list[int]
    index: dict[str, int]

    def __len__(self) -> int:
        return len(self.words)


def build_vocab(tokens: Iterable[str], size: int) -> Vocabulary:
    """Keep the ``size`` most frequent words; equal counts are ordered by first occurrence.

    Ids are ranks: 0 is the most frequent word.  The tie rule makes the vocabulary a pure
    function of the token sequence (no dependence on hash order).
    """
    if size < 1:
        raise ValueError(f"vocabulary size must be >= 1, got {size}")
    counts = Counter(tokens)  # a dict: keys in order of first occurrence
    if len(counts) < size:
        raise VocabularyError(
            f"vocabulary size {size} requested but the corpus has only {len(counts)} distinct "
            f"words; lower the vocabulary size ([data] vocab_size) or use more tokens ([data] max_tokens)")
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:size]  # stable sort keeps ties
    words = [word for word, _ in ranked]
    return Vocabulary(words=words, counts=[count for _, count in ranked],
                      index={word: i for i, word in enumerate(words)})


def encode(tokens: Iterable[str], vocab: Vocabulary) -> np.ndarray:
    """Map tokens to int64 ids, dropping out-of-vocabulary tokens.

    Dropping (rather than mapping to an UNK id) follows word2vec, which discards rare words
    before taking context windows: the words around a dropped one become neighbours.
    """
    index = vocab.index
    return np.fromiter((i for i in map(index.get, tokens) if i is not None), dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Skip-gram task
# --------------------------------------------------------------------------------------------

class SkipGramSampler:
    """Draw (centre, context) id pairs for the skip-gram task, reproducibly from ``seed``.

    Each pair takes a position ``p`` uniformly in the id sequence and an offset ``d`` uniformly
    in {-window..-1, 1..window}; the context is the id at ``p + d``.  Pairs whose context falls
    outside the sequence are redrawn (both ``p`` and ``d``), which makes every batch element a
    uniform draw from the list of all valid (centre, context) pairs, without building that list
    and without clamping (which would over-weight the sequence ends).

    Randomness comes from a private ``torch.Generator``: the global RNG is untouched, and
    :meth:`state_dict` / :meth:`load_state_dict` checkpoint the stream bit for bit.
    """

    def __init__(self, ids: np.ndarray | torch.Tensor, window: int, batch_size: int, seed: int):
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        if ids.dim() != 1 or ids.numel() < 2:
            raise ValueError(f"ids must be a 1-D sequence of at least 2 ids, got shape "
                             f"{tuple(ids.shape)}")
        if window < 1 or batch_size < 1:
            raise ValueError(f"window and batch_size must be >= 1, got {window}, {batch_size}")
        self.ids = ids
        self.window = int(window)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(centre, context)``, two LongTensors of shape ``[batch_size]``."""
        n, w, g = self.ids.numel(), self.window, self.generator
        positions = torch.empty(self.batch_size, dtype=torch.long)
        offsets = torch.empty(self.batch_size, dtype=torch.long)
        todo = torch.arange(self.batch_size)
        while todo.numel():
            p = torch.randint(0, n, (todo.numel(),), generator=g)
            k = torch.randint(0, 2 * w, (todo.numel(),), generator=g)
            d = k - w + (k >= w).long()  # 0..2w-1 -> -w..-1, 1..w
            ok = (p + d >= 0) & (p + d < n)
            positions[todo[ok]] = p[ok]
            offsets[todo[ok]] = d[ok]
            todo = todo[~ok]
        return self.ids[positions], self.ids[positions + offsets]

    def state_dict(self) -> dict:
        """The generator state, plus the settings it is only meaningful with."""
        return {"generator": self.generator.get_state(), "window": self.window,
                "batch_size": self.batch_size, "num_ids": self.ids.numel()}

    def load_state_dict(self, state: dict) -> None:
        """Resume the stream saved by :meth:`state_dict` (settings must match)."""
        mine = {"window": self.window, "batch_size": self.batch_size, "num_ids": self.ids.numel()}
        theirs = {key: state[key] for key in mine}
        if theirs != mine:
            raise ValueError(f"sampler state was saved with {theirs}, this sampler has {mine}")
        self.generator.set_state(state["generator"])
