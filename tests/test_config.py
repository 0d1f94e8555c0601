"""prepsync.config: Identity Manager XML / server JSON -> per-table specs (REFERENCE §1, §7).

Realistic configurations live in tests/data/config/; each error case writes its own small file
next to the assertion so the broken XML and the expected message read together.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prepsync.config import (
    XML_BLOCK_FIRST,
    XML_BLOCK_MAX,
    ConnectorThresholds,
    EntityAssociationMapping,
    EntityTypeMapping,
    LinkThresholds,
    Mappings,
    TableSpec,
    Thresholds,
    connectors_in,
    load_mappings,
    load_tables,
    resolve_tables,
    table_key,
    table_name,
)
from prepsync.config.xmlreader import _xml_blocks
from prepsync.errors import ConfigError
from prepsync.server.clients import OpenIdClient, hash_secret, load_clients

DATA = Path(__file__).parent / "data" / "config"
SPEC_EXAMPLE = DATA / "spec_example.xml"
NO_LIMITS = Thresholds()
NO_LINK_LIMITS = LinkThresholds()


def write_config(folder: Path, body: str, name: str = "conf.xml") -> Path:
    """A ConfigurationFile holding ``body``, whose first line is line 2 of the file."""
    path = folder / name
    path.write_text(f"<ConfigurationFile>\n{body}\n</ConfigurationFile>\n", encoding="utf-8")
    return path


def config_error(path: Path, connector: str = "AD") -> str:
    with pytest.raises(ConfigError) as raised:
        load_tables(path, connector)
    message = str(raised.value)
    assert "\n" not in message, "the CLI shows errors on one line"
    return message


# --------------------------------------------------------------------------------------------
# Tables from the REFERENCE §1 example


def test_spec_example_gives_one_spec_per_connection_table() -> None:
    assert load_tables(SPEC_EXAMPLE, "AD") == (
        # parentdn comes from the association on the entries table; "manager" has no column.
        TableSpec("ADExport_entries", ("objectGUID", "dn", "parentdn"), ("objectGUID",), NO_LIMITS),
        # Only an association uses the members table: keyed by all its columns (None).
        TableSpec("ADExport_members", ("dn", "member"), None, NO_LIMITS),
    )


def test_spec_example_mappings_keep_what_the_server_serves() -> None:
    mappings = load_mappings(SPEC_EXAMPLE, "AD")
    assert mappings.connector == "AD"
    assert mappings.entity_types == (
        EntityTypeMapping(
            "AD_Entry", "AD", "ADExport_entries", ("objectGUID", "dn"), ("objectGUID",), NO_LIMITS
        ),
    )
    assert mappings.associations == (
        EntityAssociationMapping(
            "AD_Entry_parentdn", "AD", "ADExport_entries", "parentdn", "dn", NO_LINK_LIMITS
        ),
        EntityAssociationMapping(
            "AD_Entry_member", "AD", "ADExport_members", "dn", "member", NO_LINK_LIMITS
        ),
    )


def test_mappings_of_other_connectors_are_ignored_and_connector_matches_exactly() -> None:
    # The file also maps connectors "HR" and "ad"; "ad" is not "AD".
    assert [table.name for table in load_tables(SPEC_EXAMPLE, "HR")] == ["HR_people"]
    assert [table.name for table in load_tables(SPEC_EXAMPLE, "ad")] == ["ADExport_lowercase"]


def test_namespaced_configuration_file_is_read_by_local_names() -> None:
    assert load_tables(DATA / "namespaced.xml", "LDAP") == (
        # IsPrimaryKey="TRUE": booleans are case-insensitive.
        TableSpec("LDAP_entries", ("uid", "cn"), ("uid",), NO_LIMITS),
        # The association uses a prefixed element name.
        TableSpec("LDAP_groups", ("group", "uid"), None, NO_LIMITS),
    )


def test_folder_reads_every_xml_below_it_and_skips_other_roots() -> None:
    tables = load_tables(DATA / "folder", "AD")
    # 10-entries.xml, then sub/20-members.xml; 05-not-configuration.xml (root <Settings>) maps
    # ADExport_ignored for AD and must not count.
    assert tables == (
        TableSpec(
            "ADExport_entries",
            ("objectGUID", "dn"),
            ("objectGUID",),
            Thresholds(max_deleted=500),
        ),
        TableSpec("ADExport_members", ("dn", "member"), None, NO_LIMITS),
    )


def test_folder_order_decides_first_spelling_and_column_order(tmp_path: Path) -> None:
    # "b.xml" sorts after "a/z.xml" (folder by folder), so the folder's file is first.
    (tmp_path / "a").mkdir()
    write_config(
        tmp_path / "a",
        '<EntityAssociationMapping Identifier="first" Connector="AD" ConnectionTable="T" '
        'Column1="x" Column2="y" />',
        name="z.xml",
    )
    write_config(
        tmp_path,
        '<EntityAssociationMapping Identifier="second" Connector="AD" ConnectionTable="t" '
        'Column1="Y" Column2="w" />',
        name="b.XML",  # the extension matches in any case
    )
    assert load_tables(tmp_path, "AD") == (TableSpec("T", ("x", "y", "w"), None, NO_LIMITS),)


def test_tables_and_columns_group_case_insensitively() -> None:
    assert load_tables(DATA / "case_insensitive.xml", "HR") == (
        TableSpec(
            "HR_People",  # first spelling of HR_People / HR_PEOPLE / hr_people
            ("Id", "Name", "company", "ManagerId"),  # ID, NAME and id are kept once
            ("Id",),  # the mappings agree on Id / ID; the key is spelled as the kept column
            NO_LIMITS,
        ),
    )


def test_key_is_spelled_as_the_kept_column(tmp_path: Path) -> None:
    # Two properties read one column; the pipeline can rely on key ⊆ columns letter for letter.
    path = write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="Person" Connector="HR" ConnectionTable="people">
          <Property Identifier="login" ConnectionColumn="ID" />
          <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
        </EntityTypeMapping>""",
    )
    assert load_tables(path, "HR") == (TableSpec("people", ("ID",), ("ID",), NO_LIMITS),)


