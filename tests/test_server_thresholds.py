"""The three threshold levels: entity type mappings, association mappings, the connector.

Sessions are applied to a real store (prepsync.server.apply) from configurations written as an
integrator would; the counts come from the same diff that applies the changes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from serverutil import csv_bytes
from storeutil import StoreHarness

from prepsync.config import load_mappings, resolve_tables
from prepsync.protocol import BLOCKED, DONE
from prepsync.server.apply import Outcome
from prepsync.server.thresholds import (
    ChangeCounter,
    ConnectorLimits,
    LinkCounts,
    TableCounts,
    connector_limits,
    crossed_thresholds,
)

ENTRIES, MEMBERS = "ADExport_entries", "ADExport_members"
ENTRY_COLUMNS = ["objectGUID", "dn", "parentdn"]


def configuration(connector: str = "", entity: str = "", parent: str = "", member: str = "") -> str:
    """AD entries (an entity table with the parentdn association) and members (association
    only); each argument is extra attributes of one element, ``connector`` a whole element."""
    return f"""<ConfigurationFile>
  {connector}
  <EntityTypeMapping Identifier="AD_Entry" Connector="AD" ConnectionTable="{ENTRIES}" {entity}>
    <Property Identifier="objectGUID" ConnectionColumn="objectGUID" IsPrimaryKey="true" />
    <Property Identifier="dn" ConnectionColumn="dn" />
  </EntityTypeMapping>
  <EntityAssociationMapping Identifier="AD_Entry_parentdn" Connector="AD"
      ConnectionTable="{ENTRIES}" Column1="parentdn" Column2="dn" {parent} />
  <EntityAssociationMapping Identifier="AD_Entry_member" Connector="AD"
      ConnectionTable="{MEMBERS}" Column1="dn" Column2="member" {member} />
</ConfigurationFile>"""


class Server:
    """A store and the connector's configuration; sends sessions straight to apply_session."""

    def __init__(self, root: Path, xml: str, database: str | None) -> None:
        self.root = root
        (root / "config.xml").write_text(xml)
        mappings = load_mappings(root / "config.xml", "AD")
        self.tables = {spec.name.casefold(): spec for spec in resolve_tables(mappings)}
        self.limits = connector_limits(mappings)
        self.harness = StoreHarness(root / "data", database)
        self.seq = 0

    def send(
        self,
        mode: str,
        entries: Sequence[Sequence[str]] | None = None,
        members: Sequence[Sequence[str]] | None = None,
        forced: bool = False,
    ) -> Outcome:
        """A session carrying the given rows (``command`` first when incremental)."""
        self.seq += 1
        directory = self.root / f"s{self.seq}"
        directory.mkdir()
        suffix = ".sorted.delta.csv" if mode == "incremental" else ".sorted.csv"
        command = ["command"] if mode == "incremental" else []
        names = []
        for table, header, rows in (
            (ENTRIES, ENTRY_COLUMNS, entries),
            (MEMBERS, ["dn", "member"], members),
        ):
            if rows is None:
                continue
            key_order = sorted(rows, key=lambda row: [v.encode() for v in row[len(command) :]])
            (directory / f"{table}{suffix}").write_bytes(csv_bytes(command + header, key_order))
            names.append(f"{table}{suffix}")
        return self.harness.apply(
            "AD", mode, directory, names, self.tables, self.limits, forced=forced
        )

    def stored(self, table: str) -> bytes:
        return self.harness.resources("AD", table)


@pytest.fixture
def make_server(tmp_path: Path, store_url: str | None) -> Iterator[Any]:
    servers: list[Server] = []

    def make(xml: str) -> Server:
        root = tmp_path / str(len(servers))
        root.mkdir()
        assert not servers, "one server per test: one fresh database per test"
        servers.append(Server(root, xml, store_url))
        return servers[-1]

    yield make
    for server in servers:
        server.harness.close()


