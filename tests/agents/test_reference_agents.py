"""The reference agents, called directly: exact outputs, recorded tools and metrics, bad input.

No database: handlers only see a RunContext (which buffers everything in memory)
and an unsaved Dataset, so these tests run without the ``db`` fixture, and any
accidental query would fail them.
"""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest

import agents.reference  # noqa: F401 - registers the handlers and definitions
from agents.choices import AgentKind
from agents.handlers.base import HandlerRequest, PermanentHandlerError
from agents.handlers.registry import registry
from agents.models import Dataset
from agents.reference import text as tx
from agents.reference.email import sample_size_per_variant, score_subject
from agents.reference.vectors import TfidfIndex, cosine, hashed_vector
from runs.context import RunContext

ARTICLE = (
    "Remote work changed how teams collaborate. "
    "Many teams now rely on asynchronous tools to collaborate across time zones. "
    "The weather was nice yesterday. "
    "Asynchronous collaboration tools help remote teams document decisions. "
    "Lunch was pizza."
)
DOCUMENTS = [
    {
        "id": "pricing",
        "title": "Pricing and plans",
        "text": "Plans start at 29 dollars per month. Annual billing saves 20 percent.",
    },
    {
        "id": "refunds",
        "title": "Refund policy",
        "text": "Refunds are available within 30 days of purchase. Contact support for a refund.",
    },
    {
        "id": "voice",
        "title": "Brand voice guide",
        "text": "We write in a confident, warm tone. Avoid jargon and exclamation marks.",
    },
]

# name -> (handler key, kind, version, intents, owner team), as in the original system.
EXPECTED = {
    "ContentAgent": (
        "content",
        AgentKind.COPILOT,
        "3.1.0",
        ("generate-draft", "summarize", "repurpose"),
        "marketing",
    ),
    "SEOAgent": ("seo", AgentKind.ANALYST, "2.4.0", ("seo-audit", "keyword-research"), "marketing"),
    "EmailAgent": (
        "email",
        AgentKind.WORKFLOW,
        "2.2.0",
        ("generate-sequence", "optimize-subject", "ab-test"),
        "marketing",
    ),
    "SupportAgent": (
        "support",
        AgentKind.COPILOT,
        "1.9.0",
        ("support", "triage", "macro-suggest"),
        "support",
    ),
    "SocialAgent": (
        "social",
        AgentKind.WORKFLOW,
        "3.0.0",
        ("generate-post", "optimize-caption", "hashtag-pack"),
        "marketing",
    ),
    "BrandVoiceAgent": (
        "brand-voice",
        AgentKind.COPILOT,
        "1.5.0",
        ("brand-voice", "tone-analysis", "knowledge-search"),
        "marketing",
    ),
    "InsightAgent": ("", AgentKind.ANALYST, "2.1.0", ("analyze-data", "metric-digest"), "ai-lab"),
    "AdAgent": ("", AgentKind.COPILOT, "1.7.0", ("generate-ad", "variant-pack"), "marketing"),
    "DesignAgent": ("", AgentKind.COPILOT, "1.3.0", ("design-brief", "image-variant"), "marketing"),
    "CampaignAgent": (
        "",
        AgentKind.WORKFLOW,
        "2.0.0",
        ("plan-campaign", "optimize-funnel"),
        "marketing",
    ),
}


def make_ctx(*, documents=None, config=None) -> RunContext:
    dataset = Dataset(slug="kb", metadata={"documents": documents}) if documents else None
    return RunContext(
        run_id="r1", organization=None, agent=None, config=config or {}, dataset=dataset
    )


def call(key: str, intent: str, payload, ctx: RunContext | None = None):
    ctx = ctx or make_ctx()
    request = HandlerRequest(
        run_id="r1", agent=key, intent=intent, payload=payload, organization="org-a"
    )
    output = registry.get(key).handle(request, ctx)
    json.dumps(output)  # every output must be storable in a JSON column as-is
    return output, ctx


def tool_slugs(ctx: RunContext) -> list[str]:
    return [c.slug for c in ctx.tool_calls.values()]


def metrics(ctx: RunContext) -> dict[str, float]:
    return {m.name: m.value for m in ctx.metrics}


# --- registry ----------------------------------------------------------------------------


def test_registry_declares_the_ten_original_definitions():
    definitions = {d.name: d for d in registry.definitions()}
    assert set(definitions) == set(EXPECTED)
    assert len(registry.definitions()) == 10
    for name, (key, kind, version, intents, team) in EXPECTED.items():
        d = definitions[name]
        assert (d.handler, d.kind, d.version, d.intents, d.owner_team) == (
            key,
            kind,
            version,
            intents,
            team,
        ), name