def test_entity_columns_come_before_association_columns(tmp_path: Path) -> None:
    # The association comes first in the file, but the Mappings shape (and the server's JSON)
    # keeps the kinds apart, so entity type mappings are resolved first, from XML and JSON alike.
    path = write_config(
        tmp_path,
        """
        <EntityAssociationMapping Identifier="parent" Connector="AD" ConnectionTable="entries"
            Column1="parent" Column2="dn" />
        <EntityTypeMapping Identifier="Entry" Connector="AD" ConnectionTable="Entries">
          <Property Identifier="dn" ConnectionColumn="dn" IsPrimaryKey="true" />
        </EntityTypeMapping>
        """,
    )
    assert load_tables(path, "AD") == (TableSpec("Entries", ("dn", "parent"), ("dn",), NO_LIMITS),)
    mappings = load_mappings(path, "AD")
    assert resolve_tables(Mappings.from_json(mappings.to_json())) == load_tables(path, "AD")


# --------------------------------------------------------------------------------------------
# Thresholds


def test_thresholds_on_a_table_are_the_strictest_of_its_entity_type_mappings() -> None:
    assert load_tables(DATA / "thresholds.xml", "HR") == (
        TableSpec(
            "HR_people",
            ("id", "manager"),
            ("id",),
            # The association's limits count links, not the table's resources.
            Thresholds(max_inserted=1000, max_pct_updated=30.0, max_pct_deleted=20.0),
        ),
        TableSpec("HR_teams", ("team", "id"), None, Thresholds()),
    )


def test_association_limits_count_links_in_either_spelling() -> None:
    manager, team = load_mappings(DATA / "thresholds.xml", "HR").associations
    # MaximumInsertedLines (the reference page's spelling) and MaximumLinkInsertedLines="300":
    # the stricter holds; MaxPercentageDeletedLines is the link percentage.
    assert manager.thresholds == LinkThresholds(
        max_inserted=250, max_deleted=40, max_pct_inserted=0.0, max_pct_deleted=7.5
    )
    assert team.thresholds == LinkThresholds(max_deleted=9)  # links have no "updated"


def test_connector_element_takes_identity_manager_defaults(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '<Connector Identifier="AD" DisplayName_L1="AD" MaximumDeletedLines="7" '
        'MaxLinkPercentageInsertedLines="0" />\n'
        '<Connector Identifier="HR" DisplayName_L1="HR" />\n'
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        'Column1="a" Column2="b" />',
    )
    assert load_mappings(path, "AD").connector_thresholds == ConnectorThresholds(
        Thresholds(100, 100, 7, 5.0, 5.0, 5.0), LinkThresholds(1000, 1000, 0.0, 5.0)
    )
    other = write_config(
        tmp_path,
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        'Column1="a" Column2="b" />',
        name="other.xml",
    )
    assert load_mappings(other, "AD").connector_thresholds is None  # no element: no limits
    twice = write_config(
        tmp_path,
        '<Connector Identifier="AD" DisplayName_L1="AD" />\n'
        '<Connector Identifier="AD" DisplayName_L1="AD again" />\n'
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        'Column1="a" Column2="b" />',
        name="twice.xml",
    )
    assert "Connector 'AD' is defined twice" in config_error(twice)
    bad = write_config(
        tmp_path,
        '<Connector Identifier="AD" DisplayName_L1="AD" MaximumLinkDeletedLines="lots" />\n'
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        'Column1="a" Column2="b" />',
        name="bad.xml",
    )
    assert config_error(bad) == (
        f"{bad}, line 2: MaximumLinkDeletedLines='lots' is not a non-negative integer (0 = off)"
    )


