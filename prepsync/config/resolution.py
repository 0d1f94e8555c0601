"""Resolution: a connector's mappings grouped by table into one :class:`TableSpec` each (its kept
columns, its key, its thresholds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prepsync.config.mappings import (
    EntityAssociationMapping,
    EntityTypeMapping,
    Mappings,
    TableSpec,
    fold,
    table_key,
    table_name,
    table_name_problem,
)
from prepsync.config.thresholds import Thresholds
from prepsync.errors import ConfigError


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
        problem = table_name_problem(mapping.table)
        if problem is not None:
            raise ConfigError(f"{source}: mapping {mapping.identifier!r}: {problem}")
        return tables.setdefault(table_key(mapping.table), _TableBuilder(table_name(mapping.table)))

    for entity_type in mappings.entity_types:
        problem = primary_key_problem(entity_type.identifier, entity_type.primary_keys)
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


@dataclass
class _TableBuilder:
    name: str
    columns: dict[str, str] = field(default_factory=dict)  # folded -> first spelling
    entity_types: list[EntityTypeMapping] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)

    def add_columns(self, columns: Sequence[str]) -> None:
        for column in columns:
            self.columns.setdefault(fold(column), column)

    def build(self, source: str) -> TableSpec:
        key: tuple[str, ...] | None = None
        if self.entity_types:
            first = self.entity_types[0]
            first_key = fold(first.primary_keys[0])
            for other in self.entity_types[1:]:
                if fold(other.primary_keys[0]) != first_key:
                    raise ConfigError(
                        f"{source}: table {self.name!r}: entity type mappings "
                        f"{first.identifier!r} and {other.identifier!r} disagree on the "
                        f"primary key ({first.primary_keys[0]!r} vs {other.primary_keys[0]!r})"
                    )
            # The kept column's spelling, so that key and columns always agree letter for letter.
            key = (self.columns[first_key],)
        return TableSpec(self.name, tuple(self.columns.values()), key, self.thresholds)


def primary_key_problem(identifier: str, primary_keys: Sequence[str]) -> str | None:
    distinct = {fold(column): column for column in primary_keys}
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
