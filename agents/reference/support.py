"""SupportAgent: rule-based ticket triage, macro suggestions and drafted replies."""

from __future__ import annotations

import re

from agents.choices import AgentKind
from agents.handlers.base import PermanentHandlerError
from agents.handlers.registry import register
from agents.reference import text as tx
from agents.reference.common import (
    ReferenceHandler,
    check_cancelled,
    optional_int,
    optional_str,
    record_tokens,
)
from agents.reference.vectors import TfidfIndex

# Category rules: stemmed single words and multi-word phrases. Phrases weigh
# double because "charged twice" is far stronger evidence than "charge".
CATEGORY_RULES: dict[str, tuple[str, ...]] = {
    "billing": (
        "charge", "charged twice", "double charged", "refund", "invoice", "payment", "billing",
        "subscription", "price", "card", "receipt", "overcharged", "plan", "paid",
    ),
    "technical": (
        "error", "bug", "crash", "broken", "not working", "doesn't work", "fails", "timeout",
        "slow", "500", "api", "integration", "sync", "outage", "down",
    ),
    "account": (
        "password", "login", "log in", "sign in", "locked out", "account", "2fa",
        "two-factor", "email address", "username", "reset",
    ),
    "cancellation": (
        "cancel", "cancellation", "cancel my subscription", "cancel my account", "cancel my plan",
        "close my account", "unsubscribe", "downgrade",
    ),
    "feature-request": (
        "feature", "would be nice", "wish", "suggest", "suggestion", "could you add", "roadmap",
    ),
}  # fmt: skip
# Phrases that make a ticket urgent whatever its category: money taken, service
# down, data or security at risk, legal threat.
URGENT_TERMS = ("outage", "data loss", "security", "hacked", "breach", "lawyer", "legal action")
HIGH_TERMS = (
    "urgent", "asap", "now", "immediately", "charged twice", "double charged", "can't access",
    "cannot access", "locked out", "not working", "down", "today",
)  # fmt: skip
QUEUES = {
    "billing": ("billing", 8),
    "technical": ("tier-2", 8),
    "account": ("tier-1", 12),
    "cancellation": ("retention", 24),
    "feature-request": ("product", 72),
    "general": ("tier-1", 24),
}
PRIORITY_SLA_FACTOR = {"urgent": 0.125, "high": 0.5, "normal": 1.0, "low": 2.0}

# The built-in macro library; an agent config may extend it with "macros".
DEFAULT_MACROS: tuple[dict, ...] = (
    {
        "id": "billing-duplicate-charge",
        "category": "billing",
        "title": "Duplicate charge refund",
        "body": "I am sorry you were charged twice. I have started a refund for the duplicate "
        "charge; it appears on your statement within 5-10 business days.",
        "keywords": "charged twice duplicate charge refund double payment",
    },
    {
        "id": "billing-invoice",
        "category": "billing",
        "title": "Invoice copy",
        "body": "You can download every invoice under Settings > Billing. I have also attached "
        "the latest one to this reply.",
        "keywords": "invoice receipt copy download billing",
    },
    {
        "id": "account-password-reset",
        "category": "account",
        "title": "Password reset",
        "body": "Use 'Forgot password' on the sign-in page to get a reset link. If the email "
        "does not arrive within 10 minutes, check your spam folder and reply here.",
        "keywords": "password reset login sign in locked out forgot",
    },
    {
        "id": "technical-bug-report",
        "category": "technical",
        "title": "Bug report follow-up",
        "body": "Thanks for reporting this. Could you send the steps to reproduce, the time it "
        "happened and a screenshot? Our engineers will investigate right away.",
        "keywords": "error bug crash broken not working screenshot reproduce",
    },
    {
        "id": "cancellation-retention",
        "category": "cancellation",
        "title": "Cancellation request",
        "body": "I can cancel your subscription today. Before I do: would a pause or a smaller "
        "plan help? Reply 'cancel' and I will close it right away.",
        "keywords": "cancel cancellation subscription close account downgrade",
    },
    {
        "id": "feature-request-logged",
        "category": "feature-request",
        "title": "Feature request logged",
        "body": "Great idea, thank you. I have shared it with our product team and added your "
        "vote to the request.",
        "keywords": "feature request suggestion idea roadmap",
    },
)

