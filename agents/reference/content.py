"""ContentAgent: extractive summaries, outline-first drafts and channel repurposing."""

from __future__ import annotations

from agents.choices import AgentKind
from agents.handlers.base import PermanentHandlerError
from agents.handlers.registry import register
from agents.reference import text as tx
from agents.reference.common import (
    ReferenceHandler,
    check_cancelled,
    optional_choice,
    optional_float,
    optional_int,
    optional_str,
    optional_str_list,
    record_tokens,
    require_text,
)

TONES = ("professional", "friendly", "bold")
REPURPOSE_FORMATS = ("tweet", "linkedin", "email-snippet")
TWEET_LIMIT = 280
LINKEDIN_LIMIT = 3000

# Section templates per tone. A draft is a scaffold a writer finishes, so each
# section states what it should cover and weaves in the keywords it must carry.
_SECTIONS = (
    ("Why {topic} matters", "{Topic} shapes how {audience} work every day."),
    ("What {keyword} really means", "At its core, {keyword} is about clear, repeatable results."),
    ("How to get started with {topic}", "Start small: pick one {keyword} goal and measure it."),
    ("Common mistakes to avoid", "Most teams skip {keyword} and pay for it later."),
    ("Measuring {keyword} success", "Track a few numbers that tie {topic} to outcomes."),
    ("Scaling {topic} across the team", "Document what works so {keyword} becomes a habit."),
    ("Tools that help with {keyword}", "Choose tools that make {topic} visible to everyone."),
    ("What comes next for {topic}", "Expect {keyword} to matter even more next year."),
)
_OPENERS = {
    "professional": "This guide explains {topic} for {audience} and shows where to begin.",
    "friendly": "Curious about {topic}? Here is a friendly walk-through for {audience}.",
    "bold": "{Topic} is no longer optional for {audience}. Here is how to win at it.",
}
_CLOSERS = {
    "professional": "Put these steps into practice and review the results in a month.",
    "friendly": "Give it a try this week and tell us how it goes!",
    "bold": "Stop waiting. Start with {keyword} today.",
}


