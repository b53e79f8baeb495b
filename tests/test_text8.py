"""Tests for lazydrift.text8: wikifil rules, text8-mini, checksums, vocabulary, skip-gram sampler.

Expected outputs of the cleaning rules are derived by hand from wikifil.pl's rules, not from the
function under test.  No test uses the network.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazydrift import text8
from lazydrift.text8 import (
    CorruptDataError,
    DataNotFoundError,
    SkipGramSampler,
    Vocabulary,
    build_text8_mini,
    build_vocab,
    encode,
    iter_wikifil,
    load_tokens,
    text8_path,
    wikifil,
)


def article(body: str) -> str:
    """A minimal dump page whose article text is ``body`` (already XML-escaped, as in a dump)."""
    return (f"<page>\n  <title>Some Title</title>\n  <revision>\n"
            f"    <comment>edit summary</comment>\n"
            f'    <text xml:space="preserve">{body}</text>\n  </revision>\n</page>\n')


# ------------------------------------------------------------------------------------------
# wikifil rules
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    # plain text; case folded to lower case
    ("Hello World", " hello world"),
    ("ABC Def gHI", " abc def ghi"),
    # digits are spelled out, one word per digit
    ("In 1984, 3 people", " in one nine eight four three people"),
    # every other character is a separator; runs collapse to one space
    ("a  --, b\n\n\tc.  (d)", " a b c d"),
    # non-ASCII characters are separators too (Perl works on bytes)
    ("Café Ünïcode", " caf n code"),
    # XHTML tags are removed, their content stays; comments go
    # (a tag is removed without leaving a separator: "y<br/>z" reads "yz")
    ("x &lt;b&gt;bold&lt;/b&gt; y&lt;br/&gt;z &lt;!-- hidden --&gt;w", " x bold yz w"),
    # references <ref>...</ref> are removed ...
    ("A&lt;ref&gt;a note, 2005&lt;/ref&gt; B&lt;ref name=x&gt;another&lt;/ref&gt; C", " a b c"),
    # ... except one that contains another tag: only the tags go (as in Perl)
    ("A &lt;ref&gt;see &lt;i&gt;this&lt;/i&gt;&lt;/ref&gt; B", " a see this b"),
    # links: target only, or [[target|visible]] keeps the visible text
    ("[[Political philosophy]] and [[Self-governance|self-governed]] ones",
     " political philosophy and self governed ones"),
    # interlanguage links [[xx:...]] are dropped (lower-case prefixes only)
    ("Text [[fr:Anarchisme]] [[de:Anarchismus]] [[zh-min-nan:Bo]] end", " text end"),
    # categories keep their name, not their sort key
    ("[[Category:Political ideologies|Anarchism]] [[category:Ethics]]",
     " political ideologies ethics"),
    # images keep only the caption
    ("[[Image:Black flag.svg|thumb|left|250px|The black flag]] text", " the black flag text"),
    ("[[image:x.png|Right|100PX|Small caption]]", " small caption"),
    # external links keep the visible text, not the URL
    ("see [http://example.com/a/page.html Example site] and more", " see example site and more"),
    # templates and tables are removed
    ("{{Infobox person|name=X|born=1900}}Body {{cite web|url=x}}text", " body text"),
    ("Before\n{| class=wikitable\n|-\n| cell 1 || cell 2\n|}\nAfter", " before after"),
    # entities: &amp; &lt; &gt; are decoded, then other entities become spaces
    ("Rock&amp;nbsp;Roll 5 &amp;gt; 3 x&amp;mdash;y", " rock roll five three x y"),
    ("AT&amp;T", " at t"),
    ("&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;", " bold"),
])
def test_wikifil_rules(body: str, expected: str) -> None:
    assert wikifil(article(body)) == expected


def test_redirect_pages_are_dropped() -> None:
    xml = (article("#REDIRECT [[Computer accessibility]]")
           + article("Real text")
           + article("#redirect [[Elsewhere]] {{R from CamelCase}}"))
    assert wikifil(xml) == " real text"


def test_text_outside_text_elements_is_dropped() -> None:
    xml = ('<mediawiki><siteinfo><sitename>Wikipedia</sitename></siteinfo>\n'
           + article("First article.") + "<page><title>No text here</title></page>\n"
           + article("Second article."))
    assert wikifil(xml) == " first article second article"


def test_no_text_element_gives_empty_output() -> None:
    assert wikifil("<page><title>Only a title</title></page>") == ""


@settings(max_examples=200, deadline=None)
@given(body=st.lists(st.sampled_from(list("aZ9 \n&;<>[]{}|:#-é") + ["&lt;", "&gt;", "&amp;",
                                                                    "[[", "]]"]),
                     max_size=60).map("".join),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_output_form_and_streaming(body: str, cuts: list[int]) -> None:
    """Any input gives " word word ..." (lower-case a-z, single spaces), however it is chunked."""
    xml = article(body) + article(body.upper())
    out = wikifil(xml)
    assert re.fullmatch(r"( [a-z]+)*", out)
    bounds = sorted({min(c, len(xml)) for c in cuts} | {0, len(xml)})
    chunks = [xml[i:j] for i, j in zip(bounds, bounds[1:])]
    assert "".join(iter_wikifil(chunks)) == out


# ------------------------------------------------------------------------------------------
# text8-mini
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("data")
    build_text8_mini(data_dir)
    return data_dir


def test_text8_mini_content(mini_dir: Path) -> None:
    text = (mini_dir / "text8-mini").read_text(encoding="ascii")
    assert text.startswith(" ") and "\n" not in text and "  " not in text
    assert set(text) <= set(" abcdefghijklmnopqrstuvwxyz")
    tokens = text.split()
    assert 450_000 <= len(tokens) <= 600_000
    # The first page of the dump is a redirect (AccessibleComputing); the second is Anarchism,
    # whose text, read by hand from the XML, begins (templates, refs and link targets dropped):
    #   '''Anarchism''' is a [[political philosophy]] that advocates
    #   [[self-governance|self-governed]] societies based on voluntary institutions. These are
    #   often described as [[stateless society|stateless societies]],<ref>...</ref> (x4)
    #   although several authors have defined them more specifically as institutions based on
    #   non-[[Hierarchy|hierarchical]] [[Free association (communism and anarchism)|free
    #   associations]].
    expected = ("anarchism is a political philosophy that advocates self governed societies "
                "based on voluntary institutions these are often described as stateless "
                "societies although several authors have defined them more specifically as "
                "institutions based on non hierarchical free associations").split()
    assert tokens[:len(expected)] == expected
    assert "accessibility" not in tokens[:1000]


def test_text8_mini_is_cached(mini_dir: Path, monkeypatch) -> None:
    path = mini_dir / "text8-mini"
    before = path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("text8-mini was rebuilt")

    monkeypatch.setattr(text8, "wikifil_file", fail)
    assert build_text8_mini(mini_dir) == path
    assert path.stat().st_mtime_ns == before


def test_load_tokens_text8_mini(mini_dir: Path) -> None:
    tokens = load_tokens("text8-mini", mini_dir, max_tokens=12_345)
    assert len(tokens) == 12_345
    assert tokens[:4] == ["anarchism", "is", "a", "political"]
    assert tokens == (mini_dir / "text8-mini").read_text().split()[:12_345]


def test_load_tokens_from_path(tmp_path: Path) -> None:
    words = [f"w{chr(97 + i % 26)}" for i in range(25_000)]  # crosses gensim's 10k sentences
    path = tmp_path / "corpus.txt"
    path.write_text(" " + " ".join(words))
    assert load_tokens(path, tmp_path) == words
    assert load_tokens(str(path), tmp_path, max_tokens=3) == words[:3]
    assert load_tokens(path, tmp_path, max_tokens=0) == []
    with pytest.raises(DataNotFoundError, match="neither"):
        load_tokens(tmp_path / "missing.txt", tmp_path)


# ------------------------------------------------------------------------------------------
# vocabulary and ids
# ------------------------------------------------------------------------------------------

def test_build_vocab_order_and_ties() -> None:
    tokens = "z y a z y x a b z".split()  # z:3, then y and a tie at 2 (y first), x and b at 1
    vocab = build_vocab(tokens, 5)
    assert vocab.words == ["z", "y", "a", "x", "b"]
    assert vocab.counts == [3, 2, 2, 1, 1]
    assert vocab.index == {"z": 0, "y": 1, "a": 2, "x": 3, "b": 4}
    assert len(vocab) == 5
    assert build_vocab(tokens, 2).words == ["z", "y"]
    with pytest.raises(ValueError, match="only 5 distinct"):
        build_vocab(tokens, 6)


def test_encode_drops_oov() -> None:
    vocab = Vocabulary(words=["the", "cat"], counts=[2, 1], index={"the": 0, "cat": 1})
    ids = encode("the big cat saw the dog".split(), vocab)
    assert ids.dtype == np.int64
    assert ids.tolist() == [0, 1, 0]
    assert encode([], vocab).tolist() == []


# ------------------------------------------------------------------------------------------
# skip-gram sampler
# ------------------------------------------------------------------------------------------

def test_sampler_offsets_and_types() -> None:
    n, window = 50, 3
    sampler = SkipGramSampler(np.arange(n), window=window, batch_size=4000, seed=0)
    centre, context = sampler.next_batch()  # ids == positions, so context - centre = offset
    assert centre.dtype == context.dtype == torch.long and centre.shape == (4000,)
    offsets = (context - centre).tolist()
    assert set(offsets) == {-3, -2, -1, 1, 2, 3}
    assert centre.min() >= 0 and centre.max() < n and context.min() >= 0 and context.max() < n


def test_sampler_is_uniform_over_valid_pairs() -> None:
    # n=4, window=3: 12 valid (centre, context) pairs; no clamping, so each is drawn ~1/12.
    sampler = SkipGramSampler(np.arange(4), window=3, batch_size=24_000, seed=1)
    centre, context = sampler.next_batch()
    pairs, counts = np.unique(np.stack([centre.numpy(), context.numpy()]), axis=1,
                              return_counts=True)
    assert pairs.shape[1] == 12
    assert np.all(np.abs(counts - 2000) < 250)


def test_sampler_reproducible_and_private_rng() -> None:
    ids = np.random.default_rng(0).integers(0, 100, size=1000)
    global_state = torch.get_rng_state()
    a = SkipGramSampler(ids, window=5, batch_size=64, seed=7)
    b = SkipGramSampler(ids, window=5, batch_size=64, seed=7)
    c = SkipGramSampler(ids, window=5, batch_size=64, seed=8)
    for _ in range(3):
        (ca, xa), (cb, xb), (cc, xc) = a.next_batch(), b.next_batch(), c.next_batch()
        assert torch.equal(ca, cb) and torch.equal(xa, xb)
        assert not (torch.equal(ca, cc) and torch.equal(xa, xc))
    assert torch.equal(torch.get_rng_state(), global_state)


def test_sampler_state_dict_round_trip() -> None:
    ids = np.arange(500) % 37
    first = SkipGramSampler(ids, window=4, batch_size=32, seed=3)
    for _ in range(5):
        first.next_batch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    expected = [first.next_batch() for _ in range(3)]

    buffer.seek(0)
    resumed = SkipGramSampler(ids, window=4, batch_size=32, seed=999)
    resumed.load_state_dict(torch.load(buffer))
    for (c1, x1), (c2, x2) in zip(expected, (resumed.next_batch() for _ in range(3))):
        assert torch.equal(c1, c2) and torch.equal(x1, x2)

    other = SkipGramSampler(ids, window=2, batch_size=32, seed=3)
    with pytest.raises(ValueError, match="window"):
        other.load_state_dict(first.state_dict())


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SkipGramSampler(np.arange(1), window=2, batch_size=4, seed=0)
    with pytest.raises(ValueError):
        SkipGramSampler(np.arange(10), window=0, batch_size=4, seed=0)


# ------------------------------------------------------------------------------------------
# real text8: checksums, extraction, download (all offline)
# ------------------------------------------------------------------------------------------

SMALL = b" anarchism originated as a term of abuse"


def pretend_small_text8(monkeypatch, content: bytes = SMALL) -> bytes:
    """Make the module expect ``content`` as text8 and a zip of it as text8.zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("text8", content)
    archive = buffer.getvalue()
    monkeypatch.setattr(text8, "TEXT8_SIZE", len(content))
    monkeypatch.setattr(text8, "TEXT8_SHA256", hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(text8, "TEXT8_ZIP_SIZE", len(archive))
    monkeypatch.setattr(text8, "TEXT8_ZIP_SHA256", hashlib.sha256(archive).hexdigest())
    return archive


def test_corrupt_text8_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "text8").write_bytes(SMALL)
    with pytest.raises(CorruptDataError) as info:
        text8_path(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "text8") in message
    assert "100,000,000" in message and f"{len(SMALL):,} bytes" in message
    assert not (tmp_path / "text8.sha256-ok").exists()