def test_six_handlers_are_registered_with_their_metadata():
    for name, (key, kind, version, intents, team) in EXPECTED.items():
        if not key:
            assert not registry.is_registered(key)
            continue
        handler = registry.get(key)
        assert (handler.name, handler.kind, handler.version, handler.intents) == (
            name,
            kind,
            version,
            intents,
        )
        assert handler.owner_team == team
        assert registry.get(key) is handler  # one instance per process


# --- common behaviour ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["content", "seo", "email", "support", "social", "brand-voice"])
def test_unknown_intent_is_a_permanent_error(key):
    with pytest.raises(PermanentHandlerError, match="does not serve intent 'no-such-intent'"):
        call(key, "no-such-intent", {"text": "hello"})


@pytest.mark.parametrize(
    ("key", "intent", "payload", "message"),
    [
        ("content", "summarize", {}, r"payload\.text is required"),
        ("content", "summarize", {"text": 42}, r"payload\.text must be a string"),
        ("content", "summarize", {"text": "   "}, r"payload\.text is empty"),
        ("content", "summarize", ["not", "a", "dict"], "payload must be a JSON object"),
        ("content", "summarize", {"text": ARTICLE, "maxSentences": True}, "must be an integer"),
        ("content", "repurpose", {"text": ARTICLE, "formats": ["fax"]}, "unknown formats fax"),
        ("content", "generate-draft", {"keywords": ["x"]}, r"payload\.topic is required"),
        ("seo", "seo-audit", {"title": "No body"}, r"payload\.text is required"),
        ("seo", "keyword-research", {"text": ARTICLE, "topN": 0}, "between 1 and 50"),
        ("email", "ab-test", {"minimumDetectableEffect": 0.1}, "baseline_rate is required"),
        ("email", "ab-test", {"baselineRate": "10%"}, "must be a number"),
        ("email", "ab-test", {"baselineRate": 0.9, "mde": 0.5}, "outside"),
        ("email", "optimize-subject", {"subject": None}, r"payload\.subject is required"),
        ("email", "generate-sequence", {"product": "X", "goal": "spam"}, "must be one of"),
        ("support", "triage", {"text": 5}, "must be a string"),
        ("support", "triage", {}, r"payload\.text is required"),
        ("social", "generate-post", {"platform": "myspace", "topic": "x"}, "must be one of"),
        ("social", "hashtag-pack", {"keywords": [1, 2]}, "list of strings"),
        ("social", "optimize-caption", {}, r"payload\.caption is required"),
        ("brand-voice", "tone-analysis", {"text": None}, r"payload\.text is required"),
        ("brand-voice", "brand-voice", {"text": "Hi.", "voice": {"formality": 3}}, "voice"),
        ("brand-voice", "knowledge-search", {"query": "refund"}, "needs a dataset"),
    ],
)
def test_bad_payloads_are_permanent_errors(key, intent, payload, message):
    with pytest.raises(PermanentHandlerError, match=message):
        call(key, intent, payload)


def test_a_cancelled_run_stops_before_doing_work():
    ctx = make_ctx()
    ctx.cancel()
    with pytest.raises(PermanentHandlerError, match="cancelled"):
        call("content", "repurpose", {"text": ARTICLE}, ctx)
    assert ctx.tool_calls == {}


def test_cancellation_between_stages_stops_the_remaining_work():
    answers = iter([False, True])  # not cancelled at the start, cancelled after "extract"
    ctx = RunContext(
        run_id="r1",
        organization=None,
        agent=None,
        config={},
        cancel_probe=lambda: next(answers, True),
        cancel_probe_interval=0,
    )
    with pytest.raises(PermanentHandlerError, match="cancelled"):
        call("content", "repurpose", {"text": ARTICLE}, ctx)
    assert [(s.name, s.status) for s in ctx.steps] == [("extract", "success")]


def test_camel_case_and_snake_case_payload_keys_are_equivalent():
    camel, _ = call("content", "summarize", {"text": ARTICLE, "maxSentences": 1})
    snake, _ = call("content", "summarize", {"text": ARTICLE, "max_sentences": 1})
    assert camel == snake
    assert camel["sentenceCount"] == 1


# --- ContentAgent --------------------------------------------------------------------------


