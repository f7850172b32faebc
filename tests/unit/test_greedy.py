"""Unit tests for raysel.select.greedy: IterIT's TF-IDF matrix, the lazy greedy selection, and the ranking.

- tfidf_matrix against sklearn's TfidfVectorizer (same weights, columns in another order);
- greedy_select against greedy_reference (the authors' loop) on real responses and on edge cases;
- iterit_ranking's order and picks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from raysel.select.greedy import greedy_reference, greedy_select, iterit_ranking, tfidf_matrix

EOS = "<|im_end|>"
TOL = 1e-12

TRICKY_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "a b c",
    "Café naïve résumé — ÉCOLE école Ecole",
    "東京は日本の首都です。 北京 是 中国 的 首都",
    "Hello, world! hello-world; e-mail: foo@bar.com (see http://x.org/a_b?c=1)",
    "the the the the cat the the",
    "la la la la la",
    "Done.<|im_end|>",
    "word<|im_end|>",
    EOS,
    "hi",
    "hello world",
    "UPPER lower Upper LOWER MiXeD mixed",
    "snake_case_name 123 4 5678 ١٢٣ x1 1x",
    "tabs\tand\nnew\r\nlines   spaced",
    "İstanbul STRASSE Straße ǅemal",
    "quick brown fox",
    "fox quick brown fox jumps",
    "a",
    "!!! ??? ...",
]


def sklearn_tfidf(texts: list[str], max_n: int = 3) -> sp.csr_matrix:
    """The matrix tfidf_matrix imitates: TfidfVectorizer(ngram_range=(1, max_n)), other arguments default."""
    return sp.csr_matrix(TfidfVectorizer(ngram_range=(1, max_n)).fit_transform(texts))


def column_signatures(m: sp.spmatrix) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """Per column: (rows holding a nonzero, their values rounded to 1e-9), the column's identity up to order."""
    csc = sp.csc_matrix(m)
    csc.sort_indices()
    out = []
    for j in range(csc.shape[1]):
        s, e = csc.indptr[j], csc.indptr[j + 1]
        out.append((tuple(csc.indices[s:e].tolist()), tuple(np.round(csc.data[s:e], 9).tolist())))
    return out


def assert_same_up_to_column_order(ours: sp.spmatrix, ref: sp.spmatrix, tol: float = TOL) -> np.ndarray:
    """Assert `ours` is `ref` with its columns permuted (values to `tol`); return perm with ours[:, perm] ~ ref."""
    assert sp.issparse(ours)
    assert ours.dtype == np.float64
    assert ours.shape == ref.shape
    assert ours.nnz == ref.nnz
    ours, ref = sp.csr_matrix(ours), sp.csr_matrix(ref)
    assert not (ours.data == 0).any(), "explicit zeros in tfidf_matrix"
    # Per row: the multiset of nonzero weights.
    for i in range(ref.shape[0]):
        a = np.sort(ours.data[ours.indptr[i] : ours.indptr[i + 1]])
        b = np.sort(ref.data[ref.indptr[i] : ref.indptr[i + 1]])
        assert len(a) == len(b), f"row {i}: {len(a)} vs {len(b)} nonzeros"
        np.testing.assert_allclose(a, b, rtol=0, atol=tol, err_msg=f"row {i}")
    # Per column: the multiset of (row, value); pair columns by sorting their signatures.
    sig_ours, sig_ref = column_signatures(ours), column_signatures(ref)
    order_ours = sorted(range(len(sig_ours)), key=sig_ours.__getitem__)
    order_ref = sorted(range(len(sig_ref)), key=sig_ref.__getitem__)
    for a, b in zip(order_ours, order_ref, strict=True):
        assert sig_ours[a][0] == sig_ref[b][0], f"column {a} (ours) vs {b} (sklearn): rows differ"
    perm = np.empty(len(order_ref), dtype=np.int64)
    perm[order_ref] = order_ours
    assert sorted(perm.tolist()) == list(range(len(perm)))  # a bijection
    permuted = sp.csr_matrix(ours[:, perm])
    permuted.sort_indices()
    ref = ref.copy()
    ref.sort_indices()
    np.testing.assert_array_equal(permuted.indptr, ref.indptr)
    np.testing.assert_array_equal(permuted.indices, ref.indices)
    np.testing.assert_allclose(permuted.data, ref.data, rtol=0, atol=tol)
    return perm


