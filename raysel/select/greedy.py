"""IterIT's complexity x diversity selection (Jia et al. 2024, JiaQiSJTU/IterIT src/data_utils.py `update`).

The authors' loop, k times: score every candidate by IFD x (sum of its row of a TF-IDF matrix over the
responses), pick the first argmax, multiply every column the pick contains by `decay` in all rows, zero
the pick's row. It recomputes every row sum per pick and rescales columns one by one: O(k x nnz), hours
at 1M rows. Here the same picks come from

- `tfidf_matrix`: sklearn's TfidfVectorizer(ngram_range=(1, 3)) weights (every other argument default)
  built with numpy sorts instead of a Python dict of n-gram strings (columns in another order; the
  weights agree to float rounding), so 1M responses fit in a few GB;
- `greedy_select`: a lazy max-heap of upper bounds. A row's value is sum_j w_ij * decay^(c_j), with c_j
  the times column j was decayed; decays only lower values, so a heap key is an upper bound, and the
  popped row is re-evaluated: if its key still holds it is the argmax (ties: lowest row, as np.argmax),
  otherwise it goes back with its new value. Only rows that reach the top are ever re-evaluated.

`greedy_reference` / `reference_loop` are the authors' loop, written plainly, for tests and benchmarks.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")
"""sklearn's default token_pattern (applied after lower-casing, as TfidfVectorizer does)."""


def tfidf_matrix(
    texts: Sequence[str], max_n: int = 3, chunk_tokens: int = 4_000_000, buckets: int = 16
) -> sp.csr_matrix:
    """TF-IDF of `texts` as TfidfVectorizer(ngram_range=(1, max_n)) computes it: lower-cased word n-grams,
    raw counts x smooth idf (ln((1 + n) / (1 + df)) + 1), rows L2-normalized; float64 CSR, one row per text.

    Columns are n-grams in an order of this function's own (not sklearn's alphabetical one). No n-gram
    string is built: words get ids, an n-gram is (its (n-1)-gram prefix's id, its last word) numbered by
    np.unique, and counts are taken `chunk_tokens` positions at a time (memory ~ 40 bytes per token + the
    result).
    """
    n_docs = len(texts)
    vocab: dict[str, int] = {}
    lens = np.zeros(n_docs, dtype=np.int64)
    parts = []
    for i, text in enumerate(texts):
        ids = [vocab.setdefault(w, len(vocab)) for w in TOKEN_PATTERN.findall(text.lower())]
        lens[i] = len(ids)
        parts.append(np.asarray(ids, dtype=np.int32))
    words = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    del parts
    n_words = max(len(vocab), 1)
    del vocab
    n_tok = len(words)
    ends = np.cumsum(lens)
    # col[n - 1][p]: column of the n-gram starting at token p, or -1 where it would cross its text's end.
    room = (np.repeat(ends, lens) - np.arange(n_tok, dtype=np.int64)).astype(np.int32)  # tokens left from p
    col = [words]
    offset = n_words
    for n in range(2, max_n + 1):
        # key of each position's n-gram (-1 where none); numbered bucket by bucket to bound np.unique's memory
        key = np.full(n_tok, -1, dtype=np.int64)
        ok = room >= n
        key[ok] = col[-1][ok].astype(np.int64) * n_words + words[np.flatnonzero(ok) + n - 1]
        bucket = np.where(ok, key % buckets, -1).astype(np.int16)
        del ok
        c = np.full(n_tok, -1, dtype=np.int64)
        for b in range(buckets):
            idx = np.flatnonzero(bucket == b)
            uniq, inv = np.unique(key[idx], return_inverse=True)
            c[idx] = inv + offset
            offset += len(uniq)
            del idx, uniq, inv
        del key, bucket
        col.append(c.astype(np.int32) if offset < 2**31 else c)
        del c
    del room
    n_cols = offset
    # Pass 1, a chunk of whole texts at a time: each text's columns (sorted) and counts, and document
    # frequencies. Pass 2 weights and normalizes each chunk into the preallocated result, freeing it.
    nnz_per_row, col_parts, count_parts = [], [], []
    df = np.zeros(n_cols, dtype=np.int32)
    first = 0
    while first < n_docs:
        start = int(ends[first - 1]) if first else 0
        last = max(int(np.searchsorted(ends, start + chunk_tokens, side="right")), first + 1)
        stop = int(ends[last - 1])
        local = np.repeat(np.arange(last - first, dtype=np.int64), lens[first:last])
        keys = []
        for c in col:
            part = c[start:stop]
            ok = part >= 0
            keys.append(local[ok] * n_cols + part[ok])
        pair, counts = np.unique(np.concatenate(keys), return_counts=True)
        del keys, local
        rows = pair // n_cols
        cols = (pair - rows * n_cols).astype(np.int32 if n_cols < 2**31 else np.int64)
        del pair
        nnz_per_row.append(np.bincount(rows, minlength=last - first))
        df += np.bincount(cols, minlength=n_cols).astype(np.int32)
        col_parts.append(cols)
        count_parts.append(counts.astype(np.int32))
        del rows, cols, counts
        first = last
    del col, words
    idf = np.log((1.0 + n_docs) / (1.0 + np.arange(n_docs + 1, dtype=np.float64))) + 1.0  # by df value
    row_nnz = np.concatenate(nnz_per_row) if nnz_per_row else np.zeros(0, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(row_nnz)]).astype(np.int64)
    data = np.empty(int(indptr[-1]), dtype=np.float64)
    indices = np.empty(int(indptr[-1]), dtype=np.int32 if n_cols < 2**31 else np.int64)
    at, first = 0, 0
    for per_row in nnz_per_row:
        cols, counts = col_parts.pop(0), count_parts.pop(0)
        vals = counts * idf[df[cols]]
        local = np.repeat(np.arange(len(per_row)), per_row)
        norms = np.sqrt(np.bincount(local, weights=vals * vals, minlength=len(per_row)))
        vals /= np.where(norms > 0, norms, 1.0)[local]
        data[at : at + len(vals)] = vals
        indices[at : at + len(vals)] = cols
        at += len(vals)
        first += len(per_row)
        del cols, counts, vals, local
    return sp.csr_matrix((data, indices, indptr), shape=(n_docs, n_cols))


