"""Deterministic text utilities shared by the reference agents.

Everything here is stdlib-only and pure: the same input gives the same output on
every machine and every run, so the reference agents can be tested on exact
values and a run can be replayed from its stored input. Nothing calls a model or
the network; the point is useful, explainable text work, not state of the art.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass


def lexicon(words: str) -> frozenset[str]:
    """A word list written as a wrapped block of prose, which reads better than a list."""
    return frozenset(words.split())


STOPWORDS: frozenset[str] = lexicon(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each else even ever
    few for from further get gets got had has have having he her here hers herself him himself his
    how i if in into is it its itself just let me more most much must my myself no nor not now of
    off on once only or other our ours ourselves out over own per same she should so some such
    than that the their theirs them themselves then there these they this those through to too
    under until up upon us very via was we were what when where which while who whom whose why
    will with within without would you your yours yourself yourselves yet may might shall one
    ll re ve don doesn didn isn wasn aren weren won wouldn shouldn couldn can't don't i'm it's
    i've you're we're they're that's there's let's across among around along onto toward towards
    still already often always never quite rather though although however thus therefore since
    whether unless etc something anything everything nothing
    """
)

# Words that are frequent in marketing and support copy whatever the topic. They
# stand in for the "background corpus" of TF-IDF: a keyword extractor that ranks
# "new" or "great" above "onboarding" is useless, so their weight is damped.
BACKGROUND_WORDS: frozenset[str] = lexicon(
    """
    new great good best better make makes made use used using way ways time times help helps
    need needs want wants like just really thing things lot lots know day days today year years
    work works people team get going well see look take many every first last next right
    """
)

# A small sentiment lexicon: enough to tell an angry ticket from a thank-you note.
POSITIVE_WORDS: frozenset[str] = lexicon(
    """
    amazing awesome beautiful best better delight delighted easy effective enjoy excellent
    excited fantastic fast favorite glad good great happy helpful impressive improve improved
    incredible love loved lovely nice perfect pleased powerful recommend reliable satisfied
    simple smooth success successful thank thanks thrilled useful valuable win wonderful
    """
)
NEGATIVE_WORDS: frozenset[str] = lexicon(
    """
    angry annoyed annoying awful bad broken bug buggy cancel complain complaint confused
    crash crashed crashes disappointed disappointing error errors fail failed failing failure
    frustrated frustrating hate horrible issue issues poor problem problems refund slow stuck
    terrible unacceptable unhappy unusable upset useless worst wrong ridiculous scam
    """
)

# Abbreviations whose trailing period does not end a sentence.
_ABBREVIATIONS = lexicon(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e inc ltd co corp approx dept est fig no"
)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")
_WORD = re.compile(r"[a-z0-9]+(?:['\u2019][a-z]+)?")
_VOWEL_GROUPS = re.compile(r"[aeiouy]+")
_STRUCTURAL_LINE = re.compile(r"^(#{1,6}\s|[-*\u2022]\s|\d+[.)]\s)")


# --- splitting and tokens --------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences; blank lines, headings and list items are hard breaks.

    A period after a known abbreviation ("e.g.", "Dr.") or before a lower-case word
    does not end a sentence, which keeps most real-world marketing copy intact.
    """
    sentences: list[str] = []
    for block in _blocks(text):
        start = 0
        for match in _SENTENCE_END.finditer(block):
            end = match.end()
            candidate = block[start:end].strip()
            last_word = candidate.rstrip(".!?\"')]").rsplit(" ", 1)[-1].lower()
            following = block[end : end + 1]
            if candidate.endswith(".") and (
                last_word in _ABBREVIATIONS or (following and following.islower())
            ):
                continue
            sentences.append(candidate)
            start = end
        tail = block[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


def _blocks(text: str) -> list[str]:
    """Join soft-wrapped lines into blocks; a heading or list item stands on its own.

    Pasted copy is often hard-wrapped at ~80 columns, so a single newline cannot be
    a sentence break, but a markdown heading with no final period must not swallow
    the paragraph after it.
    """
    blocks: list[str] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = " ".join(raw.split())
        structural = bool(_STRUCTURAL_LINE.match(line))
        if not line or structural:
            if current:
                blocks.append(" ".join(current))
                current = []
            if structural:
                blocks.append(line)
            continue
        current.append(line)
    if current:
        blocks.append(" ".join(current))
    return blocks


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; apostrophes inside words are kept ("don't")."""
    return [token.replace("\u2019", "'") for token in _WORD.findall(text.lower())]


def content_words(text: str, *, min_length: int = 2) -> list[str]:
    """Tokens that carry meaning: no stopwords, no bare numbers, no one-letter words."""
    return [
        token
        for token in tokenize(text)
        if token not in STOPWORDS and len(token) >= min_length and not token.isdigit()
    ]