def test_same_size_wrong_digest_is_rejected(tmp_path: Path, monkeypatch) -> None:
    pretend_small_text8(monkeypatch)
    (tmp_path / "text8").write_bytes(SMALL.upper())
    with pytest.raises(CorruptDataError, match="SHA-256") as info:
        text8_path(tmp_path)
    assert text8.TEXT8_SHA256 in str(info.value)


def test_valid_text8_is_verified_once(tmp_path: Path, monkeypatch) -> None:
    pretend_small_text8(monkeypatch)
    path = tmp_path / "text8"
    path.write_bytes(SMALL)
    assert text8_path(tmp_path) == path
    assert (tmp_path / "text8.sha256-ok").is_file()

    def no_hashing(_):
        raise AssertionError("hashed again")

    with monkeypatch.context() as m:
        m.setattr(text8, "sha256_file", no_hashing)
        assert text8_path(tmp_path) == path
    # A changed file (new mtime) is checked again.
    path.write_bytes(SMALL.upper())
    os.utime(path, ns=(1, 1))
    with pytest.raises(CorruptDataError):
        text8_path(tmp_path)


def test_text8_is_extracted_from_zip(tmp_path: Path, monkeypatch) -> None:
    archive = pretend_small_text8(monkeypatch)
    (tmp_path / "text8.zip").write_bytes(archive)
    assert text8_path(tmp_path) == tmp_path / "text8"
    assert (tmp_path / "text8").read_bytes() == SMALL
    assert load_tokens("text8", tmp_path)[:3] == ["anarchism", "originated", "as"]