def _decay_table(decay: float, k: int) -> np.ndarray:
    """decay**c for c = 0.. as repeated multiplication (the authors multiply the weights c times),
    up to the first exact 0 or k + 1 entries (a column is decayed at most once per pick)."""
    table = [1.0]
    while len(table) <= k and table[-1] != 0.0:
        table.append(table[-1] * decay)
    return np.asarray(table, dtype=np.float64)


def _row_sums(products: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per-row sums of a CSR data-shaped array; the one summation used for keys and re-evaluations alike."""
    n = len(indptr) - 1
    out = np.zeros(n, dtype=np.float64)
    nonempty = indptr[1:] > indptr[:-1]
    if nonempty.any():
        out[nonempty] = np.add.reduceat(products, indptr[:-1][nonempty])
    return out


def greedy_select(ifd: np.ndarray, tfidf: sp.csr_matrix, k: int, decay: float = 0.1) -> np.ndarray:
    """Rows picked, in pick order: the authors' greedy IFD x TF-IDF-sum selection (module docstring).

    Stops before k when no remaining row scores above 0 (the authors' loop would re-pick row 0 then).

    Args:
        ifd: Complexity per row (float); rows scoring <= 0 are never picked.
        tfidf: CSR matrix, one row per candidate (tfidf_matrix).
        k: Rows to pick.
        decay: Factor applied to a picked row's columns in every row.
    """
    tfidf = sp.csr_matrix(tfidf)
    tfidf.sort_indices()
    ifd = np.asarray(ifd, dtype=np.float64)
    n = tfidf.shape[0]
    if len(ifd) != n:
        raise ValueError(f"{len(ifd)} scores for {n} TF-IDF rows")
    k = min(int(k), n)
    data, cols, indptr = tfidf.data.astype(np.float64), tfidf.indices, tfidf.indptr
    table = _decay_table(decay, k)
    last = len(table) - 1
    count = np.zeros(tfidf.shape[1], dtype=np.int32)  # decays applied to each column (capped at `last`)
    keys = ifd * _row_sums(data, indptr)
    heap = [(-v, i) for i, v in enumerate(keys.tolist()) if v > 0]
    heapq.heapify(heap)
    picks: list[int] = []
    while heap and len(picks) < k:
        neg, i = heapq.heappop(heap)
        s, e = indptr[i], indptr[i + 1]
        c = cols[s:e]
        current = data[s:e] * table[count[c]]
        value = ifd[i] * _row_sums(current, np.array([0, e - s]))[0]
        if value == -neg:  # its key still holds: the largest value, lowest row among equals
            picks.append(i)
            hit = c[current != 0]
            count[hit] = np.minimum(count[hit] + 1, last)
        elif value > 0:
            heapq.heappush(heap, (-value, i))
    return np.asarray(picks, dtype=np.int64)


def greedy_reference(ifd: np.ndarray, texts: Sequence[str], k: int, decay: float = 0.1) -> np.ndarray:
    """The authors' selection as written (sklearn TF-IDF, then reference_loop). O(k x nnz): for tests and
    benchmarks only."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer(ngram_range=(1, 3)).fit_transform(list(texts)).tocsc()
    return reference_loop(ifd, matrix, k, decay)


def reference_loop(ifd: np.ndarray, matrix: sp.csc_matrix, k: int, decay: float = 0.1) -> np.ndarray:
    """The authors' pick loop on a CSC TF-IDF matrix (modified in place): per pick every row sum recomputed
    and the pick's columns rescaled one by one; stops when no row scores above 0."""
    from scipy.sparse import find

    scores = np.asarray(ifd, dtype=np.float64)
    picks: list[int] = []
    for _ in range(min(k, len(scores))):
        final = scores * np.asarray(matrix.sum(axis=1)).ravel()
        best = int(np.argmax(final))
        if not final[best] > 0:
            break
        _, columns, _ = find(matrix[best, :])
        for j in columns:
            matrix.data[matrix.indptr[j] : matrix.indptr[j + 1]] *= decay
            matrix[best, j] = 0.0
        picks.append(best)
    return np.asarray(picks, dtype=np.int64)


def iterit_ranking(
    scores: np.ndarray, texts: Sequence[str], k: int, *, decay: float = 0.1, diversity: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's new order of a window of rows (positions into `scores`), and the picks.

    Candidates are rows with a finite score < 1. Picks: greedy_select over TF-IDF of the candidates'
    texts (diversity=True, the authors' "BOTH"), or the top k by score ("IFD"). Order: the picks in pick
    order, then rows with score >= 1 in window order, then the other candidates by score descending
    (ties by window position). Rows with a non-finite score are left out (the caller rejects them).

    Args:
        scores: Complexity per window row (float32 or float64), in the current ranking's order.
        texts: Per window row, the text TF-IDF is fitted on (output + the tokenizer's EOS).
        k: Rows to pick.
    """
    scores = np.asarray(scores)
    finite = np.isfinite(scores)
    cand = np.flatnonzero(finite & (scores < 1.0))
    high = np.flatnonzero(finite & (scores >= 1.0))
    by_score = cand[np.lexsort((cand, -scores[cand].astype(np.float64)))]
    if diversity and len(cand):
        matrix = tfidf_matrix([texts[i] for i in cand])
        picks = cand[greedy_select(scores[cand], matrix, k, decay)]
    else:
        picks = by_score[: min(k, len(by_score))]
    rest = by_score[~np.isin(by_score, picks)]
    return np.concatenate([picks, high, rest]).astype(np.int64), picks.astype(np.int64)
