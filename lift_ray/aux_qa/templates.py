"""The first offline generator (kind "templates"): English sentence patterns turn each sentence into questions.

Kept only to measure the new generator against (benchmarks/quality.py); its templates were
written on the sample document and do not carry over to other documents.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

from lift_ray.aux_qa.evidence import _TERMINAL, _norm_words, _ws, split_paragraphs
from lift_ray.aux_qa.pairs import QAPair, settings_key

_WORD = r"[\w'’-]+"
_CAPNAME = r"[A-Z][\w'’-]*(?: (?:of |de |van |von |the )?[A-Z][\w'’-]*)*"
_NUM_WORD = (
    r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    r"seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)"
)
_NUM = (
    rf"(?:\d[\d,.]*|{_NUM_WORD}(?:[ -]{_NUM_WORD})?(?: (?:hundred|thousand|million|billion))*"
    r"|a (?:hundred|thousand|million|dozen)|a few|several|dozens of|hundreds of)"
)
_DURATION_UNIT = r"(?:years?|months?|weeks?|days?|hours?|minutes?|seconds?|decades?|centuries|century|winters?|summers?|seasons?|generations?|nights?)"
_TIME_NOUNS = (
    "morning afternoon evening night nights noon midnight dawn dusk sunrise sunset day days week weeks weekend "
    "weekends month months year years century centuries decade decades season seasons spring summer autumn "
    "winter monday tuesday wednesday thursday friday saturday sunday mondays tuesdays wednesdays thursdays "
    "fridays saturdays sundays january february march april may june july august september october november "
    "december o'clock hour hours minute minutes christmas easter holiday holidays festival"
).split()
_TIME_RE = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in _TIME_NOUNS) + r"|\d{3,4}s?)\b", re.I)
_FRONT_TIME = re.compile(
    r"^(?P<front>(?:in|on|at|during|after|before|since|every|each|last|next|early|late)\b(?: [\w'-]+){0,3}? "
    r"(?:" + "|".join(re.escape(w) for w in _TIME_NOUNS) + r"|\d{3,4}s?)(?: of (?:the year )?\d{3,4})?)\b,? (?P<clause>.+)$",
    re.I,
)
_PLACE_NOUNS = set(
    "town city village hamlet house home houses cottage cabin hall room rooms square market shore coast harbour "
    "harbor port bay beach island river lake sea ocean field fields garden street road church chapel school "
    "castle tower cellar kitchen office building valley mountain mountains hill hills forest wood woods park "
    "country region library museum station court palace temple camp farm yard cave well bridge quarter "
    "district province capital north south east west mainland headland cove cliff cliffs pier wharf dock "
    "inn tavern shop store workshop factory mill barn stable attic basement garage steps".split()
)
# Kinds of place named by "the <kind> of <Name>" (→ "On/In which <kind> …?").
_PLACE_KINDS = {
    "island": "On", "coast": "On", "river": "On", "lake": "On", "peninsula": "On", "mountain": "On",
    "city": "In", "town": "In", "village": "In", "country": "In", "state": "In", "province": "In",
    "region": "In", "county": "In", "district": "In", "kingdom": "In", "valley": "In", "continent": "In",
}
_PERSON_NOUNS = set(
    "people person man men woman women child children boy boys girl girls king queen prince princess lord lady "
    "family families group crew team council committee government company firm author writer writers artist "
    "artists engineer engineers architect architects builder builders trader traders merchant merchants "
    "farmer farmers fisherman fishermen sailor sailors soldier soldiers teacher teachers student students "
    "pupil pupils worker workers mason masons monk monks priest priests keeper keepers owner owners founder "
    "founders settler settlers villagers townspeople citizens residents inhabitants visitors members member "
    "doctor officer captain mayor governor president emperor bishop scholar scholars craftsmen craftsman "
    "makers maker smith smiths brothers sisters father mother son daughter wife husband friend friends pilot "
    "pilots poet poets painter painters nurse nurses judge judges chief chiefs clerk clerks guard guards".split()
)
_DETS = set(
    "the a an this that these those every each no some most many all both several few its his her their our "
    "my your one any another".split()
)
_POSSESSIVES = {"its", "his", "her", "their", "our", "my", "your"}
_PRONOUNS = {"it", "he", "she", "they", "we", "i", "you", "this", "that", "these", "those", "there", "here"}
_PERSON_PRONOUNS = {"he", "she", "his", "her"}
_NOT_A_SUBJECT_START = set(
    "in on at for when if after before while although though because since until during as and but or so yet "
    "with from to by of once whenever where then however therefore thus also still not even how what why who "
    "which whether".split()
)
# Function words that are never a cloze answer, even capitalised at the start of a quote ("What is …").
_STOPWORDS = _DETS | _PRONOUNS | _NOT_A_SUBJECT_START | _POSSESSIVES | set(
    "is are was were be been has have had do does did not no yes".split()
)
_BE = {"is", "are", "was", "were"}
_HAVE = {"has", "have", "had"}
_MODALS = {"must", "can", "could", "should", "will", "would", "may", "might", "shall", "does", "do", "did"}
_ADVERBS = set(
    "still also once often always usually never now only first later then originally finally already sometimes "
    "rarely seldom even just mostly mainly largely widely generally eventually soon long once traditionally "
    "regularly".split()
)
_RELATIVES = {"who", "whom", "whose", "which", "that", "where", "when"}
_PREPS = set(
    "in on at along beneath under near beside behind above below inside outside around across over onto into "
    "during for since until with from to by through between among against toward towards upon within".split()
)
# Prepositions that start a new phrase when an answer should stop (not "of": "the bronze of a cannon").
_PP_BREAK = r"(?:in|on|at|for|since|until|during|with|from|to|by|before|after|because|while|when|where|across|through|toward|towards)"
_SUBORDINATORS = r"(?:before|after|because|while|when|until|unless|although|though|since|so that|whereas|if)"
_RELATIVE_RE = r"(?:who|whom|whose|which|that|where|(?:in|on|at|of|for|by|with|from|to) (?:which|whom))"

# Irregular participle → simple past ("was written by" → "Who wrote …?"); regular ones are equal.
_PART_TO_PAST = {
    "written": "wrote", "drawn": "drew", "chosen": "chose", "given": "gave", "taken": "took", "known": "knew",
    "shown": "showed", "seen": "saw", "done": "did", "begun": "began", "grown": "grew", "thrown": "threw",
    "worn": "wore", "hidden": "hid", "spoken": "spoke", "stolen": "stole", "broken": "broke", "eaten": "ate",
    "fallen": "fell", "driven": "drove", "frozen": "froze", "ridden": "rode", "risen": "rose", "flown": "flew",
    "blown": "blew", "sworn": "swore", "torn": "tore", "woven": "wove", "beaten": "beat", "bitten": "bit",
    "forgotten": "forgot", "forgiven": "forgave", "shaken": "shook", "sung": "sang", "rung": "rang",
    "sunk": "sank", "swum": "swam", "drunk": "drank", "become": "became", "come": "came", "gone": "went",
    "run": "ran", "mistaken": "mistook", "undertaken": "undertook", "overtaken": "overtook", "rewritten": "rewrote",
}
_IRREGULAR_PARTICIPLES = set(_PART_TO_PAST) | set(
    "built made held kept found cast paid sold told brought bought thought won led set put cut sent spent lit "
    "laid said struck taught caught fought left lost heard read shot fed dug hung wound bound ground stood "
    "understood sat slept swept wept felt dealt meant bent lent spun stuck shut spread split let hit born "
    "rebuilt remade".split()
)
# Irregular simple past → base form, for do-support ("took" → "did … take").
_PAST_TO_BASE = {
    "took": "take", "made": "make", "built": "build", "went": "go", "came": "come", "left": "leave", "won": "win",
    "gave": "give", "found": "find", "held": "hold", "kept": "keep", "spent": "spend", "sold": "sell",
    "told": "tell", "brought": "bring", "bought": "buy", "thought": "think", "ran": "run", "led": "lead",
    "saw": "see", "did": "do", "began": "begin", "wrote": "write", "drew": "draw", "chose": "choose",
    "knew": "know", "grew": "grow", "threw": "throw", "wore": "wear", "hid": "hide", "spoke": "speak",
    "stole": "steal", "broke": "break", "ate": "eat", "fell": "fall", "drove": "drive", "struck": "strike",
    "taught": "teach", "caught": "catch", "fought": "fight", "lost": "lose", "heard": "hear", "paid": "pay",
    "laid": "lay", "said": "say", "sent": "send", "lit": "light", "got": "get", "sat": "sit", "stood": "stand",
    "understood": "understand", "became": "become", "rose": "rise", "flew": "fly", "swam": "swim",
    "sang": "sing", "rang": "ring", "met": "meet", "fed": "feed", "felt": "feel", "meant": "mean",
    "slept": "sleep", "sank": "sink", "dug": "dig", "hung": "hang", "swept": "sweep", "wept": "weep",
    "bent": "bend", "lent": "lend", "drank": "drink", "shook": "shake", "forgot": "forget", "froze": "freeze",
    "rode": "ride", "wove": "weave", "tore": "tear", "swore": "swear", "blew": "blow", "had": "have",
    "cast": "cast", "cut": "cut", "put": "put", "set": "set", "hit": "hit", "shut": "shut", "spread": "spread",
    "bound": "bind", "wound": "wind", "ground": "grind", "rebuilt": "rebuild",
}
_PRESENT_IRREGULAR = {"has": "have", "does": "do", "goes": "go", "is": "be"}


# Words ending in -ed that are not verb forms.
_NOT_ED_VERBS = set(
    "hundred kindred sacred naked wicked rugged ragged crooked jagged wretched bed red shed seed speed steed "
    "breed creed greed weed deed reed need".split()
)


def _is_participle(word: str) -> bool:
    w = word.lower()
    return (len(w) > 3 and w.endswith("ed") and w not in _NOT_ED_VERBS) or w in _IRREGULAR_PARTICIPLES


def _is_past(word: str) -> bool:
    w = word.lower()
    return (len(w) > 3 and w.endswith("ed") and w not in _NOT_ED_VERBS) or w in _PAST_TO_BASE


def _past_to_base(word: str) -> str:
    """Base form of a simple past ("destroyed" → "destroy"); rough for regular verbs, by rule."""
    w = word.lower()
    if w in _PAST_TO_BASE:
        return _PAST_TO_BASE[w]
    if w.endswith("ied") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("eed"):
        return w[:-1]
    stem = w[:-2]
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsfz":  # stopped → stop
        return stem[:-1]
    vowels = "aeiou"
    # A silent e comes back after consonant-vowel-consonant ("decided", "completed"), after v/c/u/dg
    # ("lived", "forced", "continued", "judged"), in -iate/-uate/create and after vowel + s ("used"); unstressed endings
    # ("visited", "opened", "entered") keep none.
    if stem.endswith(("v", "c", "u", "dg", "iat", "uat", "creat")) or (len(stem) >= 2 and stem[-1] in "sz" and stem[-2] in vowels):
        return stem + "e"
    if (
        len(stem) >= 3
        and stem[-1] not in vowels + "wxy"
        and stem[-2] in vowels
        and stem[-3] not in vowels
        and stem[-2:] not in ("en", "er", "on", "el", "or", "om", "it", "al", "ol", "an", "in", "ar")
    ):
        return stem + "e"
    return stem


def _present_to_base(word: str) -> str:
    w = word.lower()
    if w in _PRESENT_IRREGULAR:
        return _PRESENT_IRREGULAR[w]
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zzes", "oes")):
        return w[:-2]
    return w[:-1]


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _strip_end(text: str) -> str:
    return text.strip().rstrip(".!?;:,").strip()


def _cut(text: str, pattern: str) -> str:
    """``text`` up to the first match of ``pattern`` (as a whole-word boundary), stripped."""
    m = re.search(rf"(?:,|;|\s(?:{pattern})\b)", text)
    return _strip_end(text[: m.start()] if m else text)


def _trim_np(text: str) -> str:
    """A noun phrase answer: stop at a comma, relative clause, subordinate clause, a time phrase or a
    participle that starts a modifier ("round stones brought up from …" → "round stones")."""
    text = _cut(text, rf"{_RELATIVE_RE}|{_SUBORDINATORS}|(?:in|at|during|since|until|by) (?:the year |the )?\d|and then")
    words = text.split()
    for i in range(2, len(words) - 1):
        if _is_participle(words[i]) and words[i + 1].lower() in _PREPS | {"up", "out", "off", "down"}:
            return " ".join(words[:i])
    return text


def _trim_pp_np(text: str) -> str:
    """The noun phrase of a prepositional phrase: also stops at the next preposition (not "of") and
    at "and" + a verb ("at seven o'clock every morning and returns …")."""
    # "every Sunday" after a place is a separate time adverbial ("on the steps every Sunday")
    text = _cut(text, rf"{_RELATIVE_RE}|{_SUBORDINATORS}|{_PP_BREAK}|(?<!of )(?:every|each)")
    m = re.search(r"\sand (\w+)", text)
    if m and (_is_past(m.group(1)) or (m.group(1).endswith("s") and not m.group(1).endswith("ss"))):
        text = text[: m.start()]
    return _strip_end(text)


def _trim_definition(text: str) -> str:
    """A definition answer: the noun phrase before its first modifier ("a small harbour town")."""
    text = _trim_np(text)
    return _cut(text, r"named|called|known|(?!of\b)(?:" + "|".join(sorted(_PREPS - {"of"})) + r")")


def _drop_trailing_adverb(text: str) -> str:
    words = text.split()
    while len(words) > 1 and (words[-1].lower().endswith("ly") or words[-1].lower() in _ADVERBS):
        words.pop()
    return " ".join(words)


def _name_in(text: str) -> str | None:
    """The name in "an engineer named Tobias Wrenfield" or a capitalised name inside ``text``."""
    m = re.search(rf"\b(?:named|called) ((?:the )?{_CAPNAME})", text)
    if m:
        return m.group(1)
    m = re.search(rf"(?:^|\s)({_CAPNAME})", text)
    return m.group(1) if m else None


def _personish(np: str) -> bool:
    words = [w.strip(",.;:'’").lower() for w in np.split()]
    if re.search(rf"\b(?:named|called) {_CAPNAME}", np) and any(w in _PERSON_NOUNS for w in words):
        return True
    if any(w in _PERSON_NOUNS or re.fullmatch(r"\w+(?:ist|ists|ian|ians|eer|eers)", w) for w in words):
        return True
    return False  # a bare name may be a person or a place ("Port Quillon"): not enough to say "Who"


def _time_like(np: str) -> bool:
    return bool(_TIME_RE.search(np))


def _place_like(np: str) -> bool:
    words = re.findall(r"[\w']+", np)
    return any(w.lower() in _PLACE_NOUNS for w in words) or any(w[:1].isupper() for w in words)


# --- rule generator: clause parsing -------------------------------------------------------------


@dataclasses.dataclass
class Clause:
    """A clause split into subject, verb group and the rest, enough to form questions from it.

    ``aux`` is set when the finite verb is be/have (perfect)/a modal: questions invert it
    ("was the town founded"); otherwise questions use do-support with ``lemma``.
    """

    text: str
    subj: str  # as it should appear inside a question (pronouns resolved, first word true-cased)
    aux: str | None
    verb: str  # the finite verb as written
    lemma: str
    tense: str  # "pres" | "past"
    plural: bool
    adv: str  # adverbs between subject and verb / after the auxiliary, kept in questions
    rest: str  # what follows the verb group
    front: str | None  # a fronted time phrase ("Every autumn"), if any

    @property
    def do(self) -> str:
        return "did" if self.tense == "past" else ("do" if self.plural else "does")

    @property
    def adv_(self) -> str:
        return f" {self.adv}" if self.adv else ""

    def inverted(self, rest: str) -> str:
        """Question word order for the clause, followed by ``rest``: "did the storm destroy …"."""
        rest = f" {rest.strip()}" if rest.strip() else ""
        if self.aux:
            return f"{self.aux} {self.subj}{self.adv_}{rest}"
        return f"{self.do} {self.subj}{self.adv_} {self.lemma}{rest}"


@dataclasses.dataclass
class _Context:
    """What the generator knows beyond one clause: capitalised words seen mid-sentence (for true-casing)
    and the antecedents that resolve "it"/"its" (the topic) and "he"/"she" (the person)."""

    mid_caps: set[str]
    topic: str | None = None
    person: str | None = None


def _true_case(np: str, ctx: _Context) -> str:
    """Lowercase a sentence-initial common word ("The tavern" → "the tavern", "Fishing boats" →
    "fishing boats") but keep names ("Port Quillon", "Marlowe")."""
    words = np.split()
    if not words:
        return np
    first = words[0]
    nxt = words[1] if len(words) > 1 else ""
    if first.lower() in _DETS or first.lower() in _PRONOUNS:
        words[0] = first.lower()
    elif first[:1].isupper() and not nxt[:1].isupper() and first not in ctx.mid_caps and first.upper() != first:
        words[0] = first.lower()
    return " ".join(words)


def _resolve_subject(words: list[str], ctx: _Context, topic: str | None) -> str | None:
    """Replace pronouns in a subject with their antecedent; None when one cannot be resolved."""
    low = [w.lower() for w in words]
    if low[0] in ("it",) and len(words) == 1:
        return topic if topic and not _personish(topic) else None
    if low[0] in ("he", "she") and len(words) == 1:
        return ctx.person
    if low[0] in _PRONOUNS and (len(words) == 1 or low[0] not in ("this", "that", "these", "those")):
        return None  # "they", "there", an unresolvable "it"; "this town" is fine
    out = list(words)
    for i, w in enumerate(low):
        if w in ("its", "their"):
            if not topic or i == len(words) - 1:
                return None
            # "most of its houses" → "most of the houses of Port Quillon"
            return " ".join([*out[:i], "the", *out[i + 1 :], "of", topic])
        if w in ("his", "her"):
            if not ctx.person or i == len(words) - 1:
                return None
            return " ".join([*out[:i], "the", *out[i + 1 :], "of", ctx.person])
    return " ".join(out)


def _looks_like_np_start(word: str) -> bool:
    w = word.lower().strip(",")
    return w in _DETS or w[:1].isdigit() or word[:1].isupper() or re.fullmatch(_NUM, w) is not None


def parse_clause(text: str, ctx: _Context, topic: str | None = None) -> Clause | None:
    """Split a clause into subject / verb group / rest by word shape, or None if it has no clear subject."""
    text = _strip_end(text)
    front = None
    m = _FRONT_TIME.match(text)
    if m:
        front, text = m.group("front"), m.group("clause")
    words = text.split()
    if len(words) < 3:
        return None
    first = words[0].lower()
    if first in _NOT_A_SUBJECT_START or not (first in _DETS or words[0][:1].isupper() or first in _PRONOUNS or first.isalpha()):
        return None
    if words[0].islower() and first not in _DETS | _PRONOUNS and (_is_past(first) or first.endswith("ing")):
        return None  # "trained as …", "making …": a clause fragment, not a subject
    verb_i = None
    for i in range(1, min(len(words) - 1, 12) + 1):
        w = words[i].lower().strip(",")
        prev = words[i - 1].lower()
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in _RELATIVES or words[i - 1].endswith(","):
            break  # a subject with a relative clause or a comma is too hard to invert reliably
        if w in _BE | _HAVE | _MODALS:
            verb_i = i
            break
        if w in _ADVERBS or prev in _DETS or prev in _POSSESSIVES or prev in _PREPS or prev.endswith("'s"):
            continue
        # what may follow a verb: an object, a preposition, an adverb, a bare plural ("sends requests")
        nxt_ok = (
            not nxt or _looks_like_np_start(nxt) or nxt.lower() in _PREPS | _ADVERBS
            or (nxt.isalpha() and nxt.islower() and nxt.endswith("s") and not nxt.endswith("ss"))
        )
        if not w.isalpha():  # "rule-based", "3.5": not a finite verb
            continue
        if _is_past(w) and prev not in ("of",):
            verb_i = i
            break
        if (
            w.endswith("s") and not w.endswith(("ss", "us", "is", "'s")) and len(w) > 3
            and not prev.endswith("ing") and nxt_ok
        ):
            verb_i = i
            break
        # a plural subject's verb has no -s ("the older pupils help", "children leave lettuce leaves")
        plural_subject = (prev.endswith("s") and not prev.endswith("ss")) or prev in {"people", "children", "men", "women", "townspeople"}
        if (
            plural_subject and w.isalpha() and w.islower() and w not in _PREPS and w not in _DETS
            and w not in {"and", "or", "of", "but", "nor"} and not w.endswith(("ing", "ly")) and nxt
        ):
            verb_i = i
            break
    if verb_i is None:
        return None
    subj_words = words[:verb_i]
    adv = []
    while len(subj_words) > 1 and subj_words[-1].lower() in _ADVERBS:
        adv.insert(0, subj_words.pop())
    subj = _resolve_subject(subj_words, ctx, topic)
    if subj is None or len(subj.split()) > 12 or not re.fullmatch(r"[\w'’ -]+", subj):
        return None  # markup, brackets or quotes in the subject: not plain prose
    verb = words[verb_i].lower().strip(",;:")
    rest = words[verb_i + 1 :]
    aux = None
    if verb in _BE or verb in _MODALS:
        aux = verb
    elif verb in _HAVE and rest and (_is_participle(rest[0]) or rest[0] == "been"):
        aux = verb
    if aux:
        while rest and rest[0].lower() in _ADVERBS and len(rest) > 1:
            adv.append(rest.pop(0))
    if verb in _BE | _MODALS:
        lemma, tense = verb, ("past" if verb in ("was", "were", "could", "would", "might", "did") else "pres")
    elif verb in _HAVE:
        lemma, tense = "have", ("past" if verb == "had" else "pres")
    elif _is_past(verb):
        lemma, tense = _past_to_base(verb), "past"
    elif verb.endswith("s"):
        lemma, tense = _present_to_base(verb), "pres"
    else:
        lemma, tense = verb, "pres"
    plural = verb in ("are", "were", "have", "do") or (tense == "pres" and not verb.endswith("s") and aux is None)
    subj_q = _true_case(subj, ctx)
    return Clause(text, subj_q, aux, verb, lemma, tense, plural, " ".join(adv), " ".join(rest), front)


def _clauses(sentence: str) -> list[str]:
    """Coordinated main clauses: "A, and B" → [A, B]."""
    body = _strip_end(sentence)
    parts = re.split(r",\s+(?:and|but|while|whereas|so|yet)\s+|;\s+", body)
    return [p for p in parts if p.strip()]


# --- rule generator: templates ------------------------------------------------------------------

_QA = tuple[str, str]


def _question(text: str) -> str:
    text = " ".join(text.split()).strip().rstrip(".?!,;:")
    return text[:1].upper() + text[1:] + "?"


def _q_passive_agent(c: Clause, m: re.Match) -> _QA | None:
    part, agent = m.group("part"), m.group("agent")
    if not _is_participle(part) or not _looks_like_np_start(agent.split()[0]) or _time_like(agent.split()[0]):
        return None
    answer = _name_in(agent) if re.search(r"\b(?:named|called)\b", agent) else _trim_np(agent)
    if not answer:
        return None
    past = _PART_TO_PAST.get(part.lower(), part.lower())
    prt = f" {m.group('prt')}" if m.group("prt") else ""
    wh = "Who" if _personish(agent) else "What"
    return _question(f"{wh} {past}{prt} {c.subj}{m.group('mid') or ''}"), answer


def _q_called(c: Clause, m: re.Match) -> _QA | None:
    return _question(f"What {c.aux} {c.subj}{c.adv_} {m.group('how')}"), _trim_np(m.group("name"))


def _q_name_of_subject(c: Clause, m: re.Match) -> _QA | None:
    return _question(f"What {c.aux} the name of {c.subj}"), _trim_np(m.group("name"))


def _q_name_of_object(c: Clause, m: re.Match) -> _QA | None:
    head = " ".join(m.group("np").split()[1:])  # "a pet tortoise" → "pet tortoise"
    if not head:
        return None
    be = "was" if c.tense == "past" else "is"
    return _question(f"What {be} the name of the {head} that {c.subj}{c.adv_} {c.verb}"), _trim_np(m.group("name"))


def _q_famous_for(c: Clause, m: re.Match) -> _QA | None:
    return _question(f"What {c.aux} {c.subj}{c.adv_} {m.group('adj')} for"), _trim_np(m.group("obj"))


def _q_year(c: Clause, m: re.Match) -> _QA | None:
    if not _is_participle(m.group("part")):
        return None
    wh = "In what year" if m.group("the_year") else "When"
    return _question(f"{wh} {c.inverted(m.group('been') + m.group('part'))}"), m.group("year")


def _q_duration(c: Clause, m: re.Match) -> _QA | None:
    after = _trim_np(m.group("after") or "")
    # keep what the time was spent on: "spend studying the currents", "take to build"
    keep = after and (c.lemma == "spend" or (c.lemma == "take" and after.startswith("to ")))
    rest = f" {after}" if keep else ""
    return _question(f"How long {c.inverted(rest)}"), m.group("dur")


def _q_times(c: Clause, m: re.Match) -> _QA | None:
    return _question(f"How many times {c.inverted(m.group('vp'))}"), f"{m.group('n')} times"


def _q_quantity(c: Clause, m: re.Match) -> _QA | None:
    n, noun, part = m.group("n"), m.group("noun"), m.group("part")
    if noun in _DETS or noun in _PREPS or (c.aux is None) != (part is None):
        return None
    if part and not _is_participle(part):
        return None
    many = n.lower() not in ("a single", "only one", "one", "a", "1")
    plural_noun = noun if many else _plural(noun)
    return _question(f"How many {plural_noun} {c.inverted(part or '')}"), f"{n} {noun}"


def _q_material(c: Clause, m: re.Match) -> _QA | None:
    part = m.group("part")
    if not _is_participle(part) or part.lower() in ("known", "called", "named", "used"):
        return None
    return _question(f"What {c.inverted(m.group('been') + part)} {m.group('prep')}"), _trim_np(m.group("obj"))


def _q_used_for(c: Clause, m: re.Match) -> _QA | None:
    prep, obj = m.group("prep"), _trim_np(m.group("obj"))
    answer = f"to {obj}" if prep == "to" else obj
    return _question(f"What {c.inverted('used ' + ('as' if prep == 'as' else 'for'))}"), answer


def _pp_question(c: Clause, before: str, prep: str, np: str, after: str, participle: str = "") -> _QA | None:
    """Where/When/In-what question for one prepositional phrase of a clause."""
    if not np or np.split()[0].lower() in _PRONOUNS:
        return None
    # keep a following prepositional phrase in the question ("meet [on Mondays] in the hall")
    tail = after.strip()
    if not re.match(rf"{_LOC_PREPS}\s", tail) or re.search(rf",|\band\b|\b{_SUBORDINATORS}\b|\b{_RELATIVE_RE}\b", tail):
        tail = ""
    body = " ".join(x for x in (participle, before.strip(), tail) if x)
    if _time_like(np):
        return _question(f"When {c.inverted(body)}"), f"{prep} {np}"
    # "in" has many abstract uses ("in the colours of …"): a place only with a place noun or a name;
    # "on"/"at" + a determiner is a place ("on the southern slope"), without one it is not ("on request")
    determined = np.split()[0].lower() in _DETS
    if (prep == "in" or (prep in ("on", "at") and not determined)) and not _place_like(np):
        if prep != "in" or not participle:
            return None
        return _question(f"In what {c.inverted(body)}"), np
    return _question(f"Where {c.inverted(body)}"), f"{prep} {np}"


_LOC_PREPS = r"(?:in|on|at|along|beneath|under|near|beside|behind|above|below|inside|outside|around|across|onto|into|during)"


def _pps(rest: str) -> Iterable[tuple[str, str, str, str]]:
    """(before, prep, np, after) for each place/time prepositional phrase in ``rest``."""
    for m in re.finditer(rf"(?:^|\s)({_LOC_PREPS}) ", rest):
        before = rest[: m.start()]
        if "," in before or re.search(rf"\b{_RELATIVE_RE}\b|\b{_SUBORDINATORS}\b", before):
            break
        np = _trim_pp_np(rest[m.end() :])
        after = rest[m.end() + len(np) :]
        yield before, m.group(1), np, after


def _q_pp_after_participle(c: Clause, m: re.Match) -> _QA | None:
    part = m.group("part")
    if not _is_participle(part):
        return None
    for before, prep, np, after in _pps(m.group("tail")):
        qa = _pp_question(c, before, prep, np, after, participle=m.group("been") + part)
        if qa:
            return qa
    return None


def _q_pp_after_verb(c: Clause, m: re.Match) -> list[_QA]:
    out = []
    for before, prep, np, after in _pps(c.rest):
        if before and not re.fullmatch(r"(?:\S+ ){0,7}\S+", before):
            continue
        qa = _pp_question(c, before, prep, np, after)
        if qa:
            out.append(qa)
    return out


def _q_front_time(c: Clause, m: re.Match) -> _QA | None:
    rest = _cut(c.rest, _SUBORDINATORS)
    year = re.search(r"\b\d{3,4}\b", c.front or "")
    if year:
        return _question(f"In what year {c.inverted(rest)}"), year.group(0)
    return _question(f"When {c.inverted(rest)}"), c.front


def _q_definition(c: Clause, m: re.Match) -> _QA | None:
    answer = _trim_definition(m.group("np"))
    if len(answer.split()) < 2:
        return None
    wh = "Who" if _personish(answer) else "What"
    return _question(f"{wh} {c.aux} {c.subj}"), answer


def _q_place_of(c: Clause, m: re.Match) -> _QA | None:
    kind = m.group("kind").lower()
    return _question(f"{_PLACE_KINDS[kind]} which {kind} {c.aux} {c.subj}"), m.group("place")


def _q_object(c: Clause, m: re.Match) -> _QA | None:
    if c.lemma in ("be",):
        return None
    obj = _drop_trailing_adverb(_trim_pp_np(m.group("obj")))
    if not obj or len(obj.split()) > 8:
        return None
    front = f" {c.front[:1].lower()}{c.front[1:]}" if c.front else ""
    return _question(f"What {c.inverted('')}{front}"), obj


def _q_subject(c: Clause, m: re.Match) -> _QA | None:
    content = [w for w in c.subj.split() if w.lower() not in _DETS and w.lower() not in ("of", "in", "on")]
    if c.plural or (len(content) < 2 and not _personish(c.subj)):
        return None
    rest = _cut(c.rest, rf"{_RELATIVE_RE}|{_SUBORDINATORS}")
    wh = "Who" if _personish(c.subj) else "What"
    return _question(f"{wh}{c.adv_} {c.verb} {rest}"), c.subj


def _q_award(text: str, m: re.Match, ctx: _Context) -> _QA | None:
    subj = m.group("subj")
    if subj.split()[0].lower() in _PRONOUNS or subj.split()[0].lower() in _NOT_A_SUBJECT_START:
        return None
    subj = _true_case(subj, ctx)
    verb = m.group("verb")
    answer = _trim_np(m.group("obj"))
    if verb.startswith(("is ", "was ")):  # passive: "is awarded a prize"
        aux, part = verb.split()
        return _question(f"What {aux} {subj} {part}"), answer
    words = verb.split()
    past = _is_past(words[0])
    base = _past_to_base(words[0]) if past else _present_to_base(words[0])
    do = "did" if past else "does"
    return _question(f"What {do} {subj} {' '.join([base, *words[1:]])}"), answer


def _q_conditional(text: str, m: re.Match, ctx: _Context) -> _QA | None:
    cond = m.group("cond")
    if re.fullmatch(r"(?:the )?\S+", cond):  # "When possible, …"
        return None
    happens = "happened" if any(_is_past(w) for w in cond.split()) else "happens"
    main = _cut(m.group("main"), r"and (?:the|a|an)")
    return _question(f"What {happens} {m.group('conj').lower()} {cond}"), main


def _q_appositive(text: str, m: re.Match, ctx: _Context) -> _QA | None:
    name, app = m.group("name"), _trim_definition(m.group("app"))
    if m.start("name") == 0 or len(app.split()) < 2:
        return None
    return _question(f"What is {name}"), app


@dataclasses.dataclass(frozen=True)
class Template:
    """One question pattern: which verb group it needs, a regex over the rest of the clause, a builder."""

    name: str
    verbs: str  # "be" (is/are/was/were), "passive" (be or has + participle), "modal", "main", "front", "any"; "a|b": either
    pattern: re.Pattern
    build: Callable[[Clause, re.Match], _QA | list[_QA] | None]


def _t(name: str, verbs: str, pattern: str, build) -> Template:
    return Template(name, verbs, re.compile(pattern), build)


_BEEN = r"(?P<been>(?:been )?)"
# Patterns over a parsed clause's ``rest`` (what follows the verb group), in priority order.
CLAUSE_TEMPLATES: list[Template] = [
    # "X was designed by an engineer named Y" → "Who designed X?" → "Y"
    _t("passive-agent", "passive", rf"^{_BEEN}(?P<part>\S+)(?: (?P<prt>for|up|out|off|down|over))?(?P<mid>(?: [^,]*?)?) by (?P<agent>.+)$", _q_passive_agent),
    # "X is called / named / known as Y" → "What is X called?" → "Y"
    _t("called", "be", r"^(?P<how>called|named|known as) (?P<name>.+)$", _q_called),
    # "X is a green steamer named Y" → "What is the name of X?" → "Y"
    _t("name-of-subject", "be", r"^(?P<np>(?:a|an|the|one) [^,]*?) (?:named|called) (?P<name>.+)$", _q_name_of_subject),
    # "X keeps a pet tortoise named Y" → "What is the name of the pet tortoise that X keeps?" → "Y"
    _t("name-of-object", "main", r"^(?P<np>(?:a|an|the|his|her|its|their|one) [^,]*?) (?:named|called) (?P<name>.+)$", _q_name_of_object),
    # "X are famous across the island for Y" → "What are X famous for?" → "Y"
    _t("famous-for", "be", r"^(?P<adj>famous|known|renowned|noted|famed|celebrated|remembered|loved|feared|praised)(?: [^,]*?)? for (?P<obj>.+)$", _q_famous_for),
    # "X was completed in 1761" → "When was X completed?"; "in the year 1412" → "In what year …?"
    _t("year", "passive", rf"^{_BEEN}(?P<part>\S+)(?: [^,]*?)? in (?P<the_year>the year )?(?P<year>\d{{3,4}})\b", _q_year),
    # "X took eleven years" → "How long did X take?" → "eleven years"
    _t("duration", "main", rf"^(?P<dur>(?:about |almost |nearly |over |more than |less than )?{_NUM} {_DURATION_UNIT})\b(?P<after>.*)$", _q_duration),
    # "X must circle the wall three times" → "How many times must X circle the wall?" → "three times"
    _t("times", "any", rf"^(?P<vp>.*?) (?P<n>{_NUM}) times\b", _q_times),
    # "X has a single classroom" → "How many classrooms does X have?"; "has written two books" → "How many books has X written?"
    _t("quantity", "main|passive", rf"^(?:(?P<part>[a-z]+) )?(?P<n>a single|only one|{_NUM}) (?P<noun>[a-z]+)\b", _q_quantity),
    # "X is made from / paved with / cast from Y" → "What is X made from?" → "Y"
    _t("material", "passive", rf"^{_BEEN}(?P<part>\S+) (?P<prep>from|of|with|out of) (?P<obj>.+)$", _q_material),
    # "X was once used to store Y" → "What was X once used for?" → "to store Y"
    _t("used-for", "passive", r"^used (?P<prep>to|for|as) (?P<obj>.+)$", _q_used_for),
    # "X were built along the shore" → "Where were X built?"; "… given in the morning" → "When …?"
    _t("pp-after-participle", "passive", rf"^{_BEEN}(?P<part>\S+)(?P<tail>.*)$", _q_pp_after_participle),
    # "X meets on the first Monday … in the hall" → "When does X meet …?" / "Where does X meet …?"
    _t("pp-after-verb", "main|modal", r"^(?P<rest>.+)$", _q_pp_after_verb),
    # "Every autumn X holds Y" → "When does X hold Y?" → "Every autumn" (clause.front set)
    _t("front-time", "front", r"^(?P<rest>.+)$", _q_front_time),
    # "X is a … on the coast of the island of Averra" → "On which island is X?" → "Averra"
    _t("place-of", "be", rf"^(?:a|an|the)\b[^,]*?\b(?P<kind>{'|'.join(_PLACE_KINDS)}) of (?P<place>{_CAPNAME})", _q_place_of),
    # "X is a small harbour town on …" → "What is X?" → "a small harbour town"
    _t("definition", "be", r"^(?P<np>(?:a|an) .+)$", _q_definition),
    # "X still serves a fish stew whose …" → "What does X still serve?" → "a fish stew"
    _t("object", "main", rf"^(?P<obj>(?:{'|'.join(sorted(_DETS - {'that', 'this', 'these', 'those'}))}|\d)\b.+)$", _q_object),
    # "X keeps a tortoise named Y" → "Who keeps a tortoise named Y?" → "X"
    _t("subject", "main", r"^(?P<rest>.+)$", _q_subject),
]

# Patterns over the whole sentence or clause text (subjects the clause parser refuses).
TEXT_TEMPLATES: list[tuple[str, re.Pattern, Callable[[str, re.Match, _Context], _QA | None]]] = [
    # "the crew whose lantern is still burning wins a copper kettle" → "What does the crew … win?"
    ("award", re.compile(
        r"^(?P<subj>[^,]+?) (?P<verb>wins|won|receives|received|gets|got|earns|earned|is awarded|was awarded|is given|was given|takes home|took home) "
        rf"(?P<obj>(?:a|an|the|his|her|their|its|\d|{_NUM_WORD})\b.+)$"), _q_award),
    # "When a boat grows too old to sail, it is burned …" → "What happens when a boat grows too old to sail?"
    ("conditional", re.compile(r"^(?P<conj>When|Whenever|If|Once|After|Before|As soon as) (?P<cond>[^,]+), (?P<main>.+)$"), _q_conditional),
    # "… holds the Lantern Regatta, a night race in which …" → "What is the Lantern Regatta?" → "a night race"
    ("appositive", re.compile(rf"(?P<name>(?:the )?{_CAPNAME}), (?P<app>(?:a|an) [^,]+)"), _q_appositive),
]

_CLOZE_SPANS = [
    re.compile(rf"(?<!^)(?<![.!?] )\b(?:{_CAPNAME})"),  # names inside the sentence
    re.compile(rf"^[A-Z][\w'’-]* [A-Z][\w'’-]*(?: [A-Z][\w'’-]*)*"),  # a multi-word name opening it
    re.compile(rf"\b(?:{_NUM}) (?:[a-z'’]+)\b|\b\d[\d,.:]*\b"),  # numbers, with their unit word
]


def _verbs_match(c: Clause, verbs: str) -> bool:
    if "|" in verbs:
        return any(_verbs_match(c, v) for v in verbs.split("|"))
    if verbs == "any":
        return True
    if verbs == "front":
        return c.front is not None
    if verbs == "be":
        return c.aux in _BE
    if verbs == "passive":
        return c.aux in _BE or c.aux in _HAVE
    if verbs == "modal":
        return c.aux in _MODALS
    return c.aux is None  # main


MAX_SENTENCE_WORDS = 80
_PLAIN_QUESTION = re.compile(r"[\w'’ ,;.-]+\?")


class TemplateQAGenerator:
    """Offline question → short-answer pairs from sentence patterns (no model).

    Args:
        max_pairs: at most this many pairs per document (spread over it by :func:`generate_pairs`).
        max_pairs_per_sentence: at most this many pairs per sentence (the auxiliary-task density).
    """

    kind = "templates"
    VERSION = 1  # bump when the rules change, so cached pairs are regenerated

    def __init__(self, max_pairs: int = 64, max_pairs_per_sentence: int = 2):
        self.max_pairs = max_pairs
        self.max_pairs_per_sentence = max_pairs_per_sentence

    def settings(self) -> dict:
        return {"version": self.VERSION, "max_pairs": self.max_pairs, "max_pairs_per_sentence": self.max_pairs_per_sentence}

    def cache_key(self) -> str:
        return settings_key(self.kind, self.settings())

    def generate(self, text: str, sentences: list[str] | None = None) -> list[QAPair]:
        paragraphs = split_paragraphs(text)
        flat = [s for p in paragraphs for s in p]
        if sentences is not None and [_ws(s) for s in sentences] != [_ws(s) for s in flat]:
            raise ValueError("sentences must be split_sentences(text)")
        ctx = _Context(mid_caps=_mid_sentence_capitals(flat))
        pairs: list[QAPair] = []
        index = 0
        for para in paragraphs:
            ctx.topic = ctx.person = None  # antecedents do not cross paragraphs
            for sentence in para:
                pairs += self.sentence_pairs(sentence, index, ctx)
                index += 1
        return pairs

    def sentence_pairs(self, sentence: str, index: int, ctx: _Context) -> list[QAPair]:
        """Pairs for one sentence, best template first; updates ``ctx``'s antecedents."""
        found: list[tuple[str, _QA]] = []
        if _TERMINAL.search(sentence) is None and len(sentence.split()) <= 12:
            return []  # a heading: no statement to ask about
        if len(sentence.split()) > MAX_SENTENCE_WORDS:
            return []  # a table, a code block or run-on markup, not a sentence
        for name, pattern, build in TEXT_TEMPLATES:
            m = pattern.search(_strip_end(sentence))
            if m and (qa := build(sentence, m, ctx)):
                found.append((name, qa))
        clause_topic = ctx.topic
        first_subject = None
        for k, clause_text in enumerate(_clauses(sentence)):
            for name, pattern, build in TEXT_TEMPLATES[:1]:  # award also inside a coordinated clause
                m = pattern.search(clause_text)
                if k > 0 and m and (qa := build(clause_text, m, ctx)):
                    found.append((name, qa))
            c = parse_clause(clause_text, ctx, topic=clause_topic)
            if c is None:
                continue
            if k == 0:
                first_subject = c.subj
                own = clause_text.split()[0].lower() not in _PRONOUNS | _POSSESSIVES
                if own and not _personish(c.subj):
                    clause_topic = c.subj  # "its lamp" in a later clause refers to this subject
            for t in CLAUSE_TEMPLATES:
                if not _verbs_match(c, t.verbs):
                    continue
                m = t.pattern.search(c.rest)
                if not m:
                    continue
                built = t.build(c, m)
                for qa in built if isinstance(built, list) else [built] if built else []:
                    found.append((t.name, qa))
        self._update_context(sentence, first_subject, ctx)
        pairs = self._select(found, sentence, index)
        if not pairs:
            pairs = self._cloze(sentence, index)
        return pairs

    def _select(self, found: list[tuple[str, _QA]], sentence: str, index: int) -> list[QAPair]:
        # Templates are tried in priority order per clause; rank by template priority over clauses.
        order = {name: i for i, (name, *_rest) in enumerate(TEXT_TEMPLATES)}
        order.update({t.name: len(TEXT_TEMPLATES) + i for i, t in enumerate(CLAUSE_TEMPLATES)})
        found = sorted(found, key=lambda x: order[x[0]])
        out: list[QAPair] = []
        answers: list[str] = []
        for name, (question, answer) in found:
            a = _norm_words(answer)
            # one fact once per sentence: skip an answer that contains or is contained in a kept one
            if not a or any(a in b or b in a for b in answers) or all(w in _STOPWORDS for w in a.split()):
                continue
            if f" {a} " in f" {_norm_words(question)} ":
                continue
            # plain-prose questions of sensible length only (no markup, code or arrows leaking in)
            if len(question.split()) > 40 or len(answer.split()) > 20 or not _PLAIN_QUESTION.fullmatch(question):
                continue
            out.append(QAPair(question=question, answer=_strip_end(answer), evidence=sentence, sentence_index=index, generator=f"rules:{name}"))
            answers.append(a)
            if len(out) >= self.max_pairs_per_sentence:
                break
        return out

    def _cloze(self, sentence: str, index: int) -> list[QAPair]:
        """Fallback: blank out a salient span (a name, a number) of the sentence."""
        spans: list[str] = []
        body = _strip_end(sentence)
        for pattern in _CLOZE_SPANS:
            for m in pattern.finditer(body):
                span = _strip_end(m.group(0))
                words = span.lower().split()
                if not span or words[-1] in _STOPWORDS or (len(words) == 1 and words[0] in _STOPWORDS):
                    continue
                if span not in spans and not any(span in s or s in span for s in spans):
                    spans.append(span)
        out = []
        for span in spans[: self.max_pairs_per_sentence]:
            # blank every occurrence, or the question would give its own answer away
            blanked = re.sub(rf"(?<!\w){re.escape(span)}(?!\w)", "____", sentence)
            question = "Fill in the blank from the document: " + blanked
            out.append(QAPair(question=question, answer=span, evidence=sentence, sentence_index=index, generator="rules:cloze"))
        return out

    @staticmethod
    def _update_context(sentence: str, first_subject: str | None, ctx: _Context) -> None:
        if first_subject and first_subject.split()[0].lower() not in _PRONOUNS:
            if _personish(first_subject) and re.fullmatch(_CAPNAME, first_subject):
                ctx.person = first_subject
            elif not _personish(first_subject):
                ctx.topic = first_subject
        m = None
        for m in re.finditer(rf"\b(\w+) (?:named|called) ({_CAPNAME})", sentence):
            pass
        # "an engineer named Tobias Wrenfield": a person noun, or a first + last name (not "the Gull Maiden")
        if m and (
            m.group(1).lower() in _PERSON_NOUNS
            or re.fullmatch(r"\w+(?:er|or|ist|ian)", m.group(1))
            or re.fullmatch(r"[A-Z][a-z'’-]+(?: [A-Z][a-z'’-]+)+", m.group(2))
        ):
            ctx.person = m.group(2)


def _mid_sentence_capitals(sentences: list[str]) -> set[str]:
    """Capitalised words seen after the first word of a sentence: names, kept capitalised in questions."""
    caps = set()
    for s in sentences:
        for w in re.findall(r"(?<=\s)[A-Z][\w'’-]*", s):
            caps.add(w)
    return caps