def entries(count: int, start: int = 0, parent: str = "OU=a") -> list[list[str]]:
    return [[f"g{i:05}", f"CN={i},{parent}", parent] for i in range(start, start + count)]


def members(count: int, group: str = "CN=G") -> list[list[str]]:
    return [[group, f"CN={i:05}"] for i in range(count)]


# --------------------------------------------------------------------------- entity type mapping


def test_entity_limit_crosses_strictly_over_not_at_the_limit(make_server: Any) -> None:
    server = make_server(configuration(entity='MaximumInsertedLines="3"'))
    assert server.send("initial", entries(10), members(0)).state == DONE
    at_limit = server.send("incremental", [["insert", *row] for row in entries(3, 100)])
    assert (at_limit.state, at_limit.reason) == (DONE, None)
    over = server.send("incremental", [["insert", *row] for row in entries(4, 200)])
    assert over.state == BLOCKED
    assert over.reason == (
        f"entity type mapping AD_Entry (table {ENTRIES}): MaximumInsertedLines 3 < 4 "
        "inserted resources"
    )
    assert over.summary["thresholds"] == [over.reason]
    assert over.summary["tables"][ENTRIES]["inserted"] == 4
    assert server.stored(ENTRIES).count(b"\n") == 1 + 13  # blocked: nothing applied


def test_entity_percentage_is_of_the_rows_stored_before(make_server: Any) -> None:
    server = make_server(configuration(entity='MaxPercentageDeletedLines="10"'))
    assert server.send("initial", entries(40), members(0)).state == DONE
    # A complete load is counted against the store: 4 of 40 rows gone = 10 %, not over.
    assert server.send("complete", entries(36), members(0)).state == DONE
    over = server.send("complete", entries(32), members(0))  # 4 of 36 = 11.1 %
    assert over.state == BLOCKED
    assert over.reason == (
        f"entity type mapping AD_Entry (table {ENTRIES}): MaxPercentageDeletedLines 10% < "
        "11.11% deleted resources (4 of 36 stored)"
    )


def test_percentages_do_not_judge_an_empty_store(make_server: Any) -> None:
    server = make_server(
        configuration(
            connector='<Connector Identifier="AD" DisplayName_L1="AD" MaximumInsertedLines="0" />',
            entity='MaxPercentageInsertedLines="1"',
            member='MaxLinkPercentageInsertedLines="1"',
        )
    )
    # A complete first load (not initial: thresholds apply) into an empty store.
    outcome = server.send("complete", entries(50), members(50))
    assert (outcome.state, outcome.reason) == (DONE, None)


# --------------------------------------------------------------------------- association mapping


def test_links_of_an_association_only_table_are_its_rows(make_server: Any) -> None:
    server = make_server(configuration(member='MaximumLinkDeletedLines="2"'))
    assert server.send("initial", entries(3), members(10)).state == DONE
    assert server.send("complete", entries(3), members(8)).state == DONE  # 2 deleted: at limit
    over = server.send("complete", entries(3), members(5))
    assert over.state == BLOCKED
    assert over.reason == (
        f"association mapping AD_Entry_member (table {MEMBERS}): MaximumLinkDeletedLines 2 < 3 "
        "deleted links"
    )
    assert over.summary["tables"][MEMBERS]["links"] == {
        "AD_Entry_member": {"inserted": 0, "deleted": 3}
    }