def stem(token: str) -> str:
    """A deliberately light stemmer: folds plurals and common verb endings.

    Search needs "refunds" to meet "refund" and "charged" to meet "charge"; a full
    Porter stemmer would be overkill and harder to explain in a test. A final "e"
    is dropped after suffix stripping so "charge", "charged" and "charges" agree.
    """
    for suffix, replacement, min_stem in (
        ("ies", "y", 3),
        ("ing", "", 4),
        ("ed", "", 4),
        ("es", "", 4),
        ("s", "", 3),
    ):
        if token.endswith(suffix) and len(token) - len(suffix) >= min_stem:
            if suffix == "s" and token.endswith(("ss", "us", "is")):
                break
            token = token[: len(token) - len(suffix)] + replacement
            break
    if token.endswith("e") and len(token) > 4:
        token = token[:-1]
    return token


def word_frequencies(text: str) -> Counter[str]:
    return Counter(content_words(text))


def count_syllables(word: str) -> int:
    """Vowel-group heuristic with the usual silent-e correction; never below one."""
    word = word.lower().strip("'")
    if not word:
        return 0
    groups = len(_VOWEL_GROUPS.findall(word))
    if word.endswith("e") and not word.endswith(("le", "ee", "ye")) and groups > 1:
        groups -= 1
    return max(groups, 1)


# --- summaries and keywords ------------------------------------------------------------


@dataclass(frozen=True)
class ScoredSentence:
    index: int
    text: str
    score: float


def score_sentences(text: str) -> list[ScoredSentence]:
    """Score each sentence by the normalized frequency of its content words.

    Frequencies are divided by the most frequent word's so scores compare across
    documents; the sum is divided by the square root of the sentence's length so
    neither long sentences (a plain sum) nor one-word fragments (a plain mean) win
    by shape alone. Headings and fragments under four words are halved: they rarely
    read well on their own in a summary.
    """
    sentences = split_sentences(text)
    frequencies = word_frequencies(text)
    top = max(frequencies.values(), default=0)
    scored = []
    for index, sentence in enumerate(sentences):
        words = content_words(sentence)
        score = 0.0
        if words and top:
            score = sum(frequencies[w] / top for w in words) / math.sqrt(len(words))
            if len(tokenize(sentence)) < 4:
                score /= 2
        scored.append(ScoredSentence(index=index, text=sentence, score=round(score, 4)))
    return scored


def summarize(
    text: str, *, max_sentences: int | None = 3, ratio: float | None = None
) -> list[ScoredSentence]:
    """Extractive summary: the best-scoring sentences, returned in their original order."""
    scored = score_sentences(text)
    if not scored:
        return []
    limit = len(scored)
    if ratio is not None:
        limit = max(1, math.ceil(len(scored) * ratio))
    if max_sentences is not None:
        limit = min(limit, max_sentences)
    # Ties go to the earlier sentence: openings usually carry the thesis.
    best = sorted(scored, key=lambda s: (-s.score, s.index))[: max(limit, 1)]
    return sorted(best, key=lambda s: s.index)


def keywords(text: str, *, top_n: int = 10) -> list[tuple[str, float]]:
    """Rank single keywords by frequency, damping background words and rewarding spread.

    A word that appears in several sentences is more likely to be the topic than one
    repeated inside a single sentence, so sentence spread is part of the score.
    """
    sentences = split_sentences(text) or [text]
    frequencies = word_frequencies(text)
    if not frequencies:
        return []
    total = sum(frequencies.values())
    spread: Counter[str] = Counter()
    for sentence in sentences:
        spread.update(set(content_words(sentence)))
    scores = {}
    for word, count in frequencies.items():
        weight = 0.4 if word in BACKGROUND_WORDS else 1.0
        coverage = spread[word] / len(sentences)
        scores[word] = round((count / total) * weight * (1 + coverage), 4)
    first_seen = {word: i for i, word in reversed(list(enumerate(content_words(text))))}
    ranked = sorted(scores.items(), key=lambda item: (-item[1], first_seen.get(item[0], 0)))
    return ranked[:top_n]


def bigrams(text: str, *, top_n: int = 10, min_count: int = 1) -> list[tuple[str, int]]:
    """Adjacent content-word pairs inside one sentence, most frequent first.

    Pairs never span a stopword or a sentence break, so "refund policy" is found but
    "policy and pricing" is not turned into "policy pricing".
    """
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    position = 0
    for sentence in split_sentences(text) or [text]:
        tokens = tokenize(sentence)
        for left, right in itertools.pairwise(tokens):
            if _is_content(left) and _is_content(right):
                phrase = f"{left} {right}"
                counts[phrase] += 1
                first_seen.setdefault(phrase, position)
                position += 1
    ranked = [(p, c) for p, c in counts.items() if c >= min_count]
    ranked.sort(key=lambda item: (-item[1], first_seen[item[0]]))
    return ranked[:top_n]


