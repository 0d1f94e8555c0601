"""Identity Manager XML configuration (or the server's JSON) -> per-table specs (REFERENCE §1, §7).

The configuration is one XML file or a folder of ``*.xml`` files whose root is
``<ConfigurationFile>`` in any namespace.  Three things are read from it:

* the connector's ``EntityTypeMapping`` / ``EntityAssociationMapping`` elements
  (:func:`load_mappings`), resolved into one :class:`TableSpec` per ``ConnectionTable``
  (:func:`resolve_tables`, :func:`load_tables`);
* any other element by name (:func:`configuration_elements`): the reference server reads its
  ``OpenIdClient`` elements this way (:mod:`prepsync.server.clients`);
* the connectors that have mappings at all (:func:`connectors_in`).

Every problem a user can cause is a :class:`~prepsync.errors.ConfigError` whose one-line message
starts with ``<file>, line <N>:`` (or ``<file>:`` when no line applies, ``server mappings:`` for
the server's JSON).

Decisions where the spec is silent (docs/DESIGN.md, "Configuration"):

* A folder means every regular file below it whose name ends in ``.xml`` (any case), recursively,
  in sorted path order (compared folder by folder, so ``a/z.xml`` comes before ``a-b.xml``).
  Symbolic links to folders are not followed (no cycles).
* XML is parsed with expat directly (not ElementTree) so that every element keeps its line number
  for messages.  Entity declarations (``<!ENTITY``) are refused: a configuration never needs them
  and they are how "billion laughs" documents exhaust a server's memory.  So is a ``<!DOCTYPE>``
  naming an external DTD (``SYSTEM`` or ``PUBLIC``): it is never fetched, and what it would
  declare would silently not apply.
* A ``ConnectionTable`` ending in ``.csv`` (any case) names the same table as without it
  (Identity Manager's LDAP example writes ``LDAPExport_entries.csv``), and spellings differing
  only in case name one table, called by its first spelling without ``.csv``
  (:func:`table_name`, :func:`table_key`).
* An ``EntityTypeMapping`` with neither ``ConnectionTable`` nor any ``ConnectionColumn`` is not a
  table (Identity Manager fills such entity types itself) and is ignored; one with columns but
  no table is an error.  An ``EntityAssociationMapping`` without ``ConnectionTable`` takes the
  table of the entity type mapping named before the ``:`` of its ``EntityPropertyMapping1``.
* "Document order" is the order of entity type mappings, then association mappings, each in
  document order across the files.  The :class:`Mappings` shape (and its JSON) keeps the two kinds
  apart, and a table must resolve the same from the XML and from the server.
* Table and column names are matched case-insensitively with :meth:`str.casefold`.
* Attribute values are taken as spelled: no trimming (``" dn"`` is not ``"dn"``), ``Connector``
  matches exactly.  ``IsPrimaryKey`` accepts ``true``/``1``/``false``/``0`` in any case; anything
  else is an error rather than a silent ``false``.
* Beyond the spec's errors, these are refused because they are always mistakes: a counted
  mapping without ``Identifier``, two counted mappings of one kind with the same ``Identifier``,
  an empty ``ConnectionTable``/``ConnectionColumn``/``Column1``/``Column2``, a ``ConnectionTable``
  that is not a plain file name (it names the ``.csv`` read and the files written and uploaded),
  and an ``IsPrimaryKey`` property without ``ConnectionColumn``.  Several ``IsPrimaryKey``
  properties naming the same column (case-insensitively) count as one primary key.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from xml.parsers import expat

from prepsync.errors import ConfigError

__all__ = [
    "ConnectorThresholds",
    "EntityAssociationMapping",
    "EntityTypeMapping",
    "LinkThresholds",
    "Mappings",
    "TableSpec",
    "Thresholds",
    "configuration_elements",
    "connectors_in",
    "load_mappings",
    "load_tables",
    "required_attribute",
    "resolve_tables",
]

logger = logging.getLogger(__name__)

ROOT_ELEMENT = "ConfigurationFile"
ENTITY_TYPE_MAPPING = "EntityTypeMapping"
ENTITY_ASSOCIATION_MAPPING = "EntityAssociationMapping"
MAPPING_ELEMENTS = (ENTITY_TYPE_MAPPING, ENTITY_ASSOCIATION_MAPPING)
CONNECTOR_ELEMENT = "Connector"

SERVER_MAPPINGS = "server mappings"

_Number = TypeVar("_Number", int, float)


# --------------------------------------------------------------------------------------------
# Thresholds


def _stricter(first: _Number, second: _Number) -> _Number:
    """The smaller limit, where 0 means "no limit" and so never wins over a real one."""
    if first == 0:
        return second
    if second == 0:
        return first
    return min(first, second)


@dataclass(frozen=True)
class Thresholds:
    """Limits on one session's changes, enforced by the server (REFERENCE §7); 0 = off."""

    max_inserted: int = 0  # MaximumInsertedLines
    max_updated: int = 0  # MaximumUpdatedLines
    max_deleted: int = 0  # MaximumDeletedLines
    max_pct_inserted: float = 0.0  # MaxPercentageInsertedLines (percent of rows already stored)
    max_pct_updated: float = 0.0  # MaxPercentageUpdatedLines
    max_pct_deleted: float = 0.0  # MaxPercentageDeletedLines

    def strictest(self, other: Thresholds) -> Thresholds:
        """Per field, the smaller non-zero limit: several mappings on one table all hold."""
        return Thresholds(
            max_inserted=_stricter(self.max_inserted, other.max_inserted),
            max_updated=_stricter(self.max_updated, other.max_updated),
            max_deleted=_stricter(self.max_deleted, other.max_deleted),
            max_pct_inserted=_stricter(self.max_pct_inserted, other.max_pct_inserted),
            max_pct_updated=_stricter(self.max_pct_updated, other.max_pct_updated),
            max_pct_deleted=_stricter(self.max_pct_deleted, other.max_pct_deleted),
        )

    def to_json(self) -> dict[str, int | float]:
        """Keys are the XML attribute names, so the JSON reads like the configuration."""
        return {
            "MaximumInsertedLines": self.max_inserted,
            "MaximumUpdatedLines": self.max_updated,
            "MaximumDeletedLines": self.max_deleted,
            "MaxPercentageInsertedLines": self.max_pct_inserted,
            "MaxPercentageUpdatedLines": self.max_pct_updated,
            "MaxPercentageDeletedLines": self.max_pct_deleted,
        }

    @classmethod
    def from_json(cls, data: object) -> Thresholds:
        """Inverse of :meth:`to_json`; every key is required (ConfigError otherwise)."""
        return _thresholds_from_json(data, "thresholds")


