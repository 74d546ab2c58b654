"""Action parsing: the last complete <action> element wins, and nothing ever raises."""

import pytest

from agentropy.agents.parsing import DEFAULT_FORMAT_PENALTY, ParsedAction, format_reward, parse_action


def test_action_after_thinking_is_extracted_and_stripped():
    reply = "The apple is probably in the fridge.\n<action>  go to fridge 1 \n</action>"
    assert parse_action(reply) == ParsedAction("go to fridge 1", True, "")


def test_internal_whitespace_is_collapsed():
    assert parse_action("<action>take\tapple 1\n from  table 2</action>").action == "take apple 1 from table 2"


def test_no_tag_is_invalid_with_reason():
    parsed = parse_action("go to fridge 1")
    assert parsed == ParsedAction("", False, "no <action> tag")


def test_unclosed_tag_is_invalid():
    parsed = parse_action("thinking... <action>go to fridge 1")
    assert not parsed.valid and parsed.action == "" and "unclosed" in parsed.reason


def test_closing_tag_without_opening_is_invalid():
    parsed = parse_action("go to fridge 1</action>")
    assert not parsed.valid and "without an opening" in parsed.reason


def test_two_tags_take_the_last_complete_one():
    reply = "<action>go to desk 1</action> wait, no. <action>go to fridge 1</action> <action>open"
    assert parse_action(reply).action == "go to fridge 1"


def test_nested_open_tags_take_the_innermost_before_the_last_close():
    assert parse_action("<action>a <action>b</action>").action == "b"


@pytest.mark.parametrize("reply", ["", "<action></action>", "<action>   \n </action>"])
def test_empty_reply_or_element_is_invalid(reply):
    parsed = parse_action(reply)
    assert parsed.action == "" and not parsed.valid and parsed.reason


def test_unicode_content_is_kept():
    assert parse_action("思考… <action>ouvrir le réfrigérateur 1 — vite ✓</action>").action == (
        "ouvrir le réfrigérateur 1 — vite ✓"
    )


def test_tags_match_case_insensitively_and_custom_tag():
    assert parse_action("<ACTION>look</Action>").action == "look"
    assert parse_action("<act>look</act> <action>no</action>", tag="act").action == "look"


# A backtracking parse of this 1.4 MB reply is quadratic (200 000 openings x 1.2 M characters): hours, not
# the well under a second a linear scan takes. The thread method, since a regex stuck in C never sees a signal.
@pytest.mark.timeout(60, method="thread")
def test_very_long_replies_parse_in_linear_time():
    noise = "<action>" * 200_000 + "x" * 1_000_000  # adversarial for backtracking regexes
    assert parse_action(noise + "<action>inventory</action>").action == "inventory"
    assert not parse_action(noise).valid


def test_non_string_reply_never_raises():
    assert not parse_action(None).valid  # type: ignore[arg-type]


def test_bad_tag_is_a_programming_error():
    with pytest.raises(ValueError, match="action tag"):
        parse_action("x", tag="</a>")


def test_format_reward_penalises_only_invalid_replies():
    assert format_reward(ParsedAction("look", True)) == 0.0
    assert format_reward(ParsedAction("", False, "no tag")) == -DEFAULT_FORMAT_PENALTY == -0.1
    assert format_reward(ParsedAction("", False, "no tag"), penalty=0.5) == -0.5
    with pytest.raises(ValueError, match="format_penalty"):
        format_reward(ParsedAction("", False), penalty=-1)
