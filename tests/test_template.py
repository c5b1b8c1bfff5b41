import random
import re

import pytest

from guppylm import template


def expansions(source: str, pools: dict | None = None, n: int = 300) -> set[str]:
    nodes = template.parse(source)
    parsed = {k: [template.parse(v) for v in vs] for k, vs in (pools or {}).items()}
    rng = random.Random(0)
    return {template.expand(nodes, parsed, rng) for _ in range(n)}


def test_literal_text_expands_to_itself():
    assert expansions("just words.") == {"just words."}


def test_choice_optional_and_slot():
    pools = {"thing": ["rocks", "a (big|small) leaf"]}
    got = expansions("i like (red|blue) [shiny ]{thing}.", pools)
    assert "i like red rocks." in got
    assert "i like blue shiny a big leaf." in got
    assert len(got) == 2 * 2 * 3


def test_tidy_removes_spaces_left_by_optional_parts():
    assert expansions("hello [there] .") == {"hello there.", "hello."}


@pytest.mark.parametrize("bad, says", [
    ("(a|b", "never closed"),
    ("[a", "never closed"),
    ("a)", "unexpected ')'"),
    ("a]", "unexpected ']'"),
    ("{Bad Name}", "bad slot"),
    ("{open", "bad slot"),
])
def test_syntax_errors_are_reported(bad, says):
    with pytest.raises(template.TemplateError, match=re.escape(says)):
        template.parse(bad)


def test_longest_takes_every_option_and_the_wordiest_choice():
    nodes = template.parse("a [b c] (d|e f g) {s}")
    pools = {"s": [template.parse("h"), template.parse("i j")]}
    assert template.longest(nodes, pools) == "a b c e f g i j"
