"""Exports in the shape Identity Manager's connectors write them, offline and online.

The AD connector writes `command,dn,objectCategory,objectGuid,...` and `command,dn,member` (its
documentation page, "Output details"); Workday writes `Command,<XPath columns>` with rows
`Add,...`. They carry the command column in complete mode too ("the CSV files contain all
entries"): a complete run replays them from empty, an incremental run sends their changes. The
AD configuration is the documented one (tests/data/config/docs/active_directory.xml); the
Workday one is the documented mapping with its worker id as primary key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
from click.testing import CliRunner
from serverutil import OPERATOR, OPERATOR_SECRET, SECRET, Api, ServerProcess, prepare_argv

from prepsync.cli import main
from prepsync.server.clients import hash_secret

DOCS = Path(__file__).parent / "data" / "config" / "docs"

WORKDAY_CONFIG = """<ConfigurationFile>
<EntityTypeMapping Identifier="Workday_Worker" Connector="Workday"
    ConnectionTable="WorkdayExport_workers">
  <Property Identifier="Worker_ID" ConnectionColumn="bsvc:Worker_Data/bsvc:Worker_ID"
      IsPrimaryKey="true" />
  <Property Identifier="User_ID" ConnectionColumn="bsvc:Worker_Data/bsvc:User_ID"
      IsUniqueKey="true" />