def test_strictest_takes_the_smaller_non_zero_value_per_field() -> None:
    first = Thresholds(10, 0, 5, 0.0, 2.5, 50.0)
    second = Thresholds(20, 7, 0, 0.0, 1.0, 0.0)
    assert first.strictest(second) == Thresholds(10, 7, 5, 0.0, 1.0, 50.0)
    assert second.strictest(first) == first.strictest(second)
    assert first.strictest(Thresholds()) == first


def test_thresholds_json_uses_the_xml_attribute_names() -> None:
    thresholds = Thresholds(1, 2, 3, 4.5, 5.0, 6.25)
    assert thresholds.to_json() == {
        "MaximumInsertedLines": 1,
        "MaximumUpdatedLines": 2,
        "MaximumDeletedLines": 3,
        "MaxPercentageInsertedLines": 4.5,
        "MaxPercentageUpdatedLines": 5.0,
        "MaxPercentageDeletedLines": 6.25,
    }
    assert Thresholds.from_json(json.loads(json.dumps(thresholds.to_json()))) == thresholds


@pytest.mark.parametrize("kind", [Thresholds, LinkThresholds])
def test_each_limit_is_declared_once_in_its_table(kind: type[Thresholds | LinkThresholds]) -> None:
    """The LIMITS table drives merging, JSON and XML: it must name every field, in order, and
    give each a distinct XML name."""
    limits = kind.LIMITS
    assert [limit.field for limit in limits] == [f.name for f in dataclasses.fields(kind)]
    assert len({limit.xml for limit in limits}) == len(limits)
    for limit in limits:
        assert limit.percent == isinstance(getattr(kind(), limit.field), float)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("MaximumInsertedLines", "many"),
        ("MaximumLinkInsertedLines", "-1"),
        ("MaximumDeletedLines", "2.5"),
        ("MaxPercentageInsertedLines", "ten"),
        ("MaxLinkPercentageDeletedLines", "-0.5"),
        ("MaxPercentageDeletedLines", "nan"),
        ("MaximumDeletedLines", ""),
    ],
)
def test_bad_threshold_value_is_an_error_naming_file_line_and_attribute(
    tmp_path: Path, attribute: str, value: str
) -> None:
    path = write_config(
        tmp_path,
        f'<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        f'Column1="a" Column2="b" {attribute}="{value}" />',
    )
    message = config_error(path)
    assert message.startswith(f"{path}, line 2: ")
    assert f"{attribute}={value!r}" in message
    assert "non-negative" in message


# --------------------------------------------------------------------------------------------
# Configuration errors


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.xml"
    assert config_error(missing) == f"{missing}: no such file or directory"


def test_malformed_xml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.xml"
    path.write_text(
        '<ConfigurationFile>\n  <EntityTypeMapping Identifier="x">\n</ConfigurationFile>\n'
    )
    message = config_error(path)
    assert message.startswith(f"{path}, line 3, column ")
    assert "malformed XML" in message


def test_malformed_xml_in_a_folder_names_that_file(tmp_path: Path) -> None:
    write_config(tmp_path, "", name="good.xml")
    broken = tmp_path / "sub" / "broken.xml"
    broken.parent.mkdir()
    broken.write_text("<ConfigurationFile>\n<unclosed>\n")
    assert config_error(tmp_path).startswith(f"{broken}, line 3")


def test_explicit_file_with_another_root_is_an_error() -> None:
    path = DATA / "folder" / "05-not-configuration.xml"
    message = config_error(path)
    assert message == f"{path}: the root element is 'Settings', not 'ConfigurationFile'"


def test_association_without_table_or_entity_property_mapping_is_an_error(
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path,
        '<EntityAssociationMapping Identifier="m" Connector="AD" Column1="a" Column2="b" />',
    )
    assert config_error(path) == (
        f"{path}, line 2: EntityAssociationMapping 'm' has no ConnectionTable and no "
        "EntityPropertyMapping1 to take it from"
    )


def test_uncounted_mapping_without_connection_table_is_ignored(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '<EntityAssociationMapping Identifier="m" Connector="HR" Column1="a" Column2="b" />\n'
        '<EntityAssociationMapping Identifier="n" Connector="AD" ConnectionTable="T" '
        'Column1="a" Column2="b" />',
    )
    assert [table.name for table in load_tables(path, "AD")] == ["T"]


