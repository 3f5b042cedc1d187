"""Load the policy data, validate it against its JSON Schema, then check its meaning.

The service refuses to start on a policy that fails any check: an unknown fact or value
set, a duplicate id, facts declared that differ from facts read, a dangling reference,
an operator that does not fit its fact's type, an empty effective period, or a
precondition that reads anything but the one record fact it is stated on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import date
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from coverage_policy.model import (
    Alternative,
    Citation,
    Criterion,
    DocumentationItem,
    Period,
    Policy,
    Precondition,
    Rule,
    RuleKind,
    Source,
)

DATA = resources.files("coverage_policy").joinpath("data")
DEFAULT_POLICY = "mcs051.01.json"
_OPS_BY_TYPE = {
    "boolean": {"exists", "is_true"},
    "number": {"exists", "eq", "gt", "gte", "lt", "lte"},
    "enum": {"exists", "eq", "in"},
    "choice": {"exists", "eq", "in"},
    "string": {"exists", "eq", "in"},
    "date": {"exists", "within_days", "within_months", "on_or_before"},
    "coded": {"exists", "has_code"},
}
_OUTCOME_MESSAGES = {"covered", "not-covered", "conditional"}
_TRUTH_MESSAGES = {"met", "unmet", "unknown"}
# A guidance message that replaces the one for its truth when the indication is not covered.
_IF_NOT_COVERED_MESSAGES = {f"{truth}-if-not-covered" for truth in _TRUTH_MESSAGES}


class PolicyLoadError(ValueError):
    """The policy data is invalid; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid policy:\n  " + "\n  ".join(problems))
        self.problems = problems


def _read_json(path: Path | Traversable) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_fact_catalog() -> dict[str, dict[str, Any]]:
    """The facts the FHIR mappings may produce, with type and meaning."""
    return _read_json(DATA.joinpath("facts.json"))["facts"]  # type: ignore[no-any-return]


def load_valuesets() -> dict[str, dict[str, Any]]:
    """Every value set the rules may name, keyed by id (one file each, with its source)."""
    valuesets = {}
    for entry in DATA.joinpath("valuesets").iterdir():
        if entry.name.endswith(".json"):
            valueset = _read_json(entry)
            valuesets[valueset["id"]] = valueset
    return valuesets


