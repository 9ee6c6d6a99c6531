"""Seeded fictional documents with facts planted at known depths, in five styles, for the development set.

Each document is about one made-up place or institution. Facts (a person in a role, a year, a code,
a count, a distance, a name, a month, a price) are stated once each, at chosen depths between
filler sentences that state nothing asked about. Every planted fact is asked twice:

* ``direct`` — in the document's own words ("Who is the head gardener of the estate?");
* ``paraphrase`` — sharing no content word with the sentence that states the fact (synonyms, the
  fact asked from another side: "Which person looks after the grounds?"). :func:`content_words`
  checks this for every question written; a frame that would break it is skipped.

Styles: ``narrative`` (a story in the past tense), ``encyclopedic`` (an article), ``handbook``
(numbered sections with list items), ``interview`` (questions and first-person answers) and
``table`` (``key: value`` records). Names, numbers and codes are drawn from a seeded RNG, so the
same seed gives the same document; the documents are for measuring, not for shaping generators.
"""

from __future__ import annotations

import dataclasses
import random
import re

STYLES = ("narrative", "encyclopedic", "handbook", "interview", "table")
_SYLLABLES = ("bar", "vel", "tor", "min", "quel", "dra", "sen", "hal", "cor", "wyn", "fen", "lis", "mor", "tha",
              "bren", "ost", "ka", "rel", "dun", "sar", "eth", "ian", "gro", "pel", "nor", "vas", "lum", "ard")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_SPICES = ("cardamom", "saffron", "juniper", "fennel", "sumac", "nutmeg", "tarragon", "caraway", "anise", "mace")


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _person(rng: random.Random) -> str:
    return f"{_name(rng, 2)} {_name(rng, rng.choice((2, 3)))}"


def _code(rng: random.Random) -> str:
    letters = "".join(rng.choice("BCDFGHKLMNPRSTVWXZ") for _ in range(2))
    return f"{letters}-{rng.randint(1000, 9999)}"


@dataclasses.dataclass(frozen=True)
class Frame:
    """One kind of fact: how each style states it, and the two ways it is asked.

    ``{v}`` is the planted value; ``{x}`` the document's subject (a place or institution name).
    ``item`` is the handbook/table rendering (a key and its value), ``said`` the interview one.
    """

    kind: str
    value: str  # "person" | "year" | "code" | "count" | "distance" | "name" | "month" | "spice" | "price"
    prose: str
    item: tuple[str, str]
    said: str
    direct: str
    paraphrase: str


FRAMES = (
    Frame("gardener", "person", "The head gardener of the estate is {v}.", ("Head gardener", "{v}"),
          "Our head gardener is {v}, and nobody knows the estate better.",
          "Who is the head gardener of the estate?", "Which person looks after the grounds?"),
    Frame("tower", "year", "The bell tower was finished in {v}.", ("Bell tower finished", "{v}"),
          "The bell tower was finished in {v}, long before my time.",
          "When was the bell tower finished?", "In what year did work on the belfry end?"),
    Frame("vault", "code", "The vault door opens with the code {v}.", ("Vault door code", "{v}"),
          "The vault door opens with the code {v}, which I keep to myself.",
          "What code opens the vault door?", "Which combination unlocks the strongroom?"),
    Frame("bridge", "distance", "The old stone bridge is {v} metres long.", ("Stone bridge length", "{v} metres"),
          "The old stone bridge is {v} metres long; I have walked it every day.",
          "How long is the old stone bridge?", "What is the span of the crossing over the water, end to end?"),
    Frame("founder", "person", "The school was founded by {v}.", ("School founder", "{v}"),
          "The school was founded by {v}, my great-grandmother's teacher.",
          "Who founded the school?", "Which person established the academy?"),
    Frame("library", "count", "The library holds {v} books.", ("Library books", "{v}"),
          "The library holds {v} books, and I have read a few of them.",
          "How many books does the library hold?", "How many volumes are kept in the reading archive?"),
    Frame("fair", "month", "The annual fair takes place in {v}.", ("Annual fair month", "{v}"),
          "The annual fair takes place in {v}, when the harvest is in.",
          "In which month does the annual fair take place?", "When is the yearly festival held?"),
    Frame("cook", "spice", "The cook's secret ingredient is {v}.", ("Cook's secret ingredient", "{v}"),
          "The cook's secret ingredient is {v}; she told me once.",
          "What is the cook's secret ingredient?", "Which hidden component does the chef add to her dishes?"),
    Frame("engineer", "person", "The chief engineer of the mill was {v}.", ("Mill chief engineer", "{v}"),
          "The chief engineer of the mill was {v}, a strict man.",
          "Who was the chief engineer of the mill?", "Which person led the technical staff at the factory?"),
    Frame("horse", "name", "The mayor's horse is called {v}.", ("Mayor's horse", "{v}"),
          "The mayor's horse is called {v}, and it bites.",
          "What is the mayor's horse called?", "What name does the steed of the town leader answer to?"),
    Frame("flood", "year", "The river flooded the lower streets in {v}.", ("River flood", "{v}"),
          "The river flooded the lower streets in {v}; my father rowed to work.",
          "When did the river flood the lower streets?", "In what year did the stream overflow into the town?"),
    Frame("ticket", "price", "A ticket for the ferry costs {v} crowns.", ("Ferry ticket price", "{v} crowns"),
          "A ticket for the ferry costs {v} crowns these days.",
          "How much does a ticket for the ferry cost?", "What is the fare for the boat crossing?"),
    Frame("lamp", "distance", "The lighthouse lamp can be seen from {v} kilometres away.", ("Lighthouse lamp range", "{v} kilometres"),
          "The lighthouse lamp can be seen from {v} kilometres away on a clear night.",
          "From how far away can the lighthouse lamp be seen?", "At what distance is the beacon's glow visible?"),
    Frame("archive", "code", "The archive's registration number is {v}.", ("Archive registration number", "{v}"),
          "The archive's registration number is {v}, if you need to write to them.",
          "What is the archive's registration number?", "Which identifier was assigned to the records office?"),
)

