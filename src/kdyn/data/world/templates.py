"""Word lists and sentence templates of the synthetic world (`kdyn.data.world`).

Everything here is static data; the other modules of `kdyn.data.world` hold the logic. Relation labels are the Wikidata
labels used by TWiki-Probes where one exists.

Template rules (checked by the tests):
- a fact template contains ``{s}`` once and ends with ``" {o}."``, so "the sentence up to the
  object" is a cloze probe whose target is the object;
- a composition template is a probe prefix (no ``{o}``) that needs two chained facts to answer.
"""

from __future__ import annotations

from functools import cache

# ---------------------------------------------------------------- relation labels (Wikidata style)
DATE_OF_BIRTH = "date of birth"
PLACE_OF_BIRTH = "place of birth"
CITIZENSHIP = "country of citizenship"
OCCUPATION = "occupation"
EMPLOYER = "employer"
RESIDENCE = "residence"
EDUCATED_AT = "educated at"
SPOUSE = "spouse"
PLACE_OF_DEATH = "place of death"
DATE_OF_DEATH = "date of death"
AWARD = "award received"
INSTANCE_OF = "instance of"
INCEPTION = "inception"
HEADQUARTERS = "headquarters location"
FOUNDED_BY = "founded by"
INDUSTRY = "industry"
DIRECTOR = "director / manager"
OWNED_BY = "owned by"
ADMIN_ENTITY = "located in the administrative territorial entity"
COUNTRY = "country"
BODY_OF_WATER = "located in or next to body of water"
POPULATION = "population"
CAPITAL = "capital"
OFFICIAL_LANGUAGE = "official language"
TWINNED = "twinned administrative body"

# ---------------------------------------------------------------- fact templates
TEMPLATES: dict[str, tuple[str, ...]] = {
    DATE_OF_BIRTH: (
        "{s} was born on {o}.",
        "The date of birth of {s} is {o}.",
        "{s} came into the world on {o}.",
    ),
    PLACE_OF_BIRTH: (
        "{s} was born in {o}.",
        "{s}'s birthplace is {o}.",
        "The birthplace of {s} is {o}.",
        "{s} came into the world in the town of {o}.",
    ),
    CITIZENSHIP: (
        "{s} is a citizen of {o}.",
        "{s}'s country of citizenship is {o}.",
        "{s} holds the citizenship of {o}.",
    ),
    OCCUPATION: (
        "{s}'s occupation is {o}.",
        "The occupation of {s} is {o}.",
        "{s} makes a living in the trade of {o}.",
    ),
    EMPLOYER: (
        "{s} works for {o}.",
        "{s} is employed by {o}.",
        "The employer of {s} is {o}.",
        "{s}'s employer is {o}.",
    ),
    RESIDENCE: (
        "{s} lives in {o}.",
        "{s} resides in {o}.",
        "The residence of {s} is {o}.",
        "{s} has made a home in {o}.",
    ),
    EDUCATED_AT: (
        "{s} was educated at {o}.",
        "{s} studied at {o}.",
        "The alma mater of {s} is {o}.",
    ),
    SPOUSE: (
        "{s} is married to {o}.",
        "The spouse of {s} is {o}.",
        "{s}'s spouse is {o}.",
    ),
    PLACE_OF_DEATH: (
        "{s} died in {o}.",
        "The place of death of {s} is {o}.",
        "{s} passed away in the town of {o}.",
    ),
    DATE_OF_DEATH: (
        "{s} died on {o}.",
        "The date of death of {s} is {o}.",
        "{s} passed away on {o}.",
    ),
    AWARD: (
        "{s} received the {o}.",
        "{s} was awarded the {o}.",
        "Among the honours of {s} is the {o}.",
    ),
    INSTANCE_OF: (
        "{s} is a {o}.",
        "{s} is classed as a {o}.",
        "By its kind, {s} is a {o}.",
    ),
    INCEPTION: (
        "{s} was founded in {o}.",
        "{s} was established in the year {o}.",
        "The founding year of {s} is {o}.",
    ),
    HEADQUARTERS: (
        "{s} is headquartered in {o}.",
        "The headquarters of {s} are in {o}.",
        "{s} has its head office in {o}.",
    ),
    FOUNDED_BY: (
        "{s} was founded by {o}.",
        "The founder of {s} is {o}.",
        "{s} was set up by {o}.",
    ),
    INDUSTRY: (
        "The industry of {s} is {o}.",
        "{s} is active in the field of {o}.",
        "{s}'s line of business is {o}.",
    ),
    DIRECTOR: (
        "{s} is run by {o}.",
        "The director of {s} is {o}.",
        "{s} is managed by {o}.",
    ),
    OWNED_BY: (
        "{s} is owned by {o}.",
        "The owner of {s} is {o}.",
        "{s} belongs to {o}.",
    ),
    ADMIN_ENTITY: (
        "{s} lies in the region of {o}.",
        "{s} is a settlement in the region of {o}.",
        "The region of {s} is {o}.",
    ),
    COUNTRY: (
        "{s} is in the country of {o}.",
        "The country of {s} is {o}.",
        "{s} is part of the country of {o}.",
    ),
    BODY_OF_WATER: (
        "{s} lies on the {o}.",
        "{s} stands on the banks of the {o}.",
        "The river at {s} is the {o}.",
    ),
    POPULATION: (
        "{s} has a population of {o}.",
        "The population of {s} is {o}.",
        "The number of inhabitants of {s} is {o}.",
    ),
    CAPITAL: (
        "The capital of {s} is {o}.",
        "{s} has its capital in {o}.",
        "{s} is governed from {o}.",
    ),
    OFFICIAL_LANGUAGE: (
        "The official language of {s} is {o}.",
        "{s}'s official language is {o}.",
        "In {s}, the official language is {o}.",
    ),
    TWINNED: (
        "{s} is twinned with {o}.",
        "The twin town of {s} is {o}.",
        "{s} has a twinning partnership with {o}.",
    ),
}