def _is_content(token: str) -> bool:
    return token not in STOPWORDS and len(token) > 1 and not token.isdigit()


def phrase_count(text: str, phrase: str) -> int:
    """Whole-word occurrences of a (possibly multi-word) phrase, case-insensitive."""
    return _phrase_hits(tokenize(text), tokenize(phrase))


def _phrase_hits(tokens: list[str], target: list[str]) -> int:
    if not target:
        return 0
    width = len(target)
    return sum(1 for i in range(len(tokens) - width + 1) if tokens[i : i + width] == target)


def keyword_density(text: str, phrase: str) -> float:
    """Percentage of the text's words taken up by a (possibly multi-word) phrase."""
    tokens = tokenize(text)
    target = tokenize(phrase)
    if not tokens or not target:
        return 0.0
    return round(_phrase_hits(tokens, target) * len(target) * 100 / len(tokens), 2)


# --- readability and tone --------------------------------------------------------------


@dataclass(frozen=True)
class Readability:
    flesch_reading_ease: float
    flesch_kincaid_grade: float
    words: int
    sentences: int
    syllables: int
    label: str

    def as_dict(self) -> dict:
        return {
            "fleschReadingEase": self.flesch_reading_ease,
            "fleschKincaidGrade": self.flesch_kincaid_grade,
            "words": self.words,
            "sentences": self.sentences,
            "syllables": self.syllables,
            "label": self.label,
        }


def readability(text: str) -> Readability:
    """Flesch reading ease and Flesch-Kincaid grade with the standard coefficients."""
    words = tokenize(text)
    sentences = max(len(split_sentences(text)), 1)
    syllables = sum(count_syllables(w) for w in words)
    if not words:
        return Readability(0.0, 0.0, 0, 0, 0, "empty")
    words_per_sentence = len(words) / sentences
    syllables_per_word = syllables / len(words)
    ease = 206.835 - 1.015 * words_per_sentence - 84.6 * syllables_per_word
    grade = 0.39 * words_per_sentence + 11.8 * syllables_per_word - 15.59
    return Readability(
        flesch_reading_ease=round(ease, 1),
        flesch_kincaid_grade=round(grade, 1),
        words=len(words),
        sentences=sentences,
        syllables=syllables,
        label=_ease_label(ease),
    )


def _ease_label(ease: float) -> str:
    # Bands from Flesch's original table.
    for floor, label in (
        (90, "very easy"),
        (80, "easy"),
        (70, "fairly easy"),
        (60, "standard"),
        (50, "fairly difficult"),
        (30, "difficult"),
    ):
        if ease >= floor:
            return label
    return "very difficult"


def sentiment(text: str) -> float:
    """Lexicon polarity in [-1, 1]: (positive - negative) / (positive + negative)."""
    tokens = [stem(t) for t in tokenize(text)]
    pos = sum(1 for t in tokens if t in _POSITIVE_STEMS)
    neg = sum(1 for t in tokens if t in _NEGATIVE_STEMS)
    if pos + neg == 0:
        return 0.0
    return round((pos - neg) / (pos + neg), 3)


_POSITIVE_STEMS = frozenset(stem(w) for w in POSITIVE_WORDS)
_NEGATIVE_STEMS = frozenset(stem(w) for w in NEGATIVE_WORDS)


def truncate(text: str, limit: int, *, suffix: str = "\u2026") -> str:
    """Cut at a word boundary so a platform limit never leaves half a word.

    Text that already fits comes back untouched, line breaks included.
    """
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[: max(limit - len(suffix), 0)]
    shorter = re.sub(r"\s+\S*$", "", cut)
    return (shorter or cut).rstrip(" ,;:-\n") + suffix


_SMALL_WORDS = lexicon("a an and as at but by for in nor of on or per the to vs via with")


def title_case(text: str) -> str:
    """Headline case: small words stay lower-case unless they open the title or a subtitle."""
    out: list[str] = []
    for word in text.split():
        opens = not out or out[-1].endswith((":", "?", "!", "."))
        if word.isupper() and len(word) > 1:
            out.append(word)  # acronyms ("SEO", "B2B") keep their case
        elif not opens and word.lower() in _SMALL_WORDS:
            out.append(word.lower())
        else:
            out.append(word[:1].upper() + word[1:])
    return " ".join(out)


def to_hashtag(phrase: str) -> str:
    """ "remote work tips" -> "#RemoteWorkTips"; empty when nothing usable is left."""
    words = re.findall(r"[A-Za-z0-9]+", phrase)
    if not words:
        return ""
    # Words with their own capitals ("SaaS", "iOS", "API") keep them.
    return "#" + "".join(w if w[1:].lower() != w[1:] else w[:1].upper() + w[1:] for w in words)