FILLER = (
    "The weather changes quickly in spring, and most people carry a coat.",
    "Visitors often remark on the quiet of the early mornings.",
    "The streets are narrow and paved with uneven stones.",
    "Several families have lived here for many generations.",
    "In summer the evenings are long and warm.",
    "Children play by the water until it gets dark.",
    "The market sells bread, cheese and fresh fish.",
    "Old photographs hang in the hall of the town house.",
    "Most houses have small gardens with vegetables and herbs.",
    "The roads in the hills are steep and winding.",
    "A few shops close at midday and open again in the afternoon.",
    "Travellers are welcomed with tea and a bowl of soup.",
    "Local musicians play in the square on warm evenings.",
    "Snow rarely stays on the ground for more than a day.",
    "The church bells ring at noon and at six.",
    "Many residents keep chickens or goats behind their homes.",
    "The hillside paths are lined with wild roses.",
    "The harbour is busy in the morning and silent at night.",
    "Stories about the old days are told by the fire in winter.",
    "A small museum displays tools, maps and letters.",
)
_INTERVIEW_FILLER_Q = (
    "What is daily life like here?", "How has the place changed?", "What do visitors notice first?",
    "What do you like most about living here?", "Is it quiet in winter?",
)


@dataclasses.dataclass
class PlantedFact:
    frame: Frame
    value: str
    answer: str
    sentence: str  # the sentence (or line) of the document that states the fact