def test_links_on_an_entity_table_follow_the_column_pair(make_server: Any) -> None:
    server = make_server(configuration(parent='MaxLinkPercentageInsertedLines="50"'))
    base = entries(4)  # 4 links: every row has parentdn and dn
    assert server.send("initial", base, members(0)).state == DONE
    day = [list(row) for row in base]
    day[0][2] = "OU=b"  # the pair changes: one link deleted, one inserted
    day[1][2] = ""  # no parentdn any more: one link deleted
    del day[2]  # the row goes, and its link
    day.append(["g09999", "CN=new,OU=a", "OU=a"])  # a new row with a pair: one link inserted
    day.append(["g09998", "CN=lone", ""])  # a new row without a pair: no link
    outcome = server.send("complete", day, members(0))
    assert outcome.state == DONE, outcome.reason
    assert outcome.summary["tables"][ENTRIES] == {
        "inserted": 2,
        "updated": 2,
        "deleted": 1,
        "rows": 5,
        "links": {"AD_Entry_parentdn": {"inserted": 2, "deleted": 3}},
    }
    # 3 links stored now (g1 lost its pair, g2 went, g0 changed, one new): 2 inserts = 66 %.
    incremental = server.send(
        "incremental",
        [["insert", "g07777", "CN=x", "OU=c"], ["update", "g00001", "CN=1,OU=a", "OU=a"]],
    )
    assert incremental.state == BLOCKED
    assert incremental.reason == (
        f"association mapping AD_Entry_parentdn (table {ENTRIES}): MaxLinkPercentageInsertedLines "
        "50% < 66.67% inserted links (2 of 3 stored)"
    )


# --------------------------------------------------------------------------------- connector


def test_connector_defaults_hold_when_attributes_are_absent(make_server: Any) -> None:
    server = make_server(
        configuration(connector='<Connector Identifier="AD" DisplayName_L1="AD"/>')
    )
    assert server.send("initial", entries(2000), members(2000)).state == DONE
    # 100 inserted resources is the default limit (and 5 % of 2000 = 100): not over.
    assert server.send("incremental", [["insert", *r] for r in entries(100, 5000)]).state == DONE
    over = server.send("incremental", [["insert", *r] for r in entries(101, 6000)])
    assert over.state == BLOCKED
    # 101 of 2100 stored = 4.8 %: only the count limit is crossed.
    assert over.summary["thresholds"] == [
        "connector AD: MaximumInsertedLines 100 < 101 inserted resources"
    ]
    # Links: the default is 1000, summed over both associations (parentdn rows and members).
    # Links: 1000 deleted is the default limit (and 5 % of the 4100 stored links, 205, is
    # crossed too); the parentdn links of the entries count in the denominator.
    links = server.send("complete", entries(2000) + entries(100, 5000), members(999))
    assert links.state == BLOCKED
    assert links.summary["thresholds"] == [
        "connector AD: MaximumLinkDeletedLines 1000 < 1001 deleted links",
        "connector AD: MaxLinkPercentageDeletedLines 5% < 24.41% deleted links "
        "(1001 of 4100 stored)",
    ]


def test_connector_level_sums_over_tables(make_server: Any) -> None:
    server = make_server(
        configuration(
            connector='<Connector Identifier="AD" DisplayName_L1="AD" MaximumLinkInsertedLines="5"'
            ' MaxLinkPercentageInsertedLines="0" MaxPercentageInsertedLines="0" />'
        )
    )
    assert server.send("initial", entries(3), members(3)).state == DONE
    # 3 new parentdn links + 3 new members: 6 links over the connector, 3 per association.
    outcome = server.send("complete", entries(6), members(6))
    assert outcome.state == BLOCKED
    assert outcome.reason == "connector AD: MaximumLinkInsertedLines 5 < 6 inserted links"


def test_no_connector_element_means_no_connector_limits(make_server: Any) -> None:
    server = make_server(configuration())
    assert server.send("initial", entries(10), members(10)).state == DONE
    outcome = server.send("complete", entries(500, 100), members(0))
    assert (outcome.state, outcome.reason) == (DONE, None)


def test_initial_and_forced_sessions_skip_every_level(make_server: Any) -> None:
    server = make_server(
        configuration(
            connector='<Connector Identifier="AD" DisplayName_L1="AD" />',
            entity='MaximumDeletedLines="1"',
            member='MaximumLinkDeletedLines="1"',
        )
    )
    assert server.send("initial", entries(300), members(300)).state == DONE
    assert server.send("complete", entries(1), members(1)).state == BLOCKED
    assert server.send("initial", entries(1), members(1)).state == DONE
    assert server.send("initial", entries(300), members(300)).state == DONE
    forced = server.send("complete", entries(1), members(1), forced=True)
    assert (forced.state, forced.reason) == (DONE, None)
    assert server.stored(MEMBERS) == b"dn,member\nCN=G,CN=00000\n"


