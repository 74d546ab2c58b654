"""A seeded, fictional encyclopedia: entities, typed relations and the articles about them.

Everything here is invented on purpose: no pretrained model can answer a question about
"Maren Oskvik" from memory, so an agent's success on Search-v0 measures its tool use.

The world holds five kinds of entity. People, organisations and works belong to one split
(``train`` or ``test``) and only point at entities of their own split or at places; cities
and countries are ``shared``. A question starts from an entity of its split, so train and
test questions never share a person, an organisation or a work, only geography.

Relations are functions (one target each), so every multi-hop question has one answer:

=========  =================================================================
person     born_in -> city, employer -> org, spouse -> person (some), birth_year
org        founder -> person, headquarters -> city, founding_year
work       creator -> person, publisher -> org, setting -> city, release_year
city       country -> country
country    capital -> city
=========  =================================================================

An article states its entity's outgoing relations only (a city's article also names the
country whose capital it is), so a question of ``h`` hops needs ``h`` articles read.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache

KINDS = ("person", "org", "work", "city", "country")
SPLITS = ("train", "test")

#: relation -> (source kind, target kind); ``year`` targets are literal strings.
RELATION_KINDS: dict[str, tuple[str, str]] = {
    "born_in": ("person", "city"),
    "employer": ("person", "org"),
    "spouse": ("person", "person"),
    "birth_year": ("person", "year"),
    "founder": ("org", "person"),
    "headquarters": ("org", "city"),
    "founding_year": ("org", "year"),
    "creator": ("work", "person"),
    "publisher": ("work", "org"),
    "setting": ("work", "city"),
    "release_year": ("work", "year"),
    "country": ("city", "country"),
    "capital": ("country", "city"),
}

#: share of the documents each kind gets
_KIND_SHARE = {"country": 0.01, "city": 0.09, "person": 0.45, "org": 0.15, "work": 0.30}

_ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "kr", "st", "th", "sk", "tr", "", ""]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "k", "m", "nd", "rn", "v"]
_CITY_PREFIXES = ["Port", "New", "Upper", "Lower", "Fort", "Saint", "North", "South"]
_CITY_SUFFIXES = ["holm", "by", "mere", "ford", "wick", "grad", "stad", "haven"]
_COUNTRY_FORMS = ["Republic of", "Kingdom of", "Federation of", "Grand Duchy of", "Commonwealth of"]
_ORG_KINDS = {
    # kind word -> (description, is publisher of these work kinds)
    "Trading Company": ("a trading company", ()),
    "University": ("a university", ()),
    "Institute": ("a research institute", ()),
    "Guild": ("a craft guild", ()),
    "Shipyards": ("a shipbuilder", ()),
    "Bank": ("a bank", ()),
    "Observatory": ("an observatory", ()),
    "Press": ("a publishing house", ("novel", "poetry collection")),
    "Studio": ("a film studio", ("film",)),
    "Records": ("a record label", ("album",)),
}
_WORK_ADJ = ["Glass", "Silent", "Crimson", "Hollow", "Last", "Northern", "Iron", "Paper", "Distant",
             "Seventh", "Amber", "Broken", "Quiet", "Salt", "Winter", "Golden", "Lost", "Pale",
             "Burning", "Sunken", "Velvet", "Hidden", "Endless", "Bitter", "Copper", "Green"]
_WORK_NOUNS = ["Tide", "Harbour", "Lantern", "Orchard", "Compass", "Garden", "Bridge", "Archive",
               "River", "Clock", "Mirror", "Feather", "Lighthouse", "Voyage", "Meridian", "Kingdom",
               "Letter", "Season", "Tower", "Island", "Choir", "Machine", "Window", "Road", "Crown"]
_PROFESSIONS = ["cartographer", "chemist", "painter", "engineer", "historian", "composer",
                "diplomat", "astronomer", "merchant", "architect", "physician", "poet", "sculptor",
                "linguist", "botanist", "shipwright", "economist", "playwright"]
_TOPICS = ["a survey of tidal mills", "early work on glass lenses", "a map of the salt marshes",
           "studies of coastal winds", "a treatise on river locks", "a catalogue of night moths",
           "a reform of the postal calendar", "designs for iron footbridges", "a grammar of hill dialects",
           "research on winter wheat", "a history of the lantern trade", "measurements of comet tails"]
_PRODUCTS = ["amber", "wool", "salt", "copper", "timber", "rye", "glassware", "dyes", "clocks"]


@dataclass(frozen=True)
class WorldConfig:
    """What the generated encyclopedia looks like; equal configs give identical worlds."""

    seed: int = 0  # the world's random seed
    n_docs: int = 3000  # about how many articles (entities); at least 200
    test_fraction: float = 0.2  # share of people, organisations and works in the test split

    def __post_init__(self) -> None:
        if self.n_docs < 200:
            raise ValueError(f"WorldConfig.n_docs must be at least 200, got {self.n_docs}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"WorldConfig.test_fraction must lie in (0, 1), got {self.test_fraction}")


@dataclass
class Entity:
    """One article: its doc id, what it is about, and its outgoing relations."""

    id: str  # doc id, a slug of the title
    kind: str  # one of KINDS
    title: str
    split: str  # train, test or shared
    aliases: tuple[str, ...] = ()  # other names that count as this entity in an answer
    relations: dict[str, str] = field(default_factory=dict)  # relation -> entity id or literal year
    text: str = ""  # the rendered article


@dataclass(eq=False)
class World:
    """The generated encyclopedia: entities in creation order, looked up by id (hashed by identity)."""

    config: WorldConfig
    entities: list[Entity]
    by_id: dict[str, Entity]

    def target_title(self, entity: Entity, relation: str) -> str:
        """The title (or literal value) a relation of ``entity`` points at."""
        value = entity.relations[relation]
        return self.by_id[value].title if value in self.by_id else value


def slugify(title: str) -> str:
    """Doc id for a title: lowercase words joined by dashes (``Port Velhar`` -> ``port-velhar``)."""
    return "-".join(re.findall(r"[a-z0-9]+", title.lower()))


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return "".join(parts).capitalize()


class _Namer:
    """Unique invented words and titles (titles are unique across the whole world)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words: set[str] = set()
        self.titles: set[str] = set()
        self.slugs: set[str] = set()

    def word(self) -> str:
        while True:
            w = _word(self.rng, self.rng.choice((2, 2, 2, 3)))
            if 4 <= len(w) <= 9 and w not in self.words:
                self.words.add(w)
                return w

    def claim(self, title: str) -> bool:
        slug = slugify(title)
        if title in self.titles or slug in self.slugs or not slug:
            return False
        self.titles.add(title)
        self.slugs.add(slug)
        return True