def alpaca_texts(shared_data: Path, n: int = 300) -> list[str]:
    rows = json.loads((shared_data / "alpaca_gpt4_1k.json").read_text(encoding="utf-8"))[:n]
    return [r["output"] + EOS for r in rows]


def seeded_ifd(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 1.0, n).astype(np.float32)


# ---------------------------------------------------------------------------------------------- tfidf_matrix


def test_tfidf_matches_sklearn_on_tricky_texts() -> None:
    ours = tfidf_matrix(TRICKY_TEXTS)
    ref = sklearn_tfidf(TRICKY_TEXTS)
    assert isinstance(ours, sp.csr_matrix)
    assert_same_up_to_column_order(ours, ref)
    # Texts without a 2+-character word give an all-zero row, as in sklearn.
    for i, text in enumerate(TRICKY_TEXTS):
        if text in ("", "a b c", "a", "!!! ??? ..."):
            assert ours.getrow(i).nnz == 0
        else:
            assert ours.getrow(i).nnz > 0
            assert abs(np.linalg.norm(ours.getrow(i).data) - 1.0) < TOL


@pytest.mark.parametrize("max_n", [1, 2, 3, 4])
def test_tfidf_max_n_matches_sklearn_ngram_range(max_n: int) -> None:
    assert_same_up_to_column_order(tfidf_matrix(TRICKY_TEXTS, max_n=max_n), sklearn_tfidf(TRICKY_TEXTS, max_n))


def test_tfidf_max_n_changes_the_matrix() -> None:
    """Guards the max_n tests against a function that ignores max_n."""
    assert tfidf_matrix(TRICKY_TEXTS, max_n=1).shape[1] < tfidf_matrix(TRICKY_TEXTS, max_n=2).shape[1]
    assert tfidf_matrix(TRICKY_TEXTS, max_n=2).shape[1] < tfidf_matrix(TRICKY_TEXTS).shape[1]


@pytest.mark.parametrize("chunk_tokens", [1, 2, 7, 50])
def test_tfidf_chunk_tokens_gives_the_same_matrix(chunk_tokens: int) -> None:
    """Chunking only bounds memory: the columns are numbered before it, so the matrix is the same exactly."""
    default = tfidf_matrix(TRICKY_TEXTS)
    small = tfidf_matrix(TRICKY_TEXTS, chunk_tokens=chunk_tokens)
    assert small.shape == default.shape
    np.testing.assert_array_equal(small.indptr, default.indptr)
    np.testing.assert_array_equal(small.indices, default.indices)
    np.testing.assert_array_equal(small.data, default.data)


@pytest.mark.parametrize(("chunk_tokens", "buckets"), [(7, 3), (4_000_000, 1), (1, 5), (13, 64)])
def test_tfidf_small_chunks_and_buckets_match_defaults_and_sklearn(chunk_tokens: int, buckets: int) -> None:
    texts = TRICKY_TEXTS * 2 + ["fox jumps over the lazy dog again and again", ""]
    small = tfidf_matrix(texts, chunk_tokens=chunk_tokens, buckets=buckets)
    assert_same_up_to_column_order(small, tfidf_matrix(texts))
    assert_same_up_to_column_order(small, sklearn_tfidf(texts))


def test_tfidf_texts_shorter_than_three_tokens() -> None:
    texts = ["hi", "hello world", "", "one two three", "hi hi", "world hello"]
    ours = tfidf_matrix(texts)
    assert_same_up_to_column_order(ours, sklearn_tfidf(texts))
    # unigrams hi, hello, world, one, two, three; bigrams hello world, one two, two three, hi hi, world hello;
    # the trigram one two three: n-grams never cross a text's end.
    assert ours.shape == (6, 12)


def test_tfidf_matches_sklearn_on_real_responses(shared_data: Path) -> None:
    texts = alpaca_texts(shared_data)
    ref = sklearn_tfidf(texts)
    ours = tfidf_matrix(texts)
    assert_same_up_to_column_order(ours, ref)
    chunked = tfidf_matrix(texts, chunk_tokens=500)  # ~ 10 chunks; same columns, so the same matrix exactly
    assert (chunked != ours).nnz == 0
    np.testing.assert_array_equal(chunked.indices, ours.indices)