def content_words(text: str) -> set[str]:
    """Lowercased content words (spaCy's English stop words removed, simple plural folding)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    words = re.findall(r"[a-z0-9]+", text.lower().replace("'s", ""))
    out = set()
    for w in words:
        if w in STOP_WORDS or len(w) < 2:
            continue
        out.add(w[:-1] if w.endswith("s") and len(w) > 3 else w)
    return out


def _value(frame: Frame, rng: random.Random) -> tuple[str, str]:
    """(value as written into the frame, the answer to score)."""
    kind = frame.value
    if kind == "person":
        v = _person(rng)
    elif kind == "year":
        v = str(rng.randint(1620, 1960))
    elif kind == "code":
        v = _code(rng)
    elif kind == "count":
        v = f"{rng.randint(2, 90) * 100 + rng.randint(1, 99):,}"
    elif kind == "distance":
        v = str(rng.randint(12, 480))
    elif kind == "name":
        v = _name(rng, 2)
    elif kind == "month":
        v = rng.choice(_MONTHS)
    elif kind == "spice":
        v = rng.choice(_SPICES)
    else:  # price
        v = str(rng.randint(3, 95))
    return v, v


def _render(frame: Frame, value: str, style: str) -> str:
    if style in ("handbook", "table"):
        key, val = frame.item
        return f"{key}: {val.format(v=value)}"
    if style == "interview":
        return frame.said.format(v=value)
    text = frame.prose.format(v=value)
    if style == "narrative":  # a story: the past tense
        text = re.sub(r"\b(is|are)\b", lambda m: "was" if m.group(1) == "is" else "were", text, count=1)
        text = re.sub(r"\b(takes|opens|holds|costs)\b", lambda m: {"takes": "took", "opens": "opened", "holds": "held", "costs": "cost"}[m.group(1)], text, count=1)
        text = text.replace("can be seen", "could be seen")
    return text


def build_fiction(style: str, seed: int, *, n_beyond: int = 5, n_inside: int = 2, n_filler: int = 32) -> dict:
    """One fictional document: ``{"id", "title", "input", "style", "facts": [...]}``.

    Facts come in document order; the first ``n_inside // 2`` sit at the very start and the rest of
    the inside ones at the very end (inside a small head+tail view), the ``n_beyond`` others spread
    over the middle. Each fact records its sentence, answer and both questions.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    rng = random.Random(f"{style}-{seed}")
    place = _name(rng, 3)
    frames = [f for f in FRAMES]
    rng.shuffle(frames)
    facts = []
    used_kinds = set()
    for frame in frames:
        if len(facts) == n_beyond + n_inside:
            break
        value, answer = _value(frame, rng)
        sentence = _render(frame, value, style)
        paraphrase_shared = content_words(frame.paraphrase) & content_words(sentence)
        if paraphrase_shared or frame.kind in used_kinds:
            continue
        used_kinds.add(frame.kind)
        facts.append(PlantedFact(frame, value, answer, sentence))
    head_n = n_inside // 2
    inside = facts[:n_inside]
    beyond = facts[n_inside:]
    filler = list(FILLER)
    rng.shuffle(filler)
    filler = (filler * 3)[:n_filler]
    # body: filler with the beyond-window facts spread evenly through it
    body: list[str | PlantedFact] = list(filler)
    for k, fact in enumerate(beyond):
        pos = round((k + 1) * len(filler) / (len(beyond) + 1)) + k
        body.insert(pos, fact)
    items: list[str | PlantedFact] = [*inside[:head_n], *body, *inside[head_n:]]
    title, text = _assemble(style, place, items, rng)
    return {
        "id": f"fiction-{style}-{seed}",
        "title": title,
        "input": text,
        "style": style,
        "facts": [
            {"kind": f.frame.kind, "answer": f.answer, "sentence": f.sentence, "direct": f.frame.direct,
             "paraphrase": f.frame.paraphrase, "planted": "inside" if f in inside else "beyond"}
            for f in facts
        ],
    }


def _assemble(style: str, place: str, items: list, rng: random.Random) -> tuple[str, str]:
    def text_of(x) -> str:
        return x.sentence if isinstance(x, PlantedFact) else x

    if style == "narrative":
        title = f"A Year in {place}"
        paras = [items[i : i + 5] for i in range(0, len(items), 5)]
        body = "\n\n".join(" ".join(text_of(x) for x in p) for p in paras)
        return title, f"{title}\n\n{body}\n"
    if style == "encyclopedic":
        title = place
        intro = f"{place} is a small town in the northern hills."
        paras = [items[i : i + 6] for i in range(0, len(items), 6)]
        body = "\n\n".join(" ".join(text_of(x) for x in p) for p in paras)
        return title, f"{title}\n\n{intro} {body}\n"
    if style == "handbook":
        title = f"Caretaker's Handbook for {place}"
        sections, out, n = [items[i : i + 6] for i in range(0, len(items), 6)], [title], 0
        for sec in sections:
            n += 1
            out.append(f"{n}. Section {n}")
            lines = [f"- {text_of(x)}" if isinstance(x, PlantedFact) else text_of(x) for x in sec]
            out.append("\n".join(lines))
        return title, "\n\n".join(out) + "\n"
    if style == "interview":
        title = f"An Interview about {place}"
        out = [title]
        for i in range(0, len(items), 3):
            out.append(f"Q: {rng.choice(_INTERVIEW_FILLER_Q)}")
            out.append("A: " + " ".join(text_of(x) for x in items[i : i + 3]))
        return title, "\n\n".join(out) + "\n"
    # table: records of key: value lines, filler sentences as notes between them
    title = f"Register of {place}"
    out, record = [title], []
    for x in items:
        if isinstance(x, PlantedFact):
            record.append(text_of(x))
        else:
            if record:
                out.append("\n".join(record))
                record = []
            out.append(f"Note: {x}")
    if record:
        out.append("\n".join(record))
    return title, "\n\n".join(out) + "\n"