_COUNT_ATTRIBUTES = ("MaximumInsertedLines", "MaximumUpdatedLines", "MaximumDeletedLines")
_PERCENT_ATTRIBUTES = (
    "MaxPercentageInsertedLines",
    "MaxPercentageUpdatedLines",
    "MaxPercentageDeletedLines",
)


def _thresholds(counts: Sequence[int], percents: Sequence[float]) -> Thresholds:
    """Build from values in the order of ``_COUNT_ATTRIBUTES`` and ``_PERCENT_ATTRIBUTES``."""
    inserted, updated, deleted = counts
    pct_inserted, pct_updated, pct_deleted = percents
    return Thresholds(inserted, updated, deleted, pct_inserted, pct_updated, pct_deleted)


@dataclass(frozen=True)
class LinkThresholds:
    """Limits on the links (association rows or column pairs) one session changes; 0 = off.

    Links are inserted or deleted, never updated: a pair whose value changes is one link
    deleted and one inserted.
    """

    max_inserted: int = 0  # MaximumLinkInsertedLines
    max_deleted: int = 0  # MaximumLinkDeletedLines
    max_pct_inserted: float = 0.0  # MaxLinkPercentageInsertedLines (percent of stored links)
    max_pct_deleted: float = 0.0  # MaxLinkPercentageDeletedLines

    def strictest(self, other: LinkThresholds) -> LinkThresholds:
        return LinkThresholds(
            max_inserted=_stricter(self.max_inserted, other.max_inserted),
            max_deleted=_stricter(self.max_deleted, other.max_deleted),
            max_pct_inserted=_stricter(self.max_pct_inserted, other.max_pct_inserted),
            max_pct_deleted=_stricter(self.max_pct_deleted, other.max_pct_deleted),
        )

    def to_json(self) -> dict[str, int | float]:
        return {
            "MaximumLinkInsertedLines": self.max_inserted,
            "MaximumLinkDeletedLines": self.max_deleted,
            "MaxLinkPercentageInsertedLines": self.max_pct_inserted,
            "MaxLinkPercentageDeletedLines": self.max_pct_deleted,
        }

    @classmethod
    def from_json(cls, data: object) -> LinkThresholds:
        return _link_thresholds_from_json(data, "thresholds")


_LINK_COUNT_ATTRIBUTES = ("MaximumLinkInsertedLines", "MaximumLinkDeletedLines")
_LINK_PERCENT_ATTRIBUTES = ("MaxLinkPercentageInsertedLines", "MaxLinkPercentageDeletedLines")
# The Entity Association Mapping reference page spells an association's limits without "Link"
# (MaximumInsertedLines...); both spellings are read, and the stricter one holds.
_LINK_COUNT_ALIASES = ("MaximumInsertedLines", "MaximumDeletedLines")
_LINK_PERCENT_ALIASES = ("MaxPercentageInsertedLines", "MaxPercentageDeletedLines")


def _link_thresholds(counts: Sequence[int], percents: Sequence[float]) -> LinkThresholds:
    inserted, deleted = counts
    pct_inserted, pct_deleted = percents
    return LinkThresholds(inserted, deleted, pct_inserted, pct_deleted)


@dataclass(frozen=True)
class ConnectorThresholds:
    """``<Connector>``'s limits, summed over all its entity types and associations."""

    resources: Thresholds
    links: LinkThresholds

    def to_json(self) -> dict[str, int | float]:
        return {**self.resources.to_json(), **self.links.to_json()}

    @classmethod
    def from_json(cls, data: object) -> ConnectorThresholds:
        return _connector_thresholds_from_json(data, "connectorThresholds")


# Identity Manager's defaults for an attribute a <Connector> element leaves out.
CONNECTOR_DEFAULTS = ConnectorThresholds(
    Thresholds(100, 100, 100, 5.0, 5.0, 5.0), LinkThresholds(1000, 1000, 5.0, 5.0)
)


# --------------------------------------------------------------------------------------------
# Mappings


