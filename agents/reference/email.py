"""EmailAgent: drip sequences, subject-line scoring and A/B test sizing."""

from __future__ import annotations

import math
import re
from statistics import NormalDist

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

# Words that trip spam filters or read as shouting; each costs points.
SPAM_WORDS = tx.lexicon(
    "free guarantee guaranteed winner cash urgent act now limited offer click buy cheap "
    "risk-free prize congratulations credit deal discount"
)
POWER_WORDS = tx.lexicon(
    "new proven simple quick secret easy instantly exclusive inside introducing you your "
    "how why save boost grow"
)
GOALS = ("onboarding", "nurture", "reengagement", "launch")

# One row per email of a sequence: (purpose, subject template, opening line).
# Sequences longer than the plan repeat its middle "value" email with a new angle.
_PLANS: dict[str, list[tuple[str, str, str]]] = {
    "onboarding": [
        ("welcome", "Welcome to {product}: start here", "Thanks for joining {product}."),
        ("first-win", "Your first win with {product} in 5 minutes", "Let's get you a quick win."),
        ("value", "How {audience} get more from {product}", "Here is what works best."),
        ("check-in", "Need a hand with {product}?", "We noticed you have been exploring."),
    ],
    "nurture": [
        ("value", "{Keyword}: what {audience} should know", "Here is one idea worth stealing."),
        ("proof", "How teams use {product} for {keyword}", "A short story from a customer."),
        ("offer", "Ready to try {product}?", "You have seen the ideas; here is the tool."),
    ],
    "reengagement": [
        ("reminder", "We miss you at {product}", "It has been a while."),
        ("whats-new", "What's new in {product}", "A lot has changed since your last visit."),
        ("last-call", "Should we stay in touch?", "We only want to email people who want it."),
    ],
    "launch": [
        ("teaser", "Something new is coming to {product}", "We have been building quietly."),
        ("announce", "Introducing the new {product}", "It is here."),
        ("proof", "Why {audience} are switching to {product}", "Early users told us why."),
        ("last-chance", "Last chance: launch pricing for {product}", "Launch pricing ends soon."),
    ],
}


def score_subject(subject: str, keywords: list[str] | None = None) -> tuple[int, list[str]]:
    """A 0-100 heuristic score and the reasons behind it.

    Weights follow common email-marketing guidance: 30-50 characters and 4-9 words
    display fully on phones; numbers, questions and personalization lift opens;
    spam words, ALL CAPS and stacked exclamation marks hurt deliverability.
    """
    reasons: list[str] = []
    score = 40
    length = len(subject)
    words = tx.tokenize(subject)
    if 30 <= length <= 50:
        score += 20
        reasons.append("length 30-50 chars (+20)")
    elif length < 20 or length > 70:
        score -= 10
        reasons.append(f"length {length} chars (-10)")
    if 4 <= len(words) <= 9:
        score += 10
        reasons.append("4-9 words (+10)")
    if re.search(r"\d", subject):
        score += 5
        reasons.append("contains a number (+5)")
    if subject.rstrip().endswith("?"):
        score += 5
        reasons.append("asks a question (+5)")
    if "{first_name}" in subject or "you" in words or "your" in words:
        score += 5
        reasons.append("speaks to the reader (+5)")
    power = sorted({w for w in words if w in POWER_WORDS} - {"you", "your"})
    if power:
        score += min(10, 5 * len(power))
        reasons.append(f"power words {', '.join(power)} (+{min(10, 5 * len(power))})")
    if keywords and any(tx.phrase_count(subject, k) for k in keywords):
        score += 10
        reasons.append("contains a keyword (+10)")
    spam = sorted({w for w in words if w in SPAM_WORDS})
    if spam:
        score -= 10 * len(spam)
        reasons.append(f"spam words {', '.join(spam)} (-{10 * len(spam)})")
    shouting = [w for w in re.findall(r"[A-Za-z]{3,}", subject) if w.isupper()]
    if shouting:
        score -= 10
        reasons.append("ALL CAPS words (-10)")
    if subject.count("!") > 1:
        score -= 10
        reasons.append("several exclamation marks (-10)")
    return max(0, min(100, score)), reasons


