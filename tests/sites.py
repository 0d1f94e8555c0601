"""A prepsync site in a temp folder: the layout and files the CLI tests share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from click.testing import CliRunner
from serverutil import prepare_argv, python_m_prepsync

from prepsync.cli import main

CONFIG = """<?xml version="1.0" encoding="utf-8"?>
<ConfigurationFile xmlns="urn:test">
  <EntityTypeMapping Identifier="Entry" Connector="AD" ConnectionTable="Entries">
    <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
    <Property Identifier="name" ConnectionColumn="name" />
  </EntityTypeMapping>
  <EntityAssociationMapping Identifier="Member" Connector="AD" ConnectionTable="Members"
      Column1="group" Column2="member" />
</ConfigurationFile>
"""

ENTRIES = b"id,name,ignored\n2,Bob,x\n1,Ann,y\n,Nobody,z\n1,Ann again,w\n"
MEMBERS = b"group,member\ng1,u2\ng1,u1\ng1,u2\n"


class Site:
    """A temp folder laid out as prepsync expects: Temp/ExportOutput and Work/Collect."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources = root / "Temp" / "ExportOutput"
        self.working = root / "Work" / "Collect"
        self.previous = self.sources / "previous"
        self.config = root / "conf.xml"
        self.sources.mkdir(parents=True)
        self.config.write_text(CONFIG, encoding="utf-8")
        self.write("Entries.csv", ENTRIES)
        self.write("Members.csv", MEMBERS)

    def write(self, name: str, data: bytes) -> None:
        (self.sources / name).write_bytes(data)

    def args(self, mode: str = "complete", *extra: str) -> list[str]:
        """``prepare``'s options for this site, offline (without ``prepare`` itself)."""
        return prepare_argv(
            "AD",
            mode,
            *extra,
            config=self.config,
            temp_folder=self.root / "Temp",
            work_folder=self.root / "Work",
        )[1:]

    def run(self, mode: str = "complete", *extra: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, ["prepare", *self.args(mode, *extra)])
        return result.exit_code, result.stdout, result.stderr

    def output(self, name: str) -> bytes:
        return (self.working / name).read_bytes()

    def snapshot(self) -> dict[str, bytes]:
        """Every file under the working directory and the baselines, by relative path."""
        files = {}
        for folder in (self.working, self.previous):
            if folder.exists():
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        files[str(path.relative_to(self.root))] = path.read_bytes()
        return files


def entity_config(connector: str, tables: Mapping[str, Sequence[str]]) -> str:
    """XML mapping each table's columns, the first one its primary key."""
    mappings = []
    for table, columns in tables.items():
        properties = "".join(
            f'<Property Identifier="{c}" ConnectionColumn="{c}"'
            + (' IsPrimaryKey="true"' if i == 0 else "")
            + " />"
            for i, c in enumerate(columns)
        )
        mappings.append(
            f'<EntityTypeMapping Identifier="{table}" Connector="{connector}" '
            f'ConnectionTable="{table}">{properties}</EntityTypeMapping>'
        )
    return "<ConfigurationFile>" + "".join(mappings) + "</ConfigurationFile>"


def prepare_command(
    config: Path,
    sources: Path,
    working: Path,
    *extra: str,
    connector: str = "C",
    mode: str = "complete",
) -> list[str]:
    """`prepsync prepare` as a child process runs it, offline."""
    return python_m_prepsync(
        *prepare_argv(connector, mode, *extra, config=config, sources=sources, working=working)
    )