# ---------------------------------------------------------------- composition (two-hop) probes
# (first relation, second relation) -> probe prefixes; the answer is r2(r1(subject)).
COMPOSITIONS: dict[tuple[str, str], tuple[str, ...]] = {
    (PLACE_OF_BIRTH, ADMIN_ENTITY): (
        "{s} was born in a town in the region of",
        "The region where {s} was born is",
    ),
    (PLACE_OF_BIRTH, BODY_OF_WATER): (
        "{s} was born in a town on the",
        "The river of the town where {s} was born is the",
    ),
    (PLACE_OF_BIRTH, INCEPTION): (
        "{s} was born in a town founded in the year",
        "The town where {s} was born was founded in",
    ),
    (RESIDENCE, ADMIN_ENTITY): (
        "{s} lives in a town in the region of",
        "The region where {s} lives is",
    ),
    (RESIDENCE, BODY_OF_WATER): (
        "{s} lives in a town on the",
        "The river of the town where {s} lives is the",
    ),
    (EMPLOYER, FOUNDED_BY): (
        "{s}'s employer was founded by",
        "The organisation that employs {s} was set up by",
    ),
    (EMPLOYER, HEADQUARTERS): (
        "{s}'s employer is headquartered in",
        "The organisation that employs {s} has its head office in",
    ),
    (EMPLOYER, INCEPTION): (
        "{s}'s employer was founded in the year",
        "The organisation that employs {s} was established in",
    ),
    (EMPLOYER, INDUSTRY): (
        "{s}'s employer is active in the field of",
        "The line of business of the organisation that employs {s} is",
    ),
    (EMPLOYER, DIRECTOR): (
        "{s}'s employer is run by",
        "The director of the organisation that employs {s} is",
    ),
    (EDUCATED_AT, HEADQUARTERS): (
        "The college where {s} studied is located in",
        "{s} studied at a college based in",
    ),
    (EDUCATED_AT, FOUNDED_BY): (
        "The college where {s} studied was founded by",
        "{s} studied at a college set up by",
    ),
    (SPOUSE, PLACE_OF_BIRTH): (
        "The spouse of {s} was born in",
        "{s} is married to a person born in",
    ),
    (SPOUSE, DATE_OF_BIRTH): (
        "The spouse of {s} was born on",
        "{s} is married to a person born on",
    ),
    (SPOUSE, OCCUPATION): (
        "The occupation of {s}'s spouse is",
        "{s} is married to a person whose occupation is",
    ),
    (HEADQUARTERS, ADMIN_ENTITY): (
        "{s} is headquartered in a town in the region of",
        "The region where {s} has its head office is",
    ),
    (HEADQUARTERS, BODY_OF_WATER): (
        "{s} is headquartered in a town on the",
        "The river of the town where {s} has its head office is the",
    ),
    (HEADQUARTERS, INCEPTION): (
        "{s} is headquartered in a town founded in the year",
        "The town where {s} has its head office was founded in",
    ),
    (FOUNDED_BY, PLACE_OF_BIRTH): (
        "The founder of {s} was born in",
        "{s} was set up by a person born in",
    ),
    (FOUNDED_BY, DATE_OF_BIRTH): (
        "The founder of {s} was born on",
        "{s} was set up by a person born on",
    ),
    (FOUNDED_BY, OCCUPATION): (
        "The occupation of the founder of {s} is",
        "{s} was set up by a person whose occupation is",
    ),
    (DIRECTOR, PLACE_OF_BIRTH): (
        "The director of {s} was born in",
        "{s} is run by a person born in",
    ),
    (DIRECTOR, DATE_OF_BIRTH): (
        "The director of {s} was born on",
        "{s} is run by a person born on",
    ),
}

