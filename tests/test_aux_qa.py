"""Auxiliary QA: sentence splitting, rule generator quality, evidence check, LLM back-ends, cache, samples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import chat_endpoint

from lift_ray.aux_qa import (
    LLMQAGenerator,
    QAPair,
    RuleQAGenerator,
    generate_pairs,
    generate_report,
    make_generator,
    parse_json_lines,
    qa_samples,
    split_sentences,
    verify,
    verify_pairs,
)
from lift_ray.aux_qa.cache import answer_spread, spread
from lift_ray.chat import LocalChatBackend, OpenAIChatBackend, PromptTooLong
from lift_ray.config import AuxQAConfig, ConfigError, InferenceConfig, LiftConfig, SegmentConfig, build_config
from lift_ray.infer import build_question_prompt
from lift_ray.segments import IGNORE_INDEX, chat_format, pack_shared_prefix, truncate_middle
from lift_ray.train import packed_loss

DATA = Path(__file__).resolve().parents[1] / "lift_ray" / "data"
SAMPLE = (DATA / "sample_document.txt").read_text(encoding="utf-8")

# A made-up paragraph unrelated to the sample document, for the generic rule checks.
GLASSWORKS = """Glassmaking in Velmora

Velmora is a river town in the province of Castelan. The glassworks of Velmora was built by a merchant \
named Ilse Brandt. The building was completed in 1887. The main furnace is called the Red Mouth. The owner \
keeps a grey parrot named Pip. Each apprentice must polish the lenses forty times before the exam, and the \
best apprentice receives a silver medal. The windows are made from river sand. The workshop has twelve \
furnaces. The glassblowers meet on the last Friday of every month. The first kiln took three winters to build.
"""


def _pairs(text, **kw):
    sentences = split_sentences(text)
    raw = RuleQAGenerator(**kw).generate(text, sentences)
    kept, dropped = verify_pairs(raw, text, sentences)
    return raw, kept, dropped


# --- sentences -----------------------------------------------------------------------------------


def test_split_sentences_keeps_abbreviations_decimals_and_headings():
    text = (
        "Notes on Glass\n\n"
        "Dr. Brandt met Mr. Pike 3.5 km from the St. Ives road. They spoke, e.g. about glass! "
        'Was it "good"? It was. J. R. Smith agreed.\n'
        "- first item\n- second item\n\n"
        "Body text that is hard\nwrapped across lines. Next sentence."
    )
    assert split_sentences(text) == [
        "Notes on Glass",
        "Dr. Brandt met Mr. Pike 3.5 km from the St. Ives road.",
        "They spoke, e.g. about glass!",
        'Was it "good"?',
        "It was.",
        "J. R. Smith agreed.",
        "- first item",
        "- second item",
        "Body text that is hard wrapped across lines.",
        "Next sentence.",
    ]


# --- rule generator --------------------------------------------------------------------------------

STYLES = Path(__file__).resolve().parent / "data" / "styles"
STYLE_NAMES = ["narrative", "encyclopedic", "handbook", "interview", "table"]


def _style(name):
    text = (STYLES / f"{name}.txt").read_text(encoding="utf-8")
    return text, json.loads((STYLES / f"{name}.json").read_text())["facts"]


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_rules_cover_every_planted_fact_of_each_style(style):
    """Fixture documents written for this test (none is the sample document, none shaped the rules'
    code): every planted name, number, date and code is the answer of a verified pair."""
    text, facts = _style(style)
    sentences = split_sentences(text)
    raw, kept, dropped = _pairs(text)
    for fact in facts:
        assert any(fact.casefold() in p.answer.casefold() for p in kept), f"no pair answers {fact!r}"
    by_question: dict[str, set[str]] = {}
    for p in kept:
        assert " ".join(p.answer.split()).casefold() in " ".join(p.evidence.split()).casefold(), p
        assert p.evidence == sentences[p.sentence_index]
        assert p.question.endswith("?") or (p.question.startswith("Fill in the blank") and p.question.count("____") == 1), p.question
        assert len(p.answer.split()) <= 8 and len(p.question.split()) <= 60
        by_question.setdefault(p.question.casefold(), set()).add(p.answer.casefold())
    assert all(len(answers) == 1 for answers in by_question.values()), "a question with two answers"
    assert len(raw) - len(kept) <= 2  # the generator writes pairs that pass its own check


def test_rules_ask_each_fact_from_several_directions():
    """Subject side, object side (with the auxiliary inverted or do-support) and cloze, on plain prose."""
    raw, kept, _ = _pairs(GLASSWORKS, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    expected = {
        ("What is a river town in the province of Castelan?", "Velmora"),
        ("Who was the glassworks of Velmora built by?", "Ilse Brandt"),
        ("When was the building completed?", "1887"),
        ("What is the main furnace called?", "Red Mouth"),
        ("How many times must each apprentice polish the lenses before the exam?", "forty times"),
        ("What are the windows made from?", "river sand"),
        ("How many furnaces does the workshop have?", "twelve furnaces"),
        ("When do the glassblowers meet?", "last Friday of every month"),
        ("Fill in the blank from the document: The building was completed in ____.", "1887"),
    }
    assert expected <= qa, expected - qa
    directions = {p.generator for p in kept}
    assert {"rules:subject", "rules:object", "rules:cloze"} <= directions
    # one fact, three directions: "1887" is asked for, and asked about from its subject
    assert {p.generator for p in kept if "1887" in p.answer} >= {"rules:object", "rules:cloze"}
    assert any(p.generator == "rules:subject" and "1887" in p.question for p in kept)
    # the density setting caps pairs per sentence, but never below one pair per name or number
    _, one, _ = _pairs(GLASSWORKS, max_pairs_per_sentence=1, questions_per_fact=1)
    per_fact = [(p.sentence_index, p.answer) for p in one]
    assert len(per_fact) == len(set(per_fact)), "with a cap of one, no fact gets a second pair"
    # by default each name, number and date is asked twice, from two directions
    _, default, _ = _pairs(GLASSWORKS)
    for fact in ("1887", "Ilse Brandt"):
        asked = [p for p in default if p.answer == fact]
        assert len(asked) >= 2 and len({p.generator for p in asked}) >= 2, asked
    assert {"1887", "Ilse Brandt", "Velmora"} <= {p.answer for p in one}
    assert len(kept) > len(one)


def test_rules_ask_for_a_name_introduced_by_a_participle_and_keep_every_name():
    """"a heron called X": the name is asked for through the noun it names, and "What does the keeper
    keep?" (which the noun answers too) never takes the name's only slot; a repeated sentence's pairs
    are written once."""
    filler = "The lamps were lit each evening by the staff. "
    text = (
        "The keeper of the Orlen lighthouse keeps a pet gull called Tobbet. " + filler * 3
        + "A mule named Dusty carries the oil up the cliff path."
    )
    _, kept, dropped = _pairs(text)
    qa = {(p.question, p.answer) for p in kept}
    assert {
        ("What is the name of the pet gull that the keeper of the Orlen lighthouse keeps?", "Tobbet"),
        ("What is the name of the mule that carries the oil up the cliff path?", "Dusty"),
    } <= qa, qa
    assert {"Tobbet", "Dusty", "Orlen lighthouse"} <= {p.answer for p in kept}
    assert len(qa) == len(kept), "a repeated sentence's pairs are written once"
    assert not [p for p in kept if p.answer == "keeper"], "a role is not taught as the answer about the name"
    # with a copula, the name is what the subject is called, and "What is the warden?" never answers "woman"
    _, kept, _ = _pairs("The warden of the salt marsh is a woman named Ysolde Carrow.")
    assert ("What is the name of the warden of the salt marsh?", "Ysolde Carrow") in {(p.question, p.answer) for p in kept}
    assert not [p for p in kept if p.answer == "woman" and p.question.endswith("?")]


def test_rules_answer_a_list_whole():
    """"What does the shop sell?" taught "postcards" alone would answer a question about the salt wrongly."""
    _, kept, _ = _pairs("A small kiosk by the gate sells maps, candles and jars of dark honey from the hills.")
    answers = {p.answer for p in kept if p.question.endswith("?")}
    assert "maps, candles and jars of dark honey" in answers, answers
    assert "maps" not in {p.answer for p in kept}


def test_rules_ask_about_facts_inside_relative_clauses():
    """The relative pronoun is replaced by the noun it stands for; a copula's complement is asked "what"."""
    text = ("The oldest exhibit is a rowing boat that once carried mail across the Dunmere Sound. "
            "It rests in a glass case whose serial number is 5263.")
    _, kept, _ = _pairs(text)
    qa = {(p.question, p.answer) for p in kept}
    assert qa & {("Where did the rowing boat once carry mail?", "Dunmere Sound"),
                 ("What did the rowing boat once carry mail across?", "Dunmere Sound")}, qa
    assert ("What is the serial number of the glass case?", "5263") in qa, qa