@dataclass(frozen=True)
class EntityTypeMapping:
    identifier: str
    connector: str
    table: str  # ConnectionTable as spelled
    columns: tuple[str, ...]  # ConnectionColumn of every Property having one, document order
    primary_keys: tuple[str, ...]  # ConnectionColumn of the IsPrimaryKey properties
    thresholds: Thresholds

    def to_json(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "connector": self.connector,
            "connectionTable": self.table,
            "columns": list(self.columns),
            "primaryKeys": list(self.primary_keys),
            "thresholds": self.thresholds.to_json(),
        }


@dataclass(frozen=True)
class EntityAssociationMapping:
    identifier: str
    connector: str
    # ConnectionTable as spelled; when the mapping has none, the ConnectionTable of the entity
    # type mapping its EntityPropertyMapping1 names (resolved when loading, so every consumer
    # sees a table).
    table: str
    column1: str
    column2: str
    thresholds: LinkThresholds
    entity_property_mapping1: str | None = None  # "<EntityTypeMapping>:<Property>", as spelled

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "identifier": self.identifier,
            "connector": self.connector,
            "connectionTable": self.table,
            "column1": self.column1,
            "column2": self.column2,
            "thresholds": self.thresholds.to_json(),
        }
        if self.entity_property_mapping1 is not None:
            document["entityPropertyMapping1"] = self.entity_property_mapping1
        return document


@dataclass(frozen=True)
class Mappings:
    """One connector's mappings, from the XML or from the server (REFERENCE §7)."""

    connector: str
    entity_types: tuple[EntityTypeMapping, ...]
    associations: tuple[EntityAssociationMapping, ...]
    # From the <Connector> element (absent attributes at Identity Manager's defaults); None
    # when the configuration has no such element: no connector-level thresholds then.
    connector_thresholds: ConnectorThresholds | None = None

    def to_json(self) -> dict[str, Any]:
        """The body of ``GET /api/connectors/{connector}/mappings``."""
        return {
            "connector": self.connector,
            "connectorThresholds": (
                None if self.connector_thresholds is None else self.connector_thresholds.to_json()
            ),
            "entityTypeMappings": [mapping.to_json() for mapping in self.entity_types],
            "entityAssociationMappings": [mapping.to_json() for mapping in self.associations],
        }

    @classmethod
    def from_json(cls, data: object) -> Mappings:
        """Check the server's answer strictly: the agent derives file names and keys from it.

        Required keys must be present with the right types; unknown keys are ignored so that a
        newer server can add fields.  Every mapping must belong to the top-level connector.
        Primary-key counts and agreement are checked by :func:`resolve_tables`, as for XML.
        """
        document = _json_object(data, SERVER_MAPPINGS)
        connector = _json_name(document, "connector", SERVER_MAPPINGS)
        entity_types = tuple(
            _entity_type_mapping_from_json(item, f"{SERVER_MAPPINGS}: entityTypeMappings[{index}]")
            for index, item in enumerate(
                _json_array(document, "entityTypeMappings", SERVER_MAPPINGS)
            )
        )
        entity_tables: dict[str, str | None] = {
            mapping.identifier: mapping.table for mapping in entity_types
        }
        associations = tuple(
            _association_mapping_from_json(
                item, f"{SERVER_MAPPINGS}: entityAssociationMappings[{index}]", entity_tables
            )
            for index, item in enumerate(
                _json_array(document, "entityAssociationMappings", SERVER_MAPPINGS)
            )
        )
        every_mapping: tuple[EntityTypeMapping | EntityAssociationMapping, ...] = (
            *entity_types,
            *associations,
        )
        for mapping in every_mapping:
            if mapping.connector != connector:
                raise ConfigError(
                    f"{SERVER_MAPPINGS}: mapping {mapping.identifier!r} belongs to connector "
                    f"{mapping.connector!r}, not {connector!r}"
                )
        # Optional: a server from before connector-level thresholds does not send it.
        connector_limits = document.get("connectorThresholds")
        connector_thresholds = (
            None
            if connector_limits is None
            else _connector_thresholds_from_json(
                connector_limits, f"{SERVER_MAPPINGS}: connectorThresholds"
            )
        )
        return cls(connector, entity_types, associations, connector_thresholds)


@dataclass(frozen=True)
class TableSpec:
    """What the pipeline needs to know about one ``ConnectionTable``."""

    name: str  # ConnectionTable, first spelling seen in document order, without ".csv"
    columns: tuple[str, ...]  # kept columns, deduplicated case-insensitively, first-seen order
    # (primary key column,) when an entity type mapping uses the table; None for an
    # association-only table, keyed by ALL kept columns in SOURCE HEADER order (the pipeline
    # knows the header, this module does not).
    key: tuple[str, ...] | None
    # Strictest over the entity type mappings on the table (association mappings limit links,
    # which the server counts per mapping: prepsync.server.thresholds).
    thresholds: Thresholds


# --------------------------------------------------------------------------------------------
# Public loaders