_CAPS_WORD = re.compile(r"\b[A-Z]{3,}\b")


def _term_hits(text: str, terms: tuple[str, ...]) -> list[str]:
    """Terms present in the text: phrases by whole-word match, single words by stem."""
    stems = {tx.stem(t) for t in tx.tokenize(text)}
    hits = []
    for term in terms:
        words = tx.tokenize(term)
        if len(words) > 1 or not words:
            if tx.phrase_count(text, term):
                hits.append(term)
        elif tx.stem(words[0]) in stems:
            hits.append(term)
    return hits


def triage(text: str) -> dict:
    """Category, priority and sentiment of a ticket, with the evidence for each."""
    scores: dict[str, float] = {}
    evidence: dict[str, list[str]] = {}
    for category, terms in CATEGORY_RULES.items():
        hits = _term_hits(text, terms)
        if hits:
            evidence[category] = hits
            scores[category] = sum(2.0 if " " in h else 1.0 for h in hits)
    total = sum(scores.values())
    # max() keeps the first category on a tie: rule order is the tie-break.
    category = max(scores, key=lambda c: scores[c]) if scores else "general"
    confidence = round(scores[category] / total, 3) if scores else 0.0

    polarity = tx.sentiment(text)
    label = "negative" if polarity < -0.2 else "positive" if polarity > 0.2 else "neutral"
    reasons = []
    urgent = _term_hits(text, URGENT_TERMS)
    high = _term_hits(text, HIGH_TERMS)
    points = 2 * len(high)
    if high:
        reasons.append(f"urgency terms: {', '.join(high)}")
    if "!" in text:
        points += 1
        reasons.append("exclamation")
    if _CAPS_WORD.search(text):
        points += 1
        reasons.append("shouting (ALL CAPS)")
    if label == "negative":
        points += 1
        reasons.append("negative sentiment")
    if category == "billing":
        # Money taken from a customer is never a low-priority ticket.
        points += 1
        reasons.append("billing impact")
    if urgent:
        priority = "urgent"
        reasons.insert(0, f"critical terms: {', '.join(urgent)}")
    elif points >= 3:
        priority = "high"
    elif points >= 1:
        priority = "normal"
    else:
        priority = "low"
    queue, sla = QUEUES[category]
    return {
        "category": category,
        "confidence": confidence,
        "categoryScores": scores,
        "evidence": evidence,
        "priority": priority,
        "priorityScore": points,
        "priorityReasons": reasons,
        "sentiment": {"label": label, "score": polarity},
        "queue": queue,
        "slaHours": max(1, round(sla * PRIORITY_SLA_FACTOR[priority])),
    }