def test_most_specific_level_is_the_reason_and_every_crossing_is_listed() -> None:
    from prepsync.config import ConnectorThresholds, LinkThresholds, Thresholds
    from prepsync.server.thresholds import Association, TableLimits

    limits = ConnectorLimits(
        "AD",
        {
            "e": TableLimits(
                (("E", Thresholds(max_updated=1)),),
                (Association("P", "p", "d", LinkThresholds(max_deleted=1)),),
            ),
        },
        ConnectorThresholds(Thresholds(max_updated=1), LinkThresholds()),
    )
    counts = TableCounts(updated=2, stored_before=0, links={"P": LinkCounts(0, 2, 10)})
    assert crossed_thresholds(limits, ["e"], {"e": counts}, {"e": counts}) == [
        "entity type mapping E (table e): MaximumUpdatedLines 1 < 2 updated resources",
        "association mapping P (table e): MaximumLinkDeletedLines 1 < 2 deleted links",
        "connector AD: MaximumUpdatedLines 1 < 2 updated resources",
    ]


# ------------------------------------------------------------------------------ the counter


def _entity_counter() -> ChangeCounter:
    from prepsync.config import LinkThresholds, Thresholds
    from prepsync.server.thresholds import Association, TableLimits

    limits = TableLimits(
        (("E", Thresholds()),),
        (
            Association("P", "parentdn", "dn", LinkThresholds()),
            Association("M", "manager", "dn", LinkThresholds()),
        ),
    )
    return ChangeCounter(limits, association_only=False)


def test_counter_counts_a_diffs_changes_and_a_bulk_paths_totals_alike() -> None:
    """Both stores feed one counter: change by change (SQLite's diff, a delta row by row) or
    with totals (PostgreSQL's aggregates, a bulk load); the counts must not depend on which."""
    header = ["objectGUID", "dn", "parentdn", "manager"]
    changes = [
        ("insert", b"g4", "g4,CN=4,OU=a,", None, None),  # P inserted
        ("update", b"g1", "g1,CN=1,OU=b,", None, "g1,CN=1,OU=a,"),  # P changed: -1 +1
        ("update", b"g2", "g2,CN=2,,CN=m", None, "g2,CN=2,OU=a,"),  # P gone, M new
        ("update", b"g3", "g3,CN=3x,OU=a,", None, "g3,CN=3,OU=a,"),  # P changed (dn): -1 +1
        ("delete", b"g5", None, None, "g5,CN=5,OU=a,CN=m"),  # P and M gone
    ]
    by_change = _entity_counter()
    assert by_change.link_pairs(header) == [(2, 1), (3, 1)]
    by_change.stored(5, {"P": 5, "M": 1}, scan=lambda missing: pytest.fail("recorded"))
    assert list(by_change.counted(iter(changes))) == changes  # passed on as they are
    by_totals = _entity_counter()
    by_totals.link_pairs(header)
    by_totals.stored(5, {"P": 5, "M": 1}, scan=lambda missing: pytest.fail("recorded"))
    by_totals.add(1, 3, 1, [(3, 4), (1, 1)])
    for counter in by_change, by_totals:
        assert counter.counts() == TableCounts(
            inserted=1,
            updated=3,
            deleted=1,
            stored_before=5,
            rows=5,
            links={"P": LinkCounts(3, 4, 5), "M": LinkCounts(1, 1, 1)},
        )
        recorded: dict[str, int] = {}
        counter.record_links(recorded)
        assert recorded == {"P": 4, "M": 1}


