"""Identity Manager XML configuration (or the server's JSON) -> per-table specs (REFERENCE §1, §7).

The package's modules: :mod:`~prepsync.config.thresholds` (the threshold model, one table of
limits per kind), :mod:`~prepsync.config.mappings` (the mapping model, table names, the server's
JSON), :mod:`~prepsync.config.resolution` (mappings -> one TableSpec per table),
:mod:`~prepsync.config.xmlreader` (the XML reader), :mod:`~prepsync.config.jsonvalues` (checks of
JSON values). Callers import from ``prepsync.config``.

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

from prepsync.config.mappings import (
    EntityAssociationMapping,
    EntityTypeMapping,
    Mappings,
    TableSpec,
    table_key,
    table_name,
)
from prepsync.config.resolution import resolve_tables
from prepsync.config.thresholds import (
    CONNECTOR_DEFAULTS,
    ConnectorThresholds,
    LinkThresholds,
    Thresholds,
)
from prepsync.config.xmlreader import (
    XML_BLOCK_FIRST,
    XML_BLOCK_MAX,
    configuration_elements,
    connectors_in,
    load_mappings,
    load_tables,
    required_attribute,
)

__all__ = [
    "CONNECTOR_DEFAULTS",
    "XML_BLOCK_FIRST",
    "XML_BLOCK_MAX",
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
    "table_key",
    "table_name",
]
