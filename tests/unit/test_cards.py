"""Token image cards (crew7/services/cards.py): pure SVG from a document (no servers)."""

import xml.etree.ElementTree as ET

import pytest

from crew7.services import cards

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = [
    "<script>alert(1)</script>",
    '"/><foreignObject><body onload="alert(1)"/></foreignObject>',
    "]]><script>x</script><![CDATA[",
    "a\x00b\x01c\x0bd\x1fe\ud800f\ufffeg\x85h",
    "&amp; &lt; & ' \"",
]


def crew_document(name="Research Crew", **attrs):
    values = {
        "Agents": 3,
        "Process": "sequential",
        "Total Runs": 1234,
        "Success Rate": 87.5,
        "Last Run": 1764500000,
    }
    values.update(attrs)
    return {
        "name": name,
        "attributes": [{"trait_type": k, "value": v} for k, v in values.items() if v is not None],
    }


def agent_document(name="Ada", crew="Research Crew", role="Researcher", llm="gpt-4o"):
    values = {"Role": role, "LLM": llm, "Tools": 2, "Crew": crew, "Crew ID": 7}
    return {"name": name, "attributes": [{"trait_type": k, "value": v} for k, v in values.items()]}


def texts(svg):
    root = ET.fromstring(svg)
    return root, ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def assert_inert(root):
    for element in root.iter():
        tag = element.tag.removeprefix(SVG)
        assert tag not in ("script", "foreignObject", "a", "image", "use", "iframe"), tag
        for attribute, value in element.attrib.items():
            assert not attribute.lower().startswith("on"), attribute
            assert "javascript:" not in value.lower()


def test_a_crew_card_shows_what_its_document_says():
    root, shown = texts(cards.crew_card(crew_document(), 21))
    assert root.get("width") == "600" and root.get("viewBox") == "0 0 600 600"
    assert "CREW #21" in shown and "Research Crew" in shown
    assert "Process: sequential" in shown and "Agents: 3" in shown
    assert "Total runs: 1,234" in shown and "88%" in shown
    assert "Last run: 2025-11-30 10:53 UTC" in shown
    # the gauge's arc is the success rate's share of the circle
    arc = [c for c in root.iter(f"{SVG}circle") if c.get("stroke-dasharray")][0]
    filled, whole = map(float, arc.get("stroke-dasharray").split())
    assert filled / whole == pytest.approx(0.875, abs=1e-3)


def test_a_crew_that_never_ran():
    _, shown = texts(cards.crew_card(crew_document(**{"Last Run": None, "Success Rate": 0}), 1))
    assert "Last run: never" in shown and "0%" in shown


def test_an_agent_card_shows_role_llm_tools_and_crew():
    root, shown = texts(cards.agent_card(agent_document(), 61))
    assert root.get("height") == "600"
    assert shown[:2] == ["AGENT #61", "Ada"]
    assert {"Role: Researcher", "LLM: gpt-4o", "Tools: 2", "Crew: Research Crew"} <= set(shown)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_is_text(name):
    for svg in (
        cards.crew_card(crew_document(name=name, Process=name), 5),
        cards.agent_card(agent_document(name=name, crew=name, role=name, llm=name), 5),
    ):
        root, shown = texts(svg)  # parses: well-formed XML
        assert_inert(root)
        assert cards.clean(name) in shown or any(s.endswith(cards.ELLIPSIS) for s in shown)
        title = root.find(f"{SVG}title").text
        assert title == cards.fit(name, 10, 2000)


def test_forbidden_characters_are_dropped_and_whitespace_made_one_line():
    assert cards.clean("a\x00b\tc\n\nd\ud800e\ufffff\x85g") == "a b c d e f g"
    assert cards.clean("  ]]> <x> ") == "]]> <x>"


def test_long_names_are_cut_to_fit():
    long = "Extraordinarily Long Crew Name " * 10
    label = cards.fit(long, 38, 528)
    assert label.endswith(cards.ELLIPSIS) and cards.text_width(label, 38) <= 528
    wide = "研究" * 60
    assert cards.text_width(cards.fit(wide, 38, 528), 38) <= 528
    assert cards.fit("Short", 38, 528) == "Short"
    _, shown = texts(cards.crew_card(crew_document(name=long), 3))
    assert shown[1] == label


def test_the_art_is_the_ids_alone():
    assert cards.art("crew", 7) == cards.art("crew", 7)
    assert cards.palette("crew", 7) == cards.palette("crew", 7)
    arts = {cards.art("crew", i) for i in range(1, 200)}
    assert len(arts) == 199
    assert cards.art("crew", 7) != cards.art("agent", 7)
    # the same document under another id looks different; another name, the same art
    assert cards.crew_card(crew_document(), 7) != cards.crew_card(crew_document(), 8)
    assert cards.art("crew", 7) in cards.crew_card(crew_document(name="Other"), 7)