def load_mappings(path: str | os.PathLike[str], connector: str) -> Mappings:
    """The mappings whose ``Connector`` is exactly ``connector``, in document order."""
    entity_types: list[EntityTypeMapping] = []
    # identifier -> ConnectionTable, None for an entity type mapping that is not a table (it
    # names no ConnectionTable and no ConnectionColumn: Identity Manager fills that entity
    # type otherwise, so there is nothing to read for it).
    entity_tables: dict[str, str | None] = {}
    # Associations are resolved once every file is read: the entity type mapping that lends
    # its table may come later, or from another file.
    pending_associations: list[tuple[_XmlElement, str, str]] = []  # element, location, id
    # identifier -> where it was first defined, one dict per kind (the kinds' identifiers are
    # separate namespaces in Identity Manager: an entity type and an association).
    first_definitions: dict[str, dict[str, str]] = {name: {} for name in MAPPING_ELEMENTS}
    other_connectors: set[str] = set()
    connector_thresholds: ConnectorThresholds | None = None
    connector_location = ""
    for file, root in _configuration_files(path):
        for element in root.iter():
            if element.name == CONNECTOR_ELEMENT:
                if element.attributes.get("Identifier") == connector:
                    location = _location(file, element)
                    if connector_thresholds is not None:
                        raise ConfigError(
                            f"{location}: Connector {connector!r} is defined twice "
                            f"(first at {connector_location})"
                        )
                    connector_thresholds = _connector_thresholds_from_attributes(element, location)
                    connector_location = location
                continue
            if element.name not in MAPPING_ELEMENTS:
                continue
            element_connector = element.attributes.get("Connector")
            if element_connector != connector:
                if element_connector:
                    other_connectors.add(element_connector)
                continue
            location = _location(file, element)
            identifier = _required_attribute(element, "Identifier", location)
            seen = first_definitions[element.name]
            if identifier in seen:
                raise ConfigError(
                    f"{location}: {element.name} {identifier!r} is defined twice "
                    f"(first at {seen[identifier]})"
                )
            seen[identifier] = location
            if element.name == ENTITY_TYPE_MAPPING:
                entity_type = _entity_type_mapping(element, file, connector, identifier)
                entity_tables[identifier] = entity_type.table if entity_type else None
                if entity_type is None:
                    logger.debug(
                        "%s: %s %r names no table: ignored", location, element.name, identifier
                    )
                else:
                    entity_types.append(entity_type)
            else:
                pending_associations.append((element, location, identifier))
    associations = [
        _association_mapping(element, location, connector, identifier, entity_tables)
        for element, location, identifier in pending_associations
    ]
    if not entity_types and not associations:
        hint = ""
        if entity_tables:
            hint = " (its entity type mappings name no ConnectionTable)"
        elif other_connectors:
            names = ", ".join(repr(name) for name in sorted(other_connectors))
            hint = f" (it has mappings for {names})"
        raise ConfigError(f"no mapping for connector {connector!r} in {os.fspath(path)}{hint}")
    return Mappings(connector, tuple(entity_types), tuple(associations), connector_thresholds)


def table_name(connection_table: str) -> str:
    """The table a ``ConnectionTable`` names: a trailing ``.csv`` (any case) is the file's
    extension, as Identity Manager's own examples write it, not part of the name."""
    if connection_table[-4:].lower() == ".csv":
        return connection_table[:-4]
    return connection_table


def table_key(connection_table: str) -> str:
    """Two ``ConnectionTable`` values name one table exactly when their keys are equal."""
    return _fold(table_name(connection_table))


def resolve_tables(mappings: Mappings, source: str = "configuration") -> tuple[TableSpec, ...]:
    """Group the mappings by table (case-insensitively) into specs, in first-seen order.

    ``source`` names where the mappings came from in error messages (a path, "server mappings").
    """
    if not mappings.entity_types and not mappings.associations:
        raise ConfigError(f"no mapping for connector {mappings.connector!r} in {source}")
    tables: dict[str, _TableBuilder] = {}

    def table_for(mapping: EntityTypeMapping | EntityAssociationMapping) -> _TableBuilder:
        # Checked here too, not only when loading: Mappings may come from a server, and the
        # name becomes a file name on this host.
        problem = _table_name_problem(mapping.table)
        if problem is not None:
            raise ConfigError(f"{source}: mapping {mapping.identifier!r}: {problem}")
        return tables.setdefault(table_key(mapping.table), _TableBuilder(table_name(mapping.table)))

    for entity_type in mappings.entity_types:
        problem = _primary_key_problem(entity_type.identifier, entity_type.primary_keys)
        if problem is not None:
            raise ConfigError(f"{source}: {problem}")
        builder = table_for(entity_type)
        builder.add_columns(entity_type.columns)
        builder.entity_types.append(entity_type)
        builder.thresholds = builder.thresholds.strictest(entity_type.thresholds)
    for association in mappings.associations:
        builder = table_for(association)
        builder.add_columns((association.column1, association.column2))

    return tuple(builder.build(source) for builder in tables.values())


def load_tables(path: str | os.PathLike[str], connector: str) -> tuple[TableSpec, ...]:
    return resolve_tables(load_mappings(path, connector), os.fspath(path))


def configuration_elements(
    path: str | os.PathLike[str], name: str
) -> Iterator[tuple[str, dict[str, str]]]:
    """(location, attributes) of every ``<name>`` element (local name, any namespace), in
    document order across the configuration's files; location is ``<file>, line <N>``."""
    for file, root in _configuration_files(path):
        for element in root.iter():
            if element.name == name:
                yield _location(file, element), element.attributes


def connectors_in(path: str | os.PathLike[str]) -> frozenset[str]:
    """Every non-empty ``Connector`` of a mapping element: the connectors a server can serve."""
    return frozenset(
        connector
        for _file, root in _configuration_files(path)
        for element in root.iter()
        if element.name in MAPPING_ELEMENTS and (connector := element.attributes.get("Connector"))
    )


