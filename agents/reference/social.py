"""SocialAgent: platform-sized posts, caption clean-up and hashtag packs."""

from __future__ import annotations

import re

from agents.choices import AgentKind
from agents.handlers.base import PermanentHandlerError
from agents.handlers.registry import register
from agents.reference import text as tx
from agents.reference.common import (
    ReferenceHandler,
    check_cancelled,
    optional_choice,
    optional_int,
    optional_str,
    optional_str_list,
    record_tokens,
)

# Hard character limits each platform enforces, and the hashtag count that
# performs well there (Instagram tolerates many, X and LinkedIn very few).
PLATFORMS: dict[str, dict] = {
    "x": {"limit": 280, "hashtags": 2},
    "linkedin": {"limit": 3000, "hashtags": 3},
    "instagram": {"limit": 2200, "hashtags": 10, "max_hashtags": 30},
    "facebook": {"limit": 63206, "hashtags": 2},
    "threads": {"limit": 500, "hashtags": 1},
    "tiktok": {"limit": 2200, "hashtags": 5},
}
PLATFORM_ALIASES = {"twitter": "x"}
CTA_VERBS = tx.lexicon(
    "try join read learn discover get sign start download book shop watch register subscribe "
    "comment share follow tell visit save grab"
)
_HASHTAG = re.compile(r"#\w+")
_HOOKS = {
    "x": "{Topic}, in one thread-sized thought:",
    "linkedin": "Here is what most people get wrong about {topic}.",
    "instagram": "{Topic}, made simple \u2728",
    "facebook": "Let's talk about {topic}.",
    "threads": "Quick take on {topic}:",
    "tiktok": "POV: you finally figured out {topic}",
}
# Generic suffixes that turn a core tag into community and discovery tags.
_TAG_SUFFIXES = ("tips", "community", "101")


def _platform(payload: dict) -> str:
    raw = optional_str(payload, "platform", "linkedin").lower() or "linkedin"
    raw = PLATFORM_ALIASES.get(raw, raw)
    return optional_choice({"platform": raw}, "platform", tuple(PLATFORMS), "linkedin")


def hashtag_pack(seeds: list[str], phrases: list[str], count: int) -> dict[str, list[str]]:
    """Core tags from the seeds, niche tags from phrases, community tags from suffixes.

    Deduplicated case-insensitively across groups because platforms treat #SaaS and
    #saas as one tag; groups are filled in order until ``count`` tags exist.
    """
    seen: set[str] = set()
    groups: dict[str, list[str]] = {"core": [], "niche": [], "community": []}

    def add(group: str, phrase: str) -> None:
        tag = tx.to_hashtag(phrase)
        if tag and tag.lower() not in seen and sum(map(len, groups.values())) < count:
            seen.add(tag.lower())
            groups[group].append(tag)

    for seed in seeds:
        add("core", seed)
    for phrase in phrases:
        add("niche", phrase)
    for seed in seeds[:3]:
        for suffix in _TAG_SUFFIXES:
            add("community", f"{seed} {suffix}")
    return groups


