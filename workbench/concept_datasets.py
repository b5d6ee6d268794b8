"""Labelled probe datasets for concept depth, and validation of user-supplied ones.

Owns the three bundled tasks of increasing complexity (after Jin et al., "Exploring Concept
Depth") and ``parse_csv`` for a user's ``text,label`` CSV, with its limits: rows, characters per
text and bytes per file (``CSV_MAX_BYTES``, what ``CSV_MAX_ROWS`` rows of ``CSV_MAX_CHARS``-character
texts can take; ``CSV_MAX_MB`` is the same limit for the app's upload widget and
``.streamlit/config.toml``). A file over the byte limit is refused before it is decoded, and rows
are read one at a time and refused at the first limit they break, so a big upload costs no memory.

Provenance: every bundled example is GENERATED deterministically by this module from word
lists written for this project (no external data set, nothing downloaded). Labels are 1 for
true / positive, 0 for false / negative; each task is balanced.

* factual      "<city> is a city in <country>." true pairs and seeded false swaps (a country
               taken from another city), two templates; every country appears in both classes.
* emotional    sentiment sentences from varied subjects, events and evaluations; a third of
               them negated ("was not wonderful" is negative), so no single word gives a class away.
* inferential  two-step reasoning: transitive comparisons ("A is taller than B. B is taller than
               C. So A is taller than C.") and two-step arithmetic stories, with a correct or a
               wrong conclusion.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
from dataclasses import dataclass
from functools import cache

from workbench.errors import BadRequest

TASKS = ("factual", "emotional", "inferential")
PROVENANCE = (
    "Generated deterministically by workbench/concept_datasets.py from word lists written for this "
    "project (no external data set)."
)
CSV_MIN_ROWS = 20
CSV_MIN_PER_CLASS = 8
CSV_MAX_ROWS = 2000
CSV_MAX_CHARS = 400
# A row: a text of CSV_MAX_CHARS characters of up to 4 UTF-8 bytes each, quoted, and 400 bytes for the label
# and any other columns. The file: its header and CSV_MAX_ROWS such rows (4,002,000 bytes).
CSV_MAX_ROW_BYTES = 4 * CSV_MAX_CHARS + 400
CSV_MAX_BYTES = (CSV_MAX_ROWS + 1) * CSV_MAX_ROW_BYTES
CSV_MAX_MB = math.ceil(CSV_MAX_BYTES / 2**20)  # 4: the upload limit in Streamlit's unit (MiB, an integer)


@dataclass(frozen=True)
class ConceptDataset:
    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]  # 0 or 1
    class_names: tuple[str, str] = ("false", "true")

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels differ in length")

    @property
    def digest(self) -> str:
        payload = json.dumps([self.texts, self.labels], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def subset(self, limit: int | None, seed: int = 0) -> ConceptDataset:
        """A balanced, seeded subset of at most ``limit`` examples (order kept); all when None."""
        if limit is None or limit >= len(self.texts):
            return self
        rng = random.Random(seed)
        keep: list[int] = []
        for label in (0, 1):
            rows = [i for i, y in enumerate(self.labels) if y == label]
            keep += rng.sample(rows, min(len(rows), limit // 2))
        keep.sort()
        return ConceptDataset(self.name, tuple(self.texts[i] for i in keep), tuple(self.labels[i] for i in keep),
                              self.class_names)


# ---------------------------------------------------------------------- factual

CITIES = (
    ("Paris", "France"), ("Lyon", "France"), ("Marseille", "France"), ("Toulouse", "France"),
    ("Berlin", "Germany"), ("Munich", "Germany"), ("Hamburg", "Germany"), ("Cologne", "Germany"),
    ("Madrid", "Spain"), ("Barcelona", "Spain"), ("Seville", "Spain"), ("Valencia", "Spain"),
    ("Rome", "Italy"), ("Milan", "Italy"), ("Naples", "Italy"), ("Florence", "Italy"), ("Venice", "Italy"),
    ("London", "England"), ("Manchester", "England"), ("Liverpool", "England"), ("Bristol", "England"),
    ("Dublin", "Ireland"), ("Cork", "Ireland"), ("Lisbon", "Portugal"), ("Porto", "Portugal"),
    ("Amsterdam", "the Netherlands"), ("Rotterdam", "the Netherlands"), ("Brussels", "Belgium"),
    ("Antwerp", "Belgium"), ("Vienna", "Austria"), ("Salzburg", "Austria"), ("Zurich", "Switzerland"),
    ("Geneva", "Switzerland"), ("Stockholm", "Sweden"), ("Gothenburg", "Sweden"), ("Oslo", "Norway"),
    ("Bergen", "Norway"), ("Copenhagen", "Denmark"), ("Helsinki", "Finland"), ("Warsaw", "Poland"),
    ("Krakow", "Poland"), ("Prague", "the Czech Republic"), ("Budapest", "Hungary"), ("Athens", "Greece"),
    ("Thessaloniki", "Greece"), ("Istanbul", "Turkey"), ("Ankara", "Turkey"), ("Moscow", "Russia"),
    ("Saint Petersburg", "Russia"), ("Kyiv", "Ukraine"), ("Bucharest", "Romania"), ("Sofia", "Bulgaria"),
    ("Belgrade", "Serbia"), ("Zagreb", "Croatia"), ("New York", "the United States"),
    ("Chicago", "the United States"), ("Los Angeles", "the United States"), ("Boston", "the United States"),
    ("Seattle", "the United States"), ("Houston", "the United States"), ("Toronto", "Canada"),
    ("Montreal", "Canada"), ("Vancouver", "Canada"), ("Mexico City", "Mexico"), ("Guadalajara", "Mexico"),
    ("Havana", "Cuba"), ("Bogota", "Colombia"), ("Medellin", "Colombia"), ("Lima", "Peru"),
    ("Santiago", "Chile"), ("Buenos Aires", "Argentina"), ("Cordoba", "Argentina"),
    ("Sao Paulo", "Brazil"), ("Rio de Janeiro", "Brazil"), ("Brasilia", "Brazil"), ("Caracas", "Venezuela"),
    ("Quito", "Ecuador"), ("Montevideo", "Uruguay"), ("Tokyo", "Japan"), ("Osaka", "Japan"),
    ("Kyoto", "Japan"), ("Beijing", "China"), ("Shanghai", "China"), ("Shenzhen", "China"),
    ("Seoul", "South Korea"), ("Busan", "South Korea"), ("Delhi", "India"), ("Mumbai", "India"),
    ("Bangalore", "India"), ("Chennai", "India"), ("Karachi", "Pakistan"), ("Lahore", "Pakistan"),
    ("Dhaka", "Bangladesh"), ("Bangkok", "Thailand"), ("Hanoi", "Vietnam"), ("Manila", "the Philippines"),
    ("Jakarta", "Indonesia"), ("Kuala Lumpur", "Malaysia"), ("Tehran", "Iran"), ("Baghdad", "Iraq"),
    ("Riyadh", "Saudi Arabia"), ("Dubai", "the United Arab Emirates"), ("Cairo", "Egypt"),
    ("Alexandria", "Egypt"), ("Lagos", "Nigeria"), ("Abuja", "Nigeria"), ("Nairobi", "Kenya"),
    ("Addis Ababa", "Ethiopia"), ("Casablanca", "Morocco"), ("Marrakesh", "Morocco"), ("Tunis", "Tunisia"),
    ("Algiers", "Algeria"), ("Accra", "Ghana"), ("Dakar", "Senegal"), ("Johannesburg", "South Africa"),
    ("Cape Town", "South Africa"), ("Sydney", "Australia"), ("Melbourne", "Australia"),
    ("Perth", "Australia"), ("Brisbane", "Australia"), ("Auckland", "New Zealand"),
    ("Wellington", "New Zealand"), ("Edinburgh", "Scotland"), ("Glasgow", "Scotland"),
    ("Reykjavik", "Iceland"), ("Riga", "Latvia"), ("Vilnius", "Lithuania"), ("Tallinn", "Estonia"),
    ("Kathmandu", "Nepal"), ("Colombo", "Sri Lanka"), ("Kabul", "Afghanistan"), ("Tashkent", "Uzbekistan"),
    ("Almaty", "Kazakhstan"), ("Jerusalem", "Israel"), ("Beirut", "Lebanon"), ("Damascus", "Syria"),
    ("Amman", "Jordan"), ("Doha", "Qatar"), ("Taipei", "Taiwan"), ("Singapore", "Singapore"),
    ("Bordeaux", "France"), ("Nice", "France"), ("Frankfurt", "Germany"), ("Stuttgart", "Germany"),
    ("Bilbao", "Spain"), ("Turin", "Italy"), ("Palermo", "Italy"), ("Leeds", "England"),
    ("Malmo", "Sweden"), ("Gdansk", "Poland"), ("Philadelphia", "the United States"),
    ("Miami", "the United States"), ("Denver", "the United States"), ("Calgary", "Canada"),
    ("Ottawa", "Canada"), ("Monterrey", "Mexico"), ("Recife", "Brazil"), ("Salvador", "Brazil"),
    ("Nagoya", "Japan"), ("Sapporo", "Japan"), ("Guangzhou", "China"), ("Chengdu", "China"),
    ("Kolkata", "India"), ("Hyderabad", "India"), ("Adelaide", "Australia"), ("Durban", "South Africa"),
    ("Mombasa", "Kenya"), ("Fez", "Morocco"), ("Izmir", "Turkey"), ("Novosibirsk", "Russia"),
)
FACT_TEMPLATES = ("{city} is a city in {country}.", "The city of {city} is located in {country}.")


def factual() -> ConceptDataset:
    rng = random.Random(7)
    texts, labels = [], []
    for index, (city, country) in enumerate(CITIES):
        wrong = country
        while wrong == country:
            wrong = CITIES[rng.randrange(len(CITIES))][1]
        for label, named in ((1, country), (0, wrong)):
            template = FACT_TEMPLATES[(index + label) % len(FACT_TEMPLATES)]
            texts.append(template.format(city=city, country=named))
            labels.append(label)
    return ConceptDataset("factual", tuple(texts), tuple(labels), ("false", "true"))


# ---------------------------------------------------------------------- emotional

SUBJECTS = ("My sister", "The old man", "Our neighbour", "The teacher", "My best friend", "The customer",
            "Her father", "The young couple", "My boss", "The visitor", "Our team", "The student")
EVENTS = (
    ("watched", "the new film"), ("ate", "dinner at the restaurant"), ("read", "the novel"),
    ("stayed", "at the hotel"), ("visited", "the museum"), ("tried", "the new phone"),
    ("heard", "the concert"), ("took", "the train to work"), ("attended", "the wedding"),
    ("opened", "the birthday present"), ("started", "the new job"), ("moved", "into the apartment"),
)
POSITIVE = ("wonderful", "delightful", "excellent", "lovely", "a real joy", "fantastic", "charming",
            "a pleasant surprise", "brilliant", "heartwarming")
NEGATIVE = ("awful", "dreadful", "terrible", "miserable", "a real disappointment", "horrible",
            "depressing", "a waste of time", "boring", "painful")
FEELINGS_POS = ("felt happy", "smiled all evening", "could not stop laughing", "was grateful",
                "felt proud")
FEELINGS_NEG = ("felt sad", "cried all evening", "could not stop complaining", "was furious",
                "felt ashamed")
EMOTION_SIZE = 360


def _emotional_sentence(rng: random.Random, label: int, form: int) -> str:
    subject = rng.choice(SUBJECTS)
    verb, obj = rng.choice(EVENTS)
    if form == 0:  # plain evaluation
        adjective = rng.choice(POSITIVE if label else NEGATIVE)
        return f"{subject} {verb} {obj}, and it was {adjective}."
    if form == 1:  # negated evaluation of the opposite polarity
        adjective = rng.choice(NEGATIVE if label else POSITIVE)
        return f"{subject} {verb} {obj}, and it was not {adjective} at all."
    feeling = rng.choice(FEELINGS_POS if label else FEELINGS_NEG)
    return f"After {subject.lower()} {verb} {obj}, they {feeling}."


def emotional() -> ConceptDataset:
    rng = random.Random(11)
    texts, labels = [], []
    index = 0
    while len(texts) < EMOTION_SIZE:
        label = index % 2
        text = _emotional_sentence(rng, label, (index // 2) % 3)
        if text not in texts:  # no duplicates (a duplicate could sit in both train and test)
            texts.append(text)
            labels.append(label)
            index += 1
    return ConceptDataset("emotional", tuple(texts), tuple(labels), ("negative", "positive"))


# ---------------------------------------------------------------------- inferential

NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack", "Laura",
         "Martin", "Nina", "Oscar", "Paula", "Quentin", "Rosa", "Simon", "Tina", "Victor")
RELATIONS = ("taller", "older", "faster", "heavier", "richer", "stronger")
ITEMS = ("apples", "books", "coins", "marbles", "stamps", "pencils")
INFERENCE_SIZE = 360


def _transitive(rng: random.Random, label: int) -> str:
    a, b, c = rng.sample(NAMES, 3)
    relation = rng.choice(RELATIONS)
    premises = f"{a} is {relation} than {b}. {b} is {relation} than {c}."
    if label:
        return f"{premises} So {a} is {relation} than {c}."
    return f"{premises} So {c} is {relation} than {a}."


def _arithmetic(rng: random.Random, label: int) -> str:
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    start, gained, lost = rng.randint(3, 9), rng.randint(2, 9), rng.randint(1, 3)
    answer = start + gained - lost
    if not label:
        answer += rng.choice((-2, -1, 1, 2))
    return (f"{name} has {start} {item}. {name} gets {gained} more and gives away {lost}. "
            f"Now {name} has {answer} {item}.")


def inferential() -> ConceptDataset:
    rng = random.Random(13)
    texts, labels = [], []
    index = 0
    while len(texts) < INFERENCE_SIZE:
        label = index % 2
        make = _transitive if (index // 2) % 2 == 0 else _arithmetic
        text = make(rng, label)
        if text not in texts:
            texts.append(text)
            labels.append(label)
            index += 1
    return ConceptDataset("inferential", tuple(texts), tuple(labels), ("false", "true"))


@cache
def builtin(task: str) -> ConceptDataset:
    """The bundled dataset of ``task`` (one of TASKS)."""
    builders = {"factual": factual, "emotional": emotional, "inferential": inferential}
    if task not in builders:
        raise BadRequest(f"Unknown concept task '{task}'; choose one of {', '.join(TASKS)} or upload a CSV.")
    return builders[task]()


# ---------------------------------------------------------------------- user CSV


def parse_csv(data: bytes | str, name: str = "custom") -> ConceptDataset:
    """A user dataset from CSV text with a header holding ``text`` and ``label`` columns and
    exactly two label values (mapped to 0/1 in sorted order). Raises BadRequest saying what to fix.

    A file over ``CSV_MAX_BYTES`` is refused before it is decoded; rows are read one at a time
    and the first row over a limit (``CSV_MAX_ROWS``, ``CSV_MAX_CHARS``) stops the reading."""
    size = len(data)  # characters of a str: never more than its UTF-8 bytes
    if size > CSV_MAX_BYTES:
        raise BadRequest(f"The CSV is {size / 2**20:.1f} MB; at most {CSV_MAX_BYTES / 2**20:.1f} MB "
                         f"({CSV_MAX_ROWS} rows of up to {CSV_MAX_CHARS} characters) is accepted. Sample it down.")
    stream = (io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="") if isinstance(data, bytes)
              else io.StringIO(data, newline=""))  # decoded as it is read
    texts, raw_labels = [], []
    try:
        reader = csv.DictReader(stream)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        missing = [c for c in ("text", "label") if c not in fields]
        if missing:
            raise BadRequest(f"The CSV has no {' and no '.join(repr(c) for c in missing)} column; its header must "
                             f"name the columns text and label (found: {', '.join(fields) or 'nothing'}).")
        original = dict(zip(fields, reader.fieldnames or [], strict=True))
        for line, row in enumerate(reader, start=2):
            if len(texts) == CSV_MAX_ROWS:
                raise BadRequest(f"The CSV has more than {CSV_MAX_ROWS} rows; at most {CSV_MAX_ROWS} are accepted. "
                                 "Sample it down.")
            text = (row.get(original["text"]) or "").strip()
            label = (row.get(original["label"]) or "").strip()
            if not text:
                raise BadRequest(f"Row {line} has an empty text; fill it in or remove the row.")
            if len(text) > CSV_MAX_CHARS:
                raise BadRequest(f"Row {line} has a text of {len(text)} characters; the limit is {CSV_MAX_CHARS}.")
            if not label:
                raise BadRequest(f"Row {line} has an empty label.")
            texts.append(text)
            raw_labels.append(label)
    except UnicodeDecodeError as exc:
        raise BadRequest("The CSV is not UTF-8 text; save it as UTF-8 and upload it again.") from exc
    except csv.Error as exc:
        raise BadRequest(f"The CSV could not be read: {exc}.") from exc
    if len(texts) < CSV_MIN_ROWS:
        raise BadRequest(f"The CSV has {len(texts)} rows; a probe needs at least {CSV_MIN_ROWS}.")
    classes = sorted(set(raw_labels))
    if len(classes) != 2:
        shown = ", ".join(repr(c) for c in classes[:5])
        raise BadRequest(f"The label column must hold exactly two classes; it holds {len(classes)} ({shown}).")
    labels = tuple(classes.index(v) for v in raw_labels)
    for index, cls in enumerate(classes):
        count = labels.count(index)
        if count < CSV_MIN_PER_CLASS:
            raise BadRequest(f"Class {cls!r} has {count} rows; each class needs at least {CSV_MIN_PER_CLASS}.")
    return ConceptDataset(name, tuple(texts), labels, (classes[0], classes[1]))