def logic_nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every node of a logic tree, depth first."""
    yield node
    for key in ("all", "any"):
        for child in node.get(key, ()):
            yield from logic_nodes(child)
    if "not" in node:
        yield from logic_nodes(node["not"])
    if "answer" in node:
        yield from logic_nodes(node["answer"])
        yield from logic_nodes(node["record"])


def _is_answer_leaf(node: Mapping[str, Any]) -> bool:
    return str(node.get("fact", "")).startswith("doc.")


def _period(raw: Mapping[str, str] | None) -> Period:
    raw = raw or {}
    return Period(
        date.fromisoformat(raw["from"]) if "from" in raw else None,
        date.fromisoformat(raw["to"]) if "to" in raw else None,
    )


class _Checker:
    def __init__(
        self, raw: Mapping[str, Any], catalog: Mapping[str, Any], valuesets: Mapping[str, Any]
    ):
        self.raw = raw
        self.catalog = dict(catalog)
        for item in raw["documentation"]:
            self.catalog[f"doc.{item['id']}"] = {
                "type": "number" if item["answer_type"] == "decimal" else item["answer_type"],
                "values": [o["code"] for o in item.get("options", [])],
            }
        self.valuesets = valuesets
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def check_ids(self) -> None:
        seen: set[str] = set()
        for section in ("preconditions", "criteria", "rules", "documentation", "alternatives"):
            for entry in self.raw.get(section, ()):
                if entry["id"] in seen:
                    self.problem(f"duplicate id {entry['id']} in {section}")
                seen.add(entry["id"])

    def check_stated_facts(self) -> None:
        """An item may stand in only for a record fact the mappings produce."""
        for item in self.raw["documentation"]:
            for name in item.get("states", ()):
                if name not in self.catalog or name.startswith("doc."):
                    self.problem(f"documentation item {item['id']}: states unknown fact {name}")

    def check_citations(self, owner: str, citations: list[Mapping[str, str]]) -> None:
        for citation in citations:
            if citation["source"] not in self.raw["sources"]:
                self.problem(f"{owner}: cites unknown source {citation['source']}")

    def check_period(self, owner: str, raw: Mapping[str, str] | None) -> None:
        period = _period(raw)
        if period.start and period.end and period.start >= period.end:
            self.problem(f"{owner}: effective 'from' must be before 'to'")

    def facts_read(self, owner: str, logic: Mapping[str, Any]) -> set[str]:
        read: set[str] = set()
        for node in logic_nodes(logic):
            if "fact" not in node:
                continue
            name, op = node["fact"], node["op"]
            read.add(name)
            spec = self.catalog.get(name)
            if spec is None:
                self.problem(f"{owner}: reads unknown fact {name}")
                continue
            if op not in _OPS_BY_TYPE[spec["type"]]:
                self.problem(f"{owner}: operator {op} does not apply to {spec['type']} fact {name}")
            if op == "has_code" and node["valueset"] not in self.valuesets:
                self.problem(f"{owner}: unknown value set {node['valueset']}")
            allowed = spec.get("values")
            if allowed and op in ("eq", "in"):
                for value in node["values"] if op == "in" else [node["value"]]:
                    if value not in allowed:
                        self.problem(f"{owner}: {name} can never be {value!r}")
        return read

    def check_answers(self, owner: str, logic: Mapping[str, Any]) -> None:
        """An answer decides against an unknown record only when written as answer/record."""
        for node in logic_nodes(logic):
            if "answer" in node:
                answer = node["answer"]
                if not str(answer.get("fact", "")).startswith("doc."):
                    self.problem(f"{owner}: an answer must be a leaf on a doc.* fact")
                if any(
                    not n["fact"].startswith("doc.") for n in logic_nodes(answer) if "fact" in n
                ) or any(
                    n["fact"].startswith("doc.") for n in logic_nodes(node["record"]) if "fact" in n
                ):
                    self.problem(f"{owner}: answer reads doc.* facts and record reads the rest")
            children = node.get("any", ())
            if any(_is_answer_leaf(c) for c in children) and any(
                not _is_answer_leaf(c) for c in children
            ):
                self.problem(
                    f"{owner}: an answer beside the record in 'any' must be written as "
                    "{answer, record}, so that an explicit answer decides"
                )

    def check_criteria(self) -> None:
        for criterion in self.raw["criteria"]:
            owner = f"criterion {criterion['id']}"
            self.check_citations(owner, criterion["citations"])
            if any("criterion" in n for n in logic_nodes(criterion["logic"])):
                self.problem(f"{owner}: a criterion's logic reads facts, not other criteria")
            self.check_answers(owner, criterion["logic"])
            read = self.facts_read(owner, criterion["logic"])
            if read != set(criterion["facts"]):
                self.problem(
                    f"{owner}: declares facts {sorted(criterion['facts'])} but reads {sorted(read)}"
                )

    def check_preconditions(self) -> None:
        """A precondition reads its one record fact, nothing answered and no criterion."""
        for precondition in self.raw.get("preconditions", ()):
            owner = f"precondition {precondition['id']}"
            self.check_citations(owner, precondition["citations"])
            when = precondition["when"]
            if any("criterion" in n or "answer" in n for n in logic_nodes(when)):
                self.problem(f"{owner}: 'when' reads its fact, not criteria or answers")
            read = self.facts_read(owner, when)
            fact = precondition["fact"]
            if fact.startswith("doc."):
                self.problem(f"{owner}: is stated on a record fact, not documentation")
            if read != {fact}:
                self.problem(f"{owner}: is stated on {fact} but reads {sorted(read)}")

    def check_rules(self) -> None:
        criteria = {c["id"] for c in self.raw["criteria"]}
        alternatives = {a["id"] for a in self.raw["alternatives"]}
        used: set[str] = set()
        for rule in self.raw["rules"]:
            owner = f"rule {rule['id']}"
            self.check_citations(owner, rule["citations"])
            self.check_period(owner, rule.get("effective"))
            self.facts_read(owner, rule["applies_when"])
            if any("criterion" in n for n in logic_nodes(rule["applies_when"])):
                self.problem(f"{owner}: applies_when reads facts, not criteria")
            if any("answer" in n for n in logic_nodes(rule["applies_when"])):
                self.problem(f"{owner}: answer/record belongs in a criterion's logic")
            if any("fact" in n for n in logic_nodes(rule["decides"])):
                self.problem(f"{owner}: decides combines criteria, it reads no facts")
            deciding = {n["criterion"] for n in logic_nodes(rule["decides"]) if "criterion" in n}
            for cid in sorted((deciding | set(rule["criteria"])) - criteria):
                self.problem(f"{owner}: unknown criterion {cid}")
            if not deciding <= set(rule["criteria"]):
                self.problem(
                    f"{owner}: lists criteria that omit {sorted(deciding - set(rule['criteria']))}"
                )
            used |= set(rule["criteria"])
            guidance = rule["kind"] == "guidance"
            needed = _TRUTH_MESSAGES if guidance else _OUTCOME_MESSAGES
            optional = _IF_NOT_COVERED_MESSAGES if guidance else set()
            if not needed <= set(rule["messages"]) <= needed | optional:
                self.problem(
                    f"{owner}: messages must be exactly {sorted(needed)}"
                    + (f" (optionally also {sorted(optional)})" if optional else "")
                )
            for alt in rule.get("alternatives", []):
                if alt not in alternatives:
                    self.problem(f"{owner}: unknown alternative {alt}")
        for cid in sorted(criteria - used):
            self.problem(f"criterion {cid} is used by no rule")

    def check_links(self) -> None:
        if self.raw["id"] not in self.raw["sources"]:
            self.problem(f"sources: the policy itself ({self.raw['id']}) must be a source")
        for key in self.raw["links"]:
            if key not in self.raw["sources"]:
                self.problem(f"links: unknown source {key}")
        self.check_period("policy", self.raw["effective"])


def build_policy(
    raw: Mapping[str, Any],
    catalog: Mapping[str, Any] | None = None,
    valuesets: Mapping[str, Any] | None = None,
) -> Policy:
    """Check ``raw`` policy data and build the immutable ``Policy`` from it."""
    catalog = load_fact_catalog() if catalog is None else catalog
    valuesets = load_valuesets() if valuesets is None else valuesets
    schema = _read_json(resources.files("coverage_policy").joinpath("policy.schema.json"))
    errors = sorted(Draft202012Validator(schema).iter_errors(raw), key=lambda e: e.json_path)
    if errors:
        raise PolicyLoadError([f"{e.json_path}: {e.message}" for e in errors])
    checker = _Checker(raw, catalog, valuesets)
    checker.check_ids()
    checker.check_stated_facts()
    checker.check_preconditions()
    checker.check_criteria()
    checker.check_rules()
    checker.check_links()
    if checker.problems:
        raise PolicyLoadError(checker.problems)
    return _build(raw, checker.catalog, valuesets)


def _citations(raw: list[Mapping[str, str]]) -> tuple[Citation, ...]:
    return tuple(Citation(c["source"], c["section"]) for c in raw)


def _criterion(c: Mapping[str, Any], documentation: list[Mapping[str, Any]]) -> Criterion:
    # The items that settle a criterion: those it reads, and those that state a record
    # fact it reads, in the policy's item order.
    read = set(c["facts"])
    wanted = {f[4:] for f in read if f.startswith("doc.")}
    wanted |= {d["id"] for d in documentation if read & set(d.get("states", ()))}
    docs = [d["id"] for d in documentation if d["id"] in wanted]
    return Criterion(
        c["id"],
        c["text"],
        _citations(c["citations"]),
        tuple(c["facts"]),
        c["logic"],
        tuple(docs),
    )


def _precondition(p: Mapping[str, Any]) -> Precondition:
    return Precondition(
        id=p["id"],
        text=p["text"],
        citations=_citations(p["citations"]),
        fact=p["fact"],
        when=p["when"],
        outcome=p["outcome"],
    )


def _rule(r: Mapping[str, Any]) -> Rule:
    return Rule(
        id=r["id"],
        kind=RuleKind(r["kind"]),
        title=r["title"],
        citations=_citations(r["citations"]),
        applies_when=r["applies_when"],
        decides=r["decides"],
        criteria=tuple(r["criteria"]),
        messages=dict(r["messages"]),
        alternatives=tuple(r.get("alternatives", ())),
        effective=_period(r.get("effective")),
        deciding=frozenset(n["criterion"] for n in logic_nodes(r["decides"]) if "criterion" in n),
        scope_facts=frozenset(n["fact"] for n in logic_nodes(r["applies_when"]) if "fact" in n),
    )


def _build(raw: Mapping[str, Any], catalog: dict[str, Any], valuesets: Mapping[str, Any]) -> Policy:
    sources = {k: Source(k, v["label"], v["url"]) for k, v in raw["sources"].items()}
    criteria = {c["id"]: _criterion(c, raw["documentation"]) for c in raw["criteria"]}
    rules = tuple(_rule(r) for r in raw["rules"])
    documentation = {
        d["id"]: DocumentationItem(
            d["id"],
            d["text"],
            d["answer_type"],
            tuple((o["code"], o["display"]) for o in d.get("options", [])),
            d["doc_type"],
            d.get("unit"),
            tuple(d.get("states", ())),
        )
        for d in raw["documentation"]
    }
    alternatives = {
        a["id"]: Alternative(a["id"], a["label"], a.get("hcpcs"), a["display"], a["action"])
        for a in raw["alternatives"]
    }
    questionnaire = raw["questionnaire"]
    return Policy(
        id=raw["id"],
        version=raw["version"],
        title=raw["title"],
        url=raw["url"],
        effective=_period(raw["effective"]),
        sources=sources,
        facts=catalog,
        valuesets=dict(valuesets),
        criteria=criteria,
        rules=rules,
        documentation=documentation,
        alternatives=alternatives,
        questionnaire_id=questionnaire["id"],
        questionnaire_url=f"{questionnaire['url']}|{questionnaire['version']}",
        questionnaire_title=questionnaire["title"],
        links=tuple(sources[key] for key in raw["links"]),
        preconditions=tuple(_precondition(p) for p in raw.get("preconditions", ())),
    )


@cache
def load_policy(name: str = DEFAULT_POLICY) -> Policy:
    """The packaged policy, checked; raises ``PolicyLoadError`` if it is not sound."""
    return build_policy(_read_json(DATA.joinpath(name)))