def test_entity_type_mapping_without_primary_key_is_an_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="AD_Entry" Connector="AD" ConnectionTable="T">
          <Property Identifier="dn" ConnectionColumn="dn" IsPrimaryKey="false" />
        </EntityTypeMapping>""",
    )
    message = config_error(path)
    assert message.startswith(f"{path}, line 2: entity type mapping 'AD_Entry' has no primary key")


def test_entity_type_mapping_with_two_primary_keys_is_an_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="AD_Entry" Connector="AD" ConnectionTable="T">
          <Property Identifier="guid" ConnectionColumn="objectGUID" IsPrimaryKey="true" />
          <Property Identifier="dn" ConnectionColumn="dn" IsPrimaryKey="1" />
        </EntityTypeMapping>""",
    )
    assert config_error(path) == (
        f"{path}, line 2: entity type mapping 'AD_Entry' has 2 primary key columns "
        "('objectGUID', 'dn'); exactly one is needed"
    )


def test_primary_key_property_without_column_is_an_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="AD_Entry" Connector="AD" ConnectionTable="T">
          <Property Identifier="dn" ConnectionColumn="dn" />
          <Property Identifier="guid" IsPrimaryKey="true" />
        </EntityTypeMapping>""",
    )
    message = config_error(path)
    assert message.startswith(f"{path}, line 4: property 'guid' of EntityTypeMapping 'AD_Entry'")
    assert "has no ConnectionColumn" in message


def test_entity_type_mappings_disagreeing_on_the_key_is_an_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="A" Connector="AD" ConnectionTable="people">
          <Property Identifier="id" ConnectionColumn="p" IsPrimaryKey="true" />
        </EntityTypeMapping>
        <EntityTypeMapping Identifier="B" Connector="AD" ConnectionTable="People">
          <Property Identifier="id" ConnectionColumn="q" IsPrimaryKey="true" />
          <Property Identifier="p" ConnectionColumn="p" />
        </EntityTypeMapping>""",
    )
    assert config_error(path) == (
        f"{path}: table 'people': entity type mappings 'A' and 'B' disagree on the primary key "
        "('p' vs 'q')"
    )


def test_no_mapping_for_the_connector_names_path_and_the_connectors_found() -> None:
    assert config_error(SPEC_EXAMPLE, "LDAP") == (
        f"no mapping for connector 'LDAP' in {SPEC_EXAMPLE} (it has mappings for 'AD', 'HR', 'ad')"
    )


def test_folder_without_configuration_file_has_no_mapping(tmp_path: Path) -> None:
    (tmp_path / "other.xml").write_text("<Settings />")
    assert config_error(tmp_path) == f"no mapping for connector 'AD' in {tmp_path}"