def _counts(n_docs: int) -> dict[str, int]:
    counts = {k: max(4, round(n_docs * share)) for k, share in _KIND_SHARE.items()}
    counts["person"] += n_docs - sum(counts.values())
    return counts


def _split_of(rng: random.Random, test_fraction: float) -> str:
    return "test" if rng.random() < test_fraction else "train"


def _make_places(rng: random.Random, namer: _Namer, counts: dict[str, int]) -> list[Entity]:
    countries = []
    while len(countries) < counts["country"]:
        name = namer.word()
        if namer.claim(name):
            long_form = f"{rng.choice(_COUNTRY_FORMS)} {name}"
            countries.append(Entity(slugify(name), "country", name, "shared", aliases=(long_form,)))
    cities = []
    while len(cities) < counts["city"]:
        base = namer.word()
        roll = rng.random()
        if roll < 0.25:
            title, aliases = f"{rng.choice(_CITY_PREFIXES)} {base}", (base,)
        elif roll < 0.5:
            title, aliases = base + rng.choice(_CITY_SUFFIXES), ()
        else:
            title, aliases = base, ()
        if namer.claim(title):
            cities.append(Entity(slugify(title), "city", title, "shared", aliases=aliases))
    for i, city in enumerate(cities):
        city.relations["country"] = countries[i % len(countries)].id if i < len(countries) else rng.choice(countries).id
    for i, country in enumerate(countries):
        country.relations["capital"] = cities[i].id  # city i lies in country i (set above)
    return countries + cities


