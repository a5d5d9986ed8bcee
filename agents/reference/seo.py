"""SEOAgent: on-page audits and keyword research over the text a client sends."""

from __future__ import annotations

import re

from agents.choices import AgentKind
from agents.handlers.registry import register
from agents.reference import text as tx
from agents.reference.common import (
    ReferenceHandler,
    check_cancelled,
    optional_int,
    optional_str,
    optional_str_list,
    record_tokens,
    require_text,
)

# Ranges that search engines display without truncation, and the usual
# density band: below it the page is not "about" the keyword, above it reads
# as stuffing. They are conventions, not laws, so issues are warnings.
TITLE_RANGE = (30, 60)
META_RANGE = (70, 160)
DENSITY_RANGE = (0.5, 2.5)
MIN_WORDS = 300
LONG_SENTENCE_WORDS = 25
SEVERITY_COST = {"error": 15, "warning": 8, "info": 3}

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_HTML_HEADING = re.compile(r"<h([1-6])[^>]*>(.*?)</h\1>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]+>")

# Question and modifier patterns that turn a seed keyword into long-tail ideas.
_LONG_TAIL = (
    "what is {kw}",
    "how to improve {kw}",
    "{kw} best practices",
    "{kw} examples",
    "{kw} tools",
)


def extract_headings(text: str) -> list[dict]:
    """Markdown and HTML headings in document order, as {"level", "text"}."""
    found = [(m.start(), len(m.group(1)), m.group(2)) for m in _MD_HEADING.finditer(text)]
    found += [
        (m.start(), int(m.group(1)), _HTML_TAG.sub("", m.group(2)))
        for m in _HTML_HEADING.finditer(text)
    ]
    return [{"level": level, "text": " ".join(t.split())} for _, level, t in sorted(found)]


def _issue(issues: list, severity: str, code: str, message: str) -> None:
    issues.append({"severity": severity, "code": code, "message": message})


