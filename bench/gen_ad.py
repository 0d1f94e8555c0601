#!/usr/bin/env python3
"""Generate Active-Directory-like CSV exports to benchmark ``prepsync prepare``.

Writes ``ADExport_entries.csv`` (29 columns, keyed by ``objectGUID``), ``ADExport_members.csv``
(``dn,member``, 3-10 rows per group) and ``gen.json`` (the parameters and what was written).
``--mutate FROM_DIR`` writes the "next day" export of an existing one instead: a few rows
updated, inserted and deleted, for incremental benchmarks.

Speed: values are drawn with numpy a batch at a time, one row is one ``%`` formatting of a
template, and a batch is written as one encoded string. Everything is a pure function of
``--seed`` and the options, so the same command writes the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    import numpy as np
    import numpy.typing as npt
except ImportError:  # a clone without the bench's requirements: say so in one line
    sys.exit("error: bench/gen_ad.py needs numpy: pip install -r bench/requirements.txt")

GENERATOR_VERSION = 1
# Row orders of the members file. Directory exports come in whatever order the query returns:
# clustered by group (each group's members together, as a group's `member` attribute is read),
# clustered by member (each object's `memberOf` together), in no order, or sorted.
# clustered-dn is what --order shuffled always wrote, so it stays that order's default.
MEMBERS_ORDERS = ("clustered-dn", "clustered-member", "shuffled", "sorted")
ENTRIES = "ADExport_entries.csv"
MEMBERS = "ADExport_members.csv"
META = "gen.json"
BATCH = 50_000
READ_CHUNK = 16 << 20

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

ENTRY_COLUMNS = [
    "objectGUID", "dn", "parentdn", "objectClass", "sAMAccountName", "userPrincipalName",
    "displayName", "givenName", "sn", "mail", "department", "title", "company", "manager",
    "telephoneNumber", "mobile", "physicalDeliveryOfficeName", "l", "co", "employeeID",
    "employeeType", "whenCreated", "whenChanged", "userAccountControl", "accountExpires",
    "pwdLastSet", "lastLogonTimestamp", "memberOfCount", "description",
]  # fmt: skip
MEMBER_COLUMNS = ["dn", "member"]

# (display form, ASCII form for account names and mail)
GIVEN = [
    ("Jean", "jean"), ("Marie", "marie"), ("Zoë", "zoe"), ("José", "jose"),
    ("Łukasz", "lukasz"), ("François", "francois"), ("Björn", "bjorn"), ("Søren", "soren"),
    ("Ágnes", "agnes"), ("Chloé", "chloe"), ("Jürgen", "jurgen"), ("Renée", "renee"),
    ("Mårten", "marten"), ("Anaïs", "anais"), ("Hélène", "helene"), ("Noël", "noel"),
    ("Ifeoma", "ifeoma"), ("Siobhán", "siobhan"), ("Çağla", "cagla"), ("Dagný", "dagny"),
    ("Иван", "ivan"), ("Ольга", "olga"), ("Νίκος", "nikos"), ("美咲", "misaki"),
    ("太郎", "taro"), ("Minh", "minh"), ("Priya", "priya"), ("Ahmed", "ahmed"),
    ("John", "john"), ("Mary", "mary"), ("Peter", "peter"), ("Anna", "anna"),
    ("Luca", "luca"), ("Giulia", "giulia"), ("Sven", "sven"), ("Ingrid", "ingrid"),
    ("Pedro", "pedro"), ("Inês", "ines"), ("Tomáš", "tomas"), ("Zuzana", "zuzana"),
    ("Oliver", "oliver"), ("Emma", "emma"), ("Mateo", "mateo"), ("Lucía", "lucia"),
    ("Kai", "kai"), ("Leïla", "leila"), ("Yusuf", "yusuf"), ("Aylin", "aylin"),
]  # fmt: skip
SURNAMES = [
    ("Martin", "martin"), ("Bernard", "bernard"), ("Dubois", "dubois"), ("Müller", "muller"),
    ("Schröder", "schroder"), ("Núñez", "nunez"), ("Gómez", "gomez"), ("Çelik", "celik"),
    ("Øster", "oster"), ("Wiśniewski", "wisniewski"), ("Nguyễn", "nguyen"),
    ("O'Brien", "obrien"), ("D'Angelo", "dangelo"), ("van der Berg", "vanderberg"),
    ("de la Fuente", "delafuente"), ("Smith", "smith"), ("Johnson", "johnson"),
    ("Brown", "brown"), ("Taylor", "taylor"), ("Wilson", "wilson"), ("Rossi", "rossi"),
    ("Bianchi", "bianchi"), ("Kowalski", "kowalski"), ("Nowak", "nowak"), ("Novák", "novak"),
    ("Dvořák", "dvorak"), ("Hansen", "hansen"), ("Johansson", "johansson"),
    ("Andersson", "andersson"), ("Virtanen", "virtanen"), ("Papadopoulos", "papadopoulos"),
    ("Παπαδόπουλος", "papadopoulos"), ("Смирнов", "smirnov"), ("Иванова", "ivanova"),
    ("山田", "yamada"), ("佐藤", "sato"), ("Kim", "kim"), ("Park", "park"), ("Singh", "singh"),
    ("Patel", "patel"), ("Silva", "silva"), ("Santos", "santos"), ("Pereira", "pereira"),
    ("Fernández", "fernandez"), ("López", "lopez"), ("Lefèvre", "lefevre"),
    ("Leroy", "leroy"), ("Moreau", "moreau"), ("Fontaine", "fontaine"), ("Weiß", "weiss"),
    ("Schmidt", "schmidt"), ("Becker", "becker"), ("Horváth", "horvath"),
    ("Nagy", "nagy"), ("Popescu", "popescu"), ("Kaya", "kaya"),
    ("Yılmaz", "yilmaz"),  # noqa: RUF001 - a Turkish dotless i, on purpose
    ("Haddad", "haddad"), ("Okafor", "okafor"), ("Mensah", "mensah"),
]  # fmt: skip
# (OU path under the site, city, country, phone prefix)
SITES = [
    ("OU=Paris,OU=France", "Paris", "France", "+33 1"),
    ("OU=Lyon,OU=France", "Lyon", "France", "+33 4"),
    ("OU=London,OU=United Kingdom", "London", "United Kingdom", "+44 20"),
    ("OU=Berlin,OU=Deutschland", "Berlin", "Deutschland", "+49 30"),
    ("OU=München,OU=Deutschland", "München", "Deutschland", "+49 89"),
    ("OU=Madrid,OU=España", "Madrid", "España", "+34 91"),
    ("OU=Kraków,OU=Polska", "Kraków", "Polska", "+48 12"),
    ("OU=Zürich,OU=Schweiz", "Zürich", "Schweiz", "+41 44"),
    ("OU=São Paulo,OU=Brasil", "São Paulo", "Brasil", "+55 11"),
    ("OU=New York,OU=United States", "New York", "United States", "+1 212"),
    ("OU=Montréal,OU=Canada", "Montréal", "Canada", "+1 514"),
    ("OU=Tokyo,OU=Japan", "Tokyo", "日本", "+81 3"),
    ("OU=Singapore,OU=Singapore", "Singapore", "Singapore", "+65 6"),
    ("OU=Sydney,OU=Australia", "Sydney", "Australia", "+61 2"),
]
# (display name, short code for group names)
DEPARTMENTS = [
    ("Finance", "FIN"), ("Human Resources", "HR"), ("Information Technology", "IT"),
    ("Sales, EMEA", "SALES-EMEA"), ("Sales, Americas", "SALES-AMER"), ("Marketing", "MKT"),
    ("Research & Development", "RND"), ("Legal", "LEGAL"), ("Procurement", "PROC"),
    ("Customer Support", "SUPPORT"), ("Operations", "OPS"), ("Logistics", "LOG"),
    ("Ingénierie", "ENG"), ("Qualité", "QUAL"), ("Sécurité", "SEC"), ("Facilities", "FAC"),
    ("Executive Office", "EXEC"), ("Data & Analytics", "DATA"), ("Treasury", "TRE"),
    ("Internal Audit", "AUDIT"),
]  # fmt: skip
TITLES = [
    "Engineer", "Senior Engineer", "Staff Engineer", "Manager", "Senior Manager", "Director",
    "Vice President", "Analyst", "Senior Analyst", "Consultant", "Accountant", "Controller",
    "Sales Representative", "Account Executive", "HR Business Partner", "Recruiter",
    "Support Specialist", "Technician", "Architect", "Product Owner", "Scrum Master",
    "Chargé de mission", "Responsable d'équipe", "Développeur", "Projektleiter",
    "Assistant, Executive Office", 'Engineer "Level 2"', "Intern", "Apprentice",
    "Data Scientist", "Security Officer", "Legal Counsel", "Buyer", "Planner",
]  # fmt: skip
COMPANIES = ["Example Corp", "Example Services SAS", "Example GmbH", "Example Inc."]
EMPLOYEE_TYPES = ["Employee", "Employee", "Employee", "Contractor", "Intern", "Temp, agency"]
OFFICES = [
    "", "Building A", "Building B, 2nd floor", "Bâtiment C, 3e étage", "Tower 1 / 14F",
    "Home office", "Campus Nord", 'Annex "Le Phare"',
]  # fmt: skip
USER_DESCRIPTIONS = [
    "", "", "", "", "", "", "", "", "Contractor", "On leave", "Service desk contact",
    'Badge "visitor" until further notice', "Moved from Lyon, see ticket 4211",
    "Account reviewed\nby the security team", "Préfère être contacté par mail",
    'Second line: "on call", weekends',
]  # fmt: skip
GROUP_DESCRIPTIONS = [
    "", "", "Distribution list", "Security group", "Access to the shared drive, read only",
    'Owners of the "finance" share', "Migrated from the old domain\nkeep until review",
]  # fmt: skip
UAC_USER = [512, 512, 512, 512, 66048, 66048, 514, 544]
NEVER = 9223372036854775807
FILETIME_EPOCH = 11644473600  # seconds from 1601-01-01 to 1970-01-01
DAY = 86400
EXPORT_DAY = 1748736000  # 2025-06-01T00:00:00Z: day 0 of the generated exports
CREATED_FROM = 1262304000  # 2010-01-01

USER, GROUP, COMPUTER = 0, 1, 2


def csv_field(value: str) -> str:
    """One value as a CSV field: quoted only when it holds a separator, quote, CR or LF."""
    if '"' in value:
        return '"' + value.replace('"', '""') + '"'
    if "," in value or "\n" in value or "\r" in value:
        return '"' + value + '"'
    return value


def rendered(values: Sequence[str], eol: str) -> npt.NDArray[np.object_]:
    """A pool of values, pre-rendered as CSV fields (embedded newlines use ``eol``)."""
    return np.array([csv_field(v.replace("\n", eol)) for v in values], dtype=object)


def plain(values: Iterable[str]) -> npt.NDArray[np.object_]:
    return np.array(list(values), dtype=object)


def splitmix64(x: U64) -> U64:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class Pools:
    """Value pools as numpy object arrays, so that a column is one fancy-indexing away."""

    def __init__(self, eol: str) -> None:
        self.given = plain(g for g, _ in GIVEN)
        self.given_ascii = plain(a for _, a in GIVEN)
        self.sn = plain(s for s, _ in SURNAMES)
        self.sn_ascii = plain(a for _, a in SURNAMES)
        self.site_ou = plain(s[0] for s in SITES)
        self.city = rendered([s[1] for s in SITES], eol)
        self.country = rendered([s[2] for s in SITES], eol)
        self.phone = plain(s[3] for s in SITES)
        self.dept = rendered([d for d, _ in DEPARTMENTS], eol)
        self.dept_name = plain(d for d, _ in DEPARTMENTS)
        self.dept_code = plain(c for _, c in DEPARTMENTS)
        self.dept_code_lower = plain(c.lower() for _, c in DEPARTMENTS)
        self.title = rendered(TITLES, eol)
        self.company = rendered(COMPANIES, eol)
        self.employee_type = rendered(EMPLOYEE_TYPES, eol)
        self.office = rendered(OFFICES, eol)
        self.user_desc = rendered(USER_DESCRIPTIONS, eol)
        self.group_desc = rendered(GROUP_DESCRIPTIONS, eol)
        self.uac = np.array(UAC_USER, dtype=np.int64)


class Identities:
    """What a row *is* (class, name, site, department), a pure function of its identity
    number, so that a member or manager reference can be rendered from the number alone."""

    def __init__(self, seed: int) -> None:
        self.salt = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]

    def hashes(self, ident: I64) -> U64:
        return splitmix64(ident.astype(np.uint64) ^ self.salt)

    def fields(self, ident: I64) -> dict[str, I64]:
        h = self.hashes(ident)
        pct = (h % np.uint64(100)).astype(np.int64)
        cls = np.where(pct < 78, USER, np.where(pct < 96, GROUP, COMPUTER))
        return {
            "cls": cls.astype(np.int64),
            "given": ((h >> np.uint64(8)) % np.uint64(len(GIVEN))).astype(np.int64),
            "sn": ((h >> np.uint64(20)) % np.uint64(len(SURNAMES))).astype(np.int64),
            "site": ((h >> np.uint64(32)) % np.uint64(len(SITES))).astype(np.int64),
            "dept": ((h >> np.uint64(44)) % np.uint64(len(DEPARTMENTS))).astype(np.int64),
        }

    def dns(self, ident: I64, pools: Pools) -> npt.NDArray[np.object_]:
        """Distinguished names (unquoted values) of the given identities."""
        f = self.fields(ident)
        out = np.empty(len(ident), dtype=object)
        for cls, template, cols in (
            (USER, "CN=%s\\, %s %07d,OU=Users,%s,DC=corp,DC=example", ("sn", "given")),
            (GROUP, "CN=GRP-%s-%07d,OU=Groups,%s,DC=corp,DC=example", ("dept_code",)),
            (COMPUTER, "CN=PC-%07d,OU=Computers,%s,DC=corp,DC=example", ()),
        ):
            idx = np.flatnonzero(f["cls"] == cls)
            if not len(idx):
                continue
            args: list[list[Any]] = []
            for col in cols:
                pool = pools.dept_code if col == "dept_code" else getattr(pools, col)
                key = "dept" if col == "dept_code" else col
                args.append(pool[f[key][idx]].tolist())
            args.append(ident[idx].tolist())
            args.append(pools.site_ou[f["site"][idx]].tolist())
            out[idx] = list(map(template.__mod__, zip(*args, strict=True)))
        return out

    def users(self, rng: np.random.Generator, n: int, limit: int) -> I64:
        """``n`` random identities below ``limit`` that are users (for managers)."""
        out = rng.integers(0, limit, size=n, dtype=np.int64)
        for _ in range(64):
            bad = np.flatnonzero(self.fields(out)["cls"] != USER)
            if not len(bad):
                break
            out[bad] = rng.integers(0, limit, size=len(bad), dtype=np.int64)
        return out


class Keys:
    """objectGUIDs that sort like their identity numbers: identity ``k`` gets a random value
    in the lower half of slot ``k`` of the 128-bit space, and a row inserted by ``--mutate``
    gets one in the upper half of a slot, so a sorted export stays sortable by merging."""

    def __init__(self, seed: int, slots: int) -> None:
        self.slots = max(slots, 2)
        self.width = (1 << 64) // self.slots
        self.half = self.width // 2
        self.salt = splitmix64(np.array([(seed * 7919 + 13) & (2**64 - 1)], dtype=np.uint64))[0]

    def of(self, ident: I64) -> tuple[U64, U64]:
        u = ident.astype(np.uint64)
        h = splitmix64(u ^ self.salt)
        top = u * np.uint64(self.width) + h % np.uint64(max(self.half, 1))
        low = splitmix64(h) >> np.uint64(1)
        return top, low

    def fresh(self, rng: np.random.Generator, n: int) -> tuple[U64, U64]:
        slot = rng.integers(0, self.slots, size=n, dtype=np.uint64)
        off = rng.integers(0, max(self.width - self.half, 1), size=n, dtype=np.uint64)
        top = slot * np.uint64(self.width) + np.uint64(self.half) + off
        low = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        return top, low


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_GUID_POS = np.array([i + (i >= 8) + (i >= 12) + (i >= 16) + (i >= 20) for i in range(32)])


def guid_text(top: U64, low: U64) -> list[str]:
    """Lower-case 8-4-4-4-12 text of 128-bit numbers (sorts as the numbers do)."""
    n = len(top)
    raw = np.empty((n, 16), dtype=np.uint8)
    raw[:, :8] = top.astype(">u8").view(np.uint8).reshape(n, 8)
    raw[:, 8:] = low.astype(">u8").view(np.uint8).reshape(n, 8)
    hexd = np.empty((n, 32), dtype=np.uint8)
    hexd[:, 0::2] = _HEX[raw >> 4]
    hexd[:, 1::2] = _HEX[raw & 15]
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, _GUID_POS] = hexd
    return text.view("S36").ravel().astype("U36").tolist()


def ad_time(secs: I64) -> list[str]:
    """Generalized-time strings like ``20190304102231.0Z``."""
    iso = np.datetime_as_string(secs.astype("datetime64[s]"), unit="s").astype("S19")
    raw = iso.view(np.uint8).reshape(len(secs), 19)
    digits = np.ascontiguousarray(raw[:, [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]])
    return [s + ".0Z" for s in digits.view("S14").ravel().astype("U14").tolist()]


def filetime(secs: I64, rng: np.random.Generator) -> list[int]:
    ticks = (secs + FILETIME_EPOCH) * 10_000_000 + rng.integers(0, 10_000_000, size=len(secs))
    return ticks.tolist()  # type: ignore[no-any-return]


USER_TEMPLATE = (
    '%s,"CN=%s\\, %s %07d,OU=Users,%s,DC=corp,DC=example","OU=Users,%s,DC=corp,DC=example",'
    "user,%.1s%.14s%d,%s.%s%d@corp.example,"
    '"%s, %s",%s,%s,%s.%s%d@example.com,%s,%s,%s,"%s",'
    "%s %02d %02d %02d %02d,%s %08d,%s,%s,%s,E%07d,"
    "%s,%s,%s,%d,%d,%d,%d,%d,%s"
)
GROUP_TEMPLATE = (
    '%s,"CN=GRP-%s-%07d,OU=Groups,%s,DC=corp,DC=example","OU=Groups,%s,DC=corp,DC=example",'
    "group,GRP-%s-%07d,,"
    '"%s - %s",,,grp-%s-%07d@corp.example,%s,,%s,,'
    ",,,%s,%s,,"
    ",%s,%s,,,,,%d,%s"
)
COMPUTER_TEMPLATE = (
    '%s,"CN=PC-%07d,OU=Computers,%s,DC=corp,DC=example","OU=Computers,%s,DC=corp,DC=example",'
    "computer,PC-%07d$,,"
    "PC-%07d,,,,%s,,%s,,"
    ",,%s,%s,%s,,"
    ",%s,%s,4096,%d,%d,%d,%d,%s"
)


class Renderer:
    """Turns identities + GUID strings into CSV lines of ADExport_entries."""

    def __init__(self, seed: int, eol: str, limit: int, day: int) -> None:
        self.pools = Pools(eol)
        self.ids = Identities(seed)
        self.eol = eol
        self.limit = max(limit, 1)  # identities below it exist (for managers)
        self.now = EXPORT_DAY + day * DAY

    def header(self) -> str:
        return ",".join(ENTRY_COLUMNS) + self.eol

    def entries(self, ident: I64, guids: list[str], rng: np.random.Generator) -> list[str]:
        p = self.pools
        f = self.ids.fields(ident)
        out = np.empty(len(ident), dtype=object)
        guid_arr = np.array(guids, dtype=object)
        for cls in (USER, GROUP, COMPUTER):
            idx = np.flatnonzero(f["cls"] == cls)
            n = len(idx)
            if not n:
                continue
            k = ident[idx].tolist()
            site = f["site"][idx]
            dept = f["dept"][idx]
            ou = p.site_ou[site].tolist()
            created = rng.integers(CREATED_FROM, self.now - 30 * DAY, size=n)
            changed = np.minimum(created + rng.integers(0, 5 * 365 * DAY, size=n), self.now - 1)
            changed = np.maximum(changed, self.now - rng.integers(1, 400 * DAY, size=n))
            when = (ad_time(created), ad_time(changed))
            desc_pool = p.group_desc if cls == GROUP else p.user_desc
            desc = desc_pool[rng.integers(0, len(desc_pool), size=n)].tolist()
            company = p.company[rng.integers(0, len(p.company), size=n)].tolist()
            city = p.city[site].tolist()
            country = p.country[site].tolist()
            if cls == USER:
                given, sn = f["given"][idx], f["sn"][idx]
                ga, sa = p.given_ascii[given].tolist(), p.sn_ascii[sn].tolist()
                gn, snn = p.given[given].tolist(), p.sn[sn].tolist()
                mgr = self.ids.dns(self.ids.users(rng, n, self.limit), p)
                mgr[rng.random(n) < 0.03] = ""
                phone = p.phone[site].tolist()
                digits = [rng.integers(0, 100, size=n).tolist() for _ in range(4)]
                exp = np.where(rng.random(n) < 0.9, NEVER, 0)
                soon = rng.random(n) < 0.05
                exp[soon] = np.array(
                    filetime(self.now + rng.integers(DAY, 900 * DAY, size=int(soon.sum())), rng),
                    dtype=np.int64,
                )
                cols: list[list[Any]] = [
                    guid_arr[idx].tolist(), snn, gn, k, ou, ou,
                    ga, sa, k, ga, sa, k,
                    snn, gn, gn, snn, ga, sa, k,
                    p.dept[dept].tolist(), p.title[rng.integers(0, len(p.title), size=n)].tolist(),
                    company, mgr.tolist(),
                    phone, *digits, phone, rng.integers(10**7, 10**8, size=n).tolist(),
                    p.office[rng.integers(0, len(p.office), size=n)].tolist(), city, country, k,
                    p.employee_type[rng.integers(0, len(p.employee_type), size=n)].tolist(),
                    when[0], when[1], p.uac[rng.integers(0, len(p.uac), size=n)].tolist(),
                    exp.tolist(),
                    filetime(self.now - rng.integers(0, 200 * DAY, size=n), rng),
                    filetime(self.now - rng.integers(0, 30 * DAY, size=n), rng),
                    rng.integers(0, 40, size=n).tolist(), desc,
                ]  # fmt: skip
                template = USER_TEMPLATE
            elif cls == GROUP:
                code = p.dept_code[dept].tolist()
                name = p.dept_name[dept].tolist()
                cols = [
                    guid_arr[idx].tolist(), code, k, ou, ou, code, k,
                    name, p.city[site].tolist(), p.dept_code_lower[dept].tolist(), k,
                    p.dept[dept].tolist(), company, city, country,
                    when[0], when[1], rng.integers(0, 12, size=n).tolist(), desc,
                ]  # fmt: skip
                template = GROUP_TEMPLATE
            else:
                cols = [
                    guid_arr[idx].tolist(), k, ou, ou, k, k,
                    p.dept[dept].tolist(), company,
                    p.office[rng.integers(0, len(p.office), size=n)].tolist(), city, country,
                    when[0], when[1], [NEVER] * n,
                    filetime(self.now - rng.integers(0, 60 * DAY, size=n), rng),
                    filetime(self.now - rng.integers(0, 14 * DAY, size=n), rng),
                    rng.integers(0, 5, size=n).tolist(), desc,
                ]  # fmt: skip
                template = COMPUTER_TEMPLATE
            line = template + self.eol
            out[idx] = list(map(line.__mod__, zip(*cols, strict=True)))
        return out.tolist()


def members_text(rows: list[tuple[str, str]], eol: str) -> str:
    """Member rows as CSV lines. Both values are quoted (distinguished names hold commas; an
    empty member is written ``""``, which is null too), unless a value holds a quote."""
    text = "".join(map(('"%s","%s"' + eol).__mod__, rows))
    if text.count('"') == 4 * len(rows):
        return text
    return "".join(csv_field(g) + "," + csv_field(m) + eol for g, m in rows)


def write_members(
    path: Path, rows: list[tuple[str, str]], eol: str, bom: bool, *, append: bool = False
) -> int:
    """Writes (or appends) member rows; returns bytes written."""
    data = members_text(rows, eol).encode()
    with open(path, "ab" if append else "wb") as f:
        if not append:
            head = ((",".join(MEMBER_COLUMNS)) + eol).encode()
            f.write((b"\xef\xbb\xbf" if bom else b"") + head)
        f.write(data)
    return len(data)


def generate(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n: int = args.rows
    seed: int = args.seed
    eol = "\r\n" if args.crlf else "\n"
    rng = np.random.default_rng([seed, 1])
    renderer = Renderer(seed, eol, n, 0)
    keys = Keys(seed, n)

    # Which position holds which identity; duplicates repeat an earlier row's identity and key.
    ident = np.arange(n, dtype=np.int64)
    if args.order == "shuffled":
        ident = rng.permutation(ident)
    kind = rng.random(n)
    is_null = kind < args.null_keys
    is_dup = (kind >= args.null_keys) & (kind < args.null_keys + args.duplicates)
    if n:
        is_null[0] = is_dup[0] = False
    normal = np.flatnonzero(~is_dup & ~is_null)
    dups = np.flatnonzero(is_dup)
    if args.order == "sorted":
        target = np.searchsorted(normal, dups) - 1  # the last normal row before: stays sorted
    else:
        q = (rng.random(len(dups)) * dups).astype(np.int64)
        target = np.searchsorted(normal, q, side="right") - 1
    ident[dups] = ident[normal[target]]

    entries_bytes = 0
    members_rows = 0
    members_bytes = 0
    # Any order but clustered-dn needs every member row before it can write the first one.
    held_members: list[tuple[str, str]] = []
    members_order: str = args.members_order
    member_path = out / MEMBERS
    write_members(member_path, [], eol, args.bom)
    with open(out / ENTRIES, "wb", buffering=1 << 20) as f:
        f.write((b"\xef\xbb\xbf" if args.bom else b"") + renderer.header().encode())
        for start in range(0, n, BATCH):
            sl = slice(start, min(start + BATCH, n))
            b_ident = ident[sl]
            top, low = keys.of(b_ident)
            guids = guid_text(top, low)
            for i in np.flatnonzero(is_null[sl]).tolist():
                guids[i] = ""
            data = "".join(renderer.entries(b_ident, guids, rng)).encode()
            f.write(data)
            entries_bytes += len(data)
            # Members of the groups first seen in this batch.
            cls = renderer.ids.fields(b_ident)["cls"]
            groups = b_ident[(cls == GROUP) & ~is_dup[sl] & ~is_null[sl]]
            rows = member_rows(renderer, groups, n, rng, args.duplicates, args.null_keys)
            members_rows += len(rows)
            if members_order == "clustered-dn":
                members_bytes += write_members(member_path, rows, eol, args.bom, append=True)
            else:
                held_members.extend(rows)
    if members_order != "clustered-dn":
        # Its own generator, so that every members order holds the same rows and the entries
        # file does not depend on the members order.
        held_members = reorder_members(
            held_members, members_order, np.random.default_rng([seed, 3])
        )
        members_bytes = write_members(member_path, held_members, eol, args.bom)
    return {
        "entries_rows": n,
        "members_rows": members_rows,
        "entries_bytes": (out / ENTRIES).stat().st_size,
        "members_bytes": member_path.stat().st_size,
        "next_identity": n,
        "null_key_rows": int(is_null.sum()),
        "duplicate_rows": int(is_dup.sum()),
    }


def reorder_members(
    rows: list[tuple[str, str]], order: str, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """Member rows (made clustered by group) in ``order`` (see MEMBERS_ORDERS).

    sorted: by (dn, member) as REFERENCE §2 orders them (Python compares strings by code
    point, which is UTF-8 byte order). shuffled: a uniform permutation. clustered-member: the
    rows of one member together, members in random order, a member's groups in the order
    they came."""
    if order == "sorted":
        return sorted(rows)
    if order == "shuffled":
        return [rows[i] for i in rng.permutation(len(rows)).tolist()]
    if order == "clustered-member":
        members = list(dict.fromkeys(m for _, m in rows))
        rank = dict(zip(members, rng.permutation(len(members)).tolist(), strict=True))
        return sorted(rows, key=lambda row: rank[row[1]])  # stable: a member's groups in order
    if order == "clustered-dn":
        return rows
    raise ValueError(f"unknown members order {order!r}")


def member_rows(
    renderer: Renderer,
    groups: I64,
    limit: int,
    rng: np.random.Generator,
    dup_rate: float,
    null_rate: float,
) -> list[tuple[str, str]]:
    """3-10 members per group, members being any identity (users, groups, computers)."""
    if not len(groups):
        return []
    counts = rng.integers(3, 11, size=len(groups))
    owner = np.repeat(groups, counts)
    members = rng.integers(0, max(limit, 1), size=len(owner), dtype=np.int64)
    g_dn = renderer.ids.dns(owner, renderer.pools)
    m_dn = renderer.ids.dns(members, renderer.pools)
    m_dn[rng.random(len(owner)) < null_rate] = ""
    rows = list(zip(g_dn.tolist(), m_dn.tolist(), strict=True))
    # Duplicates: repeat an earlier row of the batch right after a later one.
    n_dup = int(rng.binomial(len(rows), dup_rate))
    for pos in (
        sorted(rng.integers(1, len(rows), size=n_dup).tolist(), reverse=True)
        if len(rows) > 1
        else []
    ):
        rows.insert(pos, rows[int(rng.integers(0, pos))])
    return rows


# ----------------------------------------------------------------------------- mutate


def iter_records(path: Path) -> Iterator[bytes]:
    """Raw CSV records (with their line end), a quoted field may span lines."""
    with open(path, "rb") as f:
        carry = b""
        pending: list[bytes] = []
        quotes = 0
        while True:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                break
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
            for line in lines:
                q = line.count(b'"')
                if pending:
                    pending.append(line)
                    quotes += q
                    if not quotes & 1:
                        yield b"\n".join(pending) + b"\n"
                        pending = []
                elif q & 1:
                    pending = [line]
                    quotes = q
                else:
                    yield line + b"\n"
        if pending:
            pending.append(carry)
            yield b"\n".join(pending)
        elif carry:
            yield carry


def parse_record(record: bytes) -> list[str]:
    text = record.decode()
    return next(csv.reader(io.StringIO(text, newline="")))


def render_record(fields: Sequence[str], eol: str) -> bytes:
    return (",".join(csv_field(v) for v in fields) + eol).encode()


def mutate(args: argparse.Namespace) -> dict[str, Any]:
    src = Path(args.mutate)
    out = Path(args.out)
    if src.resolve() == out.resolve():
        raise SystemExit("error: --out must differ from --mutate")
    meta = json.loads((src / META).read_text())
    out.mkdir(parents=True, exist_ok=True)
    crlf, bom, order = meta["crlf"], meta["bom"], meta["order"]
    eol = "\r\n" if crlf else "\n"
    day = len(meta.get("mutations", [])) + 1
    base_seed: int = meta["seed"]
    rng = np.random.default_rng([base_seed, args.seed, day, 2])
    renderer = Renderer(base_seed, eol, meta["next_identity"], day)
    keys = Keys(base_seed, meta["key_slots"])
    now = renderer.now
    source_rows: int = meta["entries_rows"]

    # Inserted entries, rendered up front: sorted by key for a sorted export, else placed
    # after random rows.
    n_ins = round(args.inserts * source_rows)
    new_ident = np.arange(meta["next_identity"], meta["next_identity"] + n_ins, dtype=np.int64)
    top, low = keys.fresh(rng, n_ins)
    new_guids = guid_text(top, low)
    new_lines = [s.encode() for s in renderer.entries(new_ident, new_guids, rng)]
    if order == "sorted":
        ins_order = sorted(range(n_ins), key=new_guids.__getitem__)
        ins_keys = [new_guids[i].encode() for i in ins_order]
        ins_pos: list[int] = []
    else:
        ins_order = list(range(n_ins))
        ins_keys = []
        ins_pos = sorted(rng.integers(0, max(source_rows, 1), size=n_ins).tolist())
    ins_lines = [new_lines[i] for i in ins_order]

    counts = {"updated": 0, "deleted": 0, "inserted": n_ins, "churned": 0}
    deleted_dns: set[str] = set()
    header: list[str] = []
    col: dict[str, int] = {}
    when_changed = ad_time(np.array([now - 3600], dtype=np.int64))[0]
    p_del, p_upd, p_churn = (
        args.deletes,
        args.deletes + args.updates,
        args.deletes + args.updates + args.churn,
    )
    with open(out / ENTRIES, "wb", buffering=1 << 20) as f:
        records = iter_records(src / ENTRIES)
        head = next(records)
        f.write(head)
        header = parse_record(head.removeprefix(b"\xef\xbb\xbf"))
        col = {name: i for i, name in enumerate(header)}
        if header[0] != "objectGUID":
            raise SystemExit(f"error: {src / ENTRIES} was not written by gen_ad.py")
        ii = 0
        draws = rng.random(0)
        for r, record in enumerate(records):
            if r % BATCH == 0:
                draws = rng.random(BATCH)
            u = draws[r % BATCH]
            if order == "sorted":
                key = record[: record.find(b",")]
                while ii < n_ins and ins_keys[ii] < key:
                    f.write(ins_lines[ii])
                    ii += 1
            if u < p_del:
                counts["deleted"] += 1
                deleted_dns.add(parse_record(record)[col["dn"]])
            elif u < p_churn:
                fields = parse_record(record)
                if u < p_upd:
                    counts["updated"] += 1
                    fields[col["whenChanged"]] = when_changed
                    fields[col["department"]] = DEPARTMENTS[int(rng.integers(len(DEPARTMENTS)))][0]
                    if fields[col["title"]]:
                        fields[col["title"]] = TITLES[int(rng.integers(len(TITLES)))]
                else:
                    counts["churned"] += 1
                    if fields[col["lastLogonTimestamp"]]:
                        fields[col["lastLogonTimestamp"]] = str(
                            filetime(np.array([now - 7200]), rng)[0]
                        )
                f.write(render_record(fields, eol))
            else:
                f.write(record)
            while order != "sorted" and ii < n_ins and ins_pos[ii] <= r:
                f.write(ins_lines[ii])
                ii += 1
        while ii < n_ins:
            f.write(ins_lines[ii])
            ii += 1

    # Members: small enough to do in memory.
    with open(src / MEMBERS, encoding="utf-8-sig", newline="") as mf:
        reader = csv.reader(mf)
        next(reader)
        old = [(row[0], row[1]) for row in reader]
    drop = rng.random(len(old)) < args.deletes
    kept = [
        row for row, d in zip(old, drop.tolist(), strict=True)
        if not d and row[0] not in deleted_dns and row[1] not in deleted_dns
    ]  # fmt: skip
    existing = set(old)
    group_dns = sorted({g for g, _ in old})
    member_dns = [m for _, m in old[:: max(1, len(old) // 100_000)] if m and m not in deleted_dns]
    fresh: list[tuple[str, str]] = []
    if group_dns and member_dns:
        cls = renderer.ids.fields(new_ident)["cls"]
        new_dns = renderer.ids.dns(new_ident, renderer.pools).tolist()
        for dn, c in zip(new_dns, cls.tolist(), strict=True):
            if c == GROUP:
                for _ in range(int(rng.integers(3, 11))):
                    fresh.append((dn, member_dns[int(rng.integers(len(member_dns)))]))
            else:
                for _ in range(int(rng.integers(1, 4))):
                    fresh.append((group_dns[int(rng.integers(len(group_dns)))], dn))
        for _ in range(round(args.inserts * len(old))):
            g = group_dns[int(rng.integers(len(group_dns)))]
            m = member_dns[int(rng.integers(len(member_dns)))]
            fresh.append((g, m))
    fresh = [row for row in dict.fromkeys(fresh) if row not in existing]
    # New pairs go to random places, except in a sorted file (a clustered one stays clustered
    # but for them, as a directory's next export would).
    if meta.get("members_order", default_members_order(order)) == "sorted":
        rows = kept + fresh
        rows.sort()
    else:
        where = np.sort(rng.integers(0, len(kept) + 1, size=len(fresh))).tolist()
        rows = []
        prev = 0
        for pos, row in zip(where, fresh, strict=True):
            rows.extend(kept[prev:pos])
            rows.append(row)
            prev = pos
        rows.extend(kept[prev:])
    write_members(out / MEMBERS, rows, eol, bom)
    counts["members_deleted"] = len(old) - len(kept)
    counts["members_inserted"] = len(fresh)
    entries_rows = source_rows - counts["deleted"] + n_ins
    return {
        "entries_rows": entries_rows,
        "members_rows": len(rows),
        "entries_bytes": (out / ENTRIES).stat().st_size,
        "members_bytes": (out / MEMBERS).stat().st_size,
        "next_identity": meta["next_identity"] + n_ins,
        "mutation": {"day": day, "seed": args.seed, "from": str(src), **counts},
        "meta": meta,
    }


def default_members_order(order: str) -> str:
    """The members order an export made before --members-order existed has."""
    return "sorted" if order == "sorted" else "clustered-dn"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000, help="entries rows (default 20000)")
    ap.add_argument("--out", required=True, help="directory to write the export to")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--duplicates",
        type=float,
        default=0.005,
        help="fraction of rows repeating an earlier key with other values",
    )
    ap.add_argument("--null-keys", type=float, default=0.002, help="fraction of rows with no key")
    ap.add_argument(
        "--order",
        choices=["shuffled", "sorted"],
        default="shuffled",
        help="row order (sorted: by key; a null-key row stays where it falls)",
    )
    ap.add_argument(
        "--members-order",
        choices=MEMBERS_ORDERS,
        help="row order of the members file (default: sorted with --order sorted, else "
        "clustered-dn: each group's members together, as before this option)",
    )
    ap.add_argument("--crlf", action="store_true", help="CRLF line ends (also inside values)")
    ap.add_argument("--bom", action="store_true", help="start each file with a UTF-8 BOM")
    ap.add_argument(
        "--mutate",
        metavar="FROM_DIR",
        help="write the next day's export of FROM_DIR (keeps its order/crlf/bom)",
    )
    ap.add_argument("--updates", type=float, default=0.01, help="--mutate: rows updated")
    ap.add_argument("--inserts", type=float, default=0.005, help="--mutate: rows inserted")
    ap.add_argument("--deletes", type=float, default=0.005, help="--mutate: rows deleted")
    ap.add_argument(
        "--churn",
        type=float,
        default=0.05,
        help="--mutate: rows whose lastLogonTimestamp (not a kept column) changes",
    )
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    for name in ("duplicates", "null_keys", "updates", "inserts", "deletes", "churn"):
        if not 0 <= getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be in [0, 1)")
    if args.rows < 0:
        ap.error("--rows must be >= 0")
    if args.mutate and args.members_order:
        ap.error("--members-order is the source's with --mutate")
    if args.members_order is None:
        args.members_order = default_members_order(args.order)

    t0 = time.perf_counter()
    if args.mutate:
        result = mutate(args)
        meta = result.pop("meta")
        meta["mutations"] = [*meta.get("mutations", []), result.pop("mutation")]
    else:
        result = generate(args)
        meta = {
            "generator_version": GENERATOR_VERSION, "rows": args.rows, "seed": args.seed,
            "duplicates": args.duplicates, "null_keys": args.null_keys, "order": args.order,
            "members_order": args.members_order,
            "crlf": args.crlf, "bom": args.bom, "key_slots": args.rows, "mutations": [],
        }  # fmt: skip
    seconds = time.perf_counter() - t0
    meta.update(result)
    meta["seconds"] = round(seconds, 3)
    Path(args.out, META).write_text(json.dumps(meta, indent=2) + "\n")
    if not args.quiet:
        total = meta["entries_bytes"] + meta["members_bytes"]
        print(
            f"{args.out}: {meta['entries_rows']} entries ({meta['entries_bytes'] / 1e6:.1f} MB), "
            f"{meta['members_rows']} members ({meta['members_bytes'] / 1e6:.1f} MB) "
            f"in {seconds:.1f} s ({total / 1e6 / max(seconds, 1e-9):.0f} MB/s)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
