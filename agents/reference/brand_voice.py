"""BrandVoiceAgent: tone analysis, brand-voice rewrites and knowledge search over a dataset."""

from __future__ import annotations

from agents.choices import AgentKind
from agents.handlers.base import PermanentHandlerError
from agents.handlers.registry import register
from agents.reference import text as tx
from agents.reference import tone
from agents.reference.common import (
    ReferenceHandler,
    check_cancelled,
    optional_choice,
    optional_float,
    optional_int,
    optional_str,
    record_tokens,
    require_text,
)
from agents.reference.vectors import TfidfIndex, cosine, hashed_vector, rank

# The voice used when neither the request nor the agent config defines one:
# confident, warm, moderately formal; the usual B2B marketing register.
DEFAULT_VOICE = {
    "formality": 0.6,
    "positivity": 0.7,
    "enthusiasm": 0.35,
    "confidence": 0.7,
    "banned_words": [],
    "preferred_terms": {},
    "max_sentence_words": 25,
    "contractions": True,
    "tolerance": 0.15,
}
EMBEDDINGS = ("tfidf", "hashed")


def _voice_profile(raw) -> dict:
    """Validate a voice profile; a bad one is a permanent error naming the field."""
    if not isinstance(raw, dict):
        raise PermanentHandlerError("voice must be an object", details={"field": "voice"})
    profile = {**DEFAULT_VOICE, **raw}
    targets = {}
    for dimension in tone.DIMENSIONS:
        value = profile.get(dimension)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise PermanentHandlerError(
                f"voice.{dimension} must be a number between 0 and 1",
                details={"field": f"voice.{dimension}"},
            )
        targets[dimension] = float(value)
    banned = profile["banned_words"]
    if not isinstance(banned, list) or not all(isinstance(w, str) for w in banned):
        raise PermanentHandlerError("voice.banned_words must be a list of strings")
    preferred = profile["preferred_terms"]
    if not isinstance(preferred, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in preferred.items()
    ):
        raise PermanentHandlerError("voice.preferred_terms must map strings to strings")
    max_words = profile["max_sentence_words"]
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 5:
        raise PermanentHandlerError("voice.max_sentence_words must be an integer >= 5")
    return {
        "targets": targets,
        "banned_words": banned,
        "preferred_terms": {k.lower(): v for k, v in preferred.items()},
        "max_sentence_words": max_words,
        "contractions": bool(profile["contractions"]),
        "tolerance": float(profile["tolerance"]),
    }


_ADVICE = {
    ("formality", "raise"): "Drop slang and contractions; prefer complete, precise sentences.",
    ("formality", "lower"): "Use contractions and everyday words; talk like a person.",
    ("positivity", "raise"): "Lead with benefits and outcomes; reframe problems as solutions.",
    ("positivity", "lower"): "Tone down the superlatives; let facts carry the message.",
    ("enthusiasm", "raise"): "Add energy: a vivid verb, a concrete win, one exclamation.",
    ("enthusiasm", "lower"): "Fewer exclamation marks and intensifiers.",
    ("confidence", "raise"): "Remove hedges (maybe, I think, just); state what the product does.",
    ("confidence", "lower"): "Qualify strong claims you cannot prove.",
    ("directness", "raise"): "Address the reader as 'you'.",
    ("directness", "lower"): "Talk less about 'you' and more about the work.",
}