def test_counter_scans_only_the_links_a_record_lacks_and_none_of_an_empty_table() -> None:
    scanned: list[list[str]] = []

    def scan(missing: Sequence[Any]) -> dict[str, int]:
        scanned.append([association.identifier for association in missing])
        return {association.identifier: 7 for association in missing}

    counter = _entity_counter()
    recorded = {"P": 3}
    counter.stored(9, recorded, scan)
    assert scanned == [["M"]]
    assert recorded == {"P": 3, "M": 7}  # the record keeps what was counted once
    assert counter.counts().links == {"P": LinkCounts(0, 0, 3), "M": LinkCounts(0, 0, 7)}
    empty = _entity_counter()
    empty.stored(0, {}, scan)
    assert scanned == [["M"]]
    assert empty.counts().links == {"P": LinkCounts(0, 0, 0), "M": LinkCounts(0, 0, 0)}


def test_counter_of_an_association_only_table_counts_links_as_rows() -> None:
    from prepsync.config import LinkThresholds
    from prepsync.server.thresholds import Association, TableLimits

    limits = TableLimits((), (Association("M", "dn", "member", LinkThresholds()),))
    counter = ChangeCounter(limits, association_only=True)
    assert counter.link_pairs(["dn", "member"]) == []  # nothing to look at per row
    counter.stored(10, {}, scan=lambda missing: pytest.fail("rows are links"))
    counter.add(2, 0, 3)
    assert counter.counts().links == {"M": LinkCounts(2, 3, 10)}
    assert counter.rows_after == 9
    recorded: dict[str, int] = {}
    counter.record_links(recorded)
    assert recorded == {}  # an association-only table records no links: they are its rows


def test_links_in_stored_lines_count_full_pairs_and_none_for_columns_gone() -> None:
    from prepsync.config import LinkThresholds
    from prepsync.server.thresholds import Association, links_in

    associations = [
        Association("P", "parentdn", "dn", LinkThresholds()),
        Association("X", "gone", "dn", LinkThresholds()),  # the mappings changed
    ]
    lines = ["g1,CN=1,OU=a", 'g2,"CN=2,x",OU=a', "g3,CN=3,", "g4,,OU=a"]
    assert links_in(associations, ["objectGUID", "DN", "parentDN"], lines) == {"P": 2, "X": 0}


def test_kept_columns_changed_deletes_the_stored_links_in_the_stored_layout(
    tmp_path: Path, store_url: str | None
) -> None:
    """Mappings that change a table's kept columns: every stored row goes (its links counted
    where its own columns hold them), every row of the file comes."""
    from prepsync.config import LinkThresholds, TableSpec, Thresholds
    from prepsync.server.thresholds import Association, TableLimits

    def layout(*columns: str) -> tuple[dict[str, TableSpec], ConnectorLimits]:
        associations = (Association("A", "p", "id", LinkThresholds()),) if "p" in columns else ()
        limits = TableLimits((("T", Thresholds()),), associations)
        spec = TableSpec("T", columns, ("id",), Thresholds())
        return {"t": spec}, ConnectorLimits("C", {"t": limits}, None)

    harness = StoreHarness(tmp_path / "data", store_url)
    try:
        steps = [
            (("id", "v"), [("1", "a"), ("2", "b")], None),
            # A column and an association on it come: no link was stored.
            (("id", "v", "p"), [("1", "a", "x"), ("3", "b", "")], {"inserted": 1, "deleted": 0}),
            # v goes, w comes, p moves: the one stored link goes, two come.
            (("id", "p", "w"), [("1", "x", "q"), ("2", "y", "r")], {"inserted": 2, "deleted": 1}),
        ]
        for columns, rows, links in steps:
            tables, limits = layout(*columns)
            (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(list(columns), rows))
            outcome = harness.apply("C", "complete", tmp_path, ["T.sorted.csv"], tables, limits)
            assert outcome.state == DONE, outcome.reason
            counts = outcome.summary["tables"]["T"]
            assert (counts["inserted"], counts["deleted"], counts.get("links")) == (
                2,
                0 if links is None else 2,
                None if links is None else {"A": links},
            )
    finally:
        harness.close()