# --------------------------------------------------------------------------------------------- greedy_select

REAL_KS = (1, 15, 60, 300)
REAL_DECAYS = (0.1, 0.5)


@pytest.fixture(scope="module")
def real_case(shared_data: Path) -> dict[str, object]:
    """The first 300 responses (+ EOS), seeded IFDs, their TF-IDF, and the reference's 300 picks per decay.

    greedy_reference(k) is the first k iterations of one loop, so its k = 300 picks hold every smaller k's
    as a prefix (checked for k = 5 below); computing it once keeps the module to seconds.
    """
    texts = alpaca_texts(shared_data)
    ifd = seeded_ifd(len(texts))
    return {
        "texts": texts,
        "ifd": ifd,
        "tfidf": tfidf_matrix(texts),
        "ref": {decay: greedy_reference(ifd, texts, max(REAL_KS), decay) for decay in REAL_DECAYS},
    }


def test_reference_prefix_property(real_case: dict[str, object]) -> None:
    texts, ifd, ref = real_case["texts"], real_case["ifd"], real_case["ref"]
    for decay in REAL_DECAYS:
        np.testing.assert_array_equal(greedy_reference(ifd, texts, 5, decay), ref[decay][:5])


@pytest.mark.parametrize("decay", REAL_DECAYS)
@pytest.mark.parametrize("k", REAL_KS)
def test_greedy_select_equals_reference_on_real_data(real_case: dict[str, object], k: int, decay: float) -> None:
    expected = real_case["ref"][decay][:k]
    got = greedy_select(real_case["ifd"], real_case["tfidf"], k, decay)
    assert got.dtype == np.int64
    assert len(got) == k
    assert np.array_equal(got, expected), (got[:20], expected[:20])


def test_greedy_select_differs_from_top_by_ifd_on_real_data(real_case: dict[str, object]) -> None:
    """Guards the test above against a trivial pass: the selection is not just the top by IFD x row sum."""
    ifd, tfidf = real_case["ifd"], real_case["tfidf"]
    plain = np.argsort(-(ifd.astype(np.float64) * np.asarray(tfidf.sum(axis=1)).ravel()), kind="stable")
    assert not np.array_equal(greedy_select(ifd, tfidf, 60, 0.1), plain[:60])


def test_greedy_select_ties_between_duplicates(shared_data: Path) -> None:
    """Duplicated responses with equal IFD tie exactly; the lower index must win (np.argmax), as in the loop."""
    base = alpaca_texts(shared_data, 40)
    ifd_base = seeded_ifd(len(base), seed=1)
    rng = np.random.default_rng(2)
    dup_of = rng.choice(len(base), size=10, replace=False)
    texts = list(base)
    ifd = list(ifd_base)
    for src in dup_of:  # insert each copy at a random position (before or after its source)
        at = int(rng.integers(0, len(texts) + 1))
        texts.insert(at, base[src])
        ifd.insert(at, ifd_base[src])
    ifd_arr = np.asarray(ifd, dtype=np.float32)
    # Give two duplicated groups the largest IFD so ties happen at the very top too.
    for src in dup_of[:2]:
        ifd_arr[[i for i, t in enumerate(texts) if t == base[src]]] = 1.0
    k = len(texts)
    for decay in (0.1, 0.5):
        got = greedy_select(ifd_arr, tfidf_matrix(texts), k, decay)
        expected = greedy_reference(ifd_arr, texts, k, decay)
        assert np.array_equal(got, expected), (got, expected)
        position = {int(r): p for p, r in enumerate(got)}
        for src in dup_of:
            copies = [i for i, t in enumerate(texts) if t == base[src]]
            assert len(copies) >= 2
            assert [position[i] for i in copies] == sorted(position[i] for i in copies), copies


def test_identical_rows_are_picked_in_index_order() -> None:
    texts = ["same words here every time"] * 6
    ifd = np.full(6, 0.5, dtype=np.float32)
    for decay in (0.1, 0.5, 1.0):
        np.testing.assert_array_equal(greedy_select(ifd, tfidf_matrix(texts), 6, decay), np.arange(6))
        np.testing.assert_array_equal(greedy_reference(ifd, texts, 6, decay), np.arange(6))
    # decay 0 wipes every column of the first pick, so nothing else scores above 0.
    np.testing.assert_array_equal(greedy_select(ifd, tfidf_matrix(texts), 6, 0.0), [0])
    np.testing.assert_array_equal(greedy_reference(ifd, texts, 6, 0.0), [0])


