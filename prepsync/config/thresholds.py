"""The threshold model: limits on one session's changes, enforced by the server; 0 = off.

Each limit is declared once, in its class's ``LIMITS`` table (field name, XML attribute name,
count or percentage); merging (:meth:`strictest`), the JSON (whose keys are the XML names, so
it reads like the configuration) and the XML reader all go through that table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

from prepsync.config.jsonvalues import json_count, json_object, json_percent

_Number = TypeVar("_Number", int, float)
_Limits = TypeVar("_Limits", bound="Limits")


@dataclass(frozen=True)
class Limit:
    """One threshold: its field, its XML attribute (and JSON key), and its kind."""

    field: str
    xml: str
    percent: bool  # a percentage of the rows stored before (a float), else a count
    # Another spelling Identity Manager's docs use for the same limit (read too; the stricter
    # of the two holds); None when there is none.
    alias: str | None = None


def _stricter(first: _Number, second: _Number) -> _Number:
    """The smaller limit, where 0 means "no limit" and so never wins over a real one."""
    if first == 0:
        return second
    if second == 0:
        return first
    return min(first, second)


@dataclass(frozen=True)
class Limits:
    """What every table of limits does; subclasses declare fields and ``LIMITS``."""

    LIMITS: ClassVar[tuple[Limit, ...]] = ()

    def value(self, limit: Limit) -> int | float:
        number: int | float = getattr(self, limit.field)
        return number

    def strictest(self: _Limits, other: _Limits) -> _Limits:
        """Per field, the smaller non-zero limit: several mappings on one table all hold."""
        return replace(
            self,
            **{
                limit.field: _stricter(self.value(limit), other.value(limit))
                for limit in self.LIMITS
            },
        )

    def to_json(self) -> dict[str, int | float]:
        """Keys are the XML attribute names, so the JSON reads like the configuration."""
        return {limit.xml: self.value(limit) for limit in self.LIMITS}

    @classmethod
    def from_json(cls: type[_Limits], data: object, context: str = "thresholds") -> _Limits:
        """Inverse of :meth:`to_json`; every key is required (ConfigError otherwise)."""
        document = json_object(data, context)
        return cls.of(
            {
                limit.field: (json_percent if limit.percent else json_count)(
                    document, limit.xml, context
                )
                for limit in cls.LIMITS
            }
        )

    @classmethod
    def of(cls: type[_Limits], values: dict[str, int | float]) -> _Limits:
        """From a value per field name (a missing field keeps its default)."""
        return replace(cls(), **values)


@dataclass(frozen=True)
class Thresholds(Limits):
    """Limits on the resources (rows of entity type mappings) one session changes."""

    max_inserted: int = 0
    max_updated: int = 0
    max_deleted: int = 0
    max_pct_inserted: float = 0.0  # percent of rows already stored
    max_pct_updated: float = 0.0
    max_pct_deleted: float = 0.0

    LIMITS: ClassVar[tuple[Limit, ...]] = (
        Limit("max_inserted", "MaximumInsertedLines", percent=False),
        Limit("max_updated", "MaximumUpdatedLines", percent=False),
        Limit("max_deleted", "MaximumDeletedLines", percent=False),
        Limit("max_pct_inserted", "MaxPercentageInsertedLines", percent=True),
        Limit("max_pct_updated", "MaxPercentageUpdatedLines", percent=True),
        Limit("max_pct_deleted", "MaxPercentageDeletedLines", percent=True),
    )


@dataclass(frozen=True)
class LinkThresholds(Limits):
    """Limits on the links (association rows or column pairs) one session changes.

    Links are inserted or deleted, never updated: a pair whose value changes is one link
    deleted and one inserted.
    """

    max_inserted: int = 0
    max_deleted: int = 0
    max_pct_inserted: float = 0.0  # percent of stored links
    max_pct_deleted: float = 0.0

    # The Entity Association Mapping reference page spells an association's limits without
    # "Link" (MaximumInsertedLines...): the aliases, read on association mappings only.
    LIMITS: ClassVar[tuple[Limit, ...]] = (
        Limit("max_inserted", "MaximumLinkInsertedLines", False, "MaximumInsertedLines"),
        Limit("max_deleted", "MaximumLinkDeletedLines", False, "MaximumDeletedLines"),
        Limit(
            "max_pct_inserted", "MaxLinkPercentageInsertedLines", True, "MaxPercentageInsertedLines"
        ),
        Limit(
            "max_pct_deleted", "MaxLinkPercentageDeletedLines", True, "MaxPercentageDeletedLines"
        ),
    )


@dataclass(frozen=True)
class ConnectorThresholds:
    """``<Connector>``'s limits, summed over all its entity types and associations."""

    resources: Thresholds
    links: LinkThresholds

    def to_json(self) -> dict[str, int | float]:
        return {**self.resources.to_json(), **self.links.to_json()}

    @classmethod
    def from_json(cls, data: object, context: str = "connectorThresholds") -> ConnectorThresholds:
        return cls(Thresholds.from_json(data, context), LinkThresholds.from_json(data, context))


# Identity Manager's defaults for an attribute a <Connector> element leaves out.
CONNECTOR_DEFAULTS = ConnectorThresholds(
    Thresholds(100, 100, 100, 5.0, 5.0, 5.0), LinkThresholds(1000, 1000, 5.0, 5.0)
)
