"""Local embeddings and similarity search: TF-IDF and hashed bag-of-words with cosine.

Good enough to find the obviously relevant document in a few hundred, with no
model download and byte-for-byte reproducible scores, which is what the reference
agents and their tests need. A real deployment points an agent at a vector store
through a remote HTTP agent instead.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agents.reference.text import content_words, stem

Vector = dict[str, float]


def _normalize(vector: dict) -> dict:
    norm = math.sqrt(sum(v * v for v in vector.values()))
    return {k: v / norm for k, v in vector.items()} if norm else {}


def cosine(left: dict, right: dict) -> float:
    """Cosine similarity of two sparse vectors (dicts); 0 when either is empty."""
    if len(left) > len(right):
        left, right = right, left
    dot = sum(v * right.get(k, 0.0) for k, v in left.items())
    norm = math.sqrt(sum(v * v for v in left.values())) * math.sqrt(
        sum(v * v for v in right.values())
    )
    return dot / norm if norm else 0.0


def search_terms(text: str) -> list[str]:
    return [stem(t) for t in content_words(text)]


def hashed_vector(text: str, *, dimensions: int = 512) -> dict[int, float]:
    """Hashed bag-of-words with log-scaled counts and a sign bit, L2-normalized.

    crc32 (not hash()) keeps buckets stable across processes, which PYTHONHASHSEED
    would otherwise randomize; the sign bit makes collisions cancel out on average.
    """
    vector: dict[int, float] = {}
    for term, count in Counter(search_terms(text)).items():
        digest = zlib.crc32(term.encode("utf-8"))
        bucket = digest % dimensions
        sign = 1.0 if (digest >> 31) & 1 == 0 else -1.0
        vector[bucket] = vector.get(bucket, 0.0) + sign * (1 + math.log(count))
    return _normalize(vector)


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    position: int


class TfidfIndex:
    """An in-memory TF-IDF index: sublinear tf, smoothed idf, L2-normalized vectors."""

    def __init__(self, documents: Sequence[tuple[str, str]]) -> None:
        self.ids = [doc_id for doc_id, _ in documents]
        term_counts = [Counter(search_terms(text)) for _, text in documents]
        document_frequency: Counter[str] = Counter()
        for counts in term_counts:
            document_frequency.update(counts.keys())
        n = len(documents)
        # Smoothed idf (as scikit-learn's default) keeps terms found everywhere above zero.
        self.idf = {t: math.log((1 + n) / (1 + df)) + 1 for t, df in document_frequency.items()}
        self.vectors = [self._weigh(counts) for counts in term_counts]

    def _weigh(self, counts: Counter[str]) -> Vector:
        return _normalize(
            {t: (1 + math.log(c)) * self.idf[t] for t, c in counts.items() if t in self.idf}
        )

    def vectorize(self, text: str) -> Vector:
        return self._weigh(Counter(search_terms(text)))

    def search(self, query: str, *, top_k: int = 5, min_score: float = 0.0) -> list[SearchHit]:
        query_vector = self.vectorize(query)
        return rank(query_vector, self.vectors, self.ids, top_k=top_k, min_score=min_score)


def rank(
    query_vector: dict,
    vectors: Iterable[dict],
    ids: Sequence[str],
    *,
    top_k: int,
    min_score: float = 0.0,
) -> list[SearchHit]:
    """Top-k documents by cosine similarity; ties keep document order for stable output."""
    hits = [
        SearchHit(id=ids[i], score=round(score, 4), position=i)
        for i, vector in enumerate(vectors)
        if (score := cosine(query_vector, vector)) > min_score
    ]
    hits.sort(key=lambda h: (-h.score, h.position))
    return hits[:top_k]