# ---------------------------------------------------------------- name material
ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
          "br", "dr", "gr", "st", "th", "tr", "h", "")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei")
CODAS = ("", "", "", "", "", "n", "r", "l", "s", "m", "nd", "rn")
TOWN_ENDINGS = ("", "", "wick", "holm", "mere", "ford", "by", "dun", "stead")
FAMILY_ENDINGS = ("", "", "", "son", "ley", "er", "in")
REGION_ENDINGS = ("ia", "ara", "esh", "enland")
COUNTRY_ENDINGS = ("and", "ovia", "eth")
LANGUAGE_ENDING = "ish"
RIVER_SUFFIX = " River"
AWARD_SUFFIXES = (" Prize", " Medal", " Cup")

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")

# industry -> (organisation kind for "instance of", name suffixes, occupations of its staff)
INDUSTRIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "textiles": ("company", ("Mills", "Weavers"), ("weaver", "dyer", "clerk")),
    "shipbuilding": ("company", ("Shipyards",), ("shipwright", "engineer", "carpenter")),
    "brewing": ("company", ("Brewery",), ("brewer", "cooper", "clerk")),
    "mining": ("company", ("Mines", "Mining Company"), ("miner", "surveyor", "engineer")),
    "printing": ("company", ("Press",), ("printer", "typesetter", "bookbinder")),
    "glassmaking": ("company", ("Glassworks",), ("glassblower", "engraver", "clerk")),
    "ironworking": ("company", ("Ironworks", "Foundry"), ("smith", "engineer", "moulder")),
    "banking": ("bank", ("Bank",), ("banker", "clerk", "accountant")),
    "publishing": ("newspaper", ("Gazette", "Herald"), ("journalist", "editor", "printer")),
    "education": ("college", ("College", "Academy"), ("teacher", "professor", "librarian")),
}
COLLEGE_INDUSTRY = "education"


@cache
def reserved_words() -> frozenset[str]:
    """Lower-cased words of templates and word lists: no invented name may be one of them."""
    words: set[str] = set()
    texts: list[str] = [t for ts in TEMPLATES.values() for t in ts]
    texts += [t for ts in COMPOSITIONS.values() for t in ts]
    texts += list(MONTHS)
    for industry, (kind, suffixes, jobs) in INDUSTRIES.items():
        texts += [industry, kind, *suffixes, *jobs]
    for text in texts:
        for w in text.replace("{s}", " ").replace("{o}", " ").replace("'s", " ").split():
            words.add(w.strip(".,").lower())
    return frozenset(words)