@register
class ContentAgent(ReferenceHandler):
    key = "content"
    name = "ContentAgent"
    kind = AgentKind.COPILOT
    version = "3.1.0"
    intents = ("generate-draft", "summarize", "repurpose")
    owner_team = "marketing"
    description = "Drafts long-form content, summarizes text and repurposes it for other channels."
    default_config = {"tone": "professional", "max_sentences": 3}

    # --- summarize ----------------------------------------------------------------------
    def intent_summarize(self, payload: dict, ctx) -> dict:
        text = require_text(payload, ("text", "content"))
        default_max = self.config_value(ctx, "max_sentences", 3)
        max_sentences = optional_int(payload, "max_sentences", default_max, minimum=1, maximum=50)
        ratio = optional_float(payload, "ratio", None, minimum=0.01, maximum=1.0)
        with ctx.tool(
            "text-summarizer", {"chars": len(text), "maxSentences": max_sentences, "ratio": ratio}
        ) as call:
            picked = tx.summarize(text, max_sentences=max_sentences, ratio=ratio)
            call.output = {"sentences": len(picked)}
        total_sentences = len(tx.split_sentences(text))
        summary = " ".join(s.text for s in picked)
        words_in = len(tx.tokenize(text))
        compression = round(len(tx.tokenize(summary)) / words_in, 3) if words_in else 0.0
        record_tokens(ctx, text, summary)
        ctx.metric("compression_ratio", compression)
        return {
            "summary": summary,
            "sentences": [{"index": s.index, "text": s.text, "score": s.score} for s in picked],
            "sentenceCount": len(picked),
            "sourceSentenceCount": total_sentences,
            "compressionRatio": compression,
            "keywords": [word for word, _ in tx.keywords(text, top_n=5)],
        }

    # --- generate-draft -----------------------------------------------------------------
    def intent_generate_draft(self, payload: dict, ctx) -> dict:
        topic = require_text(payload, ("topic", "title"), label="topic").strip()
        keywords = optional_str_list(payload, "keywords")
        notes = optional_str(payload, "notes")
        audience = optional_str(payload, "audience") or "busy teams"
        tone = optional_choice(payload, "tone", TONES, self.config_value(ctx, "tone", "friendly"))
        sections = optional_int(payload, "sections", 4, minimum=2, maximum=len(_SECTIONS))

        with ctx.step("outline", {"topic": topic, "sections": sections}) as step:
            if not keywords:
                # Without explicit keywords, take them from the notes or the topic itself.
                with ctx.tool("keyword-extractor", {"chars": len(notes or topic)}) as call:
                    found = tx.keywords(notes or topic, top_n=5)
                    keywords = [word for word, _ in found] or [topic.lower()]
                    call.output = {"keywords": keywords}
            outline = self._outline(topic, keywords, audience, sections)
            step.result = {"headings": [h for h, _ in outline]}
        check_cancelled(ctx)

        with ctx.step("draft", {"tone": tone}) as step:
            fill = _filler(topic, keywords, audience)
            title = tx.title_case(f"{topic}: a practical guide")
            lines = [f"# {title}", "", _OPENERS[tone].format(**fill(0))]
            for index, (heading, body) in enumerate(outline):
                lines += ["", f"## {heading}", "", body]
                if notes and index == 0:
                    lines.append(" ".join(s.text for s in tx.summarize(notes, max_sentences=2)))
            lines += ["", _CLOSERS[tone].format(**fill(0))]
            draft = "\n".join(lines)
            coverage = {kw: tx.phrase_count(draft, kw) for kw in keywords}
            step.result = {"words": len(tx.tokenize(draft))}

        with ctx.tool("readability-scorer", {"chars": len(draft)}) as call:
            score = tx.readability(draft)
            call.output = score.as_dict()
        record_tokens(ctx, " ".join([topic, notes, *keywords]), draft)
        ctx.metric("draft_words", score.words)
        return {
            "title": title,
            "outline": [heading for heading, _ in outline],
            "draft": draft,
            "tone": tone,
            "keywords": keywords,
            "keywordCoverage": coverage,
            "wordCount": score.words,
            "readability": score.as_dict(),
        }

    @staticmethod
    def _outline(
        topic: str, keywords: list[str], audience: str, sections: int
    ) -> list[tuple[str, str]]:
        fill = _filler(topic, keywords, audience)
        outline = []
        for index in range(sections):
            # The last section always looks ahead, whatever the section count.
            template = _SECTIONS[index] if index < sections - 1 else _SECTIONS[-1]
            heading, body = (part.format(**fill(index)) for part in template)
            outline.append((tx.title_case(heading), body))
        return outline

    # --- repurpose ----------------------------------------------------------------------
    def intent_repurpose(self, payload: dict, ctx) -> dict:
        text = require_text(payload, ("text", "content"))
        formats = optional_str_list(payload, "formats") or list(REPURPOSE_FORMATS)
        unknown = [f for f in formats if f not in REPURPOSE_FORMATS]
        if unknown:
            raise PermanentHandlerError(
                f"unknown formats {', '.join(unknown)}; use {', '.join(REPURPOSE_FORMATS)}",
                details={"field": "formats"},
            )
        cta = optional_str(payload, "cta") or "Read the full post"
        link = optional_str(payload, "url")

        with ctx.step("extract", {"chars": len(text)}) as step:
            with ctx.tool("text-summarizer", {"chars": len(text), "maxSentences": 3}) as call:
                key_points = [s.text for s in tx.summarize(text, max_sentences=3)]
                call.output = {"sentences": len(key_points)}
            with ctx.tool("keyword-extractor", {"chars": len(text)}) as call:
                top_words = [w for w, _ in tx.keywords(text, top_n=3)]
                phrases = [p for p, _ in tx.bigrams(text, top_n=1)]
                call.output = {"keywords": top_words, "bigrams": phrases}
            step.result = {"keyPoints": len(key_points), "keywords": top_words}
        check_cancelled(ctx)

        # The leading phrase makes a better hashtag and subject than single words.
        topics = phrases + top_words
        hashtags = list(dict.fromkeys(t for t in (tx.to_hashtag(w) for w in topics) if t))
        variants: dict[str, dict] = {}
        with ctx.step("render", {"formats": formats}) as step:
            for fmt in formats:
                check_cancelled(ctx)
                variants[fmt] = self._render(fmt, key_points, hashtags, cta, link, topics)
            step.result = {fmt: len(v["text"]) for fmt, v in variants.items()}
        record_tokens(ctx, text, [v["text"] for v in variants.values()])
        ctx.metric("variants_generated", len(variants))
        return {"keyPoints": key_points, "keywords": top_words, "variants": variants}

    @staticmethod
    def _render(fmt, key_points, hashtags, cta, link, topics) -> dict:
        lead = key_points[0]
        if fmt == "tweet":
            suffix = " ".join(filter(None, [link, *hashtags[:2]]))
            # Reserve room for the link and tags first; the sentence is what gets cut.
            room = TWEET_LIMIT - (len(suffix) + 1 if suffix else 0)
            body = tx.truncate(lead, room)
            tweet = f"{body} {suffix}".strip()
            return {"text": tweet, "characters": len(tweet), "limit": TWEET_LIMIT}
        if fmt == "linkedin":
            lines = [lead, ""]
            lines += [f"\u2022 {point}" for point in key_points[1:]] or [f"\u2022 {lead}"]
            action = f"{cta}: {link}" if link else f"{cta}."
            lines += ["", action, "", " ".join(hashtags)]
            post = tx.truncate("\n".join(lines).strip(), LINKEDIN_LIMIT)
            return {"text": post, "characters": len(post), "limit": LINKEDIN_LIMIT}
        subject_topic = topics[0] if topics else "this update"
        subject = tx.truncate(tx.title_case(f"{subject_topic}: what you need to know"), 60)
        preheader = tx.truncate(lead, 90)
        body = " ".join(key_points[:2])
        action = f"{cta} \u2192 {link}" if link else f"{cta}."
        snippet = f"{body}\n\n{action}"
        return {"subject": subject, "preheader": preheader, "text": snippet}


def _filler(topic: str, keywords: list[str], audience: str):
    """Template values for section ``index``: keywords rotate so each gets a section."""

    def values(index: int) -> dict:
        keyword = keywords[index % len(keywords)] if keywords else topic.lower()
        return {
            "topic": topic.lower(),
            "Topic": topic[:1].upper() + topic[1:],
            "keyword": keyword,
            "audience": audience,
        }

    return values
