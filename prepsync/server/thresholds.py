"""The three threshold levels and the counts they judge.

Levels, all active at once, checked most specific first (the first crossed limit is the
blocked session's reason; every crossed one is listed in its summary):

1. each entity type mapping: the resources (rows) of its table inserted, updated, deleted;
2. each association mapping: its links inserted and deleted. On a table that only association
   mappings use, a link is a row. On an entity table (AD's ``parentdn``), a link is a row whose
   ``Column1`` and ``Column2`` are both non-null: it appears when such a pair appears, disappears
   when it goes, and a changed pair is one link deleted and one inserted;
3. the connector (``<Connector>``, when the configuration has one): the same, summed over all
   its entity tables (resources) and associations (links).

A limit of 0 is off. A count crosses a limit when it is strictly over it. A percentage is of
what was stored before the session, and applies only where something was stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prepsync.config import ConnectorThresholds, LinkThresholds, Mappings, Thresholds, table_key


@dataclass(frozen=True)
class Association:
    """An association mapping on a table: the pair of columns whose values make a link."""

    identifier: str
    column1: str
    column2: str
    limits: LinkThresholds


@dataclass(frozen=True)
class TableLimits:
    entity_types: tuple[tuple[str, Thresholds], ...]  # (identifier, limits), document order
    associations: tuple[Association, ...]

    @property
    def holds_resources(self) -> bool:
        """Rows are resources only on a table an entity type mapping uses."""
        return bool(self.entity_types)


@dataclass(frozen=True)
class ConnectorLimits:
    connector: str
    tables: Mapping[str, TableLimits]  # casefolded ConnectionTable -> limits
    connector_limits: ConnectorThresholds | None  # None: no <Connector> element

    def table(self, name: str) -> TableLimits:
        return self.tables.get(table_key(name), TableLimits((), ()))


def connector_limits(mappings: Mappings) -> ConnectorLimits:
    entity_types: dict[str, list[tuple[str, Thresholds]]] = {}
    associations: dict[str, list[Association]] = {}
    for entity_type in mappings.entity_types:
        entity_types.setdefault(table_key(entity_type.table), []).append(
            (entity_type.identifier, entity_type.thresholds)
        )
    for association in mappings.associations:
        associations.setdefault(table_key(association.table), []).append(
            Association(
                association.identifier,
                association.column1,
                association.column2,
                association.thresholds,
            )
        )
    tables = {
        name: TableLimits(tuple(entity_types.get(name, ())), tuple(associations.get(name, ())))
        for name in {*entity_types, *associations}
    }
    return ConnectorLimits(mappings.connector, tables, mappings.connector_thresholds)


@dataclass
class LinkCounts:
    inserted: int = 0
    deleted: int = 0
    stored_before: int = 0


@dataclass
class TableCounts:
    """What a session does to one table (counted against the store)."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    stored_before: int = 0
    rows: int = 0  # stored after the session
    links: dict[str, LinkCounts] = field(default_factory=dict)  # association identifier ->

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "inserted": self.inserted,
            "updated": self.updated,
            "deleted": self.deleted,
            "rows": self.rows,
        }
        if self.links:
            document["links"] = {
                name: {"inserted": links.inserted, "deleted": links.deleted}
                for name, links in self.links.items()
            }
        return document


def _percent_text(value: float) -> str:
    return f"{value:g}%"


def _check(
    label: str,
    attribute: str,
    limit: float,
    count: int,
    what: str,
    stored_before: int,
    percent: bool,
) -> str | None:
    """The reason ``count`` crosses ``limit`` (0 = off), or None."""
    if not limit:
        return None
    if not percent:
        if count > limit:
            return f"{label}: {attribute} {int(limit)} < {count} {what}"
        return None
    # Integer arithmetic on the counts: exactly at the limit is not over it.
    if stored_before and count * 100 > limit * stored_before:
        share = count * 100 / stored_before
        return (
            f"{label}: {attribute} {_percent_text(limit)} < {share:.2f}% {what} "
            f"({count} of {stored_before} stored)"
        )
    return None


# (attribute, Thresholds/LinkThresholds field, change counted, is a percentage)
_RESOURCE_ATTRIBUTES = (
    ("MaximumInsertedLines", "max_inserted", "inserted", False),
    ("MaximumUpdatedLines", "max_updated", "updated", False),
    ("MaximumDeletedLines", "max_deleted", "deleted", False),
    ("MaxPercentageInsertedLines", "max_pct_inserted", "inserted", True),
    ("MaxPercentageUpdatedLines", "max_pct_updated", "updated", True),
    ("MaxPercentageDeletedLines", "max_pct_deleted", "deleted", True),
)
_LINK_ATTRIBUTES = (
    ("MaximumLinkInsertedLines", "max_inserted", "inserted", False),
    ("MaximumLinkDeletedLines", "max_deleted", "deleted", False),
    ("MaxLinkPercentageInsertedLines", "max_pct_inserted", "inserted", True),
    ("MaxLinkPercentageDeletedLines", "max_pct_deleted", "deleted", True),
)


