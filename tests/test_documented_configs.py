"""Configurations copied from Identity Manager 6.2's documentation, and exports in the shape those
pages show: what a new user pastes in must work (or be refused with a message naming the fault).

The XML files are in tests/data/config/docs/, each with a comment naming the page it comes from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from serverutil import OPERATOR, OPERATOR_SECRET, SECRET, Api, ServerProcess, prepare_argv

from prepsync.cli import main
from prepsync.config import (
    Mappings,
    TableSpec,
    Thresholds,
    load_mappings,
    load_tables,
    resolve_tables,
)
from prepsync.errors import ConfigError
from prepsync.server.clients import hash_secret

DOCS = Path(__file__).parent / "data" / "config" / "docs"
NO_LIMITS = Thresholds()

# (file or folder, connector, the tables it gives: name, kept columns, key)
LOADABLE = [
    (
        "ldap.xml",
        "LDAP",
        [
            (
                "LDAPExport_entries",
                ("displayName", "dn", "entryUuid", "objectClass", "ou", "parentdn"),
                ("entryUuid",),
            ),
            ("LDAPExport_member", ("dn", "member"), None),
        ],
    ),
    (
        "active_directory.xml",
        "AD",
        [
            (
                "ADExport_entries",
                (
                    "dn",
                    "objectCategory",
                    "objectGuid",
                    "objectSid",
                    "pwdLastSet",
                    "thumbnailPhoto",
                    "parentdn",
                ),
                ("objectGuid",),
            ),
            ("ADExport_members", ("dn", "member"), None),
        ],
    ),
    (
        "entra_id.xml",
        "AzureAD",
        [("AzureADExport_directoryobjects", ("accountEnabled", "id", "mail"), ("id",))],
    ),
    (
        "hr_connector.xml",
        "HR",
        [
            (
                "hr_people",
                (
                    "Employee Id",
                    "First name",
                    "Last name",
                    "Birth date",
                    "Birth name",
                    "Personal title",
                    "Start date",
                    "End date",
                    "VIP",
                    "Leave",
                    "Title name",
                    "Location name",
                    "Organization name",
                    "Organization",
                ),
                ("Employee Id",),
            ),
            (
                "hr_organizations",
                (
                    "Identifier",
                    "Name",
                    "Name (fr)",
                    "Name (de)",
                    "Phone number",
                    "Fax number",
                    "Organization type",
                    "Location",
                ),
                ("Identifier",),
            ),
        ],
    ),
    (
        "salesforce_scim.xml",
        "Salesforce",
        [
            ("SCIMExport_Users", ("id", "name:givenName", "emails:value"), ("id",)),
            ("SCIMExport_Groups", ("id", "displayName"), ("id",)),
            ("SCIMExport_members_Groups", ("value", "MemberId"), None),
        ],
    ),
    (
        # Directory_PresenceState (no table, no column) sits beside a real mapping: ignored.
        "directory",
        "Directory",
        [
            (
                "Directory_UserRecord",
                (
                    "BirthDate",
                    "BirthName",
                    "ContractEndDate",
                    "ContractStartDate",
                    "Email",
                    "EmailAliases",
                    "EmployeeId",
                    "EndDate",
                    "FirstName",
                    "LastName",
                    "Login",
                    "MobileNumber",
                    "PhoneNumber",
                    "PositionEndDate",
                    "PositionIdentifier",
                    "PositionStartDate",
                    "StartDate",
                    "Suspended",
                    "VIP",
                    "ExternalCompany",
                    "IGAManager",
                    "Manager",
                    "Organization",
                    "PersonalTitle",
                    "Site",
                    "Subsidiary",
                    "Title",
                    "User",
                    "UserType",
                ),
                ("PositionIdentifier",),
            )
        ],
    ),
    (
        "hr_association_without_table.xml",
        "HR",
        [
            ("hr_people", ("Employee Id", "First name", "Last name"), ("Employee Id",)),
            # The association's columns join the table of HR_Organization, its
            # EntityPropertyMapping1's entity type mapping.
            (
                "hr_organizations",
                ("Identifier", "Name", "Organization", "Employee Id"),
                ("Identifier",),
            ),
        ],
    ),
]


@pytest.mark.parametrize(("name", "connector", "tables"), LOADABLE, ids=[c[0] for c in LOADABLE])
def test_documented_configuration_loads(
    name: str, connector: str, tables: list[tuple[str, tuple[str, ...], tuple[str, ...] | None]]
) -> None:
    expected = tuple(TableSpec(table, columns, key, NO_LIMITS) for table, columns, key in tables)
    assert load_tables(DOCS / name, connector) == expected
    # The server serves the same mappings as JSON; the agent must resolve them identically.
    wire = json.loads(json.dumps(load_mappings(DOCS / name, connector).to_json()))
    assert resolve_tables(Mappings.from_json(wire)) == expected


REFUSED = [
    ("workday.xml", "Workday", "line 6: entity type mapping 'Workday_Worker' has no primary key"),
    (
        "servicenow.xml",
        "ServiceNow",
        "line 6: entity type mapping 'ServiceNow_User' has no primary key",
    ),
    (
        "workforce_module.xml",
        "Directory",
        "line 8: entity type mapping 'Directory_UserRecord' has no primary key",
    ),
]


@pytest.mark.parametrize(("name", "connector", "problem"), REFUSED, ids=[c[0] for c in REFUSED])
def test_documented_configuration_without_primary_key_is_refused_naming_the_mapping(
    name: str, connector: str, problem: str
) -> None:
    # These excerpts map columns but mark none IsPrimaryKey: prepsync cannot know the key.
    with pytest.raises(ConfigError) as raised:
        load_tables(DOCS / name, connector)
    assert str(raised.value).startswith(f"{DOCS / name}, {problem}")


def test_ldap_csv_table_and_its_differently_spelled_association_are_one_table() -> None:
    mappings = load_mappings(DOCS / "ldap.xml", "LDAP")
    assert mappings.entity_types[0].table == "LDAPExport_entries.csv"
    assert mappings.associations[0].table == "LDAPExport_Entries"
    assert [table.name for table in load_tables(DOCS / "ldap.xml", "LDAP")] == [
        "LDAPExport_entries",
        "LDAPExport_member",
    ]


def test_hr_association_without_table_uses_its_entity_types_table() -> None:
    association = load_mappings(DOCS / "hr_association_without_table.xml", "HR").associations[0]
    assert (association.identifier, association.table) == (
        "HR_Person_Organization",
        "hr_organizations",
    )


# --------------------------------------------------------------------------------------------
# prepare, offline, on exports in the shape the documentation shows


def prepare(root: Path, config: Path, connector: str, mode: str) -> tuple[int, str]:
    argv = prepare_argv(
        connector,
        mode,
        agent="docs",
        config=config,
        temp_folder=root / "Temp",
        work_folder=root / "Work",
    )
    result = CliRunner().invoke(main, argv)
    return result.exit_code, result.stderr


def test_prepare_ldap_export_as_the_ldap_page_shows_it(tmp_path: Path) -> None:
    sources = tmp_path / "Temp" / "ExportOutput"
    sources.mkdir(parents=True)
    # "LDAPExport_entries.csv: displayName,dn,entryUuid,objectClass,ou,parentdn", and
    # "LDAPExport_member.csv: dn,member", as the LDAP page shows them.
    (sources / "LDAPExport_entries.csv").write_bytes(
        b"displayName,dn,entryUuid,objectClass,ou,parentdn\n"
        b'Bob,"CN=Bob,OU=People,DC=corp",u-2,person,People,"OU=People,DC=corp"\n'
        b'People,"OU=People,DC=corp",u-1,organizationalUnit,People,"DC=corp"\n'
        b'Ann,"CN=Ann,OU=People,DC=corp",u-3,person,People,"OU=People,DC=corp"\n'
    )
    (sources / "LDAPExport_member.csv").write_bytes(
        b'dn,member\n"CN=Staff,DC=corp","CN=Bob,OU=People,DC=corp"\n'
    )
    code, err = prepare(tmp_path, DOCS / "ldap.xml", "LDAP", "complete")
    assert code == 0, err
    working = tmp_path / "Work" / "Collect"
    # One table, named without ".csv", keyed by entryUuid.
    assert (working / "LDAPExport_entries.sorted.csv").read_bytes().splitlines()[1:] == [
        b'People,"OU=People,DC=corp",u-1,organizationalUnit,People,DC=corp',
        b'Bob,"CN=Bob,OU=People,DC=corp",u-2,person,People,"OU=People,DC=corp"',
        b'Ann,"CN=Ann,OU=People,DC=corp",u-3,person,People,"OU=People,DC=corp"',
    ]
    assert not list(working.glob("*.csv.sorted.csv"))
    assert (working / "LDAPExport_member.sorted.csv").exists()

    (sources / "LDAPExport_entries.csv").write_bytes(
        b"displayName,dn,entryUuid,objectClass,ou,parentdn\n"
        b'People,"OU=People,DC=corp",u-1,organizationalUnit,People,"DC=corp"\n'
        b'Ann B,"CN=Ann,OU=People,DC=corp",u-3,person,People,"OU=People,DC=corp"\n'
    )
    code, err = prepare(tmp_path, DOCS / "ldap.xml", "LDAP", "incremental")
    assert code == 0, err
    assert (working / "LDAPExport_entries.sorted.delta.csv").read_bytes().splitlines() == [
        b"command,displayName,dn,entryUuid,objectClass,ou,parentdn",
        b'delete,Bob,"CN=Bob,OU=People,DC=corp",u-2,person,People,"OU=People,DC=corp"',
        b'update,Ann B,"CN=Ann,OU=People,DC=corp",u-3,person,People,"OU=People,DC=corp"',
    ]


def test_prepare_hr_export_as_the_connector_page_models_it(tmp_path: Path) -> None:
    sources = tmp_path / "Temp" / "ExportOutput"
    sources.mkdir(parents=True)
    people_header = (
        b"Employee Id,First name,Last name,Birth date,Birth name,Personal title,Start date,"
        b"End date,VIP,Leave,Title name,Location name,Organization name,Organization"
    )
    # An HR system's own file: an extra column nobody maps, the file name in another case.
    (sources / "HR_People.csv").write_bytes(
        people_header + b",Badge\n"
        b"E002,Bob,Martin,1980-02-01,,Mr,2020-01-01,,false,false,Engineer,Paris,R&D,ORG-RD,77\n"
        b"E001,Ann,Smith,1975-05-05,Jones,Ms,2019-03-01,,true,false,Director,Paris,Board,ORG-B,12\n"
        b",Nobody,Unknown,,,,,,,,,,,,\n"
    )
    (sources / "hr_organizations.csv").write_bytes(
        b"Identifier,Name,Name (fr),Name (de),Phone number,Fax number,Organization type,Location\n"
        b"ORG-RD,R&D,R&D,F&E,+33 1 00,,Department,Paris\n"
        b'ORG-B,Board,Conseil,"Vorstand, Geschaeftsfuehrung",+33 1 01,,Direction,Paris\n'
    )
    code, err = prepare(tmp_path, DOCS / "hr_connector.xml", "HR", "complete")
    assert code == 0, err
    working = tmp_path / "Work" / "Collect"
    assert (working / "hr_people.sorted.csv").read_bytes() == (
        people_header + b"\n"
        b"E001,Ann,Smith,1975-05-05,Jones,Ms,2019-03-01,,true,false,Director,Paris,Board,ORG-B\n"
        b"E002,Bob,Martin,1980-02-01,,Mr,2020-01-01,,false,false,Engineer,Paris,R&D,ORG-RD\n"
    )
    assert (working / "hr_people.nullpk.csv").read_bytes().count(b"\n") == 2
    assert (working / "hr_organizations.sorted.csv").read_bytes().splitlines()[1:] == [
        b'ORG-B,Board,Conseil,"Vorstand, Geschaeftsfuehrung",+33 1 01,,Direction,Paris',
        b"ORG-RD,R&D,R&D,F&E,+33 1 00,,Department,Paris",
    ]


# --------------------------------------------------------------------------------------------
# online: the server serves the documented LDAP mappings, the agent has no --config


def test_ldap_export_online_with_mappings_from_the_server(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(DOCS / "ldap.xml", config / "ldap.xml")
    (config / "clients.xml").write_text(
        '<ConfigurationFile><OpenIdClient Identifier="agent" '
        f'HashedSecret="{hash_secret(SECRET)}" />'
        f'<OpenIdClient Identifier="{OPERATOR}" HashedSecret="{hash_secret(OPERATOR_SECRET)}" '
        'Profile="Administrator" /></ConfigurationFile>'
    )
    server = ServerProcess(config, tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        sources = tmp_path / "Temp" / "ExportOutput"
        sources.mkdir(parents=True)
        (sources / "ldapexport_ENTRIES.csv").write_bytes(
            b"displayName,dn,entryUuid,objectClass,ou,parentdn\n"
            b'Bob,"CN=Bob,DC=corp",u-2,person,People,DC=corp\n'
            b'Ann,"CN=Ann,DC=corp",u-1,person,People,DC=corp\n'
        )
        (sources / "LDAPExport_member.csv").write_bytes(b'dn,member\nCN=Staff,"CN=Bob,DC=corp"\n')
        argv = prepare_argv(
            "LDAP",
            "complete",
            agent="docs",
            api_url=server.url,
            client_id="agent",
            secret=SECRET,
            temp_folder=tmp_path / "Temp",
            work_folder=tmp_path / "Work",
        )
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, result.stderr
        with httpx.Client(base_url=server.url) as http:
            api = Api(http)
            api.wait(api.get("/api/connectors/LDAP/sessions").json()[0]["id"])
            working = tmp_path / "Work" / "Collect"
            for table in ("LDAPExport_entries", "LDAPExport_member"):
                stored = api.resources("LDAP", table)
                assert stored == (working / f"{table}.sorted.csv").read_bytes(), table
    finally:
        server.stop()
