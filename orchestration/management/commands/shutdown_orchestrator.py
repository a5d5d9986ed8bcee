"""Take a node out of the fleet gracefully: DRAINING, wait, hand over, agents off, OFFLINE."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from orchestration.management.commands.bootstrap_orchestrator import summary_table
from orchestration.services.lifecycle import DEFAULT_GRACE_S, node_id_default, node_shutdown
from orchestration.services.nodes import NodeNotFound


class Command(BaseCommand):
    help = (
        "Shut a node down: it goes DRAINING (takes no new work), its RUNNING runs get up to"
        " --grace seconds to finish, runs still on it are handed to another node (the"
        " failover path; the default queue when no other node is live), the agents it"
        " announced are unregistered (agent.unregistered) and it ends OFFLINE. The same"
        " service runs on a worker's warm shutdown and on an API process's SIGTERM."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--node",
            default=None,
            help="node id (default: ORCHESTRATOR_NODE_ID when set, else the host name)",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=DEFAULT_GRACE_S,
            help=f"seconds to wait for RUNNING runs (default {DEFAULT_GRACE_S:g})",
        )

    def handle(self, *args, **options) -> None:
        node_id = options["node"] or node_id_default()
        if options["grace"] < 0:
            raise CommandError("--grace must be zero or more seconds")
        try:
            result = node_shutdown(node_id=node_id, grace_s=options["grace"])
        except NodeNotFound as exc:
            raise CommandError(f"no node {node_id!r} is registered") from exc

        if result.in_flight:
            waited = (
                f"{result.finished} of {result.in_flight} RUNNING run(s) finished"
                f" in {result.waited_s:g} s"
            )
        else:
            waited = "no RUNNING run"
        handover = result.handover.message if result.handover else "no run left on the node"
        agents = (
            f"unregistered {', '.join(result.agents_unregistered)}"
            if result.agents_unregistered
            else "none announced by this node"
        )
        rows = [
            ("STEP", "RESULT"),
            ("drain", f"was {result.previous_status}"),
            ("wait", waited),
            ("hand over", handover),
            ("agents", agents),
            ("node", result.status),
        ]
        self.stdout.write(f"Shutdown of node {node_id}")
        self.stdout.write(summary_table([(*row, "") for row in rows]))
        if result.changed:
            self.stdout.write(self.style.SUCCESS(f"Node {node_id} is {result.status}."))
        else:
            self.stdout.write(
                self.style.SUCCESS(f"Nothing changed: {node_id} was already OFFLINE.")
            )