def test_summarize_keeps_input_sentences_in_their_original_order():
    output, ctx = call("content", "summarize", {"text": ARTICLE, "maxSentences": 2})
    assert [s["text"] for s in output["sentences"]] == [
        "Many teams now rely on asynchronous tools to collaborate across time zones.",
        "Asynchronous collaboration tools help remote teams document decisions.",
    ]
    indexes = [s["index"] for s in output["sentences"]]
    assert indexes == sorted(indexes)
    source = tx.split_sentences(ARTICLE)
    assert all(source[s["index"]] == s["text"] for s in output["sentences"])
    assert output["sourceSentenceCount"] == 5
    assert output["summary"] == " ".join(s["text"] for s in output["sentences"])
    assert "teams" in output["keywords"]
    assert tool_slugs(ctx) == ["text-summarizer"]
    recorded = metrics(ctx)
    assert recorded["tokens_in"] == len(tx.tokenize(ARTICLE)) == 34
    assert recorded["tokens_out"] == 20
    assert recorded["compression_ratio"] == output["compressionRatio"]


def test_summarize_ratio_picks_a_share_of_the_sentences():
    output, _ = call("content", "summarize", {"text": ARTICLE, "ratio": 0.2, "maxSentences": 10})
    assert output["sentenceCount"] == 1  # ceil(5 * 0.2)


def test_generate_draft_builds_an_outline_and_a_draft_carrying_the_keywords():
    payload = {
        "topic": "Customer onboarding",
        "keywords": ["activation", "time to value"],
        "audience": "SaaS founders",
        "tone": "bold",
        "sections": 4,
    }
    output, ctx = call("content", "generate-draft", payload)
    assert output["title"] == "Customer Onboarding: A Practical Guide"
    assert len(output["outline"]) == 4
    assert output["outline"][0] == "Why Customer Onboarding Matters"
    assert output["outline"][-1] == "What Comes Next for Customer Onboarding"
    assert output["draft"].startswith("# Customer Onboarding: A Practical Guide")
    for heading in output["outline"]:
        assert f"## {heading}" in output["draft"]
    assert "SaaS founders" in output["draft"]
    assert all(count >= 1 for count in output["keywordCoverage"].values())
    assert [s.name for s in ctx.steps] == ["outline", "draft"]
    assert all(s.status == "success" for s in ctx.steps)
    assert tool_slugs(ctx) == ["readability-scorer"]
    assert metrics(ctx)["draft_words"] == output["wordCount"] > 50


def test_repurpose_fits_each_channel():
    output, ctx = call("content", "repurpose", {"text": ARTICLE, "url": "https://ex.com/p"})
    variants = output["variants"]
    assert set(variants) == {"tweet", "linkedin", "email-snippet"}
    tweet = variants["tweet"]["text"]
    assert len(tweet) <= 280
    assert tweet.startswith("Remote work changed how teams collaborate.")
    assert "https://ex.com/p" in tweet and "#RemoteWork" in tweet
    assert "\u2022 Many teams now rely" in variants["linkedin"]["text"]
    assert variants["email-snippet"]["subject"] == "Remote Work: What You Need to Know"
    assert len(variants["email-snippet"]["preheader"]) <= 90
    assert [s.name for s in ctx.steps] == ["extract", "render"]
    assert tool_slugs(ctx) == ["text-summarizer", "keyword-extractor"]
    assert metrics(ctx)["variants_generated"] == 3


# --- SEOAgent ------------------------------------------------------------------------------


def test_seo_audit_scores_and_lists_issues():
    page = (
        "# Remote work guide\n"
        "Remote work changed how teams collaborate. Remote work needs clear writing.\n"
        "## Tools\n"
        "Asynchronous tools help remote teams document decisions."
    )
    output, ctx = call(
        "seo",
        "seo-audit",
        {
            "text": page,
            "title": "Remote work: a guide for distributed teams",
            "keyword": "remote work",
        },
    )
    assert output["wordCount"] == 22
    assert output["keywordDensity"] == round(3 * 2 * 100 / 22, 2)
    assert output["headings"] == [
        {"level": 1, "text": "Remote work guide"},
        {"level": 2, "text": "Tools"},
    ]
    codes = {issue["code"] for issue in output["issues"]}
    assert {"thin-content", "keyword-stuffing", "meta-description-missing"} <= codes
    assert "title-missing" not in codes  # the 42-character title is within 30-60
    expected = 100 - sum(
        {"error": 15, "warning": 8, "info": 3}[i["severity"]] for i in output["issues"]
    )
    assert output["score"] == expected
    assert metrics(ctx)["seo_score"] == expected
    assert "readability-scorer" in tool_slugs(ctx)
    assert [s.name for s in ctx.steps] == ["analyze-content", "check-metadata"]