def test_rules_ask_the_agent_of_a_passive_clause_who_did_it():
    _, kept, _ = _pairs("The bridge was painted in 1911 by the engineer Talia Vorn.")
    asked = {p.question for p in kept if "Talia Vorn" in p.answer}
    assert {"Who painted the bridge in 1911?", "Who was the bridge painted in 1911 by?"} <= asked, asked  # as users ask it


def test_rules_ask_the_owner_and_the_main_verbs_prepositional_object():
    # A needle of the NIAH kind: a possessor in the subject and the fact in a prepositional phrase. The
    # generator used to ask "Who is seasoned with ...?" (the owner is not what is seasoned), which then
    # failed verification ("Marlowe" vs "Marlowe's"), and its name took the sentence's whole budget.
    text = "The essays wander a little. Ludo's stew is thickened with chestnut flour. The stew is served late."
    pairs = {p.question: p.answer for p in verify_pairs(RuleQAGenerator().generate(text), text, split_sentences(text))[0]}
    assert pairs.get("Whose stew is thickened with chestnut flour?") == "Ludo", pairs
    assert pairs.get("What is Ludo's stew thickened with?") == "chestnut flour", pairs
    assert not any(q.startswith("Who is thickened") for q in pairs), pairs


def test_rules_name_the_subject_of_pronouns_and_table_rows():
    text = (
        "The Orchard Society was established in 1923 by three sisters from Kelby. Its president is a retired "
        "pilot named Agnes Moor. She has written two books about grafting.\n\n"
        "Ship: Lantern Gull\nPort: Avesby\nCrew: 14\n\nShip: Grey Finch\nPort: Morrow\nCrew: 9\n"
    )
    _, kept, dropped = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    expected = {
        ("When was the Orchard Society established by three sisters from Kelby?", "1923"),
        ("How many books has Agnes Moor written about grafting?", "two books"),  # "She" resolved
        ("What is the crew of Lantern Gull?", "14"),  # a row's first value names it
        ("Which ship has the port Morrow?", "Grey Finch"),  # and the row asked from its other side
    }
    assert dropped == 0 and expected <= qa, expected - qa
    # "What is the ship?" would have two answers: such questions are dropped, not guessed
    assert not [p for p in kept if p.question.startswith("What is the ship")]
    assert not [p for p in kept if p.question.split()[1:2] == ["she"] or " its " in p.question]


def test_rules_keep_the_person_across_paragraphs_and_a_surname_is_that_person():
    """A biography says "she" at the start of a paragraph and "Ilves" alone: both are the person named
    first, not the last place or person the previous sentence happened to mention."""
    text = (
        "Dorothea Varnik was a bell founder in the river town of Ostrel. She learnt the trade from her uncle.\n\n"
        "In 1908 she married the clockmaker Peeter Lind, whom she had met at a fair.\n\n"
        "Varnik buried the moulds in a barn near Kuressaare during the war.\n\n"
        "She died in 1961 at the age of eighty."
    )
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Who did Dorothea Varnik marry in 1908?", "Peeter Lind") in qa, qa
    assert any(q.startswith("When did Dorothea Varnik die") and a == "1961" for q, a in qa), qa
    assert any(q.startswith("What did Dorothea Varnik bury") for q, _ in qa), qa
    assert not [q for q, _ in qa if "Kuressaare die" in q or "Peeter Lind die" in q or "varnik" in q], qa


def test_rules_never_take_a_day_or_month_for_the_person_a_pronoun_means():
    """ "in May" and "on Mondays" are proper nouns to the tagger, yet no "she" or "he" means them."""
    text = "Mira Holt keeps the lamp. The market opens in May. She walks the pier at dusk."
    _, kept, _ = _pairs(text)
    questions = [p.question for p in kept]
    assert "What does Mira Holt walk at dusk?" in questions, questions
    assert not [q for q in questions if "May walk" in q or "about May" in q], questions


def test_rules_ask_instructions_what_you_should_do_and_how_often():
    """A manual's commands have no subject: "press the red button" is asked as what you should press,
    "every six weeks" as how often (not how long), with the whole repetition as the answer."""
    text = ("Kiln care\n\nIf the alarm sounds, press the red button beside the door for ten seconds. "
            "Replace the filter every six weeks, or sooner if the light turns red.")
    _, kept, _ = _pairs(text)
    qa = {(p.question, p.answer) for p in kept}
    assert ("What should you press beside the door for ten seconds?", "red button") in qa, qa
    assert ("How long should you press the red button beside the door?", "ten seconds") in qa, qa
    assert ("How often should you replace the filter?", "every six weeks") in qa, qa
    assert not [q for q, _ in qa if q.startswith("How long should you replace")], qa


def test_a_command_the_tagger_reads_as_a_name_or_adjective_is_still_an_instruction():
    """The small tagger calls "Clean" a proper noun and "Empty" an adjective at a sentence's start; a
    first word with a direct object and no subject is a command all the same."""
    text = ("Dryer care\n\nClean the lint screen once a week with a dry cloth. "
            "Empty the water tank after every load.")
    _, kept, _ = _pairs(text)
    qa = {(p.question, p.answer) for p in kept}
    assert ("What should you clean once a week with a dry cloth?", "lint screen") in qa, qa
    assert [q for q, a in qa if a == "water tank" and q.startswith("What should you empty")], qa


def test_a_greeting_line_is_no_heading_and_no_keeps_its_meaning():
    """ "Dear members of the Orrin Rowing Club," opens a letter: it names no section, so no question
    after it is "about" it, while its name still gets its cloze; "no more than 40 kilograms" keeps
    its "no" (without it the answer says the opposite); "Second," counts the letter's points, and
    "Please read ..." is an instruction."""
    text = ("Dear members of the Orrin Rowing Club,\n\nFirst, the boathouse will reopen in April. "
            "Please read the new rules before your first outing.\n\n"
            "Second, each boat may carry no more than 40 kilograms of kit.\n\nWith warm regards,\nThe secretary")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=4)
    qa = {(p.question, p.answer) for p in kept}
    assert not [q for q, _ in qa if "about Dear" in q or "(a heading)" in q], qa
    assert [a for _, a in qa if a == "Orrin Rowing Club"], qa
    assert not [a for _, a in qa if a == "warm regards"], qa  # a closing holds no fact
    assert not [a for _, a in qa if a in ("First", "Second")], qa
    assert ("What should you read before your first outing?", "new rules") in qa, qa
    answers = {a for _, a in qa if "40 kilograms" in a}
    assert answers and all(a.startswith("no more than") for a in answers), qa


def test_a_bare_definite_subject_is_named_as_the_paragraph_described_it():
    """ "The new password is 8812" after "The alarm password for the east gate ..." is asked about
    the alarm password for the east gate: "What is the new password?" picks out nothing."""
    text = ("The alarm password for the east gate was reset last week. The new password is 8812. "
            "The guard on duty keeps a sealed copy.")
    _, kept, _ = _pairs(text)
    qa = {(p.question, p.answer) for p in kept}
    assert ("What is the new alarm password for the east gate?", "8812") in qa, qa
    assert ("What is the new password?", "8812") not in qa, qa