def _checks(
    label: str,
    limits: Thresholds | LinkThresholds,
    counts: Mapping[str, int],
    stored: int,
) -> Iterable[str | None]:
    links = isinstance(limits, LinkThresholds)
    noun = "links" if links else "resources"
    for attribute, name, change, percent in _LINK_ATTRIBUTES if links else _RESOURCE_ATTRIBUTES:
        limit = getattr(limits, name)
        yield _check(label, attribute, limit, counts[change], f"{change} {noun}", stored, percent)


def crossed_thresholds(
    limits: ConnectorLimits,
    table_names: Sequence[str],
    counts: Mapping[str, TableCounts],
    stored: Mapping[str, TableCounts],
) -> list[str]:
    """Every crossed limit, most specific level first, tables in configuration order.

    ``counts``: the session's tables (casefolded name -> counts); ``stored``: every table of the
    connector, with at least ``stored_before`` and the links' ``stored_before`` set (the
    connector's percentages are of everything it stores, not only of the tables sent).
    """
    reasons: list[str | None] = []
    for name in table_names:
        table = counts.get(name.casefold())
        if table is None:
            continue
        table_limits = limits.table(name)
        for identifier, entity_limits in table_limits.entity_types:
            reasons.extend(
                _checks(
                    f"entity type mapping {identifier} (table {name})",
                    entity_limits,
                    {
                        "inserted": table.inserted,
                        "updated": table.updated,
                        "deleted": table.deleted,
                    },
                    table.stored_before,
                )
            )
    for name in table_names:
        table = counts.get(name.casefold())
        if table is None:
            continue
        for association in limits.table(name).associations:
            links = table.links.get(association.identifier, LinkCounts())
            reasons.extend(
                _checks(
                    f"association mapping {association.identifier} (table {name})",
                    association.limits,
                    {"inserted": links.inserted, "deleted": links.deleted},
                    links.stored_before,
                )
            )
    connector = limits.connector_limits
    if connector is not None:
        resource_tables = [
            name.casefold() for name in table_names if limits.table(name).holds_resources
        ]
        changed = [counts[name] for name in resource_tables if name in counts]
        stored_resources = sum(stored[name].stored_before for name in resource_tables)
        label = f"connector {limits.connector}"
        resources = {
            "inserted": sum(table.inserted for table in changed),
            "updated": sum(table.updated for table in changed),
            "deleted": sum(table.deleted for table in changed),
        }
        reasons.extend(_checks(label, connector.resources, resources, stored_resources))
        inserted_links = deleted_links = stored_links = 0
        for name in table_names:
            for association in limits.table(name).associations:
                before = stored[name.casefold()].links.get(association.identifier, LinkCounts())
                stored_links += before.stored_before
                now = counts.get(name.casefold())
                if now is not None:
                    links = now.links.get(association.identifier, LinkCounts())
                    inserted_links += links.inserted
                    deleted_links += links.deleted
        links_changed = {"inserted": inserted_links, "deleted": deleted_links}
        reasons.extend(_checks(label, connector.links, links_changed, stored_links))
    return [reason for reason in reasons if reason is not None]


_CROSSED = re.compile(r"(?P<label>.+?): (?P<attribute>\w+) \S+ < ")
_ELEMENTS = (
    (re.compile(r"connector (?P<name>.+)"), "Connector"),
    (re.compile(r"entity type mapping (?P<name>\S+) \(table .*\)"), "EntityTypeMapping"),
    (re.compile(r"association mapping (?P<name>\S+) \(table .*\)"), "EntityAssociationMapping"),
)


def first_load_advice(connector: str, crossed: Sequence[str]) -> str:
    """How to proceed when a session into a store holding nothing of ``connector`` crossed
    thresholds (typically the connector's defaults, 100 inserted resources, on a first
    complete load): an initial load skips them, or the limits named can be raised."""
    raises: list[str] = []
    for reason in crossed:
        match = _CROSSED.match(reason)
        if match is None:
            continue
        for pattern, element in _ELEMENTS:
            named = pattern.fullmatch(match["label"])
            if named is not None:
                text = f'{match["attribute"]} on <{element} Identifier="{named["name"]}">'
                if text not in raises:
                    raises.append(text)
                break
    advice = (
        f"the store holds nothing of connector {connector} yet: a first load with "
        "--synchronization-mode initial ignores thresholds, as Identity Manager does"
    )
    if raises:
        advice += "; or raise " + ", ".join(raises)
    return advice