@register
class SupportAgent(ReferenceHandler):
    key = "support"
    name = "SupportAgent"
    kind = AgentKind.COPILOT
    version = "1.9.0"
    intents = ("support", "triage", "macro-suggest")
    owner_team = "support"
    description = "Triages tickets, suggests reply macros and drafts first responses."
    default_config = {"agent_name": "The Support Team"}

    def _ticket(self, payload: dict) -> str:
        subject = optional_str(payload, "subject")
        body = optional_str(payload, "text") or optional_str(payload, "message")
        if not body and not subject:
            raise PermanentHandlerError(
                "payload.text is required (the ticket message)", details={"field": "text"}
            )
        return f"{subject}. {body}" if subject and body else body or subject

    def _triage(self, ticket: str, ctx) -> dict:
        with ctx.tool("ticket-classifier", {"chars": len(ticket)}) as call:
            result = triage(ticket)
            call.output = {k: result[k] for k in ("category", "priority", "confidence")}
        ctx.metric("triage_confidence", result["confidence"], category=result["category"])
        return result

    def _macros(self, ticket: str, category: str, top_k: int, ctx) -> list[dict]:
        extra = self.config_value(ctx, "macros", []) or []
        if not isinstance(extra, list) or not all(isinstance(m, dict) for m in extra):
            raise PermanentHandlerError("agent config 'macros' must be a list of objects")
        library = [*DEFAULT_MACROS, *extra]
        documents = [
            (
                str(m.get("id", i)),
                f"{m.get('title', '')} {m.get('keywords', '')} {m.get('body', '')}",
            )
            for i, m in enumerate(library)
        ]
        with ctx.tool("macro-ranker", {"macros": len(library), "topK": top_k}) as call:
            hits = TfidfIndex(documents).search(ticket, top_k=len(library))
            ranked = []
            for hit in hits:
                macro = library[hit.position]
                # Text similarity alone confuses "refund" in a cancellation with billing;
                # agreeing with the triage category breaks that tie.
                boost = 0.25 if macro.get("category") == category else 0.0
                ranked.append((round(hit.score + boost, 4), hit.position, macro))
            ranked.sort(key=lambda item: (-item[0], item[1]))
            suggestions = [
                {
                    "id": str(macro.get("id", pos)),
                    "title": macro.get("title", ""),
                    "category": macro.get("category", ""),
                    "score": score,
                    "body": macro.get("body", ""),
                }
                for score, pos, macro in ranked[:top_k]
            ]
            call.output = {"ids": [s["id"] for s in suggestions]}
        ctx.metric("macros_suggested", len(suggestions))
        return suggestions

    # --- intents ------------------------------------------------------------------------
    def intent_triage(self, payload: dict, ctx) -> dict:
        ticket = self._ticket(payload)
        result = self._triage(ticket, ctx)
        record_tokens(ctx, ticket, "")
        return result

    def intent_macro_suggest(self, payload: dict, ctx) -> dict:
        ticket = self._ticket(payload)
        top_k = optional_int(payload, "top_k", 3, minimum=1, maximum=10)
        with ctx.step("triage", {"chars": len(ticket)}) as step:
            result = self._triage(ticket, ctx)
            step.result = {"category": result["category"]}
        check_cancelled(ctx)
        with ctx.step("rank-macros", {"topK": top_k}) as step:
            macros = self._macros(ticket, result["category"], top_k, ctx)
            step.result = {"ids": [m["id"] for m in macros]}
        record_tokens(ctx, ticket, [m["body"] for m in macros])
        return {"category": result["category"], "macros": macros}

    def intent_support(self, payload: dict, ctx) -> dict:
        ticket = self._ticket(payload)
        customer = optional_str(payload, "customer_name") or "there"
        signature = self.config_value(ctx, "agent_name", "The Support Team")
        with ctx.step("triage", {"chars": len(ticket)}) as step:
            result = self._triage(ticket, ctx)
            step.result = {"category": result["category"], "priority": result["priority"]}
        check_cancelled(ctx)
        with ctx.step("rank-macros") as step:
            macros = self._macros(ticket, result["category"], 3, ctx)
            step.result = {"ids": [m["id"] for m in macros]}
        check_cancelled(ctx)
        articles = self._articles(ticket, ctx)
        with ctx.step("draft-reply") as step:
            empathy = {
                "negative": "Thank you for your patience while we sort this out.",
                "positive": "Thanks so much for the kind words!",
                "neutral": "Thanks for reaching out.",
            }[result["sentiment"]["label"]]
            lines = [f"Hi {customer},", "", empathy]
            if macros:
                lines += ["", macros[0]["body"]]
            if articles:
                lines += ["", "These articles may help:"]
                lines += [f"- {a['title']}" for a in articles]
            lines += ["", "Best,", signature]
            reply = "\n".join(lines)
            step.result = {"chars": len(reply)}
        record_tokens(ctx, ticket, reply)
        return {"triage": result, "macros": macros, "articles": articles, "reply": reply}

    @staticmethod
    def _articles(ticket: str, ctx) -> list[dict]:
        """Help-center articles from the run's dataset, when one was given."""
        documents = (getattr(ctx.dataset, "metadata", None) or {}).get("documents") or []
        docs = [d for d in documents if isinstance(d, dict) and isinstance(d.get("text"), str)]
        if not docs:
            return []
        pairs = [
            (str(d.get("id", i)), f"{d.get('title', '')} {d['text']}") for i, d in enumerate(docs)
        ]
        with ctx.tool("vector-search", {"query": ticket[:200], "documents": len(docs)}) as call:
            hits = TfidfIndex(pairs).search(ticket, top_k=3, min_score=0.1)
            call.output = {"ids": [h.id for h in hits]}
        ctx.metric("vector_recalls", len(hits))
        return [
            {"id": h.id, "title": docs[h.position].get("title", ""), "score": h.score} for h in hits
        ]
