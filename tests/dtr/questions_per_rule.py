"""How many questions the adaptive forms ask to reach a decision, per conditional
fixture, against the items of the whole-policy form.

    .venv/bin/python -m tests.dtr.questions_per_rule
"""

from __future__ import annotations

import json
import logging
import statistics

from coverage_policy.loader import load_policy
from tests.conftest import make_app
from tests.dtr.loop import coverage_extensions, favourable, package, part, sign, unfavourable, walk
from tests.dtr.test_documentation_loop import CONDITIONAL


def main() -> None:
    logging.disable(logging.WARNING)
    counts: dict[str, list[int]] = {}
    for path in CONDITIONAL:
        client = make_app().test_client()
        body = json.loads(path.read_text())
        extensions = coverage_extensions(sign(client, body))
        if not extensions or part(extensions[0], "questionnaire") is None:
            continue
        reply = package(client, body, part(extensions[0], "coverage-assertion-id"))
        draft = reply.get_json()["parameter"][0]["resource"]["entry"][-1]["resource"]
        for answer in (favourable, unfavourable):
            _, asked = walk(client, draft, answer)
            counts.setdefault(path.name.split("__")[1], []).append(len(asked))
    for name, numbers in sorted(counts.items()):
        print(f"{name:48} {' / '.join(map(str, numbers))}")
    every = [n for numbers in counts.values() for n in numbers]
    print(
        f"{len(counts)} fixtures, {len(every)} walks: questions min {min(every)}, "
        f"median {statistics.median(every)}, max {max(every)}; "
        f"the whole-policy form has {len(load_policy().documentation)} items"
    )


if __name__ == "__main__":
    main()