def test_stops_early_when_no_row_scores_above_zero() -> None:
    texts = [
        "red green blue",
        "green blue yellow",
        "",  # a zero TF-IDF row
        "purple orange",
        "a b c",  # no token: a zero TF-IDF row
        "red purple",
        "cyan magenta",
    ]
    ifd = np.array([0.5, 0.0, 0.9, 0.7, 0.95, 0.3, 0.0], dtype=np.float32)
    positive = {0, 3, 5}
    for decay in (0.1, 0.5, 1.0):
        got = greedy_select(ifd, tfidf_matrix(texts), 100, decay)
        expected = greedy_reference(ifd, texts, 100, decay)
        np.testing.assert_array_equal(got, expected)
        assert set(got.tolist()) == positive
        assert len(got) == len(positive)
    # decay 0: whichever of rows 0 and 3 is picked first, "red purple" loses a word's column but keeps its
    # bigram's, so it stays positive and all three are still picked.
    got = greedy_select(ifd, tfidf_matrix(texts), 100, 0.0)
    np.testing.assert_array_equal(got, greedy_reference(ifd, texts, 100, 0.0))
    assert set(got.tolist()) == positive


def test_zero_ifd_and_zero_rows_never_picked_random() -> None:
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(25)]
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(0, 8)))) for _ in range(80)]
    ifd = rng.uniform(0.2, 1.0, len(texts)).astype(np.float32)
    ifd[rng.choice(len(texts), 20, replace=False)] = 0.0
    tfidf = tfidf_matrix(texts)
    empty = np.diff(tfidf.indptr) == 0
    assert empty.any()
    for decay in (0.0, 0.1, 0.5, 1.0):
        got = greedy_select(ifd, tfidf, len(texts) + 10, decay)
        np.testing.assert_array_equal(got, greedy_reference(ifd, texts, len(texts) + 10, decay))
        assert len(set(got.tolist())) == len(got)
        assert not (ifd[got] == 0).any()
        assert not empty[got].any()
        if decay > 0:
            assert set(got.tolist()) == set(np.flatnonzero((ifd > 0) & ~empty).tolist())


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_extreme_decays_agree_with_reference(shared_data: Path, decay: float) -> None:
    texts = alpaca_texts(shared_data, 30)
    ifd = seeded_ifd(len(texts), seed=4)
    got = greedy_select(ifd, tfidf_matrix(texts), len(texts), decay)
    expected = greedy_reference(ifd, texts, len(texts), decay)
    assert np.array_equal(got, expected), (got, expected)
    if decay == 1.0:  # no decay: plain descending IFD x row sum, all rows
        plain = ifd.astype(np.float64) * np.asarray(tfidf_matrix(texts).sum(axis=1)).ravel()
        np.testing.assert_array_equal(got, np.argsort(-plain, kind="stable"))


def test_hand_computed_decay_changes_second_pick() -> None:
    """Rows 0 and 1 are the same text (3 n-grams of equal weight, 1/sqrt(3) each, row sum sqrt(3)); row 2
    has 3 other n-grams, also row sum sqrt(3). Scores: 1.0 sqrt(3), 0.9 sqrt(3), 0.8 sqrt(3). After picking
    row 0, decay 0.1 leaves row 1 at 0.09 sqrt(3) < 0.8 sqrt(3): the picks are 0, 2, 1, not 0, 1, 2."""
    texts = ["alpha beta", "alpha beta", "gamma delta"]
    ifd = np.array([1.0, 0.9, 0.8])
    tfidf = tfidf_matrix(texts)
    assert tfidf.shape == (3, 6)
    np.testing.assert_allclose(tfidf.toarray()[tfidf.toarray() > 0], 1 / np.sqrt(3), rtol=0, atol=TOL)
    np.testing.assert_array_equal(greedy_select(ifd, tfidf, 3, 0.1), [0, 2, 1])
    np.testing.assert_array_equal(greedy_reference(ifd, texts, 3, 0.1), [0, 2, 1])
    np.testing.assert_array_equal(greedy_select(ifd, tfidf, 2, 0.1), [0, 2])
    # With decay 0.95 row 1 keeps 0.855 sqrt(3) > 0.8 sqrt(3): plain score order.
    np.testing.assert_array_equal(greedy_select(ifd, tfidf, 3, 0.95), [0, 1, 2])
    np.testing.assert_array_equal(greedy_reference(ifd, texts, 3, 0.95), [0, 1, 2])
    # Boundary: decay 0.8 / 0.9 = 8/9 makes row 1 tie row 2 in exact arithmetic; any decay below it picks 2.
    np.testing.assert_array_equal(greedy_select(ifd, tfidf, 3, 0.85), [0, 2, 1])