def _make_people(rng: random.Random, namer: _Namer, n: int, test_fraction: float) -> list[Entity]:
    first_names = [namer.word() for _ in range(max(40, n // 5))]
    surnames = [namer.word() for _ in range(max(80, n // 2))]
    people = []
    while len(people) < n:
        first, last = rng.choice(first_names), rng.choice(surnames)
        plain = f"{first} {last}"
        if rng.random() < 0.2:
            title, aliases = f"{first} {rng.choice('ABCDEFGHJKLMNPRSTVW')}. {last}", (plain,)
        else:
            title, aliases = plain, ()
        if namer.claim(title) and (not aliases or namer.claim(plain)):
            split = SPLITS[len(people)] if len(people) < len(SPLITS) else _split_of(rng, test_fraction)
            entity = Entity(slugify(title), "person", title, split, aliases=aliases)
            entity.relations["birth_year"] = str(rng.randint(1750, 1960))
            people.append(entity)
    return people


def _make_orgs(rng: random.Random, namer: _Namer, n: int, test_fraction: float) -> list[Entity]:
    kinds = list(_ORG_KINDS)
    orgs = []
    while len(orgs) < n:
        # Each split needs publishers for every work kind, so the first orgs cycle through kinds.
        kind = kinds[len(orgs) % len(kinds)] if len(orgs) < 2 * len(kinds) else rng.choice(kinds)
        title = f"{namer.word()} {kind}"
        if namer.claim(title):
            split = SPLITS[len(orgs) // len(kinds) % 2] if len(orgs) < 2 * len(kinds) else _split_of(rng, test_fraction)
            aliases = (title.replace(" Company", " Co."),) if kind == "Trading Company" else ()
            orgs.append(Entity(slugify(title), "org", title, split, aliases=aliases))
    return orgs


def _work_title(rng: random.Random, namer: _Namer) -> str:
    pattern = rng.randrange(5)
    adj, noun, noun2 = rng.choice(_WORK_ADJ), rng.choice(_WORK_NOUNS), rng.choice(_WORK_NOUNS)
    if pattern == 0:
        return f"The {adj} {noun}"
    if pattern == 1:
        return f"{noun} of {namer.word()}"
    if pattern == 2:
        return f"The {noun} and the {noun2}" if noun != noun2 else f"The {adj} {noun2}s"
    if pattern == 3:
        return f"{namer.word()}'s {noun}"
    return f"{adj} {noun}s of {namer.word()}"


def _make_works(rng: random.Random, namer: _Namer, n: int, test_fraction: float) -> list[Entity]:
    works = []
    while len(works) < n:
        title = _work_title(rng, namer)
        if namer.claim(title):
            split = SPLITS[len(works)] if len(works) < len(SPLITS) else _split_of(rng, test_fraction)
            works.append(Entity(slugify(title), "work", title, split))
    return works


def _by_split(entities: list[Entity]) -> dict[str, list[Entity]]:
    return {s: [e for e in entities if e.split == s] for s in SPLITS}


def _link(rng: random.Random, people: list[Entity], orgs: list[Entity], works: list[Entity],
          cities: list[Entity]) -> dict[str, str]:
    """Draw every relation; returns work id -> work kind (needed to render the article)."""
    people_by, orgs_by = _by_split(people), _by_split(orgs)
    for person in people:
        person.relations["born_in"] = rng.choice(cities).id
        person.relations["employer"] = rng.choice(orgs_by[person.split]).id
    for split in SPLITS:
        pool = list(people_by[split])
        rng.shuffle(pool)
        married = pool[: len(pool) * 2 // 5 // 2 * 2]  # 40 % of people, in couples
        for a, b in zip(married[0::2], married[1::2], strict=True):
            a.relations["spouse"], b.relations["spouse"] = b.id, a.id
    for org in orgs:
        founder = rng.choice(people_by[org.split])
        org.relations["founder"] = founder.id
        org.relations["headquarters"] = rng.choice(cities).id
        org.relations["founding_year"] = str(int(founder.relations["birth_year"]) + rng.randint(22, 60))
    work_kinds = {}
    for work in works:
        publishers = [o for o in orgs_by[work.split] if _ORG_KINDS[o.title.split(" ", 1)[1]][1]]
        publisher = rng.choice(publishers)
        creator = rng.choice(people_by[work.split])
        work_kinds[work.id] = rng.choice(_ORG_KINDS[publisher.title.split(" ", 1)[1]][1])
        work.relations["creator"] = creator.id
        work.relations["publisher"] = publisher.id
        work.relations["setting"] = rng.choice(cities).id
        work.relations["release_year"] = str(int(creator.relations["birth_year"]) + rng.randint(20, 70))
    return work_kinds


def _a(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _render(world: World, rng: random.Random, work_kinds: dict[str, str], capitals: dict[str, str]) -> None:
    """Write each entity's article from its relations and a little seeded filler."""
    t = world.target_title
    for e in world.entities:
        r = e.relations
        if e.kind == "person":
            last, job = e.title.split()[-1], rng.choice(_PROFESSIONS)
            lines = [f"{e.title} (born {r['birth_year']} in {t(e, 'born_in')}) is {_a(job)} {job}.",
                     f"{last} worked for the {t(e, 'employer')}."]
            if "spouse" in r:
                lines.append(f"{last} was married to {t(e, 'spouse')}.")
            lines.append(f"{last} is remembered for {rng.choice(_TOPICS)}.")
        elif e.kind == "org":
            kind = e.title.split(" ", 1)[1]
            lines = [f"The {e.title} is {_ORG_KINDS[kind][0]} based in {t(e, 'headquarters')}.",
                     f"It was founded in {r['founding_year']} by {t(e, 'founder')}.",
                     f"Today it employs about {rng.randint(2, 90) * 10} people."]
        elif e.kind == "work":
            kind = work_kinds[e.id]
            verb = "published" if kind in ("novel", "poetry collection") else "released"
            lines = [f"'{e.title}' is {_a(kind)} {kind} by {t(e, 'creator')}, first {verb} in "
                     f"{r['release_year']} by the {t(e, 'publisher')}.",
                     f"The {kind} is set in {t(e, 'setting')}.",
                     f"Critics praised its {rng.choice(['structure', 'melancholy', 'humour', 'pace', 'imagery'])}."]
        elif e.kind == "city":
            country = t(e, "country")
            lines = [f"{e.title} is a city in {country}."]
            if e.aliases:
                lines.append(f"Locals call it {e.aliases[0]}.")
            if e.id in capitals:
                lines.append(f"{e.title} is the capital of {capitals[e.id]}.")
            lines.append(f"It has about {rng.randint(5, 900) * 1000} inhabitants and trades in "
                         f"{rng.choice(_PRODUCTS)}.")
        else:
            lines = [f"{e.title}, officially the {e.aliases[0]}, is a country.",
                     f"Its capital is {t(e, 'capital')}.",
                     f"{e.title} is known for its {rng.choice(_PRODUCTS)} exports."]
        e.text = " ".join(lines)


def _build(config: WorldConfig) -> World:
    rng = random.Random(f"agentropy-search-world:{config.seed}")
    namer = _Namer(rng)
    counts = _counts(config.n_docs)
    places = _make_places(rng, namer, counts)
    people = _make_people(rng, namer, counts["person"], config.test_fraction)
    orgs = _make_orgs(rng, namer, counts["org"], config.test_fraction)
    works = _make_works(rng, namer, counts["work"], config.test_fraction)
    cities = [p for p in places if p.kind == "city"]
    work_kinds = _link(rng, people, orgs, works, cities)
    entities = places + people + orgs + works
    world = World(config, entities, {e.id: e for e in entities})
    capitals = {c.relations["capital"]: c.title for c in places if c.kind == "country"}
    _render(world, rng, work_kinds, capitals)
    return world


@lru_cache(maxsize=4)
def build_world(config: WorldConfig = WorldConfig()) -> World:
    """The world for ``config`` (cached: envs of one process share it; treat it as read-only)."""
    return _build(config)