@register
class SEOAgent(ReferenceHandler):
    key = "seo"
    name = "SEOAgent"
    kind = AgentKind.ANALYST
    version = "2.4.0"
    intents = ("seo-audit", "keyword-research")
    owner_team = "marketing"
    description = "Audits pages for on-page SEO and researches keywords from existing copy."
    default_config = {"min_words": MIN_WORDS}

    # --- seo-audit ----------------------------------------------------------------------
    def intent_seo_audit(self, payload: dict, ctx) -> dict:
        raw = require_text(payload, ("text", "content", "html"))
        title = optional_str(payload, "title")
        meta = optional_str(payload, "meta_description")
        keyword = optional_str(payload, "keyword").lower()
        min_words = self.config_value(ctx, "min_words", MIN_WORDS)
        body = _HTML_TAG.sub(" ", raw)
        issues: list[dict] = []

        with ctx.step("analyze-content", {"chars": len(raw)}) as step:
            if not keyword:
                # No target keyword given: audit against what the page is evidently about.
                with ctx.tool("keyword-extractor", {"chars": len(body)}) as call:
                    top = tx.keywords(body, top_n=1)
                    keyword = top[0][0] if top else ""
                    call.output = {"keyword": keyword}
            words = len(tx.tokenize(body))
            density = tx.keyword_density(body, keyword) if keyword else 0.0
            first_words = " ".join(tx.tokenize(body)[:100])
            headings = extract_headings(raw)
            sentences = tx.split_sentences(body)
            long_sentences = [s for s in sentences if len(tx.tokenize(s)) > LONG_SENTENCE_WORDS]
            step.result = {"words": words, "density": density, "headings": len(headings)}

            if words < min_words:
                _issue(issues, "warning", "thin-content", f"{words} words; aim for {min_words}+.")
            if keyword and density < DENSITY_RANGE[0]:
                _issue(issues, "warning", "keyword-density-low", f"'{keyword}' is {density}%.")
            elif density > DENSITY_RANGE[1]:
                _issue(issues, "warning", "keyword-stuffing", f"'{keyword}' is {density}%.")
            if keyword and tx.phrase_count(first_words, keyword) == 0:
                _issue(
                    issues, "info", "keyword-late", f"'{keyword}' is not in the first 100 words."
                )
            h1 = [h for h in headings if h["level"] == 1]
            if len(h1) > 1:
                _issue(issues, "warning", "multiple-h1", f"{len(h1)} H1 headings; use one.")
            if not h1 and not title:
                _issue(issues, "warning", "missing-h1", "No H1 heading and no title.")
            if words >= min_words and not any(h["level"] == 2 for h in headings):
                _issue(issues, "info", "no-subheadings", "Break long copy up with H2 sections.")
            if sentences and len(long_sentences) / len(sentences) > 0.25:
                _issue(
                    issues,
                    "warning",
                    "long-sentences",
                    f"{len(long_sentences)} of {len(sentences)} sentences exceed "
                    f"{LONG_SENTENCE_WORDS} words.",
                )
        check_cancelled(ctx)

        with ctx.step("check-metadata", {"title": title, "metaDescription": meta}) as step:
            self._check_length(issues, "title", title, TITLE_RANGE, missing="error")
            self._check_length(issues, "meta-description", meta, META_RANGE, missing="warning")
            for field, value in (("title", title), ("meta-description", meta)):
                if value and keyword and tx.phrase_count(value, keyword) == 0:
                    _issue(issues, "info", f"{field}-no-keyword", f"'{keyword}' not in {field}.")
            step.result = {"titleLength": len(title), "metaLength": len(meta)}
        check_cancelled(ctx)

        with ctx.tool("readability-scorer", {"chars": len(body)}) as call:
            reading = tx.readability(body)
            call.output = reading.as_dict()
        if reading.words and reading.flesch_reading_ease < 50:
            _issue(
                issues,
                "warning",
                "hard-to-read",
                f"Flesch reading ease {reading.flesch_reading_ease}; aim for 60+.",
            )

        score = max(0, 100 - sum(SEVERITY_COST[i["severity"]] for i in issues))
        record_tokens(ctx, raw, [i["message"] for i in issues])
        ctx.metric("seo_score", score, issues=len(issues))
        return {
            "score": score,
            "keyword": keyword,
            "wordCount": words,
            "keywordDensity": density,
            "title": {"text": title, "length": len(title), "recommended": list(TITLE_RANGE)},
            "metaDescription": {"text": meta, "length": len(meta), "recommended": list(META_RANGE)},
            "headings": headings,
            "readability": reading.as_dict(),
            "issues": issues,
            "topKeywords": [w for w, _ in tx.keywords(body, top_n=5)],
        }

    @staticmethod
    def _check_length(issues, field, value, bounds, *, missing) -> None:
        low, high = bounds
        if not value:
            _issue(issues, missing, f"{field}-missing", f"No {field.replace('-', ' ')}.")
        elif len(value) < low:
            _issue(issues, "warning", f"{field}-short", f"{field} is {len(value)} chars; {low}+.")
        elif len(value) > high:
            _issue(
                issues, "warning", f"{field}-long", f"{field} is {len(value)} chars; max {high}."
            )

    # --- keyword-research ---------------------------------------------------------------
    def intent_keyword_research(self, payload: dict, ctx) -> dict:
        text = require_text(payload, ("text", "content"))
        seeds = [s.lower() for s in optional_str_list(payload, "seeds")]
        top_n = optional_int(payload, "top_n", 10, minimum=1, maximum=50)

        with ctx.tool("keyword-extractor", {"chars": len(text), "topN": top_n}) as call:
            ranked = tx.keywords(text, top_n=top_n)
            pairs = tx.bigrams(text, top_n=top_n)
            call.output = {"keywords": len(ranked), "bigrams": len(pairs)}
        check_cancelled(ctx)

        counts = tx.word_frequencies(text)
        keywords = [
            {
                "keyword": word,
                "score": score,
                "count": counts[word],
                "density": tx.keyword_density(text, word),
            }
            for word, score in ranked
        ]
        phrases = [
            {"phrase": phrase, "count": count, "density": tx.keyword_density(text, phrase)}
            for phrase, count in pairs
        ]
        # Phrases beat single words for long-tail ideas: they are more specific.
        bases = seeds or [p["phrase"] for p in phrases[:2]] or [k["keyword"] for k in keywords[:2]]
        ideas = [pattern.format(kw=base) for base in bases for pattern in _LONG_TAIL]
        seed_coverage = {
            seed: {"count": tx.phrase_count(text, seed), "density": tx.keyword_density(text, seed)}
            for seed in seeds
        }
        record_tokens(ctx, text, [k["keyword"] for k in keywords] + ideas)
        ctx.metric("keywords_found", len(keywords))
        return {
            "keywords": keywords,
            "bigrams": phrases,
            "longTail": ideas,
            "seedCoverage": seed_coverage,
        }