def test_decays_compound_over_many_picks() -> None:
    """A column decayed c times weighs decay**c, for c up to k - 1. Rows 0..18 are "xx" (weight 1, IFD 1),
    row 19 "yy" (weight 1, IFD 0.5**14.5): after c picks of "xx" rows the next scores 0.5**c, so 15 of them
    (c = 0..14) beat row 19, which comes 16th, then the last four "xx" rows."""
    texts = ["xx"] * 19 + ["yy"]
    ifd = np.array([1.0] * 19 + [0.5**14.5])
    expected = list(range(15)) + [19, 15, 16, 17, 18]
    np.testing.assert_array_equal(greedy_select(ifd, tfidf_matrix(texts), 20, 0.5), expected)
    np.testing.assert_array_equal(greedy_reference(ifd, texts, 20, 0.5), expected)


def test_greedy_select_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        greedy_select(np.ones(2), tfidf_matrix(["one two", "three four", "five six"]), 1)


def test_greedy_select_k_zero_and_k_above_rows() -> None:
    texts = ["one two", "three four", "five six"]
    tfidf = tfidf_matrix(texts)
    ifd = np.array([0.3, 0.9, 0.6])
    assert len(greedy_select(ifd, tfidf, 0)) == 0
    np.testing.assert_array_equal(greedy_select(ifd, tfidf, 10), [1, 2, 0])


# -------------------------------------------------------------------------------------------- iterit_ranking


def window(n: int = 60, seed: int = 5) -> tuple[np.ndarray, list[str]]:
    """Scores with NaNs, >= 1 values, ties, zeros and negatives; texts from a small vocabulary + EOS."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.0, 1.0, n).astype(np.float32)
    scores[rng.choice(n, 6, replace=False)] = np.nan
    high = rng.choice(np.flatnonzero(np.isfinite(scores)), 6, replace=False)
    scores[high] = rng.uniform(1.0, 3.0, 6).astype(np.float32)
    scores[high[0]] = 1.0
    finite_low = np.flatnonzero(np.isfinite(scores) & (scores < 1))
    scores[finite_low[:3]] = 0.0
    scores[finite_low[3]] = -0.2
    scores[finite_low[5:12]] = scores[finite_low[4]]  # a block of exact ties
    vocab = [f"tok{i}" for i in range(30)]
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(1, 10)))) + EOS for _ in range(n)]
    return scores, texts


def expected_layout(scores: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Picks in pick order, then score >= 1 in window order, then the other candidates (-score, position)."""
    finite = [i for i in range(len(scores)) if np.isfinite(scores[i])]
    high = [i for i in finite if scores[i] >= 1]
    picked = set(picks.tolist())
    rest = sorted((i for i in finite if scores[i] < 1 and i not in picked), key=lambda i: (-float(scores[i]), i))
    return np.asarray(picks.tolist() + high + rest, dtype=np.int64)