def sample_size_per_variant(
    baseline: float, target: float, *, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Two-sided two-proportion z-test sample size per group (pooled variance under H0).

    n = (z_{1-a/2} * sqrt(2 p (1-p)) + z_{1-b} * sqrt(p1 (1-p1) + p2 (1-p2)))^2 / (p2 - p1)^2
    with p = (p1 + p2) / 2, rounded up.
    """
    z_alpha = NormalDist().inv_cdf(1 - alpha / 2)
    z_beta = NormalDist().inv_cdf(power)
    pooled = (baseline + target) / 2
    numerator = z_alpha * math.sqrt(2 * pooled * (1 - pooled)) + z_beta * math.sqrt(
        baseline * (1 - baseline) + target * (1 - target)
    )
    return math.ceil(numerator**2 / (target - baseline) ** 2)


@register
class EmailAgent(ReferenceHandler):
    key = "email"
    name = "EmailAgent"
    kind = AgentKind.WORKFLOW
    version = "2.2.0"
    intents = ("generate-sequence", "optimize-subject", "ab-test")
    owner_team = "marketing"
    description = "Writes email sequences, scores subject lines and sizes A/B tests."
    default_config = {"alpha": 0.05, "power": 0.8}

    # --- generate-sequence --------------------------------------------------------------
    def intent_generate_sequence(self, payload: dict, ctx) -> dict:
        product = require_text(payload, ("product", "topic"), label="product").strip()
        goal = optional_choice(payload, "goal", GOALS, "nurture")
        count = optional_int(payload, "emails", len(_PLANS[goal]), minimum=1, maximum=10)
        spacing = optional_int(payload, "spacing_days", 2, minimum=1, maximum=30)
        audience = optional_str(payload, "audience") or "teams like yours"
        keywords = optional_str_list(payload, "keywords") or [product.lower()]
        cta = optional_str(payload, "cta") or f"Open {product}"

        with ctx.step("plan", {"goal": goal, "emails": count}) as step:
            plan = _PLANS[goal]
            # Keep the first and last emails of the plan; pad or trim the middle.
            middle = plan[1:-1] or plan[:1]
            rows = [plan[0]] + [middle[i % len(middle)] for i in range(max(count - 2, 0))]
            rows = [*rows, plan[-1]][:count] if count > 1 else [plan[0]]
            step.result = {"purposes": [purpose for purpose, _, _ in rows]}

        emails = []
        with ctx.step("write", {"emails": count}) as step:
            for position, (purpose, subject_tpl, opener) in enumerate(rows, start=1):
                check_cancelled(ctx)
                keyword = keywords[(position - 1) % len(keywords)]
                values = {
                    "product": product,
                    "audience": audience,
                    "keyword": keyword,
                    "Keyword": keyword[:1].upper() + keyword[1:],
                }
                subject = subject_tpl.format(**values)
                repeats = sum(1 for e in emails if e["purpose"] == purpose)
                if repeats:
                    subject = f"{subject} (part {repeats + 1})"
                with ctx.tool("subject-line-scorer", {"subject": subject}) as call:
                    score, _ = score_subject(subject, keywords)
                    call.output = {"score": score}
                body = (
                    f"Hi {{first_name}},\n\n{opener.format(**values)} "
                    f"This email is about {keyword} for {audience}.\n\n{cta} \u2192\n\n"
                    f"The {product} team"
                )
                emails.append(
                    {
                        "position": position,
                        "sendDay": (position - 1) * spacing,
                        "purpose": purpose,
                        "subject": subject,
                        "subjectScore": score,
                        "preheader": tx.truncate(opener.format(**values), 90),
                        "body": body,
                        "cta": cta,
                    }
                )
            step.result = {"written": len(emails)}
        record_tokens(ctx, " ".join([product, audience, *keywords]), [e["body"] for e in emails])
        ctx.metric("emails_generated", len(emails))
        return {"goal": goal, "emails": emails, "durationDays": emails[-1]["sendDay"]}

    # --- optimize-subject ---------------------------------------------------------------
    def intent_optimize_subject(self, payload: dict, ctx) -> dict:
        subject = " ".join(require_text(payload, ("subject",)).split())
        keywords = optional_str_list(payload, "keywords")
        limit = optional_int(payload, "variants", 5, minimum=1, maximum=10)

        candidates = self._variants(subject, keywords)
        tool_input = {"subject": subject, "candidates": len(candidates)}
        with ctx.tool("subject-line-scorer", tool_input) as call:
            original_score, original_reasons = score_subject(subject, keywords)
            scored = []
            for candidate in candidates:
                score, reasons = score_subject(candidate, keywords)
                scored.append({"subject": candidate, "score": score, "reasons": reasons})
            call.output = {"original": original_score, "best": max(v["score"] for v in scored)}
        # Stable sort: equal scores keep generation order, so output is reproducible.
        scored.sort(key=lambda v: -v["score"])
        variants = scored[:limit]
        best = variants[0] if variants and variants[0]["score"] > original_score else None
        record_tokens(ctx, subject, [v["subject"] for v in variants])
        ctx.metric("subject_score", original_score, kind="original")
        ctx.metric("subject_score_best", best["score"] if best else original_score)
        return {
            "original": {"subject": subject, "score": original_score, "reasons": original_reasons},
            "variants": variants,
            "best": best["subject"] if best else subject,
            "improvement": (best["score"] - original_score) if best else 0,
        }

    @staticmethod
    def _variants(subject: str, keywords: list[str]) -> list[str]:
        """Rewrites a copywriter would try first; each fixes one thing the scorer measures."""
        # Spam words and shouting go first: every other rewrite builds on the clean core.
        kept = [
            w for w in subject.split() if tx.tokenize(w) and tx.tokenize(w)[0] not in SPAM_WORDS
        ]
        calm = re.sub(r"!+", "!", " ".join(kept) or subject).strip(" !")
        calm = " ".join(w.capitalize() if w.isupper() and len(w) > 2 else w for w in calm.split())
        core = calm[:1].lower() + calm[1:] if calm[:2] != calm[:2].upper() else calm
        topic = keywords[0] if keywords else " ".join(tx.content_words(calm)[:3]) or calm
        candidates = [
            calm,
            f"{{first_name}}, {core}",
            f"Ready for {topic}?",
            f"{topic[:1].upper() + topic[1:]}: 3 things to know",
            f"How to get {topic} right",
            f"Quick question about {topic}",
            f"Inside: {core}",
            tx.truncate(calm, 45),
        ]
        seen = {subject.lower()}
        unique = []
        for candidate in candidates:
            candidate = candidate.strip()
            if candidate and candidate.lower() not in seen:
                seen.add(candidate.lower())
                unique.append(candidate)
        return unique

    # --- ab-test ------------------------------------------------------------------------
    def intent_ab_test(self, payload: dict, ctx) -> dict:
        if "minimum_detectable_effect" not in payload and "mde" in payload:
            payload["minimum_detectable_effect"] = payload["mde"]
        if payload.get("baseline_rate") is None:
            raise PermanentHandlerError(
                "payload.baseline_rate is required (a rate between 0 and 1, e.g. 0.2)",
                details={"field": "baseline_rate"},
            )
        baseline = optional_float(payload, "baseline_rate", None, minimum=0.0001, maximum=0.9999)
        mde = optional_float(payload, "minimum_detectable_effect", 0.1, minimum=1e-4, maximum=10)
        mde_type = optional_choice(payload, "mde_type", ("relative", "absolute"), "relative")
        alpha = optional_float(
            payload, "alpha", self.config_value(ctx, "alpha", 0.05), minimum=0.001, maximum=0.5
        )
        power = optional_float(
            payload, "power", self.config_value(ctx, "power", 0.8), minimum=0.5, maximum=0.999
        )
        variants = optional_str_list(payload, "variants") or ["A", "B"]
        daily = optional_int(payload, "daily_traffic", 0, minimum=0, maximum=10**9)
        if len(variants) < 2:
            raise PermanentHandlerError("an A/B test needs at least two variants")
        target = baseline * (1 + mde) if mde_type == "relative" else baseline + mde
        if not 0 < target < 1:
            raise PermanentHandlerError(
                f"baseline {baseline} with effect {mde} ({mde_type}) gives rate {target:.4f}, "
                "outside (0, 1)"
            )

        # Each extra variant is another comparison against control: Bonferroni keeps
        # the family-wise false-positive rate at alpha.
        comparisons = len(variants) - 1
        adjusted_alpha = alpha / comparisons
        with ctx.tool(
            "sample-size-calculator",
            {"baseline": baseline, "target": target, "alpha": adjusted_alpha, "power": power},
        ) as call:
            per_variant = sample_size_per_variant(
                baseline, target, alpha=adjusted_alpha, power=power
            )
            call.output = {"perVariant": per_variant}
        total = per_variant * len(variants)
        duration = math.ceil(total / daily) if daily else None

        scored = None
        if payload.get("subjects") is not None:
            subjects = optional_str_list(payload, "subjects")
            scored = [{"subject": s, "score": score_subject(s)[0]} for s in subjects]
        ctx.metric("sample_size_per_variant", per_variant, variants=len(variants))
        return {
            "baselineRate": baseline,
            "targetRate": round(target, 6),
            "absoluteEffect": round(target - baseline, 6),
            "alpha": alpha,
            "adjustedAlpha": round(adjusted_alpha, 6),
            "power": power,
            "variants": variants,
            "sampleSizePerVariant": per_variant,
            "totalSampleSize": total,
            "durationDays": duration,
            "subjectScores": scored,
            "plan": [
                f"Split traffic evenly across {len(variants)} variants: {', '.join(variants)}.",
                f"Send each variant to {per_variant} recipients ({total} in total).",
                "Do not stop early: evaluate only once every variant reached its sample size.",
                f"Call a winner if a two-sided z-test gives p < {round(adjusted_alpha, 6)}.",
            ],
        }
