"""``batchpilot-operator``: run the operator (kopf) with batchpilot's handlers.

Examples::

    batchpilot-operator                      # every namespace (needs cluster-wide RBAC)
    batchpilot-operator -n models -n team-b  # only these namespaces
    batchpilot-operator --standalone         # no peering (a single operator process)
    batchpilot-operator -n models --no-cluster-scan  # no cluster-scoped RBAC needed

The kubeconfig comes from ``KUBECONFIG`` (or ``~/.kube/config``), else the pod's service
account. Settings for the runtime pods come from ``BATCHPILOT_*`` variables (see
:mod:`batchpilot_operator.settings`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence

from batchpilot_contract.pod import HOST_ENV


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The operator's flags, with defaults from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="batchpilot-operator",
        description="Reconcile BatchedModels into runtime Deployments and tune their batching.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeatable; default: BATCHPILOT_WATCH_NAMESPACES, "
        "comma-separated, else all namespaces)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--liveness",
        default=env.get("BATCHPILOT_LIVENESS")
        or f"http://{env.get(HOST_ENV) or '0.0.0.0'}:8081/healthz",
        metavar="URL",
        help="serve kopf's liveness probe here ('' to disable; default: BATCHPILOT_LIVENESS, "
        "else port 8081 on BATCHPILOT_HOST, else on every interface)",
    )
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering",
        default=env.get("BATCHPILOT_PEERING") or None,
        metavar="NAME",
        help="coordinate with other operator processes through this kopf peering object "
        "(default: BATCHPILOT_PEERING, else standalone)",
    )
    peering.add_argument(
        "--standalone", action="store_true", help="run without peering (a single process)"
    )
    parser.add_argument(
        "--no-cluster-scan",
        action="store_true",
        help="do not list or watch CustomResourceDefinitions and namespaces: serve the "
        "resources found at start-up in the namespaces named, with no cluster-scoped RBAC "
        "(the chart's namespaced install)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags ``argv``, with the scope from ``BATCHPILOT_WATCH_NAMESPACES`` when unset."""
    args = build_parser().parse_args(argv)
    if not args.namespaces and not args.all_namespaces:
        env = os.environ.get("BATCHPILOT_WATCH_NAMESPACES", "")
        args.namespaces = [ns.strip() for ns in env.split(",") if ns.strip()]
    args.all_namespaces = not args.namespaces
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import kopf

    kopf.configure(verbose=args.verbose, quiet=args.quiet)
    if not args.verbose:
        # kopf logs every successful event handler at INFO, once per pod status change;
        # the reconciler logs what it does under its own name.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Importing the handlers registers them with kopf's default registry.
    import batchpilot_operator.handlers  # noqa: F401

    settings = kopf.OperatorSettings()
    # kopf's scanning watches CRDs and namespaces cluster-wide to follow them appearing and
    # going; without it the operator needs no ClusterRole at all when namespaces are named.
    settings.scanning.disabled = args.no_cluster_scan
    kopf.run(
        settings=settings,
        clusterwide=args.all_namespaces,
        namespaces=args.namespaces or (),
        liveness_endpoint=args.liveness or None,
        standalone=True if args.standalone or not args.peering else None,
        peering_name=args.peering,
    )


if __name__ == "__main__":
    main()