def test_invalid_boolean_is_an_error_rather_than_false(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="E" Connector="AD" ConnectionTable="T">
          <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="ture" />
        </EntityTypeMapping>""",
    )
    assert config_error(path) == (
        f"{path}, line 3: IsPrimaryKey='ture' is not a boolean (true, false, 1 or 0)"
    )


def test_same_mapping_identifier_twice_is_an_error(tmp_path: Path) -> None:
    mapping = (
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        'Column1="a" Column2="b" />'
    )
    first = write_config(tmp_path, mapping, name="a.xml")
    second = write_config(tmp_path, mapping, name="copy of a.xml")
    assert config_error(tmp_path) == (
        f"{second}, line 2: EntityAssociationMapping 'm' is defined twice "
        f"(first at {first}, line 2)"
    )


@pytest.mark.parametrize("table", ["../escape", "sub/table", "C:\\temp\\x", ".."])
def test_connection_table_must_be_a_plain_file_name(tmp_path: Path, table: str) -> None:
    # The table names <table>.csv and the output files: it must not reach outside the folders.
    path = write_config(
        tmp_path,
        f'<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="{table}" '
        'Column1="a" Column2="b" />',
    )
    assert config_error(path) == (
        f"{path}, line 2: ConnectionTable {table!r} is not a plain file name"
    )


def test_association_without_column_is_an_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        'Column1="a" />',
    )
    assert config_error(path) == f"{path}, line 2: EntityAssociationMapping has no Column2"


def test_entity_declarations_are_refused(tmp_path: Path) -> None:
    # "Billion laughs": a tiny file that expands to gigabytes in a naive parser.
    path = tmp_path / "laughs.xml"
    path.write_text(
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE ConfigurationFile [\n  <!ENTITY lol "lol">\n]>\n'
        "<ConfigurationFile>&lol;</ConfigurationFile>\n"
    )
    assert config_error(path) == f"{path}, line 3: entity declarations are not allowed"


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE ConfigurationFile SYSTEM "http://example.com/configuration.dtd">',
        '<!DOCTYPE ConfigurationFile PUBLIC "-//Example//DTD Configuration//EN" "conf.dtd">',
    ],
)
def test_external_dtd_is_refused(tmp_path: Path, doctype: str) -> None:
    path = tmp_path / "dtd.xml"
    path.write_text(f'<?xml version="1.0"?>\n{doctype}\n<ConfigurationFile/>\n')
    message = config_error(path)
    assert message.startswith(f"{path}, line 2: external DTDs are not allowed")


def test_other_xml_with_an_external_dtd_in_a_folder_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "page.xml").write_text(
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n<html/>\n'
    )
    write_config(
        tmp_path,
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        'Column1="a" Column2="b" />',
    )
    assert [table.name for table in load_tables(tmp_path, "AD")] == ["T"]


def test_doctype_without_external_dtd_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "doctype.xml"
    path.write_text(
        "<!DOCTYPE ConfigurationFile>\n<ConfigurationFile>\n"
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        'Column1="a" Column2="b" />\n</ConfigurationFile>\n'
    )
    assert [table.name for table in load_tables(path, "AD")] == ["T"]


def _config_with_a_long_attribute(folder: Path, size: int) -> Path:
    return write_config(
        folder,
        f'<OpenIdClient Identifier="x" Description="{"d" * size}" />\n'
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T" '
        'Column1="a" Column2="b" />',
        name=f"long-{size}.xml",
    )


def _load_seconds(path: Path) -> float:
    started = time.perf_counter()
    assert [table.name for table in load_tables(path, "AD")] == ["T"]
    return time.perf_counter() - started


def test_a_long_attribute_loads_in_time_linear_in_its_size(tmp_path: Path) -> None:
    # expat 2.5 scanned a token spanning several fed blocks again on every block: with 2 KiB
    # blocks an 8 MiB attribute took 215 times as long as a 1 MiB one (35 s against 0.16 s).
    # Linear is 8 times; the bound leaves room for a loaded machine, not for quadratic.
    small = _config_with_a_long_attribute(tmp_path, 1 << 20)
    large = _config_with_a_long_attribute(tmp_path, 8 << 20)
    small_seconds = min(_load_seconds(small) for _ in range(3))
    large_seconds = min(_load_seconds(large) for _ in range(2))
    assert large_seconds < 40 * small_seconds + 0.5


def test_xml_is_fed_in_blocks_that_double_from_a_small_first_one() -> None:
    data = bytes(range(256)) * (40 * 1024 + 3)  # a little over 10 MiB
    blocks = list(_xml_blocks(io.BytesIO(data)))
    assert b"".join(blocks) == data
    # A small first block: a huge XML file that is not a configuration is dropped early.
    assert len(blocks[0]) == XML_BLOCK_FIRST
    # Each block is as large as everything before it: few feeds, each token rescanned a few
    # times at most (10 MiB in 8 feeds, not the 5,000 of fixed 2 KiB blocks).
    assert all(len(block) == sum(map(len, blocks[:i])) for i, block in enumerate(blocks[1:-1], 1))
    assert len(blocks) == 9


def test_blocks_stop_growing_at_their_bound() -> None:
    class Endless(io.RawIOBase):
        def readinto(self, buffer: Any) -> int:
            buffer[:] = bytes(len(buffer))
            return len(buffer)

    blocks = _xml_blocks(Endless())
    sizes = [len(next(blocks)) for _ in range(14)]
    assert max(sizes) == XML_BLOCK_MAX
    assert sizes[-2:] == [XML_BLOCK_MAX, XML_BLOCK_MAX]


# --------------------------------------------------------------------------------------------
# Configurations as Identity Manager's documentation writes them


@pytest.mark.parametrize(
    ("spelled", "name"),
    [("T", "T"), ("T.csv", "T"), ("T.CSV", "T"), ("T.Csv", "T"), ("T.csv.csv", "T.csv")],
)
def test_table_name_drops_one_csv_extension(spelled: str, name: str) -> None:
    assert table_name(spelled) == name
    assert table_key(spelled) == table_key(name.upper() + ".csv")


def test_csv_extension_and_case_name_one_table_spelled_first_without_csv(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="E" Connector="AD" ConnectionTable="Entries.CSV">
  <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
</EntityTypeMapping>
<EntityAssociationMapping Identifier="A" Connector="AD" ConnectionTable="ENTRIES"
    Column1="parent" Column2="id" />
<EntityAssociationMapping Identifier="B" Connector="AD" ConnectionTable="entries.csv"
    Column1="id" Column2="owner" />""",
    )
    assert load_tables(path, "AD") == (
        TableSpec("Entries", ("id", "parent", "owner"), ("id",), NO_LIMITS),
    )


def test_connection_table_that_is_only_the_extension_is_an_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable=".csv" '
        'Column1="a" Column2="b" />',
    )
    assert config_error(path) == (
        f"{path}, line 2: ConnectionTable '.csv' is only the .csv extension"
    )