@pytest.mark.parametrize("k", [0, 1, 10, 25, 100])
@pytest.mark.parametrize("decay", [0.1, 0.5])
def test_iterit_ranking_layout_and_picks(k: int, decay: float) -> None:
    scores, texts = window()
    order, picks = iterit_ranking(scores, texts, k, decay=decay)
    assert order.dtype == np.int64 and picks.dtype == np.int64
    finite = np.flatnonzero(np.isfinite(scores))
    assert sorted(order.tolist()) == finite.tolist()  # a permutation of the finite positions; NaNs left out
    np.testing.assert_array_equal(order[: len(picks)], picks)
    np.testing.assert_array_equal(order, expected_layout(scores, picks))
    # The picks: greedy_select over the candidates (finite, < 1), mapped back to window positions ...
    cand = np.flatnonzero(np.isfinite(scores) & (scores < 1))
    sub = [texts[i] for i in cand]
    np.testing.assert_array_equal(picks, cand[greedy_select(scores[cand], tfidf_matrix(sub), k, decay)])
    # ... which is the authors' loop on the candidates (independent of tfidf_matrix).
    np.testing.assert_array_equal(picks, cand[greedy_reference(scores[cand], sub, k, decay)])
    assert len(picks) == min(k, int((scores[cand] > 0).sum()))
    assert not (scores[picks] <= 0).any()


def test_iterit_ranking_picks_follow_decay_not_score() -> None:
    """The window version of the hand-computed example: positions shifted by a NaN and a >= 1 row."""
    scores = np.array([np.nan, 1.0, 0.9, 1.5, 0.8, 0.7], dtype=np.float32)
    texts = ["x y", "p q", "alpha beta", "r s", "alpha beta", "gamma delta"]
    order, picks = iterit_ranking(scores, texts, 2, decay=0.1)
    np.testing.assert_array_equal(picks, [2, 5])
    np.testing.assert_array_equal(order, [2, 5, 1, 3, 4])
    order, picks = iterit_ranking(scores, texts, 2, diversity=False)
    np.testing.assert_array_equal(picks, [2, 4])
    np.testing.assert_array_equal(order, [2, 4, 1, 3, 5])


@pytest.mark.parametrize("k", [0, 1, 10, 25, 100])
def test_iterit_ranking_without_diversity_takes_top_k_by_score(k: int) -> None:
    scores, texts = window(seed=6)
    order, picks = iterit_ranking(scores, texts, k, diversity=False)
    cand = [i for i in range(len(scores)) if np.isfinite(scores[i]) and scores[i] < 1]
    by_score = sorted(cand, key=lambda i: (-float(scores[i]), i))
    np.testing.assert_array_equal(picks, by_score[:k])
    np.testing.assert_array_equal(order, expected_layout(scores, picks))
    assert sorted(order.tolist()) == np.flatnonzero(np.isfinite(scores)).tolist()


def test_iterit_ranking_ties_by_position_float32() -> None:
    """Equal float32 scores keep window order, both in the tail and in the diversity=False picks."""
    scores = np.array([0.5, 0.25, 0.5, 2.0, 0.25, np.nan, 0.5, 1.0], dtype=np.float32)
    texts = ["one two", "three four", "five six", "seven", "eight nine", "ten", "eleven twelve", "thirteen"]
    order, picks = iterit_ranking(scores, texts, 2, diversity=False)
    np.testing.assert_array_equal(picks, [0, 2])
    np.testing.assert_array_equal(order, [0, 2, 3, 7, 6, 1, 4])
    order, picks = iterit_ranking(scores, texts, 0)
    np.testing.assert_array_equal(picks, np.zeros(0, dtype=np.int64))
    np.testing.assert_array_equal(order, [3, 7, 0, 2, 6, 1, 4])


def test_iterit_ranking_without_candidates() -> None:
    scores = np.array([np.nan, 1.0, 2.0, np.nan, 1.25])
    texts = ["a1 b1", "c1 d1", "e1 f1", "g1 h1", "i1 j1"]
    for diversity in (True, False):
        order, picks = iterit_ranking(scores, texts, 3, diversity=diversity)
        assert len(picks) == 0
        np.testing.assert_array_equal(order, [1, 2, 4])


def test_iterit_ranking_on_real_window(shared_data: Path) -> None:
    texts = alpaca_texts(shared_data, 80)
    scores = seeded_ifd(len(texts), seed=7).astype(np.float64)
    scores[[3, 50, 51]] = np.nan
    scores[[10, 70]] = [1.0, 1.7]
    order, picks = iterit_ranking(scores, texts, 20, decay=0.1)
    cand = np.flatnonzero(np.isfinite(scores) & (scores < 1))
    np.testing.assert_array_equal(picks, cand[greedy_reference(scores[cand], [texts[i] for i in cand], 20, 0.1)])
    np.testing.assert_array_equal(order, expected_layout(scores, picks))
