"""The three threshold levels, the counts they judge, and the counting itself.

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

The counts come from :class:`ChangeCounter`, one per connector table, which both stores feed as
they apply a session (the store interface's ``count_changes``): what the table held before, then
its changes, one at a time from a diff or as totals a bulk path computed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prepsync.config import ConnectorThresholds, LinkThresholds, Mappings, Thresholds, table_key
from prepsync.protocol import INSERT, UPDATE
from prepsync.server.diff import Change, parse_line


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


# Counts, per association, the links stored rows hold: given the associations a table's record
# lacks (never counted on it), the store scans its rows once (``ChangeCounter.stored``).
LinkScan = Callable[[Sequence[Association]], Mapping[str, int]]


class ChangeCounter:
    """What a session does to one table, counted while the store applies it.

    Rows are counted inserted, updated and deleted. A link (an association mapping on the
    table) is a row on a table that only association mappings use, so there its links are its
    rows and cost nothing; on an entity table a row holds a link when both of the association's
    columns are non-null, so each change is looked at (:meth:`counted`) or the store's bulk path
    counts them (:meth:`add`). The store tells first what the table held (:meth:`stored`), then
    feeds its changes, then records :meth:`rows_after` and :meth:`record_links`.
    """

    def __init__(self, limits: TableLimits, association_only: bool) -> None:
        self.associations = limits.associations
        # Links counted from the rows' values (an entity table), not from the row counts.
        self.per_row = bool(self.associations) and not association_only
        self.inserted = self.updated = self.deleted = 0
        self.rows_before = 0
        self.links_before = {association.identifier: 0 for association in self.associations}
        # Per association: links inserted, links deleted (entity tables only).
        self._link_changes = [[0, 0] for _association in self.associations]
        self._pairs: list[tuple[int, int]] = []

    def link_pairs(self, header: Sequence[str]) -> list[tuple[int, int]]:
        """The positions in ``header`` (the layout of the changes' rows) of each association's
        two columns, in association order; none where links are not counted per row."""
        if not self.per_row:
            self._pairs = []
            return []
        folded = [column.casefold() for column in header]
        self._pairs = [
            (
                folded.index(association.column1.casefold()),
                folded.index(association.column2.casefold()),
            )
            for association in self.associations
        ]
        return list(self._pairs)

    def stored(self, rows: int, recorded_links: dict[str, int], scan: LinkScan) -> None:
        """What the table held before the session: ``rows``, and the links its record keeps
        (``recorded_links``, the store's record of the table, completed here by ``scan`` for the
        associations never counted on it)."""
        self.rows_before = rows
        # An association-only table's links are its rows; an empty table holds none.
        if not self.per_row or not rows:
            self.links_before = dict.fromkeys(self.links_before, rows)
            return
        missing = [a for a in self.associations if a.identifier not in recorded_links]
        if missing:
            recorded_links.update(scan(missing))
        self.links_before = {
            association.identifier: recorded_links.get(association.identifier, 0)
            for association in self.associations
        }

    def counted(self, changes: Iterable[Change]) -> Iterator[Change]:
        """``changes`` as they are, each counted as it passes (:meth:`link_pairs` must have
        been given the changes' layout). The rows' totals are added when the changes end."""
        inserted = updated = deleted = 0
        count_links = self._count_links if self.per_row else None
        try:
            for change in changes:
                command = change[0]
                if command == INSERT:
                    inserted += 1
                elif command == UPDATE:
                    updated += 1
                else:
                    deleted += 1
                if count_links is not None:
                    count_links(change)
                yield change
        finally:
            self.add(inserted, updated, deleted)

    def _count_links(self, change: Change) -> None:
        """One change's links: the new row's values (parsed from its line when the diff does
        not have them), the stored row's; a changed pair is one link deleted, one inserted."""
        _command, _key, line, values, stored_line = change
        if values is None and line is not None:
            values = parse_line(line)
        old = None if stored_line is None else parse_line(stored_line)
        for changed, (first, second) in zip(self._link_changes, self._pairs, strict=True):
            new_pair = None if values is None else (values[first], values[second])
            old_pair = None if old is None else (old[first], old[second])
            new_link = new_pair is not None and new_pair[0] != "" and new_pair[1] != ""
            old_link = old_pair is not None and old_pair[0] != "" and old_pair[1] != ""
            if new_link and old_link and new_pair == old_pair:
                continue
            if new_link:
                changed[0] += 1
            if old_link:
                changed[1] += 1

    def add(
        self,
        inserted: int = 0,
        updated: int = 0,
        deleted: int = 0,
        links: Sequence[tuple[int, int]] = (),
    ) -> None:
        """Totals a bulk path counted: rows, and (entity tables, when given) each association's
        links inserted and deleted, in association order."""
        self.inserted += inserted
        self.updated += updated
        self.deleted += deleted
        if links:
            for changed, (links_inserted, links_deleted) in zip(
                self._link_changes, links, strict=True
            ):
                changed[0] += links_inserted
                changed[1] += links_deleted

    def every_stored_row_deleted(self) -> None:
        """The table's kept columns changed: every stored row goes, with its links (counted
        in the layout they were stored in, not that of the session's rows)."""
        before = self.links_before.values() if self.per_row else ()
        self.add(deleted=self.rows_before, links=[(0, links) for links in before])

    @property
    def rows_after(self) -> int:
        return self.rows_before + self.inserted - self.deleted

    def _links(self, index: int) -> tuple[int, int]:
        if self.per_row:
            inserted, deleted = self._link_changes[index]
            return inserted, deleted
        return self.inserted, self.deleted

    def record_links(self, recorded_links: dict[str, int]) -> None:
        """Write the links held after the session into the store's record of an entity table
        (an association-only table's are its rows)."""
        if self.per_row:
            for index, association in enumerate(self.associations):
                inserted, deleted = self._links(index)
                before = self.links_before[association.identifier]
                recorded_links[association.identifier] = before + inserted - deleted

    def counts(self) -> TableCounts:
        counts = TableCounts(
            self.inserted, self.updated, self.deleted, self.rows_before, self.rows_after
        )
        for index, association in enumerate(self.associations):
            inserted, deleted = self._links(index)
            counts.links[association.identifier] = LinkCounts(
                inserted, deleted, self.links_before[association.identifier]
            )
        return counts


def links_in(
    associations: Sequence[Association], header: Sequence[str], lines: Iterable[str]
) -> dict[str, int]:
    """Links held by stored ``lines`` (canonical lines in ``header``'s layout), per
    association; one whose columns ``header`` lacks (the mappings changed) holds none."""
    folded = [column.casefold() for column in header]
    totals = {association.identifier: 0 for association in associations}
    pairs = [
        (
            association.identifier,
            folded.index(association.column1.casefold()),
            folded.index(association.column2.casefold()),
        )
        for association in associations
        if association.column1.casefold() in folded and association.column2.casefold() in folded
    ]
    if pairs:
        for line in lines:
            values = parse_line(line)
            for identifier, first, second in pairs:
                if values[first] != "" and values[second] != "":
                    totals[identifier] += 1
    return totals


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