def test_corrupt_zip_is_rejected(tmp_path: Path, monkeypatch) -> None:
    archive = pretend_small_text8(monkeypatch)
    (tmp_path / "text8.zip").write_bytes(archive[:-10])
    with pytest.raises(CorruptDataError, match="text8.zip"):
        text8_path(tmp_path)
    assert not (tmp_path / "text8").exists()


def test_missing_text8_explains_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        text8_path(tmp_path, download=False)
    message = str(info.value)
    for needle in ("http://mattmahoney.net/dc/text8.zip", "curl", "wget", "unzip",
                   "--download", str(tmp_path)):
        assert needle in message
    with pytest.raises(DataNotFoundError):
        load_tokens("text8", tmp_path)


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_download_offline_raises_data_not_found(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataNotFoundError, match="unzip"):
        text8_path(tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_download_then_extract(tmp_path: Path, monkeypatch) -> None:
    archive = pretend_small_text8(monkeypatch)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse(archive))
    assert text8_path(tmp_path, download=True).read_bytes() == SMALL
    assert (tmp_path / "text8.zip").read_bytes() == archive


def test_bad_download_never_lands(tmp_path: Path, monkeypatch) -> None:
    archive = pretend_small_text8(monkeypatch)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse(archive[:-1]))
    with pytest.raises(CorruptDataError, match="text8.zip"):
        text8_path(tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_too_large_a_vocabulary_is_a_user_error_naming_the_key():
    from lazydrift.errors import UserError

    with pytest.raises(UserError, match=r"vocabulary size 4 requested but the corpus has only 3 distinct words.*"
                                        r"\[data\] vocab_size"):
        build_vocab("a b c a".split(), 4)


def test_text8_mini_in_an_unwritable_folder_is_one_line(tmp_path):
    from lazydrift.text8 import DataNotFoundError, build_text8_mini

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataNotFoundError, match=r"cannot build text8-mini in .*a-file/sub/ .*\[data\] data_dir"):
        build_text8_mini(blocker / "sub")