@register
class SocialAgent(ReferenceHandler):
    key = "social"
    name = "SocialAgent"
    kind = AgentKind.WORKFLOW
    version = "3.0.0"
    intents = ("generate-post", "optimize-caption", "hashtag-pack")
    owner_team = "marketing"
    description = "Writes platform-sized posts, tidies captions and builds hashtag packs."
    default_config = {"platform": "linkedin"}

    def _hashtags(self, ctx, text: str, seeds: list[str], count: int) -> list[str]:
        with ctx.tool("hashtag-generator", {"seeds": seeds, "count": count}) as call:
            # Only phrases the text repeats make good tags; one-off word pairs are noise.
            phrases = [phrase for phrase, _ in tx.bigrams(text, top_n=5, min_count=2)]
            if not seeds:
                # A repeated phrase beats its words: #RemoteWork, not #Remote and #Work.
                covered = {word for phrase in phrases for word in phrase.split()}
                # Past-tense verbs ("changed") are frequent but make meaningless tags.
                words = [
                    w
                    for w, _ in tx.keywords(text, top_n=8)
                    if w not in covered and not (w.endswith("ed") and not w.endswith("eed"))
                ][:5]
                seeds, phrases = phrases + words, []
            groups = hashtag_pack(seeds, phrases, count)
            call.output = groups
        return [tag for group in groups.values() for tag in group]

    # --- generate-post ------------------------------------------------------------------
    def intent_generate_post(self, payload: dict, ctx) -> dict:
        if "platform" not in payload:
            payload["platform"] = self.config_value(ctx, "platform", "linkedin")
        platform = _platform(payload)
        topic = optional_str(payload, "topic")
        text = optional_str(payload, "text")
        if not topic and not text:
            raise PermanentHandlerError(
                "payload.topic or payload.text is required", details={"field": "topic"}
            )
        keywords = optional_str_list(payload, "keywords")
        cta = optional_str(payload, "cta")
        rules = PLATFORMS[platform]

        with ctx.step("compose", {"platform": platform}) as step:
            if not topic:
                found = tx.bigrams(text, top_n=1) or tx.keywords(text, top_n=1)
                topic = found[0][0]
            hook = _HOOKS[platform].format(topic=topic.lower(), Topic=topic[:1].upper() + topic[1:])
            if text:
                points = [s.text for s in tx.summarize(text, max_sentences=2)]
            else:
                points = [f"{topic[:1].upper() + topic[1:]} pays off when you start small."]
            body = " ".join(points)
            step.result = {"topic": topic}
        check_cancelled(ctx)

        hashtags = self._hashtags(ctx, f"{topic}. {text}", keywords or [topic], rules["hashtags"])
        with ctx.step("fit", {"limit": rules["limit"]}) as step:
            tail = "\n\n".join(filter(None, [cta, " ".join(hashtags)]))
            # Hook, call to action and tags survive; the body is what gets shortened.
            room = rules["limit"] - len(hook) - len(tail) - 4
            if room < 20:
                hashtags, tail = [], cta
                room = rules["limit"] - len(hook) - len(tail) - 4
            post = "\n\n".join(filter(None, [hook, tx.truncate(body, max(room, 0)), tail]))
            post = tx.truncate(post, rules["limit"])
            step.result = {"characters": len(post)}
        record_tokens(ctx, " ".join([topic, text, *keywords]), post)
        ctx.metric("post_characters", len(post), platform=platform)
        return {
            "platform": platform,
            "post": post,
            "characters": len(post),
            "limit": rules["limit"],
            "withinLimit": len(post) <= rules["limit"],
            "hashtags": hashtags,
        }

    # --- optimize-caption ---------------------------------------------------------------
    def intent_optimize_caption(self, payload: dict, ctx) -> dict:
        caption = optional_str(payload, "caption") or optional_str(payload, "text")
        if not caption:
            raise PermanentHandlerError(
                "payload.caption is required (a non-empty string)", details={"field": "caption"}
            )
        platform = _platform(payload)
        cta = optional_str(payload, "cta") or "Tell us what you think in the comments."
        rules = PLATFORMS[platform]

        with ctx.tool("caption-optimizer", {"platform": platform, "chars": len(caption)}) as call:
            before = self._caption_score(caption, platform)
            changes = []
            tags = list(dict.fromkeys(t for t in _HASHTAG.findall(caption)))
            text = _HASHTAG.sub("", caption)
            text = re.sub(r"([!?.])\1+", r"\1", text)
            text = re.sub(r"[ \t]+", " ", text)
            text = "\n".join(line.strip() for line in text.splitlines()).strip()
            if text != caption.strip():
                changes.append("collapsed repeated punctuation and moved hashtags to the end")
            if len(tags) < len(_HASHTAG.findall(caption)):
                changes.append("removed duplicate hashtags")
            if len(tags) > rules["hashtags"]:
                changes.append(f"kept the first {rules['hashtags']} of {len(tags)} hashtags")
                tags = tags[: rules["hashtags"]]
            if not tags:
                tags = self._hashtags(ctx, text, [], rules["hashtags"])
                changes.append("added hashtags from the caption's keywords")
            if not set(tx.tokenize(text)) & CTA_VERBS:
                text = f"{text}\n\n{cta}"
                changes.append("added a call to action")
            room = rules["limit"] - len(" ".join(tags)) - 2
            if len(text) > room:
                text = tx.truncate(text, room)
                changes.append(f"shortened to fit the {rules['limit']}-character limit")
            optimized = f"{text}\n\n{' '.join(tags)}".strip()
            after = self._caption_score(optimized, platform)
            call.output = {"before": before, "after": after, "changes": len(changes)}
        record_tokens(ctx, caption, optimized)
        ctx.metric("caption_score", after, before=before)
        return {
            "platform": platform,
            "caption": optimized,
            "characters": len(optimized),
            "changes": changes,
            "scoreBefore": before,
            "scoreAfter": after,
        }

    @staticmethod
    def _caption_score(caption: str, platform: str) -> int:
        """0-100: fits the limit, a sensible tag count, a call to action, a short hook."""
        rules = PLATFORMS[platform]
        tags = _HASHTAG.findall(caption)
        first_line = caption.strip().splitlines()[0] if caption.strip() else ""
        score = 0
        score += 30 if len(caption) <= rules["limit"] else 0
        score += 20 if 1 <= len(tags) <= rules["hashtags"] else 0
        score += 20 if set(tx.tokenize(caption)) & CTA_VERBS else 0
        score += 15 if 0 < len(first_line) <= 125 else 0
        score += 15 if not re.search(r"([!?])\1", caption) else 0
        return score

    # --- hashtag-pack -------------------------------------------------------------------
    def intent_hashtag_pack(self, payload: dict, ctx) -> dict:
        keywords = optional_str_list(payload, "keywords")
        text = optional_str(payload, "text") or optional_str(payload, "topic")
        if not keywords and not text:
            raise PermanentHandlerError(
                "payload.keywords or payload.text is required", details={"field": "keywords"}
            )
        platform = _platform(payload)
        # A pack is a pool to pick from, so it is larger than what one post should carry.
        count = optional_int(payload, "count", 10, minimum=1, maximum=30)
        tags = self._hashtags(ctx, text, keywords, count)
        recommended = PLATFORMS[platform]["hashtags"]
        record_tokens(ctx, " ".join([text, *keywords]), tags)
        ctx.metric("hashtags_generated", len(tags), platform=platform)
        return {
            "platform": platform,
            "hashtags": tags,
            "recommendedCount": recommended,
            "recommended": tags[:recommended],
            "text": " ".join(tags),
        }