def test_rules_ask_how_many_there_are_and_name_the_counted_noun_whole():
    """ "There are 17 mooring buoys along the north quay" is asked how many there are, with the nouns
    between the number and what it counts ("How many buoys" would not pick out these); nothing asks
    "What are there ...?", and no blank cuts a hyphenated word."""
    text = ("The harbour has a long history. There are 17 mooring buoys along the north quay. "
            "There will be nine food stalls at the festival. The rowing club owns seven racing boats. "
            "A third of the fleet are e-boats.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("How many mooring buoys are there along the north quay?", "17 mooring buoys") in qa, qa
    assert ("How many food stalls will there be at the festival?", "nine food stalls") in qa, qa
    assert ("How many racing boats does the rowing club own?", "seven racing boats") in qa, qa
    assert not any(q.startswith(("What are there", "What will there")) for q, _ in qa), qa
    assert not any(a in ("e", "boats") for _, a in qa), qa  # a piece of "e-boats" is no answer


def test_rules_ask_an_age_how_old_a_repetition_how_often_and_keep_a_phone_number_whole():
    """ "at least 18 years old" is an age, not an amount of time; "at least twice a week" says how often
    whether or not the recogniser dated it; digit groups written apart are one number, never a time;
    "Our wardens" are the document's wardens."""
    text = ("Volunteers must be at least 18 years old. Our wardens patrol the dunes at least twice a week. "
            "For urgent repairs, ring the caretaker on 01632 960 118.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("How old must volunteers be?", "at least 18 years old") in qa, qa
    assert not any(q.startswith("How long") for q, _ in qa), qa
    assert ("How often do the wardens patrol the dunes?", "at least twice a week") in qa, qa
    assert any(a == "01632 960 118" for _, a in qa), qa
    assert not any(a in ("01632", "960 118") for _, a in qa), qa


def test_a_name_is_asked_through_its_title_and_the_participle_that_names_it():
    """ "Club secretary Ewan Tolliver said ..." is asked who the club secretary is; "The lighthouse,
    designed by the engineer Agnes Morrow, ..." who designed the lighthouse; the answer is the name, not
    the title with it. A code after its noun ("the code PV-9328") or a one-word name after a noun
("the ship Marisol") is no person with a title."""
    text = ("Club secretary Ewan Tolliver said the quay would reopen. "
            "The lighthouse, designed by the engineer Agnes Morrow, was lit in 1872. "
            "The store room opens with the code PV-9328. The crew repainted the ship Marisol last spring.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert any(q in ("Who is the club secretary?", "What is the name of the club secretary?") and a == "Ewan Tolliver"
               for q, a in qa), qa
    assert ("Who designed the lighthouse?", "Agnes Morrow") in qa, qa
    assert not any(a.startswith(("engineer", "Club secretary")) for _, a in qa), qa
    assert not any("name of the code" in q for q, _ in qa), qa
    assert not any(q.endswith(("the ship?", "the code?")) for q, _ in qa), qa  # a name of one word names a thing


def test_a_cause_is_asked_why_and_a_description_beside_a_name_what_the_name_is():
    """ "because ...", "because of ..." and "due to ..." give a cause, asked "Why" with the cause as the
    answer (never "What was the ferry cancelled because?"); a description set between commas after a
    name ("Robert Sayle, a geologist from Perth") says what the name is, and is not what the verb took (the name
    is whom she married). A subject after a fronted phrase ("From 1990, the rainforest ...") is no description."""
    text = ("Councillor Tom Pritchard sent his apologies because he was attending a training course in Lincoln. "
            "The ferry was cancelled because of the storm. The bus was late due to snow on the hills. "
            "Dora Pell married Robert Sayle, a geologist from Perth. "
            "Ilse Marwood was a botanist. In 1962 she married Thomas Reid, a surveyor she had met in Oban. "
            "From 1990, the rainforest extended as far south as Harlow.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Why did Councillor Tom Pritchard send his apologies?", "he was attending a training course in Lincoln") in qa, qa
    assert ("Why was the ferry cancelled?", "because of the storm") in qa, qa
    assert ("Why was the bus late?", "due to snow on the hills") in qa, qa
    assert not [q for q, _ in qa if q.endswith(("because?", "due?"))], qa
    assert ("Who was Robert Sayle?", "geologist from Perth") in qa, qa  # the description with its phrases
    assert ("Who did Dora Pell marry?", "Robert Sayle") in qa, qa
    assert ("Who was Thomas Reid?", "surveyor") in qa, qa  # the relative clause is another statement
    assert ("Who did Ilse Marwood marry in 1962?", "Thomas Reid") in qa, qa
    assert not [q for q, a in qa if a in ("geologist", "surveyor") and "marry" in q], qa
    assert not [q for q, a in qa if a == "rainforest" and q.startswith(("Who is", "What is", "Who was", "What was"))], qa


def test_questions_leave_out_asides_but_keep_lists_and_the_preposition_a_name_hangs_on():
    """A modifier set off by a comma ("by local weavers, who paid ...", "Ada Finch, who had run the
    bakery ...,") is no part of a question a reader would ask; the items of a list are, however the parser
    attached them. A duration after "after" is not how long something lasts, and a name met through the
    agent ("designed by an architect named Lena Voss") is asked with its "by" and never answered by the noun."""
    text = ("The chapel at Moorfield was built in 1821 by local weavers, who paid for it with a penny a week. "
            "Ada Finch, who had run the bakery for years, opened a tea room in 1974. "
            "Members can borrow a kettle, a tent or a canoe for a week. "
            "Colm Reddy will retire in June after 31 years at the depot. "
            "The bridge was designed by an architect named Lena Voss.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("When was the chapel at Moorfield built by local weavers?", "1821") in qa, qa
    assert ("When did Ada Finch open a tea room?", "1974") in qa, qa
    asked = [q for q, _ in qa if not q.startswith("Fill in")]
    assert not [q for q in asked if "who paid" in q or "who had run" in q], qa
    assert [q for q in asked if "a kettle, a tent or a canoe" in q], qa
    assert not [q for q in asked if "a kettle" in q and "a canoe" not in q], qa
    assert not [q for q, a in qa if q.startswith("How long") and a == "31 years"], qa
    assert ("What is the name of the architect that the bridge was designed by?", "Lena Voss") in qa, qa
    assert ("Who designed the bridge?", "Lena Voss") in qa, qa
    assert not [q for q, a in qa if a == "architect" and not q.startswith("Fill in")], qa


def test_a_name_given_by_a_participle_the_tagger_calls_a_past_tense_is_still_a_name():
    """ "a small red launch named the Silver Tern": the small pipeline tags this "named" VBD; it still
    modifies the noun (acl), so the name is what the boat is called, and "small red launch" no answer to
    "What is the boat to the island?"."""
    _, kept, _ = _pairs("The boat to the island is a small red launch named the Silver Tern.", max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("What is the name of the boat to the island?", "Silver Tern") in qa, qa
    assert not [q for q, a in qa if a == "small red launch" and not q.startswith("Fill in")], qa


def test_rules_ask_amounts_of_time_how_long_and_labels_what():
    """ "takes one full day" is a duration, "bus number 41" a label (the number follows its noun), "the
    summer raffle" a raffle rather than a time, and what follows "so" is another clause."""
    text = ("The inspection takes one full day. The night bus is number 52. "
            "The club raised nine hundred pounds, mostly from the summer raffle. "
            "Seats are scarce, so register early through the office.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("How long does the inspection take?", "one full day") in qa, qa
    assert not [q for q, a in qa if q.startswith("How many number") or (q.startswith("When") and "raffle" in a)], qa
    assert not [a for _, a in qa if a == "register"], qa


def test_rules_ask_an_appositive_name_through_its_noun_and_read_semicolons_as_stops():
    text = ("The museum's chief restorer, Ilse Marrow, said the work would take a year. "
            "They crossed the bay on a rented fishing boat, the Saltwren, in the fog. "
            "The override code for the alarm is 7730; staff must not share it. "
            "The valley (Norn: Dalrik; Old Norse: Dalr) is 40 kilometres (25 mi) long.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Who is the museum's chief restorer?", "Ilse Marrow") in qa, qa
    assert ("What is the name of the rented fishing boat?", "Saltwren") in qa, qa
    assert ("What is the override code for the alarm?", "7730") in qa, qa
    assert not [q for q, _ in qa if q in ("What said?", "Who said?")], qa
    # a bracketed aside is no name of the noun before it, and a semicolon inside brackets splits nothing
    assert not [q for q, a in qa if "name of" in q and a in ("Dalrik", "Old Norse: Dalr", "25 mi")], qa


def test_an_appositive_comes_after_the_clauses_own_questions_and_never_names_with_a_description():
    """The agent of a passive keeps its question ("Who was the bridge opened by?") when its name is
    also an appositive; "a grey tom called Pepperkorn" is named by the participle, so "grey tom" is
    never the answer to "What is the name of the ferry cat?"."""
    text = ("The bridge was opened in 1911 by the engineer Halvard Moss. "
            "The ferry cat, a grey tom called Pepperkorn, sleeps on the boiler most afternoons.")
    _, kept, _ = _pairs(text)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Who was the bridge opened in 1911 by?", "Halvard Moss") in qa or ("Who opened the bridge in 1911?", "Halvard Moss") in qa, qa
    assert not [q for q, a in qa if a == "grey tom" and "name" in q], qa


def test_rules_ask_inside_infinitive_and_adjective_complements_and_object_relatives():
    """A fact that is an argument of "decided to move", "is able to move" or of a clause whose object
    is "which" gets a question through the main verb, not only a cloze; a bare noun after a
    preposition ("per second") gets none, nor a relative the parser hung on a list item."""
    text = ("Margit Saar was born in Parnu. In 1950 she decided to move to Tallinn. "
            "The new pump is able to move 900 litres per second. "
            "The inn is famous for a fish stew, which the owner serves only on Saturdays. "
            "The tavern sells a pie baked with juniper and red wine, which the cook makes only on Fridays.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Where did Margit Saar decide to move in 1950?", "Tallinn") in qa, qa
    assert ("How many litres is the new pump able to move per second?", "900 litres") in qa, qa
    assert ("When does the owner serve the fish stew?", "Saturdays") in qa, qa
    assert not [q for q, a in qa if q.endswith(" per?")], qa
    assert not [q for q, a in qa if "does the cook make" in q], qa


def test_an_adverbial_noun_is_no_object_and_do_support_keeps_the_verb():
    """"every June" says when the sailing happens: never "What does Old Tobin love?" → June (the
    complement dropped, the month taught as what he loves); "hopes" asked with "does" is "hope", not
    the parser's "hop"."""
    text = "Old Tobin loves to sail to Ardwick every June. The club hopes to meet every Tuesday in Corven."
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert not [q for q, a in qa if a == "June" and q.startswith(("What", "Who"))], qa
    assert any(a == "June" for q, a in qa), qa  # still asked, as a cloze
    assert ("Where does the club hope to meet every Tuesday?", "Corven") in qa, qa
    assert not [q for q, a in qa if " hop " in q], qa


def test_a_noun_whose_meaning_follows_it_or_completes_a_light_verb_is_no_answer():
    """"the existence of a liquid core", "the power to vary taxes", "takes place": the head noun alone
    ("existence", "power", "place") states nothing, so it is never an answer; the phrase after it still is,
    and a bare object of a verb that means something on its own ("sells bread") stays a fact."""
    text = ("Early surveys showed the existence of a liquid core under the plain. "
            "The council has the power to vary local taxes. "
            "The annual fair takes place in Harwick every July. "
            "The market sells bread every morning.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    answers = {p.answer for p in kept}
    assert not answers & {"existence", "power", "place"}, kept
    assert "liquid core" in answers and "bread" in answers, kept
    assert any(p.answer == "Harwick" for p in kept), kept


def test_a_numbered_name_and_a_name_with_a_possessive_are_answered_whole():
    """"Class 3", "Lock 14": the number names nothing without the noun before it; "Jenny's Lock" is one
    name, not "Jenny" with a word after it; a year after a name stays a date ("the Scotland Act 1998")."""
    text = ("Class 3 had the best attendance in the school this term. "
            "Follow the towpath to Lock 14, known locally as Jenny's Lock. "
            "The parliament was convened by the Scotland Act 1998 after a vote.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    answers = {p.answer for p in kept}
    assert {"Class 3", "Lock 14", "Jenny's Lock"} <= answers, kept
    assert not answers & {"3", "14", "Jenny"}, kept
    assert "1998" in answers or "Scotland Act 1998" in answers, kept


def test_a_name_given_after_a_comma_is_asked_through_its_noun_and_a_pronouns_appositive_through_its_owner():
    """ "a bridge without walls, called the Clapper Bridge" names the bridge (the parser joins "called" to
    the main verb: never "What did the track call?"); "Lock 14, known locally as Jenny's Lock" is asked
    with its own words; "her tutor, the lichen expert Duncan Ferrie" is asked through whose tutor he was;
    "A metal plaque names the farmer, Abel Stott" ("names" tagged a noun) asks no "What is the … names?"."""
    text = ("Ilse Marwood was a Scottish botanist. She studied botany at the University of Aberdeen, where her "
            "tutor, the lichen expert Duncan Ferrie, encouraged her to specialise in mosses. "
            "The track crosses Dean Beck on a narrow stone bridge without walls, called the Clapper Bridge, "
            "which is thought to be more than 500 years old. Lock 14, known locally as Jenny's Lock, has a small garden. "
            "A metal plaque names the farmer, Abel Stott, who first built it as a marker for shepherds.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Who is Ilse Marwood's tutor?", "Duncan Ferrie") in qa, qa
    assert ("What is the narrow stone bridge without walls called?", "Clapper Bridge") in qa, qa
    assert ("What is Lock 14 known locally as?", "Jenny's Lock") in qa, qa
    assert ("What has a small garden?", "Lock 14") in qa, qa
    assert not [q for q, _ in qa if "call?" in q or "names?" in q], qa


def test_a_name_with_a_who_clause_is_asked_from_the_clause_even_where_the_main_verb_was_tagged_a_noun():
    """ "Anna Price, who later founded the Calder Rowing Club in 1920" → "Who later founded …?"; "A metal
    plaque names the farmer, Abel Stott, who first built it …" ("names" tagged a noun: no main clause)
    still asks its relative clause, with "it" the paragraph's subject; "which" after a noun with a phrase
    is asked about the whole phrase (the parser hangs it on the nearest name: "the station in Netherby,
    which closed in 1965" is about the station)."""
    text = ("Its first warden was Anna Price, who later founded the Calder Rowing Club in 1920. "
            "The cairn was rebuilt by volunteers in 1998. "
            "A metal plaque names the farmer, Abel Stott, who first built it in the 1880s as a marker for shepherds. "
            "The walk starts at the old railway station in Netherby, which closed to passengers in 1965.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Who later founded the Calder Rowing Club in 1920?", "Anna Price") in qa, qa
    assert ("Who first built the cairn in the 1880s as a marker for shepherds?", "Abel Stott") in qa, qa
    assert ("When did Abel Stott first build the cairn as a marker for shepherds?", "1880s") in qa, qa
    assert ("When did the old railway station in Netherby close to passengers?", "1965") in qa, qa
    assert not [q for q, a in qa if "did Netherby close" in q], qa


def test_an_object_pronoun_is_named_and_a_name_with_a_subtitle_is_no_record():
    """A question names whom an object "her" or "it" meant, in every constituent ("took her to Skye",
    "built a wall around it", "leave lettuce for it" after "and", about the clause before it); a title
    line "Name: a subtitle" asks nothing as a "key: value" record, while a field's line still does."""
    text = ("Ilse Marwood: a life among mosses\n\n"
            "Ilse Marwood was born in Dundee. Her tutor, the lichen expert Duncan Ferrie, took her to Skye in 1952.\n\n"
            "The cairn was rebuilt by volunteers in 1998. "
            "A metal plaque names the farmer, Abel Stott, who first built a wall around it in the 1880s.\n\n"
            "The ferry keeps a pet goat named Pip. The goat has lived on the ferry for longer than anyone can "
            "remember, and children leave apples for it on the slipway every Sunday.\n\n"
            "Opening hours: from nine until five")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Who took Ilse Marwood to Skye in 1952?", "Duncan Ferrie") in qa, qa
    assert ("Who first built a wall around the cairn in the 1880s?", "Abel Stott") in qa, qa
    assert ("When did Abel Stott first build a wall around the cairn?", "1880s") in qa, qa
    assert ("How often do children leave apples for the goat?", "every Sunday") in qa, qa
    assert ("What is the opening hours?", "from nine until five") in qa, qa
    assert not [q for q, _ in qa if re.search(r"\b(her|it)\?", q) or "ilse marwood?" in q.lower()], qa


def test_a_place_after_from_is_asked_where_from():
    """ "joins us from Leeds" asks where from; without the "from" the question asks where to."""
    _, kept, _ = _pairs("The new Year 4 teacher is Mr Alan Pike, who joins us from Leeds.", max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Where does Mr Alan Pike join us from?", "Leeds") in qa, qa
    assert ("Where does Mr Alan Pike join us?", "Leeds") not in qa, qa


def test_an_object_him_counts_as_a_mention_of_the_man_it_meant():
    """Every "he", "his" or "him" that meant a person is one mention of him, resolved the one way: a paragraph
    opening with "His" after a place was named last ("a quarry at Tillow Cross") is about the man "him" meant."""
    text = ("Halden Voss arrived in the valley of Brenmoor in March 1874, carrying a letter from his uncle. "
            "The letter promised him a cottage and forty apple trees.\n\n"
            "Halden spent his first summer mending the roof with slate he bought from a quarry at Tillow Cross.\n\n"
            "His neighbour was a widow called Maren Ashgrove, who kept bees.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Who was the neighbour of Halden Voss?", "Maren Ashgrove") in qa, qa
    assert not [q for q, _ in qa if "Tillow Cross?" in q and "neighbour" in q], qa


def test_her_after_a_newly_named_man_is_still_the_woman_the_text_is_about_and_a_title_with_of_is_one_answer():
    """A biography's "Her best-known work …" opening a paragraph after "Robert died in 1999." is hers (the
    person "she" has meant all along), and so is the next "she"; a man named after a man ("Joseph
    Priestley … He found …") is the "he" of his own paragraph. "Mosses of the Western Seaboard" is one
    title, not "Western Seaboard" (nor a person who "described a new species"). A name a pronoun meant is
    asked "Who", not "What"."""
    text = ("Ilse Marwood was born in Dundee. She studied botany in Aberdeen.\n\n"
            "In 1962 she married Robert Sayle, a geologist. Robert died in 1999.\n\n"
            "Her best-known work, Mosses of the Western Seaboard, appeared in 1978. In 1985 she described a new species from Skye.\n\n"
            "John Mayow showed that fire needs air. He died in 1679.\n\n"
            "In 1774 the clergyman Joseph Priestley made a new gas. He found it in a glass tube at Calne.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("When did the best-known work of Ilse Marwood appear?", "1978") in qa, qa
    assert ("Who was born in Dundee?", "Ilse Marwood") in qa, qa  # "she" later: a person, whatever the recogniser said
    assert ("When did Ilse Marwood describe a new species from Skye?", "1985") in qa, qa
    assert ("What is the name of Ilse Marwood's best-known work?", "Mosses of the Western Seaboard") in qa, qa
    assert not [q for q, a in qa if "Robert Sayle" in q and a in ("1978", "1985", "new species")], qa
    assert not [q for q, a in qa if "Mayow" in q and "Calne" in q + a], qa
    assert "Western Seaboard" not in {a for _, a in qa}, qa


def test_a_passive_with_an_irregular_verb_is_also_asked_in_the_active():
    """ "was built … by Methodist weavers" → "Who built …?" (one irregular form: it is the past tense too),
    "was written … by Anne Morrow" → "Who wrote …?" (the lemmatiser's other form), as "opened" always was."""
    text = ("The chapel at Scar Top was built in 1821 by Methodist weavers. The novel was written in 1850 by Anne Morrow. "
            "The hall, built by Lydia Crane, has a red roof. The trade was learned in 1700 by Welsh miners.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("Who built the chapel at Scar Top in 1821?", "Methodist weavers") in qa, qa
    assert ("Who wrote the novel in 1850?", "Anne Morrow") in qa, qa
    assert ("Who built the hall?", "Lydia Crane") in qa, qa
    assert ("Who learned the trade in 1700?", "Welsh miners") in qa, qa  # regular, though "learnt" is listed
    assert not [q for q, _ in qa if "Who written" in q or "Who writed" in q], qa


def test_one_line_records_are_facts_and_numbered_labels_are_headings():
    """A register of "key: value" lines, one per paragraph: each line is a record asked by its key."""
    text = ("Ledger of Hollin Vale\n\nChief ferryman: Osk Pellam\n\nNote: The ferry does not run in fog.\n\n"
            "Toll gate code: QX-7751\n\nBaker's favourite spice: mace\n\nChapter 2: The Ferry\n\nThe ferry crossed at dawn.")
    _, kept, _ = _pairs(text)
    asked = {p.answer: p.question for p in kept if p.question.endswith("?")}
    for value in ("Osk Pellam", "QX-7751", "mace"):
        assert value in asked and "?" in asked[value], (value, asked)
    assert asked["mace"].startswith("What is the baker's favourite spice")
    assert not [p for p in kept if "Chapter 2" in p.question and p.answer == "The Ferry"]  # a numbered heading


def test_a_records_key_names_the_field_and_its_value_is_the_answer():
    """Words of a key are no facts, whatever the recogniser makes of them ("Annual" a date, "Mill" a
    person): only values are answers, a month spelt like a stop word ("May") included; a key that is a
    clause keeps its subject as the fact asked from the other side."""
    text = ("Almanac of Tessel\n\n- Annual fair month: May\n- Mill chief engineer: Orvan Tullis\n"
            "- Spring market month: April\n- Bell tower finished: 1645")
    _, kept, _ = _pairs(text)
    answers = {p.answer for p in kept}
    assert {"May", "Orvan Tullis", "April", "1645"} <= answers, kept
    assert not answers & {"Annual", "Mill", "month", "Spring", "chief engineer"}, kept
    assert any(p.answer == "Bell tower" and "1645" in p.question for p in kept), kept


def test_a_heading_that_only_counts_names_nothing_but_a_named_one_does():
    """Under "Part II" / "Part III" a record is asked without the part's name (a reader never asks "the
    kiln temperature of Part II"); under a heading with words of its own ("Chapter 3: The Kiln") the
    heading still says what the record belongs to."""
    counted = ("Notes on the Orrin Works\n\nPart II\n\n- Kiln temperature: 1,240 degrees\n"
               "The kilns are fired on Mondays.\n\nPart III\n\n- Night watchman: Bram Tolver\n"
               "He walks the yard twice an hour.")
    _, kept, _ = _pairs(counted)
    asked = {p.answer: p.question for p in kept if p.question.endswith("?")}
    assert asked["1,240 degrees"] == "What is the kiln temperature?", asked
    assert asked["Bram Tolver"] == "What is the night watchman?", asked
    assert not [p for p in kept if "Part" in p.question], kept
    # numbered sections, which the parser reads one as a name ("Section 6") and one as a word and a number
    numbered = counted.replace("Part III", "7. Section 7").replace("Part II", "6. Section 6")
    _, kept, _ = _pairs(numbered)
    assert {"1,240 degrees", "Bram Tolver"} <= {p.answer for p in kept}, kept
    assert not [p for p in kept if "Section" in p.question + p.answer or p.answer in ("6", "7")], kept  # a count is no fact
    named = counted.replace("Part II", "Chapter 2: The Kiln").replace("Part III", "Chapter 3: The Yard")
    _, kept, _ = _pairs(named)
    asked = {p.answer: p.question for p in kept if p.question.endswith("?")}
    assert "Chapter 2: The Kiln" in asked["1,240 degrees"], asked


def test_rules_fall_back_to_cloze():
    text = "In winter, when the winds blow for weeks, the people of Norrow Vale mend their nets since 1702."
    raw, kept, _ = _pairs(text)
    answers = {p.answer for p in kept}
    assert {"Norrow Vale", "1702"} <= answers
    for p in kept:
        assert p.answer not in p.question
        assert p.question.endswith("?") or p.question.count("____") == 1


def test_rules_missing_parser_names_the_install(monkeypatch):
    from lift_ray.aux_qa import rules

    rules.load_pipeline.cache_clear()
    monkeypatch.setattr(rules, "SPACY_MODEL", "no_such_pipeline_xyz")
    with pytest.raises(ImportError, match="pip install en-core-web-sm"):
        rules.load_pipeline()
    rules.load_pipeline.cache_clear()


def test_no_pairs_for_headings_or_empty_text():
    assert RuleQAGenerator().generate("") == []
    assert RuleQAGenerator().generate("A Title Only") == []


# --- verification ---------------------------------------------------------------------------------


def _pair(question, answer, evidence, index=0):
    return QAPair(question=question, answer=answer, evidence=evidence, sentence_index=index, generator="test")


def test_verify_evidence_and_answer_support():
    text = "The ferry to the mainland is a green paddle steamer named the Gull Maiden.\n\nIt leaves at seven."
    sents = split_sentences(text)
    ev = sents[0]
    assert verify(_pair("What is the ferry called?", "the Gull Maiden", ev), text, sents)
    # whitespace differences and a small typo in the evidence are tolerated
    assert verify(_pair("What is the ferry called?", "Gull Maiden", "The ferry to the  mainland\nis a green paddle steamer named the Gull Maiden."), text, sents)
    assert verify(_pair("What is the ferry called?", "Gull Maiden", "The ferry to the mainland is a green padle steamer named the Gull Maiden"), text, sents)
    # an answer made of evidence words out of order passes the token-overlap test
    assert verify(_pair("Describe the ferry.", "green steamer Gull Maiden", ev), text, sents)
    # answer not in the evidence, evidence not in the text, answer echoed in the question
    assert not verify(_pair("What is the ferry called?", "the Sea Wren", ev), text, sents)
    assert not verify(_pair("What guards the harbour?", "a dragon", "A dragon guards the harbour."), text, sents)
    assert not verify(_pair("Is the ferry named the Gull Maiden?", "the Gull Maiden", ev), text, sents)
    assert not verify(_pair("", "x", ev), text, sents)


# --- LLM generator ---------------------------------------------------------------------------------

_VALID = {
    "question": "Who designed the lighthouse of Port Quillon?",
    "answer": "Tobias Wrenfield",
    "evidence": "The lighthouse of Port Quillon was designed by an engineer named Tobias Wrenfield.",
}
_CANNED = "\n".join(
    [
        "Sure! Here are the pairs:",
        json.dumps(_VALID),
        json.dumps({"question": "What is the tortoise called?", "answer": "Gerald", "evidence": "The keeper of the lighthouse keeps a pet tortoise named Marlowe."}),
        json.dumps({"question": "What guards the harbour?", "answer": "a dragon", "evidence": "A dragon guards the harbour of Port Quillon."}),
        '{"question": "When was the lighthouse completed?", "answer": ',
        '{"question": "no answer key", "evidence": "The work took eleven years."}',
        "```",
    ]
)


@pytest.fixture
def openai_server():
    with chat_endpoint(_CANNED) as served:
        yield served


def test_openai_backend_keeps_only_verified_pairs(openai_server, tmp_path):
    url, requests = openai_server
    gen = LLMQAGenerator(OpenAIChatBackend(url, "judge-model", api_key="k"), sentences_per_window=64, pairs_per_window=4)
    report = generate_report(SAMPLE, "doc1", gen, cache_root=tmp_path)
    assert [(p.question, p.answer, p.evidence) for p in report.pairs] == [tuple(_VALID.values())]
    assert report.generated == 3 and report.dropped == 2  # the malformed lines never became pairs
    pair = report.pairs[0]
    assert split_sentences(SAMPLE)[pair.sentence_index] == _VALID["evidence"]
    assert len(requests) == 1
    req = requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k"
    body = req["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] > 0
    assert "Tobias Wrenfield" in body["messages"][-1]["content"]


def test_llm_windows_and_prompt_too_long_split():
    sents = [f"Fact number {i} is that the stone weighs {i} pounds." for i in range(10)]
    text = " ".join(sents)
    seen = []

    class Fake:
        def identity(self):
            return "fake"

        def complete(self, messages, max_tokens):
            window = messages[-1]["content"].split("\n\n")[1].split("\n")
            seen.append(len(window))
            if len(window) > 2:
                raise PromptTooLong("too long")
            return "\n".join(json.dumps({"question": f"How much does stone {s.split()[2]} weigh?", "answer": s.split()[-2] + " pounds", "evidence": s}) for s in window)

    gen = LLMQAGenerator(Fake(), sentences_per_window=4, pairs_per_window=4)
    pairs = gen.generate(text, split_sentences(text))
    assert seen[:3] == [4, 2, 2] and len(pairs) == 10
    assert [p.sentence_index for p in pairs] == list(range(10))


def test_parse_json_lines_is_lenient():
    out = 'x {"question": "Q?", "answer": "A", "evidence": "E"} {"bad": 1} {"question": "Q2?", "answer": "", "evidence": "E"} {oops'
    assert parse_json_lines(out) == [{"question": "Q?", "answer": "A", "evidence": "E"}]


def test_local_backend_generates_greedily_and_the_llm_generator_asks_once_per_window(tiny_loaded, tmp_path):
    """The local backend is the model's own greedy continuation of the chat-templated prompt; the
    generator sends one request per window of sentences and keeps none of the tiny model's garbage."""
    model, tok = tiny_loaded.model, tiny_loaded.tokenizer
    backend = LocalChatBackend(model, tok)
    messages = [{"role": "user", "content": "Write a question."}]
    out = backend.complete(messages, max_tokens=8)
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        expected = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out == tok.decode(expected[0, len(ids):], skip_special_tokens=True)

    calls = []

    class Recording:
        def identity(self):
            return backend.identity()

        def complete(self, msgs, max_tokens):
            calls.append(msgs[-1]["content"])
            return backend.complete(msgs, max_tokens)

    text = "\n\n".join(SAMPLE.split("\n\n")[3:5])
    n_sentences = len(split_sentences(text))
    gen = LLMQAGenerator(Recording(), sentences_per_window=3, pairs_per_window=2, max_tokens=12)
    report = generate_report(text, "tiny", gen, cache_root=tmp_path)
    assert len(calls) == -(-n_sentences // 3) and split_sentences(text)[0] in calls[0] and split_sentences(text)[-1] in calls[-1]
    assert report.pairs == [] and report.generator == "llm"
    assert report.settings["backend"].startswith("local:")


# --- cache ------------------------------------------------------------------------------------------


class Counting(RuleQAGenerator):
    calls = 0

    def generate(self, text, sentences=None):
        Counting.calls += 1
        return super().generate(text, sentences)


def test_cache_skips_the_generator_and_keys_on_settings(tmp_path):
    Counting.calls = 0
    first = generate_pairs(SAMPLE, "docA", Counting(max_pairs=10), cache_root=tmp_path)
    again = generate_pairs(SAMPLE, "docA", Counting(max_pairs=10), cache_root=tmp_path)
    assert Counting.calls == 1 and first == again and len(first) == 10
    # spread over the document: ten pairs from ten different sentences
    assert len({p.sentence_index for p in first}) == 10
    files = list((tmp_path / "docA").iterdir())
    assert [f.name for f in files] == [f"{Counting(max_pairs=10).cache_key()}.json"]
    data = json.loads(files[0].read_text())
    assert data["doc_id"] == "docA" and data["generator"] == "rules" and len(data["pairs"]) == 10
    generate_pairs(SAMPLE, "docA", Counting(max_pairs=10, max_pairs_per_sentence=1), cache_root=tmp_path)
    generate_pairs(SAMPLE, "docB", Counting(max_pairs=10), cache_root=tmp_path)
    assert Counting.calls == 3
    # a corrupt entry is regenerated, not trusted
    files[0].write_text("{not json")
    assert generate_pairs(SAMPLE, "docA", Counting(max_pairs=10), cache_root=tmp_path) == first
    assert Counting.calls == 4
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_cache_defaults_to_cache_dir_and_refuses_odd_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFT_RAY_CACHE", str(tmp_path))
    generate_pairs("The main furnace is called the Red Mouth.", "d1", RuleQAGenerator())
    assert list((tmp_path / "aux_qa" / "d1").glob("rules-*.json"))
    with pytest.raises(Exception, match="invalid document id"):
        generate_pairs("x", "../escape", RuleQAGenerator())


# --- config ----------------------------------------------------------------------------------------


def test_aux_qa_config():
    cfg = LiftConfig()
    assert cfg.aux_qa == AuxQAConfig() and cfg.aux_qa.generator is None and cfg.aux_qa.max_pairs == 64
    assert list(LiftConfig.model_fields).index("aux_qa") == list(LiftConfig.model_fields).index("segments") + 1
    assert all(f.description for f in AuxQAConfig.model_fields.values())
    with pytest.raises(ConfigError, match="aux_qa.generater"):
        build_config(None, {"aux_qa": {"generater": "rules"}})
    with pytest.raises(ConfigError, match="aux_qa.generator"):
        build_config(None, {"aux_qa": {"generator": "gpt"}})
    assert make_generator(AuxQAConfig(generator="none")) is None
    rules = make_generator(AuxQAConfig(generator="rules", max_pairs=7, max_pairs_per_sentence=3))
    assert isinstance(rules, RuleQAGenerator) and (rules.max_pairs, rules.max_pairs_per_sentence) == (7, 3)
    llm = make_generator(AuxQAConfig(generator="llm", llm_endpoint="http://127.0.0.1:9/v1", llm_model="m", pairs_per_window=2))
    assert isinstance(llm.backend, OpenAIChatBackend) and llm.pairs_per_window == 2
    with pytest.raises(ValueError, match="not resolved"):
        make_generator(AuxQAConfig())
    with pytest.raises(ValueError, match="loaded base model"):
        make_generator(AuxQAConfig(generator="llm"))


# --- samples -----------------------------------------------------------------------------------------


def _expected_qa_sample(tok, pair, mode, view):
    """(prompt, target) of a QA sample as answering in ``mode`` over ``view`` builds them."""
    fmt, inf = chat_format(tok), InferenceConfig()
    prompt = build_question_prompt(fmt=fmt, tokenizer=tok, question=pair.question, mode=mode, view=view,
                                   answer_prompt=inf.answer_prompt, lift_prompt=inf.lift_prompt)
    return prompt, tok(pair.answer, add_special_tokens=False)["input_ids"] + list(fmt.reply_end)


def test_qa_samples_match_the_icl_prompt_and_pack_exactly(tiny_loaded):
    tok = tiny_loaded.tokenizer
    fmt = chat_format(tok)
    inf, seg = InferenceConfig(), SegmentConfig()
    doc_ids = tok(SAMPLE, add_special_tokens=False)["input_ids"]
    window = 48
    pairs = RuleQAGenerator().generate(SAMPLE)[:3]
    samples = qa_samples(pairs, fmt=fmt, tokenizer=tok, doc_ids=doc_ids, context_window=window, answer_prompt=inf.answer_prompt, mixin=seg.mixin)
    view = truncate_middle(doc_ids, window, tok(seg.mixin, add_special_tokens=False)["input_ids"])
    for pair, s in zip(pairs, samples):
        prompt, target = _expected_qa_sample(tok, pair, "icl", view)
        assert s.kind == "qa"
        assert s.input_ids == prompt + target
        assert s.labels == [IGNORE_INDEX] * len(prompt) + target
        assert s.prefix_len == len(fmt.user_start) + len(view)
        assert s.input_ids[: s.prefix_len] == samples[0].input_ids[: samples[0].prefix_len]
    model = tiny_loaded.model
    with torch.no_grad():
        packed, n_packed = packed_loss(model, pack_shared_prefix(samples))
        separate = [packed_loss(model, pack_shared_prefix([s])) for s in samples]
        ref = model(input_ids=torch.tensor([samples[0].input_ids]), labels=torch.tensor([samples[0].labels])).loss
    total = sum(loss.item() * n for loss, n in separate)
    assert n_packed == sum(n for _, n in separate) == sum(s.num_target_tokens for s in samples)
    assert packed.item() == pytest.approx(total / n_packed, rel=1e-5)
    assert separate[0][0].item() == pytest.approx(ref.item(), rel=1e-5)


def test_distractors_are_the_nearest_other_name_or_number(tiny_loaded):
    """aux_qa.distractors: after each pair whose answer is a name or a number, a negative sample with the
    same prompt whose one target is the first token of the nearest other answer of that kind; none for a
    phrase answer or where there is no other, nor an answer the question names."""
    tok = tiny_loaded.tokenizer
    fmt = chat_format(tok)
    pair = lambda q, a, i: QAPair(question=q, answer=a, evidence="x", sentence_index=i, generator="rules:object")  # noqa: E731
    pairs = [pair("Who built the mill?", "Abel Stott", 0), pair("When was the mill built?", "1821", 1),
             pair("Who is Abel Stott's wife?", "Mary Ann", 2), pair("What is the mill called?", "Low Mill", 3),
             pair("What does the mill keep?", "a pet goat", 4), pair("Who ran the school?", "Jane Hirst", 9)]
    doc_ids = tok("The mill was built in 1821 by Abel Stott.", add_special_tokens=False)["input_ids"]
    inf, seg = InferenceConfig(), SegmentConfig()
    samples = qa_samples(pairs, fmt=fmt, tokenizer=tok, doc_ids=doc_ids, context_window=48,
                         answer_prompt=inf.answer_prompt, mixin=seg.mixin, distractors=True)
    first = lambda text: tok(text, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    positive = [s for s in samples if not s.negative]
    assert len(positive) == len(pairs)
    targets = {}
    for i, s in enumerate(samples):
        if s.negative:  # follows its pair's sample and shares its prompt
            own = samples[i - 1]
            assert s.input_ids[:-1] == own.input_ids[: len(own.input_ids) - own.num_target_tokens]
            assert s.num_target_tokens == 1 and s.labels[-1] == s.input_ids[-1] and s.prefix_len == own.prefix_len
            targets[positive.index(own)] = s.input_ids[-1]
    # Abel Stott → Mary Ann (nearest name); 1821 and the goat: none; Mary Ann's question names Abel Stott → Low Mill
    assert targets == {0: first("Mary Ann"), 2: first("Low Mill"), 3: first("Mary Ann"), 5: first("Low Mill")}
    assert len(qa_samples(pairs, fmt=fmt, tokenizer=tok, doc_ids=doc_ids, context_window=48,
                          answer_prompt=inf.answer_prompt, mixin=seg.mixin)) == len(pairs)
    # answers that share their first words: the target is the token where they part, after the shared ones
    numbered = [pair("Which lock has a garden?", "Lock 14", 0), pair("Which lock is deepest?", "Lock 12", 1)]
    lock14, negative = qa_samples(numbered, fmt=fmt, tokenizer=tok, doc_ids=doc_ids, context_window=48,
                                  answer_prompt=inf.answer_prompt, mixin=seg.mixin, distractors=True)[:2]
    ids12 = tok("Lock 12", add_special_tokens=False)["input_ids"]
    shared = next(i for i, (a, b) in enumerate(zip(tok("Lock 14", add_special_tokens=False)["input_ids"], ids12)) if a != b)
    assert shared > 0 and negative.negative and negative.num_target_tokens == 1
    assert negative.input_ids[-shared - 1 :] == ids12[: shared + 1] and negative.labels[-1] == ids12[shared]
    assert negative.input_ids[: -shared - 1] == lock14.input_ids[: len(lock14.input_ids) - lock14.num_target_tokens]


def test_qa_samples_in_the_retrieved_view_match_the_rag_prompt_and_pack_exactly(tiny_loaded):
    """aux_qa.views ["retrieved"]: each pair is trained in the view a rag / lift+rag answer to it reads."""
    from lift_ray.retrieval import RetrievalIndex, retrieved_view

    tok = tiny_loaded.tokenizer
    fmt = chat_format(tok)
    inf, seg = InferenceConfig(), SegmentConfig()
    doc_ids = tok(SAMPLE, add_special_tokens=False)["input_ids"]
    window = 48
    mixin_ids = tok(seg.mixin, add_special_tokens=False)["input_ids"]
    index = RetrievalIndex.build(SAMPLE, tok, 16, 4)
    pairs = RuleQAGenerator().generate(SAMPLE)[:4]

    def view_for(question):
        return retrieved_view(index, doc_ids, question, window, mixin_ids).ids

    samples = qa_samples(pairs, fmt=fmt, tokenizer=tok, doc_ids=doc_ids, context_window=window,
                         answer_prompt=inf.answer_prompt, mixin=seg.mixin, view_for=view_for)
    views = [view_for(p.question) for p in pairs]
    assert len({tuple(v) for v in views}) > 1, "the questions retrieve different chunks"
    for pair, view, s in zip(pairs, views, samples):
        prompt, target = _expected_qa_sample(tok, pair, "rag", view)
        assert s.input_ids == prompt + target and s.labels == [IGNORE_INDEX] * len(prompt) + target
        assert s.prefix_len == len(fmt.user_start)  # only the chat header is shared
    with torch.no_grad():
        packed, n = packed_loss(tiny_loaded.model, pack_shared_prefix(samples))
        separate = [packed_loss(tiny_loaded.model, pack_shared_prefix([s])) for s in samples]
    assert packed.item() == pytest.approx(sum(loss.item() * k for loss, k in separate) / n, rel=1e-5)


def test_qa_samples_without_the_document_match_the_lift_prompt(tiny_loaded):
    """aux_qa.views ["none"]: the pair in the lift prompt, so the answer has to come from the adapter."""
    tok = tiny_loaded.tokenizer
    fmt = chat_format(tok)
    inf, seg = InferenceConfig(), SegmentConfig()
    doc_ids = tok(SAMPLE, add_special_tokens=False)["input_ids"]
    pairs = RuleQAGenerator().generate(SAMPLE)[:2]
    samples = qa_samples(pairs, fmt=fmt, tokenizer=tok, doc_ids=doc_ids, context_window=48,
                         answer_prompt=inf.answer_prompt, mixin=seg.mixin, lift_prompt=inf.lift_prompt)
    for pair, s in zip(pairs, samples):
        prompt, target = _expected_qa_sample(tok, pair, "lift", None)
        assert s.input_ids == prompt + target and s.prefix_len == len(fmt.user_start)


def test_a_surname_and_a_gerund_are_asked_about_the_person_named_before():
    """"Greer" after "Tomas Greer", "Anna" after "Anna Lowe" is that person, not whoever was named last; a
    gerund sharing the main clause's subject ("After qualifying in 1956 he joined ...") is asked in the
    main verb's tense. Fails on version 22 (which asked "When did Anna die?" and "When was Greer elected ...")."""
    text = ("Tomas Greer was born in Ayr in 1931. After qualifying in 1956 he joined a practice in Perth. "
            "In 1960 he married Anna Lowe, a teacher from Oban. Anna died in 2001. "
            "Greer was elected to the Royal Society in 1979.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    assert ("When did Tomas Greer qualify?", "1956") in qa, qa
    assert ("When did Anna Lowe die?", "2001") in qa, qa
    assert ("When was Tomas Greer elected to the Royal Society?", "1979") in qa, qa
    assert ("Who was elected to the Royal Society in 1979?", "Greer") in qa, qa
    assert not [q for q, _ in qa if "Anna Lowe elected" in q or "of Anna" in q], qa


def test_the_writer_and_reader_instructions_labels_and_split_compounds():
    """"we"/"you" are asked in the document's voice when the question still names a fact; an instruction's
    opening phrase goes after its verb; "a mile" and "the 555 bus" count nothing; a noun compound the parser
    cut in two ("sell day passes": "passes" tagged a verb) gets no question with half of it stranded. Fails on
    version 22 (no "we"/"you" questions; "should you from the car park follow", "How many bus")."""
    text = ("From the car park, follow the old railway line north for two miles. "
            "We have planted around 300 new trees this winter. "
            "You will receive 20 extra minutes to find a free bay. "
            "On arriving at Keswick, take the 555 bus. "
            "Walk along the canal for about a mile. "
            "We sell day passes at the kiosk by the town hall.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    asked = {q: a for q, a in qa if not q.startswith("Fill in")}
    assert ("How many new trees have we planted this winter?", "around 300 new trees") in qa, qa
    assert ("How long will you receive to find a free bay?", "20 extra minutes") in qa, qa
    assert ("What should you take on arriving at Keswick?", "555 bus") in qa, qa
    assert not [q for q in asked if "should you from" in q or q.startswith("How many mile ") or "How many bus" in q], qa
    assert "day" not in asked.values(), qa
    assert not [q for q in asked if len(q.split()) < 6 and (" you " in q or " we " in q)], qa


def test_a_phrase_after_a_comma_that_the_parser_hangs_on_the_verb_is_an_aside():
    """ "…, a group that few students wanted to touch" and "…, the most it has ever made" describe what came
    before; the small parser hangs them on the verb (npadvmod), where version 22 kept them in every question."""
    text = ("Mara Quill studied geology at the University of Tromsø, a field that few women entered then. "
            "The spring market raised £2,470, the most it has ever made.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    qa = {(p.question, p.answer) for p in kept}
    asked = [q for q, _ in qa if not q.startswith("Fill in")]
    assert ("How much did the spring market raise?", "2,470") in qa, qa
    assert not [q for q in asked if "few women" in q or "the most it" in q], qa


def test_the_source_digest_follows_a_modules_code(tmp_path, monkeypatch):
    """An edited module gives another digest (so cached pairs and adapters are not reused); same file, same digest."""
    from lift_ray.aux_qa.pairs import source_digest

    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "digest_probe.py"
    module.write_text("RULE = 1\n")
    first = source_digest("digest_probe")
    source_digest.cache_clear()
    assert source_digest("digest_probe") == first and len(first) == 12
    module.write_text("RULE = 2\n")
    source_digest.cache_clear()
    assert source_digest("digest_probe") != first
    assert source_digest("no_such_module_here") == "nosource"
    source_digest.cache_clear()


def test_a_short_form_leaves_out_the_phrases_that_state_other_facts():
    """The short form drops an adjunct that names or numbers something ("by the engineer Tomas Vey", "in 1874")
    and keeps one that completes the verb ("on a lead"); a subject question has none (the rest of the clause is
    what picks its fact out); two facts whose short forms coincide keep only their full questions."""
    text = ("The old mill at Dunmore was rebuilt in 1874 by the engineer Tomas Vey. "
            "Dogs must be kept on a lead between April and July. "
            "The bridge was repaired in 1902 by Jon Hale. The bridge was repaired in 1955 by Ada Brill.")
    _, kept, _ = _pairs(text, max_pairs_per_sentence=6)
    short = {(p.question, p.short_question, p.answer) for p in kept if p.short_question}
    assert ("When was the old mill at Dunmore rebuilt by the engineer Tomas Vey?", "When was the old mill at Dunmore rebuilt?", "1874") in short, short
    assert ("Who was the old mill at Dunmore rebuilt in 1874 by?", "Who was the old mill at Dunmore rebuilt by?", "Tomas Vey") in short, short
    assert not [p for p in kept if p.generator == "rules:subject" and p.short_question], kept
    assert not [s for _, s, _ in short if "lead" in s or "bridge" in s], short
    repaired = [p for p in kept if p.question.startswith("When was the bridge repaired")]
    assert {p.answer for p in repaired} == {"1902", "1955"} and not any(p.short_question for p in repaired), repaired


def test_qa_samples_ask_the_short_form_where_asked_to(tiny_loaded):
    """``short=True`` trains a pair's short form where it has one, the full question otherwise."""
    tok = tiny_loaded.tokenizer
    fmt = chat_format(tok)
    inf, seg = InferenceConfig(), SegmentConfig()
    doc_ids = tok(SAMPLE, add_special_tokens=False)["input_ids"]
    pairs = [QAPair(question="When was the mill rebuilt by Tomas Vey?", short_question="When was the mill rebuilt?",
                    answer="1874", evidence="x", sentence_index=0, generator="rules:object"),
             QAPair(question="Who founded the choir?", answer="Ada Brill", evidence="x", sentence_index=0, generator="rules:subject")]
    kw = dict(fmt=fmt, tokenizer=tok, doc_ids=doc_ids, context_window=48, answer_prompt=inf.answer_prompt, mixin=seg.mixin)
    full, short = qa_samples(pairs, **kw), qa_samples(pairs, **kw, short=True)
    view = truncate_middle(doc_ids, 48, tok(seg.mixin, add_special_tokens=False)["input_ids"])
    asked = pairs[0].model_copy(update={"question": pairs[0].short_question})
    assert short[0].input_ids == sum(_expected_qa_sample(tok, asked, "icl", view), [])
    assert full[0].input_ids == sum(_expected_qa_sample(tok, pairs[0], "icl", view), []) != short[0].input_ids
    assert short[1].input_ids == full[1].input_ids  # no short form: the full question


def test_the_pair_cap_keeps_answers_stated_once_before_the_documents_topic():
    """aux_qa.max_pairs: given the sentences, each sentence offers first the pairs whose answer stands in the
    fewest sentences, and a round the cap cuts short takes those first; the document's topic, in most
    sentences, goes last. Without sentences the generator's order decides, as before."""
    sentences = ["Harlow Bay is a fishing town.", "The lighthouse of Harlow Bay was designed by Ada Venn.",
                 "Harlow Bay holds a regatta in May.", "The winning crew of Harlow Bay gets a copper kettle."]
    pair = lambda q, a, i: QAPair(question=q, answer=a, evidence=sentences[i], sentence_index=i, generator="rules:object")  # noqa: E731
    pairs = [pair("What is a fishing town?", "Harlow Bay", 0),
             pair("The lighthouse of ____ was designed by Ada Venn.", "Harlow Bay", 1),
             pair("Who designed the lighthouse?", "Ada Venn", 1),
             pair("Which town holds a regatta?", "Harlow Bay", 2), pair("When is the regatta?", "May", 2),
             pair("Whose winning crew gets a copper kettle?", "Harlow Bay", 3),
             pair("What does the winning crew get?", "copper kettle", 3)]
    assert answer_spread("harlow bay", sentences) == 4 and answer_spread("May", sentences) == 1
    kept = spread(pairs, 4, sentences)
    assert [p.answer for p in kept] == ["Harlow Bay", "Ada Venn", "May", "copper kettle"]  # one per sentence, the rarest
    assert [p.answer for p in spread(pairs, 3, sentences)] == ["Ada Venn", "May", "copper kettle"]
    assert spread(pairs, 4) == [pairs[0], pairs[1], pairs[3], pairs[5]]  # the generator's first per sentence
    assert [p.answer for p in spread(pairs, 5, sentences)].count("Harlow Bay") == 2  # then round two, rarest first
    assert spread(pairs, 99, sentences) == pairs  # under the cap: every pair, in document order