def test_seo_audit_flags_a_missing_title_as_an_error():
    output, _ = call("seo", "seo-audit", {"text": ARTICLE})
    errors = [i["code"] for i in output["issues"] if i["severity"] == "error"]
    assert errors == ["title-missing"]
    assert output["keyword"] == "teams"  # inferred from the copy when none is given


def test_keyword_research_ranks_keywords_and_bigrams():
    text = "Remote work changed how teams collaborate. Remote work needs async tools."
    output, ctx = call("seo", "keyword-research", {"text": text, "seeds": ["remote work"]})
    assert output["keywords"][0]["keyword"] == "remote"
    assert output["bigrams"][0] == {"phrase": "remote work", "count": 2, "density": 36.36}
    assert output["seedCoverage"] == {"remote work": {"count": 2, "density": 36.36}}
    assert "remote work best practices" in output["longTail"]
    assert tool_slugs(ctx) == ["keyword-extractor"]
    assert metrics(ctx)["keywords_found"] == len(output["keywords"])


# --- EmailAgent ----------------------------------------------------------------------------


def test_ab_test_sample_size_matches_the_two_proportion_formula():
    output, ctx = call(
        "email",
        "ab-test",
        {"baselineRate": 0.10, "minimumDetectableEffect": 0.20, "dailyTraffic": 1000},
    )
    p1, p2 = 0.10, 0.12
    z_a, z_b = NormalDist().inv_cdf(0.975), NormalDist().inv_cdf(0.8)
    p = (p1 + p2) / 2
    n = (z_a * math.sqrt(2 * p * (1 - p)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (
        p2 - p1
    ) ** 2
    assert output["sampleSizePerVariant"] == math.ceil(n) == 3841
    assert output["targetRate"] == 0.12
    assert output["totalSampleSize"] == 7682
    assert output["durationDays"] == 8
    assert tool_slugs(ctx) == ["sample-size-calculator"]
    assert metrics(ctx)["sample_size_per_variant"] == 3841


def test_ab_test_with_three_variants_applies_bonferroni():
    output, _ = call(
        "email",
        "ab-test",
        {"baselineRate": 0.2, "mde": 0.05, "mdeType": "absolute", "variants": ["A", "B", "C"]},
    )
    assert output["adjustedAlpha"] == 0.025
    assert output["sampleSizePerVariant"] == sample_size_per_variant(0.2, 0.25, alpha=0.025)
    assert output["totalSampleSize"] == 3 * output["sampleSizePerVariant"]


def test_optimize_subject_scores_variants_above_a_spammy_original():
    output, ctx = call(
        "email",
        "optimize-subject",
        {"subject": "FREE OFFER!!! Our spring sale is here", "keywords": ["spring sale"]},
    )
    assert output["original"]["score"] == 40
    assert "spam words free, offer (-20)" in output["original"]["reasons"]
    scores = [v["score"] for v in output["variants"]]
    assert scores == sorted(scores, reverse=True)
    assert output["best"] == output["variants"][0]["subject"]
    assert output["improvement"] == scores[0] - 40 > 0
    assert all("FREE" not in v["subject"] for v in output["variants"])
    assert tool_slugs(ctx) == ["subject-line-scorer"]
    assert metrics(ctx)["subject_score_best"] == scores[0]


def test_score_subject_rewards_length_and_numbers():
    assert score_subject("3 ways to speed up your onboarding")[0] > score_subject("Hi")[0]


def test_generate_sequence_spaces_emails_and_scores_subjects():
    output, ctx = call(
        "email",
        "generate-sequence",
        {"product": "Acme CRM", "goal": "onboarding", "emails": 4, "spacingDays": 3},
    )
    emails = output["emails"]
    assert [e["sendDay"] for e in emails] == [0, 3, 6, 9]
    assert [e["purpose"] for e in emails] == ["welcome", "first-win", "value", "check-in"]
    assert emails[0]["subject"] == "Welcome to Acme CRM: start here"
    assert all("{first_name}" in e["body"] for e in emails)
    assert tool_slugs(ctx) == ["subject-line-scorer"] * 4
    assert metrics(ctx)["emails_generated"] == 4
    assert [s.name for s in ctx.steps] == ["plan", "write"]


# --- SupportAgent --------------------------------------------------------------------------


def test_triage_of_a_double_charge_is_billing_and_high_priority():
    output, ctx = call("support", "triage", {"text": "I was charged twice, refund now!"})
    assert output["category"] == "billing"
    assert output["priority"] == "high"
    assert output["sentiment"]["label"] == "negative"
    assert output["queue"] == "billing"
    assert "charged twice" in output["evidence"]["billing"]
    assert tool_slugs(ctx) == ["ticket-classifier"]
    assert metrics(ctx)["triage_confidence"] == 1.0


@pytest.mark.parametrize(
    ("text", "category", "priority"),
    [
        ("I forgot my password and I am locked out", "account", "normal"),
        ("Love it! Would be nice to have a dark mode feature.", "feature-request", "normal"),
        ("Your API returns a 500 error on every sync", "technical", "normal"),
        ("We had a security breach, someone hacked our account", "account", "urgent"),
        ("How do I cancel my subscription?", "cancellation", "normal"),
        ("What are your office hours?", "general", "low"),
    ],
)
def test_triage_rules(text, category, priority):
    output, _ = call("support", "triage", {"text": text})
    assert (output["category"], output["priority"]) == (category, priority)


def test_macro_suggest_puts_the_matching_macro_first():
    output, ctx = call("support", "macro-suggest", {"text": "How do I reset my password?"})
    assert output["category"] == "account"
    assert output["macros"][0]["id"] == "account-password-reset"
    assert tool_slugs(ctx) == ["ticket-classifier", "macro-ranker"]
    assert metrics(ctx)["macros_suggested"] == len(output["macros"])


def test_support_drafts_a_reply_with_dataset_articles():
    ctx = make_ctx(documents=DOCUMENTS, config={"agent_name": "Sam"})
    output, ctx = call(
        "support",
        "support",
        {"text": "I was charged twice, refund now!", "customerName": "Ana"},
        ctx,
    )
    assert output["reply"].startswith("Hi Ana,")
    assert output["reply"].endswith("Best,\nSam")
    assert output["macros"][0]["id"] == "billing-duplicate-charge"
    assert output["articles"][0]["id"] == "refunds"
    assert tool_slugs(ctx) == ["ticket-classifier", "macro-ranker", "vector-search"]
    assert metrics(ctx)["vector_recalls"] == len(output["articles"])
    assert [s.name for s in ctx.steps] == ["triage", "rank-macros", "draft-reply"]


# --- SocialAgent ---------------------------------------------------------------------------


def test_generate_post_respects_the_platform_limit():
    long_text = " ".join([ARTICLE] * 20)
    output, ctx = call(
        "social", "generate-post", {"platform": "twitter", "text": long_text, "cta": "Read more"}
    )
    assert output["platform"] == "x"
    assert output["characters"] == len(output["post"]) <= 280
    assert output["withinLimit"] is True
    assert output["post"].startswith("Remote work, in one thread-sized thought:")
    assert "Read more" in output["post"]
    assert len(output["hashtags"]) == 2
    assert tool_slugs(ctx) == ["hashtag-generator"]
    assert metrics(ctx)["post_characters"] == output["characters"]


def test_optimize_caption_cleans_punctuation_hashtags_and_adds_a_cta():
    caption = "New drop!!! Our summer collection is here #summer #summer #style"
    output, ctx = call("social", "optimize-caption", {"caption": caption, "platform": "instagram"})
    assert output["caption"] == (
        "New drop! Our summer collection is here\n\n"
        "Tell us what you think in the comments.\n\n#summer #style"
    )
    assert output["scoreAfter"] > output["scoreBefore"]
    assert "removed duplicate hashtags" in output["changes"]
    assert tool_slugs(ctx) == ["caption-optimizer"]
    assert metrics(ctx)["caption_score"] == output["scoreAfter"]


def test_hashtag_pack_builds_unique_tags_from_keywords():
    output, ctx = call(
        "social",
        "hashtag-pack",
        {"keywords": ["remote work", "SaaS"], "platform": "x", "count": 5},
    )
    assert output["hashtags"] == [
        "#RemoteWork",
        "#SaaS",
        "#RemoteWorkTips",
        "#RemoteWorkCommunity",
        "#RemoteWork101",
    ]
    assert output["recommended"] == ["#RemoteWork", "#SaaS"]
    assert tool_slugs(ctx) == ["hashtag-generator"]
    assert metrics(ctx)["hashtags_generated"] == 5


# --- BrandVoiceAgent -----------------------------------------------------------------------


def test_tone_analysis_tells_casual_from_formal():
    casual, ctx = call(
        "brand-voice", "tone-analysis", {"text": "Hey guys!!! We're gonna love this awesome stuff!"}
    )
    formal, _ = call(
        "brand-voice",
        "tone-analysis",
        {"text": "Furthermore, the reconciliation process will be automated accordingly."},
    )
    assert casual["scores"]["formality"] < 0.35 < 0.65 < formal["scores"]["formality"]
    assert "casual" in casual["labels"] and "enthusiastic" in casual["labels"]
    assert "formal" in formal["labels"]
    assert tool_slugs(ctx) == ["tone-analyzer"]
    assert metrics(ctx)["formality"] == casual["scores"]["formality"]


def test_brand_voice_rewrites_toward_the_profile():
    voice = {
        "formality": 0.7,
        "enthusiasm": 0.2,
        "confidence": 0.8,
        "contractions": False,
        "banned_words": ["crush"],
        "preferred_terms": {"cheap": "affordable"},
    }
    text = "Hey guys!!! Maybe it's kind of cheap, but you'll love it!"
    output, ctx = call("brand-voice", "brand-voice", {"text": text, "voice": voice})
    assert output["rewrite"] == "Hello everyone. It is affordable, but you will love it."
    assert {g["dimension"] for g in output["gaps"]} >= {"formality", "enthusiasm"}
    assert output["bannedWordHits"] == 0
    assert 0 <= output["alignmentScore"] < 100
    assert tool_slugs(ctx) == ["tone-analyzer", "style-rewriter"]
    assert metrics(ctx)["brand_alignment"] == output["alignmentScore"]
    assert [s.name for s in ctx.steps] == ["analyze", "compare", "rewrite"]


def test_brand_voice_reads_the_profile_from_agent_config():
    ctx = make_ctx(config={"voice": {"banned_words": ["synergy"]}})
    output, _ = call("brand-voice", "brand-voice", {"text": "Unlock synergy today."}, ctx)
    assert output["bannedWordHits"] == 1
    assert output["suggestions"][0]["reasons"] == ["banned word: synergy"]


@pytest.mark.parametrize("embedding", ["tfidf", "hashed"])
def test_knowledge_search_ranks_the_relevant_document_first(embedding):
    ctx = make_ctx(documents=DOCUMENTS)
    output, ctx = call(
        "brand-voice",
        "knowledge-search",
        {"query": "How do I get a refund?", "topK": 2, "embedding": embedding},
        ctx,
    )
    results = output["results"]
    assert results[0]["id"] == "refunds"
    # The sentence of the document closest to the query, not its opening.
    assert results[0]["snippet"] == "Contact support for a refund."
    assert 1 <= len(results) <= 2
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert output["documentsSearched"] == 3
    assert tool_slugs(ctx) == ["vector-search"]
    assert metrics(ctx)["vector_recalls"] == len(results)
    [call_record] = ctx.tool_calls.values()
    assert call_record.status == "success"
    assert call_record.output["ids"][0] == "refunds"


def test_knowledge_search_rejects_malformed_documents():
    ctx = make_ctx(documents=[{"id": "x", "text": None}])
    with pytest.raises(PermanentHandlerError, match="dataset document 0"):
        call("brand-voice", "knowledge-search", {"query": "refund"}, ctx)


# --- text utilities ------------------------------------------------------------------------


def test_sentence_splitting_respects_abbreviations_and_headings():
    text = "# Notes\nDr. Smith reviewed it, e.g. the billing step. It is\nwrapped. Done!"
    assert tx.split_sentences(text) == [
        "# Notes",
        "Dr. Smith reviewed it, e.g. the billing step.",
        "It is wrapped.",
        "Done!",
    ]


def test_readability_uses_the_flesch_formula():
    result = tx.readability("The cat sat on the mat.")
    assert (result.words, result.sentences, result.syllables) == (6, 1, 6)
    assert result.flesch_reading_ease == round(206.835 - 1.015 * 6 - 84.6 * 1, 1)


def test_vectors_are_deterministic_and_cosine_is_bounded():
    assert hashed_vector("refund policy") == hashed_vector("refund policy")
    assert cosine(hashed_vector("refund"), hashed_vector("refunds")) == pytest.approx(1.0)
    index = TfidfIndex([(d["id"], d["text"]) for d in DOCUMENTS])
    assert index.search("annual billing")[0].id == "pricing"
    assert index.search("zebra") == []
