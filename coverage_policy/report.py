"""The policy as a report for people: the preconditions checked before anything is
decided, then every rule and criterion, its citation, the evidence it accepts and the
documentation that can settle it.

``policy_report`` builds the report from a loaded ``Policy``; ``render_text`` (wrapped to
a terminal width), ``render_markdown`` (a GitHub table) and ``render_json`` print it.
All pure: ``infusion-pump-cds policy show`` does the loading and the printing.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from coverage_policy.loader import logic_nodes
from coverage_policy.model import Outcome, Period, Policy, Precondition, Rule, Truth

FORMATS = ("text", "markdown", "json")
MIN_WIDTH = 72
_OPS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_CONST = {"met": "always met", "unmet": "never met", "unknown": "always unknown"}


@dataclass(frozen=True, slots=True)
class Effective:
    """An effective period as ISO dates; ``to`` is exclusive, None means open."""

    from_: str | None
    to: str | None

    @classmethod
    def of(cls, period: Period) -> Effective:
        return cls(
            period.start.isoformat() if period.start else None,
            period.end.isoformat() if period.end else None,
        )

    def describe(self) -> str:
        """``from 2021-01-19``, ``2020-03-01 until 2023-05-11 (exclusive)``, or ``always``."""
        if self.from_ and self.to:
            return f"{self.from_} until {self.to} (exclusive)"
        if self.from_:
            return f"from {self.from_}"
        if self.to:
            return f"until {self.to} (exclusive)"
        return "always"


@dataclass(frozen=True, slots=True)
class Named:
    """Something the report names with its meaning: a fact, a value set, an item."""

    id: str
    description: str


@dataclass(frozen=True, slots=True)
class CriterionEntry:
    id: str
    text: str
    deciding: bool  # False: shown on the card for the rule, but not part of its decision
    citations: tuple[str, ...]
    facts: tuple[Named, ...]  # structured evidence: the facts it reads (doc.* excluded)
    valuesets: tuple[Named, ...]  # the value sets its codes are checked against
    documentation: tuple[Named, ...]  # documentation items that can settle it


@dataclass(frozen=True, slots=True)
class RuleEntry:
    id: str
    kind: str
    title: str
    citations: tuple[str, ...]
    effective: Effective  # open at both ends when in effect whenever the policy is
    applies_when: str
    decides: str
    criteria: tuple[CriterionEntry, ...]


@dataclass(frozen=True, slots=True)
class PreconditionEntry:
    """Checked on every order before any rule: when it holds, no coverage is decided."""

    id: str
    text: str
    citations: tuple[str, ...]
    fact: Named  # the record fact it is stated on, with its meaning
    holds_when: str
    outcome: str  # what the order gets instead of a decision


@dataclass(frozen=True, slots=True)
class PolicyReport:
    id: str
    version: str
    title: str
    url: str
    effective: Effective
    questionnaire: str
    preconditions: tuple[PreconditionEntry, ...]
    rules: tuple[RuleEntry, ...]

    @property
    def criterion_count(self) -> int:
        return len({c.id for rule in self.rules for c in rule.criteria})


def _leaf(node: Mapping[str, Any], policy: Policy) -> str:
    fact, op = node["fact"], node["op"]
    unit = policy.facts.get(fact, {}).get("unit")
    if op == "exists":
        text = f"{fact} is known"
    elif op == "is_true":
        text = f"{fact} is true"
    elif op == "in":
        text = f"{fact} in {{{', '.join(map(str, node['values']))}}}"
    elif op == "has_code":
        text = f"{fact} has a code in value set {node['valueset']}"
    elif op == "within_days":
        text = f"{fact} within {node['value']} days"
    elif op == "within_months":
        text = f"{fact} within {node['value']} calendar months"
    elif op == "on_or_before":
        text = f"{fact} on or before the order date"
    else:
        text = f"{fact} {_OPS.get(op, op)} {node['value']}" + (f" {unit}" if unit else "")
    if "absent" in node:
        text += f" [when not found: {node['absent']}]"
    return text


def guidance_message(rule: Rule, truth: Truth, indication: Outcome) -> str:
    """A guidance rule's message for its truth; its "-if-not-covered" variant, where the
    policy gives one, when the indication is not covered (e.g. no Part B for a pump drug
    whose pump the LCD does not cover)."""
    messages = rule.messages
    if indication is Outcome.NOT_COVERED:
        return messages.get(f"{truth.value}-if-not-covered", messages[truth.value])
    return messages[truth.value]


def describe_logic(node: Mapping[str, Any], policy: Policy) -> str:
    """A logic tree in words: ``A and (B or C)``, leaves as ``fact op value``."""
    for key, word in (("all", " and "), ("any", " or ")):
        if key in node:
            parts = [describe_logic(child, policy) for child in node[key]]
            if len(parts) == 1:
                return parts[0]
            wrapped = [
                f"({p})" if _is_compound(c) else p for p, c in zip(parts, node[key], strict=True)
            ]
            return word.join(wrapped)
    if "not" in node:
        inner = describe_logic(node["not"], policy)
        return f"not ({inner})" if _is_compound(node["not"]) else f"not {inner}"
    if "const" in node:
        return _CONST[node["const"]]
    if "criterion" in node:
        return str(node["criterion"])
    return _leaf(node, policy)


def _is_compound(node: Mapping[str, Any]) -> bool:
    return any(len(node.get(key, ())) > 1 for key in ("all", "any"))


def _criterion_entry(policy: Policy, rule: Rule, criterion_id: str) -> CriterionEntry:
    criterion = policy.criteria[criterion_id]
    deciding = rule.deciding
    facts = tuple(
        Named(name, str(policy.facts.get(name, {}).get("description", "")))
        for name in criterion.facts
        if not name.startswith("doc.")
    )
    valueset_ids = dict.fromkeys(
        n["valueset"] for n in logic_nodes(criterion.logic) if n.get("op") == "has_code"
    )
    valuesets = tuple(
        Named(v, str(policy.valuesets.get(v, {}).get("title", ""))) for v in valueset_ids
    )
    documentation = tuple(
        Named(d, policy.documentation[d].text)
        for d in criterion.documentation
        if d in policy.documentation
    )
    return CriterionEntry(
        id=criterion.id,
        text=criterion.text,
        deciding=criterion.id in deciding,
        citations=tuple(c.render(policy.sources) for c in criterion.citations),
        facts=facts,
        valuesets=valuesets,
        documentation=documentation,
    )


def _precondition_entry(policy: Policy, precondition: Precondition) -> PreconditionEntry:
    description = str(policy.facts.get(precondition.fact, {}).get("description", ""))
    return PreconditionEntry(
        id=precondition.id,
        text=precondition.text,
        citations=tuple(c.render(policy.sources) for c in precondition.citations),
        fact=Named(precondition.fact, description),
        holds_when=describe_logic(precondition.when, policy),
        outcome=precondition.outcome,
    )


def policy_report(policy: Policy) -> PolicyReport:
    """The preconditions of ``policy``, then every rule in its order, each with every
    criterion it shows."""
    rules = tuple(
        RuleEntry(
            id=rule.id,
            kind=rule.kind.value,
            title=rule.title,
            citations=tuple(c.render(policy.sources) for c in rule.citations),
            effective=Effective.of(rule.effective),
            applies_when=describe_logic(rule.applies_when, policy),
            decides=describe_logic(rule.decides, policy),
            criteria=tuple(_criterion_entry(policy, rule, cid) for cid in rule.criteria),
        )
        for rule in policy.rules
    )
    return PolicyReport(
        id=policy.id,
        version=policy.version,
        title=policy.title,
        url=policy.url,
        effective=Effective.of(policy.effective),
        questionnaire=policy.questionnaire_url,
        preconditions=tuple(_precondition_entry(policy, p) for p in policy.preconditions),
        rules=rules,
    )


# -- cells shared by the text and markdown tables ------------------------------------------


def criterion_cell(entry: CriterionEntry) -> list[str]:
    lines = [entry.id, entry.text]
    if not entry.deciding:
        lines.append("(advisory: shown, does not decide)")
    return lines


def evidence_cell(entry: CriterionEntry) -> list[str]:
    lines = [f"{f.id}: {f.description}" if f.description else f.id for f in entry.facts]
    lines += [
        f"value set {v.id}: {v.description}" if v.description else f"value set {v.id}"
        for v in entry.valuesets
    ]
    if lines:
        return lines
    if entry.documentation:
        return ["(none: documentation only)"]
    return ["(none: the policy states it)"]


def documentation_cell(entry: CriterionEntry) -> list[str]:
    return [f"{d.id}: {d.description}" for d in entry.documentation]


def _count(number: int, what: str) -> str:
    return f"{number} {what}" + ("" if number == 1 else "s")


def _header_lines(report: PolicyReport) -> list[str]:
    documentation = {d.id for r in report.rules for c in r.criteria for d in c.documentation}
    return [
        f"{report.id} version {report.version}: {report.title}",
        f"Effective {report.effective.describe()}. "
        f"{_count(len(report.preconditions), 'precondition')}, {len(report.rules)} rules, "
        f"{report.criterion_count} criteria, {len(documentation)} documentation items in use.",
        "Source:",
        f"  {report.url}",
        "Documentation Questionnaire:",
        f"  {report.questionnaire}",
    ]


# What the order gets when a precondition holds, for each outcome policy.schema.json allows.
OUTCOME_MEANINGS = {
    "deceased": "no coverage decision and no coverage information; a card says the record "
    "shows the patient deceased and asks to check the patient selected",
}


def _precondition_lines(entry: PreconditionEntry, heading: str | None = None) -> list[str]:
    fact = f"{entry.fact.id}: {entry.fact.description}" if entry.fact.description else entry.fact.id
    return [
        heading or f"PRECONDITION {entry.id}: {entry.text}",
        f"Cited: {'; '.join(entry.citations)}",
        f"Holds when: {entry.holds_when}",
        f"Fact: {fact}",
        f"Then: {entry.outcome} ({OUTCOME_MEANINGS.get(entry.outcome, 'no coverage decision')})",
    ]


_PRECONDITIONS_INTRO = (
    "Checked on every order before any rule, in this order; when one holds, no rule is "
    "applied and no coverage is decided."
)


def _rule_lines(rule: RuleEntry, heading: str | None = None) -> list[str]:
    lines = [heading or f"RULE {rule.id} ({rule.kind}): {rule.title}"]
    if rule.effective != Effective(None, None):
        lines.append(f"Effective: {rule.effective.describe()}")
    lines += [
        f"Cited: {'; '.join(rule.citations)}",
        f"Applies when: {rule.applies_when}",
        f"Decides: {rule.decides}",
    ]
    return lines


# -- text -------------------------------------------------------------------------------

_TEXT_COLUMNS = ("criterion", "citation", "evidence accepted", "documentation item")
_TEXT_SHARES = (0.28, 0.2, 0.28, 0.24)
_MIN_COLUMN = 10


def _column_widths(report: PolicyReport, width: int) -> list[int]:
    """Shares of the width; the criterion column wide enough for its longest id (while
    the other columns keep ``_MIN_COLUMN`` each), the last column taking what is left."""
    content = width - 3 * (len(_TEXT_COLUMNS) - 1)
    longest_id = max((len(c.id) for r in report.rules for c in r.criteria), default=0)
    others = len(_TEXT_COLUMNS) - 1
    first = max(int(content * _TEXT_SHARES[0]), min(longest_id, content - others * _MIN_COLUMN))
    rest = content - first
    shares = _TEXT_SHARES[1:]
    widths = [first, *(max(_MIN_COLUMN, int(rest * s / sum(shares))) for s in shares[:-1])]
    widths.append(content - sum(widths))
    return widths


class _Wrapper(textwrap.TextWrapper):
    """Wraps at spaces; a word too long for the line (a fact name, an item id, a URL) is
    broken after its own separators (``_ . - /``) before anywhere else."""

    def _split(self, text: str) -> list[str]:
        chunks: list[str] = []
        for chunk in super()._split(text):
            if len(chunk) > self.width - len(self.subsequent_indent):
                chunks += [part for part in re.split(r"(?<=[_./-])", chunk) if part]
            else:
                chunks.append(chunk)
        return chunks


def _wrap(paragraphs: Sequence[str], width: int, indent: str = "") -> list[str]:
    lines: list[str] = []
    for paragraph in paragraphs:
        wrapper = _Wrapper(width, subsequent_indent=indent, break_on_hyphens=False)
        lines += wrapper.wrap(paragraph) or [""]
    return lines


def _bullets(items: Sequence[str]) -> list[str]:
    return [f"- {item}" for item in items] if len(items) > 1 else list(items)


def _text_row(cells: Sequence[list[str]], widths: Sequence[int]) -> list[str]:
    wrapped = [
        _wrap(cell, w, "  " if len(cell) > 1 and cell[0].startswith("- ") else "")
        for cell, w in zip(cells, widths, strict=True)
    ]
    height = max(len(w) for w in wrapped)
    return [
        " | ".join(
            (col[i] if i < len(col) else "").ljust(w)
            for col, w in zip(wrapped, widths, strict=True)
        ).rstrip()
        for i in range(height)
    ]


def render_text(report: PolicyReport, width: int = 100) -> str:
    """The report as a table wrapped to ``width`` columns (at least ``MIN_WIDTH``)."""
    width = max(width, MIN_WIDTH)
    widths = _column_widths(report, width)
    rule_line = "=" * width
    row_line = "-+-".join("-" * w for w in widths)
    lines = [*_wrap(_header_lines(report), width, "  "), ""]
    if report.preconditions:
        lines += _wrap([_PRECONDITIONS_INTRO], width)
        for precondition in report.preconditions:
            lines += [rule_line, *_wrap(_precondition_lines(precondition), width, "  ")]
        lines += [rule_line, ""]
    lines += _text_row([[c] for c in _TEXT_COLUMNS], widths)
    for rule in report.rules:
        lines += [rule_line, *_wrap(_rule_lines(rule), width, "  ")]
        for entry in rule.criteria:
            lines.append(row_line)
            cells = [
                criterion_cell(entry),
                _bullets(entry.citations),
                _bullets(evidence_cell(entry)),
                _bullets(documentation_cell(entry)),
            ]
            lines += _text_row(cells, widths)
    lines.append(rule_line)
    return "\n".join(lines) + "\n"


# -- markdown ---------------------------------------------------------------------------

_MD_COLUMNS = ("rule", "kind", "criterion", "citation", "evidence accepted", "documentation item")


def _md(lines: Sequence[str]) -> str:
    text = "<br>".join(lines)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(report: PolicyReport) -> str:
    """The report as a GitHub table, one row per rule and criterion."""
    head = _header_lines(report)
    lines = [f"# {head[0]}", "", *(f"{line}  " for line in head[1:]), ""]
    if report.preconditions:
        lines += ["## Preconditions", "", _PRECONDITIONS_INTRO, ""]
        for precondition in report.preconditions:
            heading = f"**{precondition.id}**: {_md([precondition.text])}"
            body = _precondition_lines(precondition)[1:]
            lines += [f"- {heading}", *(f"  - {_md([line])}" for line in body)]
        lines += ["", "## Rules", ""]
    lines.append("| " + " | ".join(_MD_COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in _MD_COLUMNS) + "|")
    for rule in report.rules:
        rule_lines = _rule_lines(rule, heading=f"**{rule.id}** {rule.title}")
        for index, entry in enumerate(rule.criteria or (None,)):
            rule_cell = rule_lines if index == 0 else [f"**{rule.id}**"]
            if entry is None:
                cells = [rule_cell, [rule.kind], [], [], [], []]
            else:
                criterion = [f"**{entry.id}**", *criterion_cell(entry)[1:]]
                cells = [
                    rule_cell,
                    [rule.kind],
                    criterion,
                    list(entry.citations),
                    evidence_cell(entry),
                    documentation_cell(entry),
                ]
            lines.append("| " + " | ".join(_md(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


# -- json -------------------------------------------------------------------------------


def render_json(report: PolicyReport) -> str:
    """The report as JSON: the policy, its rules, each rule's criteria."""
    return json.dumps(asdict(report, dict_factory=_json_names), indent=2, ensure_ascii=False) + "\n"


def _json_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key.rstrip("_"): value for key, value in pairs}


def render_report(report: PolicyReport, fmt: str, width: int = 100) -> str:
    """The report in ``fmt`` (one of ``FORMATS``)."""
    if fmt == "text":
        return render_text(report, width)
    if fmt == "markdown":
        return render_markdown(report)
    if fmt == "json":
        return render_json(report)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