def test_entity_type_mapping_without_table_or_column_is_ignored(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="AD_State" Connector="AD" />
<EntityTypeMapping Identifier="AD_Computed" Connector="AD">
  <Property Identifier="label" />
</EntityTypeMapping>
<EntityAssociationMapping Identifier="m" Connector="AD" ConnectionTable="T"
    Column1="a" Column2="b" />""",
    )
    mappings = load_mappings(path, "AD")
    assert mappings.entity_types == ()
    assert [table.name for table in resolve_tables(mappings)] == ["T"]


def test_connector_whose_only_entity_type_mappings_have_no_table_has_no_mapping(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, '<EntityTypeMapping Identifier="AD_State" Connector="AD" />')
    assert config_error(path) == (
        f"no mapping for connector 'AD' in {path} "
        "(its entity type mappings name no ConnectionTable)"
    )


def test_entity_type_mapping_with_columns_but_no_table_is_an_error(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="AD_Entry" Connector="AD">
  <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
</EntityTypeMapping>""",
    )
    assert config_error(path) == (
        f"{path}, line 2: EntityTypeMapping 'AD_Entry' has ConnectionColumn properties but no "
        "ConnectionTable naming the file they are read from"
    )


def test_association_without_table_uses_its_first_entity_type_mappings_table(
    tmp_path: Path,
) -> None:
    # The association comes first and its entity in another file: resolution waits for all.
    write_config(
        tmp_path,
        '<EntityAssociationMapping Identifier="HR_Person_Manager" Connector="HR" '
        'Column1="id" Column2="manager" EntityPropertyMapping1="HR_Person:id" '
        'EntityPropertyMapping2="HR_Person:id" />',
        name="a.xml",
    )
    write_config(
        tmp_path,
        """<EntityTypeMapping Identifier="HR_Person" Connector="HR" ConnectionTable="people.csv">
  <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
</EntityTypeMapping>""",
        name="b.xml",
    )
    mappings = load_mappings(tmp_path, "HR")
    assert mappings.associations[0].table == "people.csv"
    assert mappings.associations[0].entity_property_mapping1 == "HR_Person:id"
    assert load_tables(tmp_path, "HR") == (
        TableSpec("people", ("id", "manager"), ("id",), NO_LIMITS),
    )


@pytest.mark.parametrize(
    ("entity_type", "property_mapping1", "problem"),
    [
        (
            '<EntityTypeMapping Identifier="HR_State" Connector="HR" />',
            "HR_State:id",
            "and the entity type mapping 'HR_State' its EntityPropertyMapping1 names has none "
            "either",
        ),
        (
            "",
            "HR_Person:id",
            "and the entity type mapping 'HR_Person' its EntityPropertyMapping1 names is not a "
            "mapping of this connector",
        ),
        (
            "",
            "HR_Person",
            "and its EntityPropertyMapping1='HR_Person' is not '<entity type mapping>:<property>'",
        ),
    ],
)
def test_association_whose_table_cannot_be_found_is_an_error_naming_it(
    tmp_path: Path, entity_type: str, property_mapping1: str, problem: str
) -> None:
    path = write_config(
        tmp_path,
        '<EntityAssociationMapping Identifier="HR_Link" Connector="HR" ConnectionTable="T" '
        'Column1="a" Column2="b" />\n'
        '<EntityAssociationMapping Identifier="HR_Person_Manager" Connector="HR" Column1="id" '
        f'Column2="manager" EntityPropertyMapping1="{property_mapping1}" />\n{entity_type}',
    )
    assert config_error(path, "HR") == (
        f"{path}, line 3: EntityAssociationMapping 'HR_Person_Manager' has no ConnectionTable, "
        + problem
    )


def test_server_json_association_without_table_takes_its_entity_types_table() -> None:
    wire: dict[str, Any] = load_mappings(SPEC_EXAMPLE, "AD").to_json()
    association = wire["entityAssociationMappings"][0]
    del association["connectionTable"]
    association["entityPropertyMapping1"] = "AD_Entry:dn"
    wire["entityAssociationMappings"][1]["connectionTable"] = "ADExport_members.CSV"
    assert resolve_tables(Mappings.from_json(wire)) == load_tables(SPEC_EXAMPLE, "AD")
    del association["entityPropertyMapping1"]
    with pytest.raises(ConfigError, match=r"entityAssociationMappings\[0\]: .*'AD_Entry_parentdn'"):
        Mappings.from_json(wire)


# --------------------------------------------------------------------------------------------
# JSON (GET /api/connectors/{connector}/mappings)


def test_mappings_json_shape() -> None:
    assert load_mappings(SPEC_EXAMPLE, "AD").to_json() == {
        "connector": "AD",
        "connectorThresholds": None,
        "entityTypeMappings": [
            {
                "identifier": "AD_Entry",
                "connector": "AD",
                "connectionTable": "ADExport_entries",
                "columns": ["objectGUID", "dn"],
                "primaryKeys": ["objectGUID"],
                "thresholds": NO_LIMITS.to_json(),
            }
        ],
        "entityAssociationMappings": [
            {
                "identifier": "AD_Entry_parentdn",
                "connector": "AD",
                "connectionTable": "ADExport_entries",
                "column1": "parentdn",
                "column2": "dn",
                "thresholds": NO_LINK_LIMITS.to_json(),
            },
            {
                "identifier": "AD_Entry_member",
                "connector": "AD",
                "connectionTable": "ADExport_members",
                "column1": "dn",
                "column2": "member",
                "thresholds": NO_LINK_LIMITS.to_json(),
            },
        ],
    }


