"""The `palomar cluster` test harness: run verbs in-process on a temp config, read the GeoDB back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from palomar.cli.main import main
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB


class Cluster:
    """Runs `palomar cluster -c CONFIG ...` in-process and reads the GeoDB it wrote."""

    def __init__(self, config: Path, geodb_path: Path, localdb_path: Path) -> None:
        self.config = config
        self.geodb_path = geodb_path
        self.localdb_path = localdb_path
        self.runner = CliRunner()

    def run(self, *args: str, json_output: bool = False) -> Result:
        prefix = ["cluster", "-c", str(self.config)] + (["--json"] if json_output else [])
        return self.runner.invoke(main, [*prefix, *args])

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.exit_code == 0, f"{args}: exit {result.exit_code}: {result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        result = self.run(*args, json_output=True)
        assert result.exit_code == 0, f"{args}: exit {result.exit_code}: {result.stderr}"
        return json.loads(result.stdout)

    def fails(self, *args: str, json_output: bool = False) -> str:
        """Run a verb that must fail: exit 1, nothing on stdout, exactly one stderr line, no traceback."""
        result = self.run(*args, json_output=json_output)
        assert result.exit_code == 1, f"{args}: exit {result.exit_code}: {result.output}"
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("palomar cluster: ")
        assert "Traceback" not in result.output
        return lines[0].removeprefix("palomar cluster: ")

    def db(self, action: Callable[[GeoDB], Awaitable[Any]]) -> Any:
        """Read or seed the GeoDB directly (the way a proxy or backend would)."""

        async def go() -> Any:
            engine = open_engine("sqlite", path=str(self.geodb_path))
            await engine.open()
            db = GeoDB(engine)
            try:
                return await action(db)
            finally:
                await db.close()

        return asyncio.run(go())


def write_config(path: Path, geodb: Path, localdb: Path, **extra: str) -> None:
    settings = {
        "cluster_geodb_driver": "sqlite",
        "cluster_geodb_path": str(geodb),
        "cluster_localdb_path": str(localdb),
        "cluster_local_site": "east",
        "cluster_backend_name": "localhost",
        "cluster_default_group_count": "4",
        **extra,
    }
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
