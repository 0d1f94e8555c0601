"""The mapping model: a connector's entity type and association mappings, from the XML
(:mod:`prepsync.config.xmlreader`) or from the server's JSON (:meth:`Mappings.from_json`), and the
rules that name a table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prepsync.config.jsonvalues import json_array, json_member, json_name, json_names, json_object
from prepsync.config.thresholds import ConnectorThresholds, LinkThresholds, Thresholds
from prepsync.errors import ConfigError

ENTITY_TYPE_MAPPING = "EntityTypeMapping"
ENTITY_ASSOCIATION_MAPPING = "EntityAssociationMapping"
MAPPING_ELEMENTS = (ENTITY_TYPE_MAPPING, ENTITY_ASSOCIATION_MAPPING)

SERVER_MAPPINGS = "server mappings"


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
        document = json_object(data, SERVER_MAPPINGS)
        connector = json_name(document, "connector", SERVER_MAPPINGS)
        entity_types = tuple(
            _entity_type_mapping_from_json(item, f"{SERVER_MAPPINGS}: entityTypeMappings[{index}]")
            for index, item in enumerate(
                json_array(document, "entityTypeMappings", SERVER_MAPPINGS)
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
                json_array(document, "entityAssociationMappings", SERVER_MAPPINGS)
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
            else ConnectorThresholds.from_json(
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


def table_name(connection_table: str) -> str:
    """The table a ``ConnectionTable`` names: a trailing ``.csv`` (any case) is the file's
    extension, as Identity Manager's own examples write it, not part of the name."""
    if connection_table[-4:].lower() == ".csv":
        return connection_table[:-4]
    return connection_table


def table_key(connection_table: str) -> str:
    """Two ``ConnectionTable`` values name one table exactly when their keys are equal."""
    return fold(table_name(connection_table))


def fold(name: str) -> str:
    """The case-insensitive comparison key of a table or column name."""
    return name.casefold()


def table_name_problem(table: str) -> str | None:
    """Why ``table`` cannot name files in the sources/working directories, or None."""
    if not table:
        return "ConnectionTable is empty"
    name = table_name(table)
    if not name:
        return f"ConnectionTable {table!r} is only the .csv extension"
    if name in (".", "..") or any(character in table for character in "/\\\0"):
        return f"ConnectionTable {table!r} is not a plain file name"
    return None


def association_table(
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


def _json_table(document: dict[str, object], context: str) -> str:
    table = json_name(document, "connectionTable", context)
    problem = table_name_problem(table)
    if problem is not None:
        raise ConfigError(f"{context}: {problem}")
    return table


def _entity_type_mapping_from_json(data: object, context: str) -> EntityTypeMapping:
    document = json_object(data, context)
    columns = json_names(document, "columns", context)
    primary_keys = json_names(document, "primaryKeys", context)
    for primary_key in primary_keys:
        if primary_key not in columns:
            raise ConfigError(f"{context}: primary key {primary_key!r} is not in 'columns'")
    return EntityTypeMapping(
        identifier=json_name(document, "identifier", context),
        connector=json_name(document, "connector", context),
        table=_json_table(document, context),
        columns=columns,
        primary_keys=primary_keys,
        thresholds=Thresholds.from_json(
            json_member(document, "thresholds", context), f"{context}.thresholds"
        ),
    )


def _association_mapping_from_json(
    data: object, context: str, entity_tables: dict[str, str | None]
) -> EntityAssociationMapping:
    """As from XML: a missing (or null) ``connectionTable`` is taken from the entity type
    mapping ``entityPropertyMapping1`` names."""
    document = json_object(data, context)
    identifier = json_name(document, "identifier", context)
    property_mapping1: str | None = None
    if document.get("entityPropertyMapping1") is not None:
        property_mapping1 = json_name(document, "entityPropertyMapping1", context)
    if document.get("connectionTable") is None:
        table = association_table(identifier, property_mapping1, entity_tables, context)
    else:
        table = _json_table(document, context)
    return EntityAssociationMapping(
        identifier=identifier,
        connector=json_name(document, "connector", context),
        table=table,
        column1=json_name(document, "column1", context),
        column2=json_name(document, "column2", context),
        thresholds=LinkThresholds.from_json(
            json_member(document, "thresholds", context), f"{context}.thresholds"
        ),
        entity_property_mapping1=property_mapping1,
    )