def test_tables_from_server_json_equal_tables_from_xml() -> None:
    for path, connector in [
        (SPEC_EXAMPLE, "AD"),
        (DATA / "case_insensitive.xml", "HR"),
        (DATA / "thresholds.xml", "HR"),
    ]:
        wire = json.loads(json.dumps(load_mappings(path, connector).to_json()))
        assert resolve_tables(Mappings.from_json(wire)) == load_tables(path, connector)


_names = st.text(min_size=1, max_size=12)
_table_names = _names.filter(
    lambda name: table_name(name) not in ("", ".", "..") and not set(name) & set("/\\\0")
)
_thresholds = st.builds(
    Thresholds,
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**12),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
)

_link_thresholds = st.builds(
    LinkThresholds,
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**12),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
)


@st.composite
def _mappings(draw: st.DrawFn) -> Mappings:
    connector = draw(_names)
    entity_types = []
    for _ in range(draw(st.integers(0, 3))):
        columns = draw(st.lists(_names, min_size=1, max_size=4))
        primary_keys = draw(st.lists(st.sampled_from(columns), max_size=2))
        entity_types.append(
            EntityTypeMapping(
                draw(_names),
                connector,
                draw(_table_names),
                tuple(columns),
                tuple(primary_keys),
                draw(_thresholds),
            )
        )
    associations = [
        EntityAssociationMapping(
            draw(_names),
            connector,
            draw(_table_names),
            draw(_names),
            draw(_names),
            thresholds,
            draw(st.none() | _names),
        )
        for thresholds in draw(st.lists(_link_thresholds, max_size=3))
    ]
    connector_thresholds = draw(
        st.none() | st.builds(ConnectorThresholds, _thresholds, _link_thresholds)
    )
    return Mappings(connector, tuple(entity_types), tuple(associations), connector_thresholds)


@given(_mappings())
def test_mappings_json_round_trip(mappings: Mappings) -> None:
    assert Mappings.from_json(json.loads(json.dumps(mappings.to_json()))) == mappings