# --------------------------------------------------------------------------------------------
# Resolution helpers


def _fold(name: str) -> str:
    """The case-insensitive comparison key of a table or column name."""
    return name.casefold()


@dataclass
class _TableBuilder:
    name: str
    columns: dict[str, str] = field(default_factory=dict)  # folded -> first spelling
    entity_types: list[EntityTypeMapping] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)

    def add_columns(self, columns: Sequence[str]) -> None:
        for column in columns:
            self.columns.setdefault(_fold(column), column)

    def build(self, source: str) -> TableSpec:
        key: tuple[str, ...] | None = None
        if self.entity_types:
            first = self.entity_types[0]
            first_key = _fold(first.primary_keys[0])
            for other in self.entity_types[1:]:
                if _fold(other.primary_keys[0]) != first_key:
                    raise ConfigError(
                        f"{source}: table {self.name!r}: entity type mappings "
                        f"{first.identifier!r} and {other.identifier!r} disagree on the "
                        f"primary key ({first.primary_keys[0]!r} vs {other.primary_keys[0]!r})"
                    )
            # The kept column's spelling, so that key and columns always agree letter for letter.
            key = (self.columns[first_key],)
        return TableSpec(self.name, tuple(self.columns.values()), key, self.thresholds)


def _primary_key_problem(identifier: str, primary_keys: Sequence[str]) -> str | None:
    distinct = {_fold(column): column for column in primary_keys}
    if not distinct:
        return (
            f"entity type mapping {identifier!r} has no primary key "
            '(a Property with a ConnectionColumn and IsPrimaryKey="true")'
        )
    if len(distinct) > 1:
        names = ", ".join(repr(column) for column in distinct.values())
        return (
            f"entity type mapping {identifier!r} has {len(distinct)} primary key columns "
            f"({names}); exactly one is needed"
        )
    return None


def _table_name_problem(table: str) -> str | None:
    """Why ``table`` cannot name files in the sources/working directories, or None."""
    if not table:
        return "ConnectionTable is empty"
    name = table_name(table)
    if not name:
        return f"ConnectionTable {table!r} is only the .csv extension"
    if name in (".", "..") or any(character in table for character in "/\\\0"):
        return f"ConnectionTable {table!r} is not a plain file name"
    return None


# --------------------------------------------------------------------------------------------
# XML


@dataclass
class _XmlElement:
    """Just enough of an element: local name, attributes and the line it starts on."""

    name: str
    attributes: dict[str, str]
    line: int
    children: list[_XmlElement] = field(default_factory=list)

    def iter(self) -> Iterator[_XmlElement]:
        """This element and its descendants in document order (iterative: no recursion limit)."""
        pending = [self]
        while pending:
            element = pending.pop()
            yield element
            pending.extend(reversed(element.children))


class _NotAConfigurationFile(Exception):
    def __init__(self, root_name: str) -> None:
        super().__init__(root_name)
        self.root_name = root_name


def _location(file: Path, element: _XmlElement) -> str:
    return f"{file}, line {element.line}"


def _configuration_files(path: str | os.PathLike[str]) -> Iterator[tuple[Path, _XmlElement]]:
    """(file, root) of each ConfigurationFile document under ``path``.

    An explicitly named file with another root is an error; in a folder such files are skipped,
    since configuration folders often hold other XML (exports, schemas, editor settings).
    """
    top = Path(path)
    if top.is_dir():
        for file in _xml_files_below(top):
            try:
                yield file, _parse(file)
            except _NotAConfigurationFile as skipped:
                logger.debug("skipping %s: its root element is %s", file, skipped.root_name)
    elif top.exists():
        try:
            yield top, _parse(top)
        except _NotAConfigurationFile as wrong:
            raise ConfigError(
                f"{top}: the root element is {wrong.root_name!r}, not {ROOT_ELEMENT!r}"
            ) from None
    else:
        raise ConfigError(f"{top}: no such file or directory")


def _xml_files_below(folder: Path) -> list[Path]:
    def on_error(error: OSError) -> None:
        raise ConfigError(f"{error.filename}: cannot list the folder: {error.strerror}")

    files = [
        Path(directory, name)
        for directory, _subdirectories, names in os.walk(folder, onerror=on_error)
        for name in names
        if name.lower().endswith(".xml")
    ]
    # A dangling symbolic link or a socket named *.xml is not a configuration file.
    return sorted(file for file in files if file.is_file())


def _local_name(expat_name: str) -> str:
    # expat reports "namespace-uri}local" for a namespaced name (see namespace_separator).
    return expat_name.rpartition("}")[2]


# Blocks fed to expat: the first is small, so a huge XML file that is not a configuration is
# dropped after reading little of it (its root is known early); each next one is as large as
# everything fed before it, up to XML_BLOCK_MAX. Why they grow: expat before 2.6 scans a token
# that spans blocks (a long attribute value) from its start again on every block
# (CVE-2023-52425), so fixed blocks make an 8 MiB attribute cost 4,096 scans of up to 8 MiB
# (35 s) where doubling ones cost about 8 (the sum of the scans is at most twice the file:
# linear). Expat 2.6+ defers those rescans itself ("reparse deferral", on by default and left
# on). Beyond XML_BLOCK_MAX the blocks stop growing, which bounds the memory of one read; a
# single token longer than that costs one more scan of it per XML_BLOCK_MAX.
XML_BLOCK_FIRST = 64 * 1024
XML_BLOCK_MAX = 64 * 1024 * 1024


