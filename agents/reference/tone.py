"""Tone measurement and rule-based style rewrites for BrandVoiceAgent.

Every dimension is a number in [0, 1] computed from counted signals (contractions,
hedges, exclamation marks...) so a brand profile can state targets in the same
units and the gap between text and profile is plain arithmetic.
"""

from __future__ import annotations

import re

from agents.reference import text as tx

DIMENSIONS = ("formality", "positivity", "enthusiasm", "confidence", "directness")

INFORMAL_WORDS = tx.lexicon(
    "hey hi gonna wanna gotta yeah yep nope ok okay cool awesome super stuff guys lol btw "
    "totally kinda sorta folks ya"
)
FORMAL_WORDS = tx.lexicon(
    "therefore furthermore moreover regarding accordingly hereby pursuant consequently "
    "nevertheless additionally kindly sincerely respectfully whereas thus shall"
)
INTENSIFIERS = tx.lexicon(
    "very really super so incredibly absolutely totally extremely amazing awesome huge"
)
HEDGES = ("maybe", "perhaps", "might", "possibly", "probably", "somewhat", "kind of",
          "sort of", "i think", "i guess", "hopefully", "i feel like", "just")  # fmt: skip
SECOND_PERSON = tx.lexicon("you your yours yourself you're you'll you've you'd")
ASSERTIVE = tx.lexicon("will proven definitely certainly always guaranteed clearly exactly")

# Rewrites towards a formal register, and their inverse for a casual one.
CONTRACTIONS = {
    "don't": "do not", "doesn't": "does not", "didn't": "did not", "can't": "cannot",
    "won't": "will not", "isn't": "is not", "aren't": "are not", "wasn't": "was not",
    "we're": "we are", "you're": "you are", "they're": "they are", "it's": "it is",
    "i'm": "I am", "we'll": "we will", "you'll": "you will", "let's": "let us",
    "that's": "that is", "there's": "there is", "we've": "we have", "you've": "you have",
}  # fmt: skip
INFORMAL_REPLACEMENTS = {
    "gonna": "going to", "wanna": "want to", "gotta": "have to", "awesome": "excellent",
    "guys": "everyone", "stuff": "things", "super": "very", "cool": "great", "hey": "hello",
    "kinda": "somewhat", "yeah": "yes", "folks": "everyone",
}  # fmt: skip


# Adverbs that only add volume; adjectives such as "amazing" carry meaning and stay.
_INTENSIFIER_PATTERN = re.compile(
    r"\b(?:totally|really|absolutely|incredibly|extremely)\s+", re.IGNORECASE
)


def _tidy(sentence: str) -> str:
    """Repair what deleting a phrase leaves behind: ", ." and doubled spaces."""
    sentence = re.sub(r"\s*,\s*(?=[.!?]|$)", "", sentence)
    sentence = re.sub(r"\s{2,}", " ", sentence).strip()
    return sentence


def _clamp(value: float) -> float:
    return round(min(1.0, max(0.0, value)), 2)


def _count_phrases(text: str, phrases) -> int:
    return sum(tx.phrase_count(text, p) for p in phrases)


def analyze(text: str) -> dict:
    """Scores per dimension, the raw signal counts behind them, and tone labels."""
    words = tx.tokenize(text)
    n_words = max(len(words), 1)
    n_sentences = max(len(tx.split_sentences(text)), 1)
    signals = {
        "words": len(words),
        "sentences": n_sentences,
        "contractions": sum(1 for w in words if "'" in w),
        "informalWords": sum(1 for w in words if w in INFORMAL_WORDS),
        "formalWords": sum(1 for w in words if w in FORMAL_WORDS),
        "longWords": sum(1 for w in words if len(w) >= 10),
        "exclamations": text.count("!"),
        "questions": text.count("?"),
        "intensifiers": sum(1 for w in words if w in INTENSIFIERS),
        "hedges": _count_phrases(text, HEDGES),
        "assertive": sum(1 for w in words if w in ASSERTIVE),
        "secondPerson": sum(1 for w in words if w in SECOND_PERSON),
    }
    per_100 = 100 / n_words
    informal = (signals["contractions"] + signals["informalWords"] + signals["exclamations"]) * (
        per_100
    )
    formal = (signals["formalWords"] + signals["longWords"]) * per_100
    scores = {
        # 10 more formal than informal signals per 100 words is fully formal.
        "formality": _clamp(0.5 + (formal - informal) / 20),
        "positivity": _clamp((tx.sentiment(text) + 1) / 2),
        "enthusiasm": _clamp(
            signals["exclamations"] / n_sentences * 0.5 + signals["intensifiers"] * per_100 / 10
        ),
        "confidence": _clamp(0.6 + (signals["assertive"] - signals["hedges"]) / n_sentences * 0.3),
        # Addressing the reader in roughly every other sentence reads as direct.
        "directness": _clamp(signals["secondPerson"] / n_sentences),
    }
    return {"scores": scores, "signals": signals, "labels": labels(scores)}