def _broken(change: Any) -> dict[str, Any]:
    """The REFERENCE §1 example's JSON with ``change`` applied to it."""
    document: dict[str, Any] = load_mappings(SPEC_EXAMPLE, "AD").to_json()
    change(document)
    return document


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([], "expected an object, got an array"),
        (_broken(lambda d: d.pop("connector")), "'connector' is missing"),
        (_broken(lambda d: d.update(connector="")), "'connector' must be a non-empty string"),
        (
            _broken(lambda d: d.update(entityTypeMappings={})),
            "'entityTypeMappings' must be an array, got an object",
        ),
        (
            _broken(lambda d: d["entityTypeMappings"][0].pop("primaryKeys")),
            "entityTypeMappings[0]: 'primaryKeys' is missing",
        ),
        (
            _broken(lambda d: d["entityTypeMappings"][0].update(columns=["dn", 5])),
            "entityTypeMappings[0]: columns[1] must be a non-empty string, got 5",
        ),
        (
            _broken(lambda d: d["entityTypeMappings"][0].update(primaryKeys=["guid"])),
            "entityTypeMappings[0]: primary key 'guid' is not in 'columns'",
        ),
        (
            _broken(lambda d: d["entityAssociationMappings"][1].update(connectionTable="../x")),
            "entityAssociationMappings[1]: ConnectionTable '../x' is not a plain file name",
        ),
        (
            _broken(lambda d: d["entityAssociationMappings"][0].update(connector="HR")),
            "mapping 'AD_Entry_parentdn' belongs to connector 'HR', not 'AD'",
        ),
        (
            _broken(
                lambda d: d["entityAssociationMappings"][0]["thresholds"].update(
                    MaximumLinkDeletedLines=True
                )
            ),
            "entityAssociationMappings[0].thresholds: MaximumLinkDeletedLines must be a "
            "non-negative integer, got True",
        ),
        (
            _broken(lambda d: d.update(connectorThresholds={"MaximumInsertedLines": 1})),
            "connectorThresholds: 'MaximumUpdatedLines' is missing",
        ),
        (
            _broken(
                lambda d: d["entityTypeMappings"][0]["thresholds"].update(
                    MaxPercentageDeletedLines=-1
                )
            ),
            "entityTypeMappings[0].thresholds: MaxPercentageDeletedLines must be a "
            "non-negative number, got -1",
        ),
        (
            _broken(lambda d: d["entityTypeMappings"][0]["thresholds"].pop("MaximumUpdatedLines")),
            "entityTypeMappings[0].thresholds: 'MaximumUpdatedLines' is missing",
        ),
    ],
)
def test_malformed_server_mappings_are_a_config_error(document: object, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Mappings.from_json(document)
    assert str(raised.value).startswith("server mappings: ")
    assert problem in str(raised.value)


def test_unknown_json_keys_are_ignored_for_newer_servers() -> None:
    document = _broken(lambda d: d.update(version=2))
    document["entityTypeMappings"][0]["displayName"] = "Entry"
    assert Mappings.from_json(document) == load_mappings(SPEC_EXAMPLE, "AD")


def test_server_mappings_are_checked_when_resolved() -> None:
    disagreeing = Mappings(
        "AD",
        (
            EntityTypeMapping("A", "AD", "T", ("p",), ("p",), NO_LIMITS),
            EntityTypeMapping("B", "AD", "t", ("q",), ("q",), NO_LIMITS),
        ),
        (),
    )
    with pytest.raises(ConfigError, match=r"^server mappings: table 'T': entity type mappings"):
        resolve_tables(disagreeing, "server mappings")
    keyless = Mappings("AD", (EntityTypeMapping("A", "AD", "T", ("p",), (), NO_LIMITS),), ())
    with pytest.raises(ConfigError, match=r"^server mappings: entity type mapping 'A' has no"):
        resolve_tables(keyless, "server mappings")
    with pytest.raises(ConfigError, match=r"^no mapping for connector 'AD' in server mappings$"):
        resolve_tables(Mappings("AD", (), ()), "server mappings")


# --------------------------------------------------------------------------------------------
# OpenID clients and connectors


def test_hash_secret_is_base64_of_sha256() -> None:
    # The value IdentityServer's "secret".Sha256() gives, i.e. what Identity Manager stores.
    assert hash_secret("secret") == "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="


def test_clients_are_loaded_with_their_connectors() -> None:
    clients = load_clients(DATA / "clients.xml")
    assert clients == {
        "Job": OpenIdClient("Job", hash_secret("secret"), None),
        "AdAgent": OpenIdClient("AdAgent", hash_secret("ad-only"), frozenset({"AD"})),
        "TwoConnectors": OpenIdClient("TwoConnectors", hash_secret("two"), frozenset({"AD", "HR"})),
    }


def test_check_secret_accepts_only_the_configured_secret() -> None:
    clients = load_clients(DATA / "clients.xml")
    assert clients["Job"].check_secret("secret")
    assert not clients["Job"].check_secret("Secret")
    assert not clients["Job"].check_secret("")
    assert not clients["AdAgent"].check_secret("secret")
    assert not clients["Job"].check_secret("\udc80")  # an undecodable form value


def test_may_use_restricts_clients_that_list_connectors() -> None:
    clients = load_clients(DATA / "clients.xml")
    assert clients["Job"].may_use("AD") and clients["Job"].may_use("anything")
    assert clients["AdAgent"].may_use("AD")
    assert not clients["AdAgent"].may_use("HR")
    assert not clients["AdAgent"].may_use("ad")
    assert clients["TwoConnectors"].may_use("HR")


def test_clients_are_found_in_every_file_of_a_folder() -> None:
    assert list(load_clients(DATA / "folder")) == ["Job"]


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ('HashedSecret="x"', "OpenIdClient has no Identifier"),
        ('Identifier="Job"', "OpenIdClient has no HashedSecret"),
        (
            'Identifier="Job" HashedSecret="secret"',
            "OpenIdClient 'Job': HashedSecret is not the base64 of a SHA-256 digest",
        ),
        (
            f'Identifier="Job" HashedSecret="{hash_secret("s")}" Connectors=" , "',
            "OpenIdClient 'Job': Connectors is empty",
        ),
    ],
)
def test_bad_client_is_an_error(tmp_path: Path, attributes: str, problem: str) -> None:
    path = write_config(tmp_path, f"<OpenIdClient {attributes} />")
    with pytest.raises(ConfigError) as raised:
        load_clients(path)
    assert str(raised.value).startswith(f"{path}, line 2: {problem}")


def test_duplicate_client_identifier_is_an_error(tmp_path: Path) -> None:
    client = f'<OpenIdClient Identifier="Job" HashedSecret="{hash_secret("s")}" />'
    path = write_config(tmp_path, f"{client}\n{client}")
    with pytest.raises(ConfigError) as raised:
        load_clients(path)
    assert str(raised.value) == (
        f"{path}, line 3: OpenIdClient 'Job' is defined twice (first at {path}, line 2)"
    )


def test_connectors_in_lists_every_mapped_connector() -> None:
    assert connectors_in(SPEC_EXAMPLE) == {"AD", "HR", "ad"}
    assert connectors_in(DATA / "folder") == {"AD"}
    assert connectors_in(DATA / "clients.xml") == frozenset()