def _xml_blocks(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's bytes in blocks of XML_BLOCK_FIRST, then doubling up to XML_BLOCK_MAX."""
    fed = 0
    while block := stream.read(min(max(XML_BLOCK_FIRST, fed), XML_BLOCK_MAX)):
        fed += len(block)
        yield block


def _parse(file: Path) -> _XmlElement:
    """The element tree of ``file``; raises _NotAConfigurationFile as soon as the root is known."""
    parser = expat.ParserCreate(namespace_separator="}")
    open_elements: list[_XmlElement] = []
    roots: list[_XmlElement] = []
    # Why the document's external DTD is refused, raised once the root shows it is a
    # configuration: other XML in a configuration folder (XHTML, schemas) is skipped, DTD or not.
    external_dtd: list[str] = []

    def start_element(name: str, attributes: dict[str, str]) -> None:
        element = _XmlElement(_local_name(name), attributes, parser.CurrentLineNumber)
        if open_elements:
            open_elements[-1].children.append(element)
        elif element.name != ROOT_ELEMENT:
            raise _NotAConfigurationFile(element.name)  # stop early: it may be huge
        elif external_dtd:
            raise ConfigError(external_dtd[0])
        else:
            roots.append(element)
        open_elements.append(element)

    def end_element(_name: str) -> None:
        open_elements.pop()

    def refuse_entity_declaration(*_declaration: object) -> None:
        raise ConfigError(
            f"{file}, line {parser.CurrentLineNumber}: entity declarations are not allowed"
        )

    def refuse_external_dtd(
        name: str, system_id: str | None, public_id: str | None, _has_internal_subset: int
    ) -> None:
        # expat never fetches it, but a configuration naming one expects declarations
        # (defaults, entities) that would silently not apply; and a reader that did fetch it
        # would make an HTTP request on the configuration's say-so.
        if system_id is not None or public_id is not None:
            external_dtd.append(
                f"{file}, line {parser.CurrentLineNumber}: external DTDs are not allowed "
                f"(<!DOCTYPE {name} {'PUBLIC' if public_id is not None else 'SYSTEM'} ...>)"
            )

    parser.StartElementHandler = start_element
    parser.EndElementHandler = end_element
    parser.EntityDeclHandler = refuse_entity_declaration
    parser.StartDoctypeDeclHandler = refuse_external_dtd
    try:
        with file.open("rb") as stream:
            for block in _xml_blocks(stream):
                parser.Parse(block, False)
        parser.Parse(b"", True)
    except expat.ExpatError as error:
        raise ConfigError(
            f"{file}, line {error.lineno}, column {error.offset + 1}: malformed XML: "
            f"{expat.ErrorString(error.code)}"
        ) from None
    except OSError as error:
        raise ConfigError(f"{file}: cannot read: {error.strerror or error}") from None
    except (LookupError, ValueError) as error:
        # The XML declaration names an encoding Python lacks ("u-8"), one that is no text
        # encoding ("base64"), or one expat cannot use ("utf-32"): expat asks Python's codecs,
        # whose errors are not ExpatErrors (found by the fuzz target).
        raise ConfigError(f"{file}: unusable encoding in the XML declaration: {error}") from None
    return roots[0]  # expat fails with "no element found" when there is no root


def required_attribute(
    attributes: Mapping[str, str], element: str, attribute: str, location: str
) -> str:
    """The value of a required attribute; a ConfigError naming the location if absent or empty."""
    value = attributes.get(attribute)
    if value is None:
        raise ConfigError(f"{location}: {element} has no {attribute}")
    if not value:
        raise ConfigError(f"{location}: {element} has an empty {attribute}")
    return value


def _required_attribute(element: _XmlElement, attribute: str, location: str) -> str:
    return required_attribute(element.attributes, element.name, attribute, location)


def _boolean_attribute(element: _XmlElement, attribute: str, location: str) -> bool:
    value = element.attributes.get(attribute)
    if value is None:
        return False
    # xs:boolean spellings; case-insensitive because hand-written configurations vary.
    folded = value.strip().lower()
    if folded in ("true", "1"):
        return True
    if folded in ("false", "0"):
        return False
    raise ConfigError(f"{location}: {attribute}={value!r} is not a boolean (true, false, 1 or 0)")


_NON_NEGATIVE_INTEGER = re.compile(r"[0-9]+")
_NON_NEGATIVE_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _limit_attribute(
    element: _XmlElement, attribute: str, location: str, default: float, percent: bool
) -> float:
    """A threshold attribute's value (``default`` when absent); 0 means off."""
    text = element.attributes.get(attribute)
    if text is None:
        return default
    pattern = _NON_NEGATIVE_DECIMAL if percent else _NON_NEGATIVE_INTEGER
    if not pattern.fullmatch(text.strip()):
        description = "non-negative number" if percent else "non-negative integer"
        raise ConfigError(f"{location}: {attribute}={text!r} is not a {description} (0 = off)")
    return float(text) if percent else int(text)


def _thresholds_from_attributes(
    element: _XmlElement, location: str, defaults: Thresholds | None = None
) -> Thresholds:
    default = defaults or Thresholds()
    default_counts = (default.max_inserted, default.max_updated, default.max_deleted)
    default_percents = (default.max_pct_inserted, default.max_pct_updated, default.max_pct_deleted)
    counts = [
        int(_limit_attribute(element, name, location, value, percent=False))
        for name, value in zip(_COUNT_ATTRIBUTES, default_counts, strict=True)
    ]
    percents = [
        _limit_attribute(element, name, location, value, percent=True)
        for name, value in zip(_PERCENT_ATTRIBUTES, default_percents, strict=True)
    ]
    return _thresholds(counts, percents)


def _link_thresholds_from_attributes(
    element: _XmlElement,
    location: str,
    defaults: LinkThresholds | None = None,
    count_names: Sequence[str] = _LINK_COUNT_ATTRIBUTES,
    percent_names: Sequence[str] = _LINK_PERCENT_ATTRIBUTES,
) -> LinkThresholds:
    default = defaults or LinkThresholds()
    default_counts = (default.max_inserted, default.max_deleted)
    default_percents = (default.max_pct_inserted, default.max_pct_deleted)
    counts = [
        int(_limit_attribute(element, name, location, value, percent=False))
        for name, value in zip(count_names, default_counts, strict=True)
    ]
    percents = [
        _limit_attribute(element, name, location, value, percent=True)
        for name, value in zip(percent_names, default_percents, strict=True)
    ]
    return _link_thresholds(counts, percents)


def _association_thresholds(element: _XmlElement, location: str) -> LinkThresholds:
    """REFERENCE §1's ``MaximumLink*`` names, and the reference page's names without ``Link``."""
    spelled = _link_thresholds_from_attributes(element, location)
    alias = _link_thresholds_from_attributes(
        element,
        location,
        count_names=_LINK_COUNT_ALIASES,
        percent_names=_LINK_PERCENT_ALIASES,
    )
    return spelled.strictest(alias)


def _connector_thresholds_from_attributes(
    element: _XmlElement, location: str
) -> ConnectorThresholds:
    return ConnectorThresholds(
        _thresholds_from_attributes(element, location, CONNECTOR_DEFAULTS.resources),
        _link_thresholds_from_attributes(element, location, CONNECTOR_DEFAULTS.links),
    )


def _table_attribute(element: _XmlElement, location: str) -> str | None:
    """The ``ConnectionTable`` attribute, checked; None when the element has none."""
    table = element.attributes.get("ConnectionTable")
    if table is None:
        return None
    problem = _table_name_problem(table)
    if problem is not None:
        raise ConfigError(f"{location}: {problem}")
    return table


def _entity_type_mapping(
    element: _XmlElement, file: Path, connector: str, identifier: str
) -> EntityTypeMapping | None:
    """The mapping, or None for one that is not a table (no ConnectionTable, no column)."""
    location = _location(file, element)
    table = _table_attribute(element, location)
    columns: list[str] = []
    primary_keys: list[str] = []
    for child in element.children:
        # Properties are direct children of their mapping; a Property anywhere else belongs to
        # something else.
        if child.name != "Property":
            continue
        child_location = _location(file, child)
        column = child.attributes.get("ConnectionColumn")
        is_primary_key = _boolean_attribute(child, "IsPrimaryKey", child_location)
        if column is None:
            if is_primary_key:
                property_name = child.attributes.get("Identifier", "")
                raise ConfigError(
                    f"{child_location}: property {property_name!r} of {ENTITY_TYPE_MAPPING} "
                    f"{identifier!r} is the primary key but has no ConnectionColumn"
                )
            continue  # a property computed by Identity Manager, not read from the export
        if not column:
            raise ConfigError(f"{child_location}: Property has an empty ConnectionColumn")
        columns.append(column)
        if is_primary_key:
            primary_keys.append(column)
    if table is None:
        if not columns:
            return None
        raise ConfigError(
            f"{location}: {ENTITY_TYPE_MAPPING} {identifier!r} has ConnectionColumn properties "
            "but no ConnectionTable naming the file they are read from"
        )
    problem = _primary_key_problem(identifier, primary_keys)
    if problem is not None:
        raise ConfigError(f"{location}: {problem}")
    return EntityTypeMapping(
        identifier,
        connector,
        table,
        tuple(columns),
        tuple(primary_keys),
        _thresholds_from_attributes(element, location),
    )


def _association_mapping(
    element: _XmlElement,
    location: str,
    connector: str,
    identifier: str,
    entity_tables: dict[str, str | None],
) -> EntityAssociationMapping:
    column1 = _required_attribute(element, "Column1", location)
    column2 = _required_attribute(element, "Column2", location)
    property_mapping1 = element.attributes.get("EntityPropertyMapping1")
    table = _table_attribute(element, location)
    if table is None:
        table = _association_table(identifier, property_mapping1, entity_tables, location)
    return EntityAssociationMapping(
        identifier,
        connector,
        table,
        column1,
        column2,
        _association_thresholds(element, location),
        property_mapping1,
    )


def _association_table(
    identifier: str,
    property_mapping1: str | None,
    entity_tables: dict[str, str | None],
    context: str,
) -> str:
    """The table of an association mapping without ``ConnectionTable``: that of the entity type
    mapping named before the ``:`` of its ``EntityPropertyMapping1`` (``HR_Person:Employee_Id``
    names ``HR_Person``), whose export holds the association's columns."""
    what = f"{ENTITY_ASSOCIATION_MAPPING} {identifier!r} has no ConnectionTable"
    if property_mapping1 is None:
        raise ConfigError(f"{context}: {what} and no EntityPropertyMapping1 to take it from")
    entity, colon, _property = property_mapping1.partition(":")
    if not colon or not entity:
        raise ConfigError(
            f"{context}: {what}, and its EntityPropertyMapping1={property_mapping1!r} is not "
            "'<entity type mapping>:<property>'"
        )
    if entity not in entity_tables:
        raise ConfigError(
            f"{context}: {what}, and the entity type mapping {entity!r} its "
            "EntityPropertyMapping1 names is not a mapping of this connector"
        )
    table = entity_tables[entity]
    if table is None:
        raise ConfigError(
            f"{context}: {what}, and the entity type mapping {entity!r} its "
            "EntityPropertyMapping1 names has none either"
        )
    return table


# --------------------------------------------------------------------------------------------
# JSON (server mappings)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _json_object(value: object, context: str) -> dict[str, object]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ConfigError(f"{context}: expected an object, got {_json_type(value)}")
    return value


def _json_member(document: dict[str, object], key: str, context: str) -> object:
    if key not in document:
        raise ConfigError(f"{context}: {key!r} is missing")
    return document[key]


def _json_name(document: dict[str, object], key: str, context: str) -> str:
    value = _json_member(document, key, context)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{context}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _json_array(document: dict[str, object], key: str, context: str) -> list[object]:
    value = _json_member(document, key, context)
    if not isinstance(value, list):
        raise ConfigError(f"{context}: {key!r} must be an array, got {_json_type(value)}")
    return value


def _json_names(document: dict[str, object], key: str, context: str) -> tuple[str, ...]:
    names: list[str] = []
    for index, name in enumerate(_json_array(document, key, context)):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{context}: {key}[{index}] must be a non-empty string, got {name!r}")
        names.append(name)
    return tuple(names)


def _json_table(document: dict[str, object], context: str) -> str:
    table = _json_name(document, "connectionTable", context)
    problem = _table_name_problem(table)
    if problem is not None:
        raise ConfigError(f"{context}: {problem}")
    return table


def _json_limits(
    document: dict[str, object],
    count_names: Sequence[str],
    percent_names: Sequence[str],
    context: str,
) -> tuple[list[int], list[float]]:
    counts: list[int] = []
    for key in count_names:
        count = _json_member(document, key, context)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"{context}: {key} must be a non-negative integer, got {count!r}")
        counts.append(count)
    percents: list[float] = []
    for key in percent_names:
        percent = _json_member(document, key, context)
        if (
            isinstance(percent, bool)
            or not isinstance(percent, int | float)
            or not math.isfinite(percent)
            or percent < 0
        ):
            raise ConfigError(f"{context}: {key} must be a non-negative number, got {percent!r}")
        percents.append(float(percent))
    return counts, percents


