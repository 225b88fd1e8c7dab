"""The command line: ``run [--once]``, ``stage``, ``status``, ``rollback``; exit codes.

This is the only module that turns errors into exit codes: 0 success or nothing to do,
1 the work failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from service import __version__
from service.config import Config, load_config
from service.errors import ConfigError, SidecarError
from service.layout import Layout

log = logging.getLogger("service")
COMMANDS = ("run", "stage", "status", "rollback")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add = common.add_argument
    add("--models-root", metavar="DIR", help="the shared volume (MODELS_ROOT, /models)")
    add("--staging-dir", metavar="DIR", help="where producers stage (STAGING_DIR)")
    add("--current-link", metavar="PATH", help="the symlink to switch (CURRENT_LINK)")
    add("--poll-interval", dest="poll_override", metavar="SECONDS",
        help="poll interval; overrides the manifest and POLL_DEFAULT")
    add("--reload-url", metavar="URL", help="reload endpoint (RELOAD_URL)")
    add("--no-reload", action="store_true", default=None, help="do not ask for reloads")
    add("--metrics-addr", metavar="ADDR", help="metrics listen address (METRICS_ADDR)")
    add("--metrics-port", metavar="PORT", help="metrics port, 0 disables (METRICS_PORT)")
    add("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR (LOG_LEVEL)")
    add("--log-format", metavar="FORMAT", help="auto, text or json (LOG_FORMAT)")
    add("--watch", dest="watch", action="store_const", const="true",
        help="wake on READY with inotify (WATCH)")
    add("--no-watch", dest="watch", action="store_const", const="false",
        help="rely on polling alone")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="forecaster-sidecar",
        description="Promote staged model bundles atomically into current.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,stage,status,rollback}")
    run = sub.add_parser("run", parents=[common], help="the daemon (default command)")
    run.add_argument("--once", action="store_true", help="run a single pass and exit")
    stage = sub.add_parser("stage", parents=[common], help="stage a bundle safely")
    stage.add_argument("bundle_dir", metavar="BUNDLE_DIR")
    stage.add_argument("--version", dest="bundle_version", metavar="V",
                       help="the version name to write into the manifest")
    status = sub.add_parser("status", parents=[common], help="show the volume's state")
    status.add_argument("--json", action="store_true", help="print JSON")
    rollback = sub.add_parser("rollback", parents=[common], help="switch current back")
    rollback.add_argument("target", nargs="?", metavar="VERSION",
                          help="version to switch to (default: the previous one)")
    return parser


def _with_command(argv: list[str]) -> list[str]:
    """``run`` is the default command: ``forecaster-sidecar --once`` means ``run --once``."""
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version")):
        return argv
    return ["run", *argv]


def _cmd_run(config: Config, args: argparse.Namespace) -> int:
    from prometheus_client import disable_created_metrics

    from service.app import run_daemon, run_once

    # Process-wide, so here where the process starts: *_created series double the
    # exposition and no panel or alert uses them.
    disable_created_metrics()  # type: ignore[no-untyped-call]

    return run_once(config) if args.once else run_daemon(config)


def _cmd_stage(config: Config, args: argparse.Namespace) -> int:
    from service.placement import check_volume
    from service.stage import stage_bundle

    check_volume(config, create=False)
    staged = stage_bundle(Path(args.bundle_dir), Layout.from_config(config),
                          args.bundle_version)
    print(f"staged {staged.files} files, {staged.total_bytes} bytes"
          f" (version {staged.version or 'generated at promotion'})"
          f" into {config.staging_dir}")
    return EXIT_OK


def _cmd_status(config: Config, args: argparse.Namespace) -> int:
    from service.placement import check_volume
    from service.status import collect, render_text

    check_volume(config, create=False)
    state = collect(Layout.from_config(config))
    print(json.dumps(state, indent=2, sort_keys=True) if args.json else render_text(state))
    return EXIT_OK


def _cmd_rollback(config: Config, args: argparse.Namespace) -> int:
    from service.app import rollback

    return rollback(config, args.target)


HANDLERS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "run": _cmd_run, "stage": _cmd_stage, "status": _cmd_status, "rollback": _cmd_rollback,
}


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_with_command(list(sys.argv[1:] if argv is None else argv)))
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    try:
        config = load_config(vars(args), os.environ if env is None else env)
    except ConfigError as exc:
        print(f"forecaster-sidecar: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from service.logsetup import setup_logging

    setup_logging(config.log_level, config.log_format)
    try:
        return HANDLERS[args.command](config, args)
    except ConfigError as exc:
        print(f"forecaster-sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SidecarError, OSError) as exc:
        print(f"forecaster-sidecar {args.command}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

