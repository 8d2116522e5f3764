"""`palomar cluster ...`: the admin commands of `doveadm cluster`, against the GeoDB in the config.

The verbs live in one module per entity (`cluster_site`, `cluster_backend`, `cluster_group_user`,
`cluster_tag`, `cluster_localdb`); this module holds the group, its global options and the one
place where errors become a one-line message.
"""

from __future__ import annotations

from typing import Any

import click

from palomar.cli import (
    cluster_admin,
    cluster_backend,
    cluster_director,
    cluster_feature,
    cluster_group_user,
    cluster_localdb,
    cluster_simulate,
    cluster_site,
    cluster_tag,
    cluster_user_access,
    cluster_user_import,
)
from palomar.cli.cluster_context import ClusterContext, default_config_path, expected_errors, report


class _ClusterGroup(click.Group):
    """Turns the operator's and the environment's errors into `palomar cluster: ...` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except expected_errors() as err:
            report(err)
            ctx.exit(1)


@click.group(cls=_ClusterGroup)
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    default=default_config_path,
    show_default="$PALOMAR_CONFIG or /etc/palomar/palomar.conf",
    help="palomar configuration file naming the GeoDB.",
)
@click.option("--json", "json_output", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def cluster(ctx: click.Context, config_path: str, json_output: bool) -> None:
    """Administer the cluster state in the GeoDB."""
    ctx.obj = ClusterContext(config_path=config_path, json_output=json_output)


cluster.add_command(cluster_site.site)
cluster.add_command(cluster_backend.backend)
cluster.add_command(cluster_group_user.group)
cluster.add_command(cluster_group_user.user)
cluster.add_command(cluster_tag.tag)
cluster.add_command(cluster_localdb.localdb)
cluster.add_command(cluster_feature.feature)
cluster.add_command(cluster_simulate.simulate)
cluster.add_command(cluster_director.director)
cluster_group_user.user.add_command(cluster_user_access.user_access)
cluster_group_user.user.add_command(cluster_user_import.user_import)
cluster_admin.register(cluster, cluster_backend.backend, cluster_group_user.group)