def _thresholds_from_json(data: object, context: str) -> Thresholds:
    document = _json_object(data, context)
    return _thresholds(*_json_limits(document, _COUNT_ATTRIBUTES, _PERCENT_ATTRIBUTES, context))


def _link_thresholds_from_json(data: object, context: str) -> LinkThresholds:
    document = _json_object(data, context)
    return _link_thresholds(
        *_json_limits(document, _LINK_COUNT_ATTRIBUTES, _LINK_PERCENT_ATTRIBUTES, context)
    )


def _connector_thresholds_from_json(data: object, context: str) -> ConnectorThresholds:
    return ConnectorThresholds(
        _thresholds_from_json(data, context), _link_thresholds_from_json(data, context)
    )


def _entity_type_mapping_from_json(data: object, context: str) -> EntityTypeMapping:
    document = _json_object(data, context)
    columns = _json_names(document, "columns", context)
    primary_keys = _json_names(document, "primaryKeys", context)
    for primary_key in primary_keys:
        if primary_key not in columns:
            raise ConfigError(f"{context}: primary key {primary_key!r} is not in 'columns'")
    return EntityTypeMapping(
        identifier=_json_name(document, "identifier", context),
        connector=_json_name(document, "connector", context),
        table=_json_table(document, context),
        columns=columns,
        primary_keys=primary_keys,
        thresholds=_thresholds_from_json(
            _json_member(document, "thresholds", context), f"{context}.thresholds"
        ),
    )


def _association_mapping_from_json(
    data: object, context: str, entity_tables: dict[str, str | None]
) -> EntityAssociationMapping:
    """As from XML: a missing (or null) ``connectionTable`` is taken from the entity type
    mapping ``entityPropertyMapping1`` names."""
    document = _json_object(data, context)
    identifier = _json_name(document, "identifier", context)
    property_mapping1: str | None = None
    if document.get("entityPropertyMapping1") is not None:
        property_mapping1 = _json_name(document, "entityPropertyMapping1", context)
    if document.get("connectionTable") is None:
        table = _association_table(identifier, property_mapping1, entity_tables, context)
    else:
        table = _json_table(document, context)
    return EntityAssociationMapping(
        identifier=identifier,
        connector=_json_name(document, "connector", context),
        table=table,
        column1=_json_name(document, "column1", context),
        column2=_json_name(document, "column2", context),
        thresholds=_link_thresholds_from_json(
            _json_member(document, "thresholds", context), f"{context}.thresholds"
        ),
        entity_property_mapping1=property_mapping1,
    )
