"""The XML reader: Identity Manager configuration files -> :class:`Mappings`, and any other
element by name (the server's ``OpenIdClient`` elements).

XML is parsed with expat directly (not ElementTree) so that every element keeps its line number
for messages; see the package's notes for what is refused and why.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar
from xml.parsers import expat

from prepsync.config.mappings import (
    ENTITY_TYPE_MAPPING,
    MAPPING_ELEMENTS,
    EntityAssociationMapping,
    EntityTypeMapping,
    Mappings,
    TableSpec,
    association_table,
    table_name_problem,
)
from prepsync.config.resolution import primary_key_problem, resolve_tables
from prepsync.config.thresholds import (
    CONNECTOR_DEFAULTS,
    ConnectorThresholds,
    Limits,
    LinkThresholds,
    Thresholds,
)
from prepsync.errors import ConfigError

logger = logging.getLogger("prepsync.config")

ROOT_ELEMENT = "ConfigurationFile"
CONNECTOR_ELEMENT = "Connector"

_Limits = TypeVar("_Limits", bound=Limits)


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
                    connector_thresholds = _connector_thresholds(element, location)
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


def _limits_from_attributes(
    kind: type[_Limits],
    element: _XmlElement,
    location: str,
    defaults: _Limits | None = None,
    *,
    aliases: bool = False,
) -> _Limits:
    """The limits an element's attributes set (``aliases``: their other spellings instead),
    each at its value in ``defaults`` (0 when None) when absent."""
    default = defaults if defaults is not None else kind()
    values: dict[str, int | float] = {}
    for limit in kind.LIMITS:
        name = limit.alias if aliases else limit.xml
        if name is None:
            values[limit.field] = default.value(limit)
            continue
        value = _limit_attribute(element, name, location, default.value(limit), limit.percent)
        values[limit.field] = value if limit.percent else int(value)
    return kind.of(values)


def _association_thresholds(element: _XmlElement, location: str) -> LinkThresholds:
    """REFERENCE §1's ``MaximumLink*`` names, and the reference page's names without ``Link``."""
    spelled = _limits_from_attributes(LinkThresholds, element, location)
    alias = _limits_from_attributes(LinkThresholds, element, location, aliases=True)
    return spelled.strictest(alias)


def _connector_thresholds(element: _XmlElement, location: str) -> ConnectorThresholds:
    return ConnectorThresholds(
        _limits_from_attributes(Thresholds, element, location, CONNECTOR_DEFAULTS.resources),
        _limits_from_attributes(LinkThresholds, element, location, CONNECTOR_DEFAULTS.links),
    )


def _table_attribute(element: _XmlElement, location: str) -> str | None:
    """The ``ConnectionTable`` attribute, checked; None when the element has none."""
    table = element.attributes.get("ConnectionTable")
    if table is None:
        return None
    problem = table_name_problem(table)
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
    problem = primary_key_problem(identifier, primary_keys)
    if problem is not None:
        raise ConfigError(f"{location}: {problem}")
    return EntityTypeMapping(
        identifier,
        connector,
        table,
        tuple(columns),
        tuple(primary_keys),
        _limits_from_attributes(Thresholds, element, location),
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
        table = association_table(identifier, property_mapping1, entity_tables, location)
    return EntityAssociationMapping(
        identifier,
        connector,
        table,
        column1,
        column2,
        _association_thresholds(element, location),
        property_mapping1,
    )