</EntityTypeMapping>
</ConfigurationFile>
"""

AD_HEADER = b"command,dn,objectCategory,objectGuid,objectSid,pwdLastSet,thumbnailPhoto,parentdn\n"
AD_KEPT = b"dn,objectCategory,objectGuid,objectSid,pwdLastSet,thumbnailPhoto,parentdn\n"
JEAN = b'"CN=Jean Dupont,OU=Users,DC=contoso,DC=com"'
MARIE = b'"CN=Marie Curie,OU=Users,DC=contoso,DC=com"'
USERS = b'"OU=Users,DC=contoso,DC=com"'
PAIE = b'"CN=Paie,OU=Groups,DC=contoso,DC=com"'
TEMP = b'"CN=Temp,OU=Users,DC=contoso,DC=com"'

# A complete export as a stream of changes: the last row of a key wins, a final delete drops
# the key, an empty command is an insert. CRLF line ends, as the Windows agent writes them.
AD_COMPLETE = AD_HEADER + b"".join(
    line + b"\r\n"
    for line in [
        b"insert," + JEAN + b",Person,g-01,S-1-5-21-1001,133400000000000000,/9j/4AA=," + USERS,
        b"insert," + USERS + b',Organizational-Unit,g-02,,,,"DC=contoso,DC=com"',
        b"INSERT," + MARIE + b",Person,g-03,S-1-5-21-1003,133400000000000001,," + USERS,
        b"insert," + TEMP + b",Person,g-04,S-1-5-21-1004,,," + USERS,
        b"update," + JEAN + b",Person,g-01,S-1-5-21-1001,133500000000000000,/9j/4AA=," + USERS,
        b"Delete," + TEMP + b",Person,g-04,S-1-5-21-1004,,," + USERS,
        b"," + PAIE + b',Group,g-05,S-1-5-21-2001,,,"OU=Groups,DC=contoso,DC=com"',
        b"insert,CN=NoGuid,Person,,,,,",  # no objectGuid: a null key
    ]
)

AD_SORTED = AD_KEPT + b"".join(
    line + b"\n"
    for line in [
        JEAN + b",Person,g-01,S-1-5-21-1001,133500000000000000,/9j/4AA=," + USERS,
        USERS + b',Organizational-Unit,g-02,,,,"DC=contoso,DC=com"',
        MARIE + b",Person,g-03,S-1-5-21-1003,133400000000000001,," + USERS,
        PAIE + b',Group,g-05,S-1-5-21-2001,,,"OU=Groups,DC=contoso,DC=com"',
    ]
)

AD_INCREMENTAL = AD_HEADER + b"".join(
    line + b"\r\n"
    for line in [
        b"update," + JEAN + b",Person,g-01,S-1-5-21-1001,133600000000000000,," + USERS,
        b"delete," + MARIE + b",Person,g-03,S-1-5-21-1003,133400000000000001,," + USERS,
        b"merge,CN=New,Person,g-06,S-1-5-21-1006,,," + USERS,
        b"MERGE," + PAIE + b',Group,g-05,S-1-5-21-2001,1,,"OU=Groups,DC=contoso,DC=com"',
    ]
)
AD_STORE_AFTER_INCREMENTAL = AD_KEPT + b"".join(
    line + b"\n"
    for line in [
        JEAN + b",Person,g-01,S-1-5-21-1001,133600000000000000,," + USERS,
        USERS + b',Organizational-Unit,g-02,,,,"DC=contoso,DC=com"',
        PAIE + b',Group,g-05,S-1-5-21-2001,1,,"OU=Groups,DC=contoso,DC=com"',
        b"CN=New,Person,g-06,S-1-5-21-1006,,," + USERS,
    ]
)

MEMBERS_COMPLETE = b"command,dn,member\r\n" + b"".join(
    line + b"\r\n"
    for line in [
        b"," + PAIE + b"," + JEAN,  # an empty command is an insert
        b"insert," + PAIE + b"," + MARIE,
        b"insert," + PAIE + b"," + JEAN,  # the same link again: the first is superseded
        b"insert," + PAIE + b"," + TEMP,
        b"delete," + PAIE + b"," + TEMP,
    ]
)
MEMBERS_SORTED = b"dn,member\n" + PAIE + b"," + JEAN + b"\n" + PAIE + b"," + MARIE + b"\n"
MEMBERS_INCREMENTAL = (
    b"command,dn,member\r\n"
    + b"delete,"
    + PAIE
    + b","
    + MARIE
    + b"\r\n"
    + b"insert,"
    + PAIE
    + b",CN=New\r\n"
)
MEMBERS_STORE_AFTER_INCREMENTAL = b"dn,member\n" + PAIE + b"," + JEAN + b"\n" + PAIE + b",CN=New\n"

WORKDAY_HEADER = b"Command,bsvc:Worker_Data/bsvc:Worker_ID,bsvc:Worker_Data/bsvc:User_ID\r\n"
WORKDAY_COMPLETE = WORKDAY_HEADER + b"Add,21003,mcurie\r\nAdd,21001,jdupont\r\nAdd,21002,\r\n"
WORKDAY_SORTED = (
    b"bsvc:Worker_Data/bsvc:Worker_ID,bsvc:Worker_Data/bsvc:User_ID\n"
    b"21001,jdupont\n21002,\n21003,mcurie\n"
)
WORKDAY_INCREMENTAL = WORKDAY_HEADER + b"Add,21002,pmartin\r\nAdd,21004,anew\r\n"
WORKDAY_STORE_AFTER_INCREMENTAL = (
    b"bsvc:Worker_Data/bsvc:Worker_ID,bsvc:Worker_Data/bsvc:User_ID\n"
    b"21001,jdupont\n21002,pmartin\n21003,mcurie\n21004,anew\n"
)


class Agent:
    """An agent folder (Temp/ExportOutput, Work/Collect) and `prepsync prepare` run in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources = root / "Temp" / "ExportOutput"
        self.working = root / "Work" / "Collect"
        self.sources.mkdir(parents=True)

    def write(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            (self.sources / name).write_bytes(data)

    def prepare(self, connector: str, mode: str, *where: str) -> None:
        argv = prepare_argv(
            connector,
            mode,
            *where,
            agent="docs",
            temp_folder=self.root / "Temp",
            work_folder=self.root / "Work",
        )
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, result.stderr

    def output(self, name: str) -> bytes:
        return (self.working / name).read_bytes()

    def baseline(self, table: str) -> bytes:
        return (self.sources / "previous" / f"{table}.sorted.csv").read_bytes()


def test_ad_exports_offline_complete_then_incremental(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    config = ("--config", str(DOCS / "active_directory.xml"))
    agent.write({"ADExport_entries.csv": AD_COMPLETE, "ADExport_members.csv": MEMBERS_COMPLETE})
    agent.prepare("AD", "complete", *config)
    assert agent.output("ADExport_entries.sorted.csv") == AD_SORTED
    assert agent.output("ADExport_entries.nullpk.csv") == (
        b"command," + AD_KEPT + b"insert,CN=NoGuid,Person,,,,,\n"
    )
    assert agent.output("ADExport_entries.duplicates.csv") == b"command," + AD_KEPT + b"".join(
        [  # by key, then input order: the superseded insert of g-01, then g-04's rows
            b"insert,"
            + JEAN
            + b",Person,g-01,S-1-5-21-1001,133400000000000000,/9j/4AA=,"
            + USERS
            + b"\n",
            b"insert," + TEMP + b",Person,g-04,S-1-5-21-1004,,," + USERS + b"\n",
            b"delete," + TEMP + b",Person,g-04,S-1-5-21-1004,,," + USERS + b"\n",
        ]
    )
    assert agent.output("ADExport_members.sorted.csv") == MEMBERS_SORTED
    assert agent.baseline("ADExport_entries") == AD_SORTED  # the replayed table is the baseline
    assert agent.baseline("ADExport_members") == MEMBERS_SORTED

    agent.write(
        {"ADExport_entries.csv": AD_INCREMENTAL, "ADExport_members.csv": MEMBERS_INCREMENTAL}
    )
    agent.prepare("AD", "incremental", *config)
    # every key's last change, in key order, commands in lower case under "command"
    assert agent.output("ADExport_entries.sorted.delta.csv") == b"command," + AD_KEPT + b"".join(
        line + b"\n"
        for line in [
            b"update," + JEAN + b",Person,g-01,S-1-5-21-1001,133600000000000000,," + USERS,
            b"delete," + MARIE + b",Person,g-03,S-1-5-21-1003,133400000000000001,," + USERS,
            b"merge," + PAIE + b',Group,g-05,S-1-5-21-2001,1,,"OU=Groups,DC=contoso,DC=com"',
            b"merge,CN=New,Person,g-06,S-1-5-21-1006,,," + USERS,
        ]
    )
    assert agent.output("ADExport_members.sorted.delta.csv") == (
        b"command,dn,member\ndelete," + PAIE + b"," + MARIE + b"\ninsert," + PAIE + b",CN=New\n"
    )
    assert agent.baseline("ADExport_entries") == AD_SORTED  # a change file moves no baseline


def test_workday_exports_offline_complete_then_incremental(tmp_path: Path) -> None:
    (tmp_path / "workday.xml").write_text(WORKDAY_CONFIG)
    agent = Agent(tmp_path / "agent")
    config = ("--config", str(tmp_path / "workday.xml"))
    agent.write({"WorkdayExport_workers.csv": WORKDAY_COMPLETE})
    agent.prepare("Workday", "complete", *config)
    assert agent.output("WorkdayExport_workers.sorted.csv") == WORKDAY_SORTED
    agent.write({"WorkdayExport_workers.csv": WORKDAY_INCREMENTAL})
    agent.prepare("Workday", "incremental", *config)
    # "Add" means merge (insert or update); the command's header is "command".
    assert agent.output("WorkdayExport_workers.sorted.delta.csv") == (
        b"command,bsvc:Worker_Data/bsvc:Worker_ID,bsvc:Worker_Data/bsvc:User_ID\n"
        b"merge,21002,pmartin\nmerge,21004,anew\n"
    )


def test_ad_and_workday_exports_online_keep_the_store_equal_to_the_replayed_export(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(DOCS / "active_directory.xml", config / "active_directory.xml")
    (config / "workday.xml").write_text(WORKDAY_CONFIG)
    (config / "clients.xml").write_text(
        '<ConfigurationFile><OpenIdClient Identifier="agent" '
        f'HashedSecret="{hash_secret(SECRET)}" />'
        f'<OpenIdClient Identifier="{OPERATOR}" HashedSecret="{hash_secret(OPERATOR_SECRET)}" '
        'Profile="Administrator" /></ConfigurationFile>'
    )
    server = ServerProcess(config, tmp_path / "data", tmp_path / "server.log")
    server.start()
    online = ("--api-url", server.url, "--api-client-id", "agent", "--api-secret", SECRET)
    try:
        with httpx.Client(base_url=server.url) as http:
            api = Api(http)

            def settle(connector: str) -> None:
                latest = api.get(f"/api/connectors/{connector}/sessions").json()[0]["id"]
                assert api.wait(latest)["state"] == "done"

            ad = Agent(tmp_path / "ad")
            ad.write(
                {"ADExport_entries.csv": AD_COMPLETE, "ADExport_members.csv": MEMBERS_COMPLETE}
            )
            ad.prepare("AD", "complete", *online)
            settle("AD")
            assert api.resources("AD", "ADExport_entries") == AD_SORTED
            assert api.resources("AD", "ADExport_members") == MEMBERS_SORTED
            assert ad.baseline("ADExport_entries") == AD_SORTED
            ad.write(
                {
                    "ADExport_entries.csv": AD_INCREMENTAL,
                    "ADExport_members.csv": MEMBERS_INCREMENTAL,
                }
            )
            ad.prepare("AD", "incremental", *online)
            settle("AD")
            assert api.resources("AD", "ADExport_entries") == AD_STORE_AFTER_INCREMENTAL
            assert api.resources("AD", "ADExport_members") == MEMBERS_STORE_AFTER_INCREMENTAL

            workday = Agent(tmp_path / "workday")
            workday.write({"WorkdayExport_workers.csv": WORKDAY_COMPLETE})
            workday.prepare("Workday", "complete", *online)
            settle("Workday")
            assert api.resources("Workday", "WorkdayExport_workers") == WORKDAY_SORTED
            workday.write({"WorkdayExport_workers.csv": WORKDAY_INCREMENTAL})
            workday.prepare("Workday", "incremental", *online)
            settle("Workday")
            stored = api.resources("Workday", "WorkdayExport_workers")
            assert stored == WORKDAY_STORE_AFTER_INCREMENTAL
    finally:
        server.stop()