@register
class BrandVoiceAgent(ReferenceHandler):
    key = "brand-voice"
    name = "BrandVoiceAgent"
    kind = AgentKind.COPILOT
    version = "1.5.0"
    intents = ("brand-voice", "tone-analysis", "knowledge-search")
    owner_team = "marketing"
    description = "Measures tone, aligns copy with the brand voice and searches brand knowledge."
    default_config = {"voice": DEFAULT_VOICE, "top_k": 5}

    def _analyze(self, text: str, ctx) -> dict:
        with ctx.tool("tone-analyzer", {"chars": len(text)}) as call:
            result = tone.analyze(text)
            call.output = {"scores": result["scores"], "labels": result["labels"]}
        return result

    # --- tone-analysis ------------------------------------------------------------------
    def intent_tone_analysis(self, payload: dict, ctx) -> dict:
        text = require_text(payload, ("text", "content"))
        result = self._analyze(text, ctx)
        reading = tx.readability(text)
        record_tokens(ctx, text, "")
        for dimension in ("formality", "positivity"):
            ctx.metric(dimension, result["scores"][dimension])
        return {**result, "readability": reading.as_dict()}

    # --- brand-voice --------------------------------------------------------------------
    def intent_brand_voice(self, payload: dict, ctx) -> dict:
        text = require_text(payload, ("text", "content"))
        # The request's voice wins over the agent's configured one, for one-off campaigns.
        raw_voice = payload.get("voice")
        if raw_voice is None:
            raw_voice = self.config_value(ctx, "voice", DEFAULT_VOICE)
        profile = _voice_profile(raw_voice)

        with ctx.step("analyze", {"chars": len(text)}) as step:
            measured = self._analyze(text, ctx)["scores"]
            step.result = measured
        check_cancelled(ctx)

        with ctx.step("compare", {"targets": profile["targets"]}) as step:
            gaps = []
            for dimension, target in profile["targets"].items():
                delta = round(measured[dimension] - target, 2)
                if abs(delta) > profile["tolerance"]:
                    direction = "lower" if delta > 0 else "raise"
                    gaps.append(
                        {
                            "dimension": dimension,
                            "target": target,
                            "measured": measured[dimension],
                            "direction": direction,
                            "advice": _ADVICE[(dimension, direction)],
                        }
                    )
            step.result = {"gaps": len(gaps)}
        check_cancelled(ctx)

        with ctx.step("rewrite") as step:
            suggestions = []
            rewritten = []
            with ctx.tool("style-rewriter", {"sentences": len(tx.split_sentences(text))}) as call:
                for sentence in tx.split_sentences(text):
                    new, reasons = tone.rewrite_sentence(sentence, profile, measured)
                    rewritten.append(new)
                    if reasons:
                        suggestions.append(
                            {"original": sentence, "rewrite": new, "reasons": reasons}
                        )
                call.output = {"suggestions": len(suggestions)}
            step.result = {"suggestions": len(suggestions)}

        banned_hits = sum(tx.phrase_count(text, w) for w in profile["banned_words"])
        mean_gap = (
            sum(abs(measured[d] - t) for d, t in profile["targets"].items())
            / len(profile["targets"])
            if profile["targets"]
            else 0.0
        )
        # Each banned word costs as much as a 10-point gap on one dimension.
        alignment = max(0, min(100, round(100 * (1 - mean_gap) - 10 * banned_hits)))
        rewrite = " ".join(rewritten)
        record_tokens(ctx, text, rewrite)
        ctx.metric("brand_alignment", alignment, gaps=len(gaps))
        return {
            "alignmentScore": alignment,
            "tone": measured,
            "target": profile["targets"],
            "gaps": gaps,
            "bannedWordHits": banned_hits,
            "suggestions": suggestions,
            "rewrite": rewrite,
        }

    # --- knowledge-search ---------------------------------------------------------------
    def intent_knowledge_search(self, payload: dict, ctx) -> dict:
        query = require_text(payload, ("query", "text"), label="query")
        default_k = self.config_value(ctx, "top_k", 5)
        top_k = optional_int(payload, "top_k", default_k, minimum=1, maximum=50)
        min_score = optional_float(payload, "min_score", 0.0, minimum=0.0, maximum=1.0)
        embedding = optional_choice(payload, "embedding", EMBEDDINGS, "tfidf")
        documents = self._documents(ctx)

        with ctx.step("index", {"documents": len(documents), "embedding": embedding}) as step:
            # Titles are repeated so a match there outweighs one buried in the body.
            texts = [f"{d['title']} {d['title']} {d['text']}" for d in documents]
            ids = [d["id"] for d in documents]
            if embedding == "tfidf":
                index = TfidfIndex(list(zip(ids, texts, strict=True)))
            else:
                vectors = [hashed_vector(t) for t in texts]
            step.result = {"indexed": len(documents)}
        check_cancelled(ctx)

        tool_input = {"query": query, "topK": top_k, "embedding": embedding, "minScore": min_score}
        with ctx.tool("vector-search", tool_input) as call:
            if embedding == "tfidf":
                hits = index.search(query, top_k=top_k, min_score=min_score)
            else:
                hits = rank(hashed_vector(query), vectors, ids, top_k=top_k, min_score=min_score)
            call.output = {"ids": [h.id for h in hits], "scores": [h.score for h in hits]}

        results = []
        for hit in hits:
            document = documents[hit.position]
            results.append(
                {
                    "id": document["id"],
                    "title": document["title"],
                    "score": hit.score,
                    "snippet": self._snippet(query, document["text"]),
                }
            )
        record_tokens(ctx, query, [r["snippet"] for r in results])
        ctx.metric("vector_recalls", len(results), embedding=embedding, documents=len(documents))
        return {
            "query": query,
            "embedding": embedding,
            "dataset": getattr(ctx.dataset, "slug", "") or "",
            "documentsSearched": len(documents),
            "results": results,
        }

    @staticmethod
    def _documents(ctx) -> list[dict]:
        dataset = ctx.dataset
        if dataset is None:
            raise PermanentHandlerError(
                "knowledge-search needs a dataset: pass datasetId with the request"
            )
        raw = (dataset.metadata or {}).get("documents")
        if not isinstance(raw, list) or not raw:
            raise PermanentHandlerError(
                "the dataset has no documents (metadata.documents must be a non-empty list)"
            )
        documents = []
        for position, item in enumerate(raw):
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise PermanentHandlerError(
                    f"dataset document {position} must be an object with a string 'text'"
                )
            documents.append(
                {
                    "id": str(item.get("id", position)),
                    "title": optional_str(item, "title"),
                    "text": item["text"],
                }
            )
        return documents

    @staticmethod
    def _snippet(query: str, text: str) -> str:
        """The document sentence most similar to the query, shortened for display."""
        sentences = tx.split_sentences(text) or [text]
        query_vector = hashed_vector(query)
        best = max(sentences, key=lambda s: cosine(query_vector, hashed_vector(s)))
        return tx.truncate(best, 240)