def labels(scores: dict) -> list[str]:
    names = {
        "formality": ("casual", "formal"),
        "positivity": ("negative", "positive"),
        "enthusiasm": ("reserved", "enthusiastic"),
        "confidence": ("tentative", "confident"),
        "directness": ("impersonal", "direct"),
    }
    out = []
    for dimension, (low, high) in names.items():
        value = scores[dimension]
        if value >= 0.65:
            out.append(high)
        elif value <= 0.35:
            out.append(low)
    return out or ["neutral"]


def _replace_words(sentence: str, mapping: dict[str, str]) -> tuple[str, list[str]]:
    """Whole-word, case-insensitive replacement that keeps a leading capital."""
    changed = []

    def swap(match: re.Match) -> str:
        original = match.group(0)
        replacement = mapping[original.lower().replace("\u2019", "'")]
        changed.append(f"{original} -> {replacement}")
        if original[:1].isupper():
            return replacement[:1].upper() + replacement[1:]
        return replacement

    if not mapping:
        return sentence, changed
    alternatives = "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w'])(?:{alternatives})(?![\w'])", re.IGNORECASE)
    return pattern.sub(swap, sentence), changed


def rewrite_sentence(sentence: str, profile: dict, measured: dict) -> tuple[str, list[str]]:
    """Apply the profile's rules to one sentence; returns the rewrite and the reasons."""
    reasons: list[str] = []
    tolerance = profile["tolerance"]
    result, changed = _replace_words(sentence, profile["preferred_terms"])
    reasons += [f"preferred term: {c}" for c in changed]
    banned = [w for w in profile["banned_words"] if tx.phrase_count(result, w)]
    reasons += [f"banned word: {w}" for w in banned]

    formality_target = profile["targets"].get("formality")
    if formality_target is not None and measured["formality"] < formality_target - tolerance:
        result, changed = _replace_words(result, INFORMAL_REPLACEMENTS)
        reasons += [f"too casual: {c}" for c in changed]
    if not profile["contractions"]:
        result, changed = _replace_words(result, CONTRACTIONS)
        reasons += [f"no contractions: {c}" for c in changed]

    enthusiasm_target = profile["targets"].get("enthusiasm")
    if enthusiasm_target is not None and measured["enthusiasm"] > enthusiasm_target + tolerance:
        calmer = re.sub(r"!+", ".", result)
        if calmer != result:
            result = calmer
            reasons.append("too enthusiastic: exclamation marks -> periods")
        plainer = _INTENSIFIER_PATTERN.sub("", result)
        if plainer != result:
            result = plainer
            reasons.append("too enthusiastic: removed intensifiers")
    confidence_target = profile["targets"].get("confidence")
    if confidence_target is not None and measured["confidence"] < confidence_target - tolerance:
        hedge_pattern = re.compile(
            r"\b(?:i think|i guess|i feel like|maybe|perhaps|possibly|probably|kind of|sort of)"
            r"\s*,?\s*",
            re.IGNORECASE,
        )
        firmer = _tidy(hedge_pattern.sub("", result))
        if firmer != result:
            result = firmer[:1].upper() + firmer[1:]
            reasons.append("too tentative: removed hedging")

    limit = profile["max_sentence_words"]
    if len(tx.tokenize(result)) > limit:
        # Split at the clause boundary nearest the middle, if there is one.
        middle = len(result) // 2
        cuts = [m.start() for m in re.finditer(r",\s+(?:and|but|so|which)\s+|;\s+", result)]
        if cuts:
            cut = min(cuts, key=lambda c: abs(c - middle))
            head, tail = result[:cut], re.sub(r"^[,;]\s+(?:and|but|so|which)?\s*", "", result[cut:])
            result = f"{head.rstrip()}. {tail[:1].upper()}{tail[1:]}"
            reasons.append(f"sentence over {limit} words: split in two")
        else:
            reasons.append(f"sentence over {limit} words: consider splitting")
    return result, reasons
