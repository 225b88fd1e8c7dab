"""The command line: ``run [--once]``, ``stage``, ``push``, ``status``, ``rollback``,
``help``.

This is the only module that turns errors into exit codes: 0 success or nothing to do,
1 the work failed, 2 usage or configuration error, 130 interrupted. The options' help
(variable, default) is read from :data:`service.config.SETTINGS` and :class:`Config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service import __version__
from service.config import SETTINGS, Config, load_config
from service.errors import ConfigError, SidecarError, one_line
from service.layout import Layout

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("service")
PROG = "forecaster-sidecar"
COMMANDS = ("run", "stage", "push", "status", "rollback")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# What each setting means, for --help. Its variable, flag and default are not repeated
# here: they come from SETTINGS and Config.
DESCRIPTIONS: dict[str, str] = {
    "models_root": "the shared volume",
    "staging_dir": "where producers write a bundle, READY last",
    "current_link": "the symlink switched to the current version",
    "manifest_name": "the manifest's file name at a bundle's root",
    "require_manifest": "reject a bundle without a manifest (manifest_missing)",
    "poll_override": "poll interval in seconds, [1, 86400]; overrides the manifest of "
    "current and POLL_DEFAULT",
    "poll_default": "poll interval in seconds when neither --poll-interval nor the "
    "manifest of current sets one",
    "reload_url": "the model server's reload endpoint; empty disables reloading",
    "reload_method": "HTTP method of the reload request: POST, PUT, PATCH or GET",
    "reload_timeout": "seconds per reload attempt, body included",
    "reload_retries": "retries of a reload after connection errors, timeouts, 429, 5xx",
    "reload_token": "bearer token sent with the reload (never logged); not with RELOAD_TOKEN_FILE",
    "reload_token_file": "file holding the bearer token, re-read for every request",
    "reload_verify_url": "after a reload, GET until 2xx ({version} is replaced)",
    "rollback_on_reload_failure": "switch current back when the reload fails",
    "keep_versions": "newest versions kept (current and previous always are)",
    "keep_rejected": "newest rejected bundles kept",
    "metrics_addr": "listen address of /metrics, /healthz, /readyz",
    "metrics_port": "port of /metrics, /healthz, /readyz; 0 disables the server",
    "log_level": "DEBUG, INFO, WARNING, ERROR or CRITICAL",
    "log_format": "auto (text on a terminal, else JSON lines), text or json",
    "watch": "wake the pass with inotify when READY appears; polling stays on",
    "trusted_keys_file": "Ed25519 public keys (PEM); when set, bundles must be signed",
    "source": "pull bundles from oci://REGISTRY/REPO:TAG (or @sha256:...)",
    "source_poll_seconds": "seconds between checks of SOURCE, [5, 86400]",
    "source_insecure": "registries (host:port, comma-separated) reached over plain HTTP",
    "registry_auth_file": "Docker/OCI auth file with the registry's credentials",
    "registry_ca_file": "PEM CA certificates for HTTPS registries (unset: certifi's bundle)",
}
# Defaults resolved after the configuration is loaded, as the user should read them.
RESOLVED_DEFAULTS: dict[str, str] = {"registry_auth_file": "~/.docker/config.json"}

VOLUME = ("models_root", "staging_dir", "current_link")
LOGGING = ("log_level", "log_format")
DAEMON = ("poll_override", "reload_url", "metrics_addr", "metrics_port", "watch")
ROLLBACK = ("reload_url",)

EXIT_CODES = """exit codes:
  0    success, or nothing to do
  1    the work failed: under --once a rejected bundle, a transient error or a reload
       that failed after its retries; a failed rollback; stage when a bundle is
       already staged or staging is not empty; stage or push refusing a bundle; push
       when the registry fails
  2    usage or configuration error (push: a bad REGISTRY/REPO:TAG or signing key)
  130  interrupted (Ctrl-C); stage removes what it had copied"""


# -- help text from SETTINGS and Config ----------------------------------------------------


def default_value(key: str) -> object:
    spec = {f.name: f for f in dataclasses.fields(Config)}[key]
    if spec.default is not dataclasses.MISSING:
        return spec.default
    factory: Any = spec.default_factory
    return factory() if factory is not dataclasses.MISSING else None


def default_text(key: str) -> str:
    """The default of a setting as the user writes it: ``30``, ``false``, ``unset``,
    ``$MODELS_ROOT/staging`` for a path derived from the root."""
    if key in RESOLVED_DEFAULTS:
        return RESOLVED_DEFAULTS[key]
    value = default_value(key)
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    root = default_value("models_root")
    if (
        isinstance(value, Path)
        and isinstance(root, Path)
        and value.parent == root
        and key != "models_root"
    ):
        return f"$MODELS_ROOT/{value.name}"
    return str(value)


def option_help(key: str) -> str:
    var = SETTINGS[key][0]
    source = f"env {var}, default {default_text(key)}" if var else f"default {default_text(key)}"
    description = DESCRIPTIONS.get(key, "")
    return f"{description} ({source})" if description else f"({source})"


def env_only_epilog() -> str:
    lines = ["settings read only from the environment (VARIABLE=default):"]
    for key, (var, flag, _parser) in SETTINGS.items():
        if var and flag is None:
            lines.append(f"  {var}={default_text(key)}")
            lines += textwrap.wrap(
                DESCRIPTIONS.get(key, ""), 84, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
    return "\n".join(lines)


# -- the parser -------------------------------------------------------------------------------


def _add_setting(parser: argparse.ArgumentParser, key: str) -> None:
    flag = SETTINGS[key][1]
    assert flag is not None, key
    help_text = option_help(key)
    if key == "watch":
        parser.add_argument(flag, dest=key, action="store_const", const="true", help=help_text)
        parser.add_argument(
            "--no-watch",
            dest=key,
            action="store_const",
            const="false",
            help="rely on polling alone (WATCH=false)",
        )
        return
    metavar = "SECONDS" if key == "poll_override" else key.rsplit("_", 1)[-1].upper()
    parser.add_argument(flag, dest=key, metavar=metavar, help=help_text)
    if key == "reload_url":
        parser.add_argument(
            "--no-reload",
            action="store_true",
            default=None,
            help="do not ask for reloads (same as RELOAD_URL empty)",
        )


def _command(
    sub: Any,
    name: str,
    summary: str,
    keys: Sequence[str],
    epilog: str = EXIT_CODES,
    volume: Sequence[str] = VOLUME,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for key in (*volume, *keys, *LOGGING):
        _add_setting(parser, key)
    return parser


SIGN_HELP = (
    "sign the manifest with this Ed25519 private key (PEM, PKCS#8: openssl genpkey "
    "-algorithm ed25519); writes <manifest>.sig"
)
PUSH_EPILOG = f"""Credentials come from REGISTRY_AUTH_FILE (default ~/.docker/config.json),
never from a flag; a registry named in SOURCE_INSECURE is reached over plain HTTP, every
other over HTTPS verified with REGISTRY_CA_FILE (default: the CA bundle of certifi).

{EXIT_CODES}"""


MAIN_EPILOG = f"""The command's options may come before or after it:
  {PROG} --models-root ./models status
`{PROG} help COMMAND` lists a command's options with their environment
variables and defaults; `{PROG} help run` also lists the settings that exist only
as environment variables.

{EXIT_CODES}"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage="%(prog)s [COMMAND] [options]   (COMMAND defaults to run)",
        description="Promote staged model bundles atomically into current.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog=PROG)
    run = _command(
        sub,
        "run",
        "the daemon (the default command)",
        DAEMON,
        f"{env_only_epilog()}\n\n{EXIT_CODES}",
    )
    run.add_argument("--once", action="store_true", help="run a single pass and exit")
    stage = _command(sub, "stage", "copy a bundle into staging safely, READY last", ())
    stage.add_argument("bundle_dir", metavar="BUNDLE_DIR", help="the bundle to stage")
    stage.add_argument(
        "--version",
        dest="bundle_version",
        metavar="V",
        help="the version name written into the manifest",
    )
    stage.add_argument("--sign", metavar="KEY", help=SIGN_HELP)
    push = _command(
        sub,
        "push",
        "push a bundle to a registry tag (one layer per file), optionally signed",
        (),
        PUSH_EPILOG,
        volume=(),
    )
    push.add_argument("bundle_dir", metavar="BUNDLE_DIR", help="the bundle to push")
    push.add_argument("target", metavar="REGISTRY/REPO:TAG", help="where to push it")
    push.add_argument("--sign", metavar="KEY", help=SIGN_HELP)
    status = _command(sub, "status", "show the volume: versions, daemon, pending work", ())
    status.add_argument(
        "--json", action="store_true", help="print JSON (schema forecaster-sidecar/status/v1)"
    )
    rollback = _command(sub, "rollback", "switch current back to a kept version", ROLLBACK)
    rollback.add_argument(
        "target",
        nargs="?",
        metavar="VERSION",
        help="the version to switch to (default: the previous one)",
    )
    helper = sub.add_parser(
        "help", help="show the help of a command", description="show the help of a command"
    )
    helper.add_argument("topic", nargs="?", metavar="COMMAND", choices=COMMANDS)
    return parser


def _takes_value(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string, of any command, that consumes the next word."""
    return {
        flag
        for sub in _subparsers(parser).values()
        for action in sub._actions
        if action.nargs is None and not isinstance(action, argparse._StoreConstAction)
        for flag in action.option_strings
    }


def with_command(argv: list[str], takes_value: set[str]) -> list[str]:
    """argv with the command first: ``--models-root X status`` becomes
    ``status --models-root X``; without a command, ``run`` (``--once`` is ``run --once``)."""
    i = 0
    while i < len(argv) and argv[i] != "--":
        word = argv[i]
        if not word.startswith("-"):
            if word in (*COMMANDS, "help"):
                return [word, *argv[:i], *argv[i + 1 :]]
            break
        i += 2 if word in takes_value else 1
    if any(w in ("-h", "--help", "--version") for w in argv[:i]) and "--" not in argv[:i]:
        return argv
    return ["run", *argv]


# -- the commands ------------------------------------------------------------------------------


def _cmd_run(config: Config, args: argparse.Namespace) -> int:
    from service.signals import EarlyStop

    early = None if args.once else EarlyStop()  # before the slower imports below

    from prometheus_client import disable_created_metrics

    from service.app import run_daemon, run_once

    # Process-wide, so here where the process starts: *_created series double the
    # exposition and no panel or alert uses them.
    disable_created_metrics()  # type: ignore[no-untyped-call]

    if args.once:
        return EXIT_FAILED if run_once(config).failed else EXIT_OK
    run_daemon(config, early=early)
    return EXIT_OK


class Progress:
    """A tqdm bar on stderr, created at the first report (when the total is known)."""

    def __init__(self) -> None:
        self.bar: tqdm[Any] | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread for one short bar
            # A terminal of unknown size (0x0, as a fresh pty) would hide tqdm's bar.
            sized = _columns() > 0
            self.bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="staging",
                file=sys.stderr,
                dynamic_ncols=sized,
                ncols=None if sized else 80,
                nrows=None if sized else 24,
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        return 0


def _cmd_stage(config: Config, args: argparse.Namespace) -> int:
    from service.placement import check_volume
    from service.stage import stage_bundle
    from service.status import count, printable, size_text

    check_volume(config, create=False)
    progress = Progress() if sys.stderr.isatty() else None
    try:
        staged = stage_bundle(
            Path(args.bundle_dir),
            Layout.from_config(config),
            args.bundle_version,
            progress=progress,
            sign=None if args.sign is None else Path(args.sign),
        )
    finally:
        if progress is not None:
            progress.close()
    version = printable(staged.version) if staged.version else "named at promotion"
    what = f"{count(staged.files, 'file')}, {size_text(staged.total_bytes)}, version {version}"
    where = printable(str(config.staging_dir))
    signed = ", signed" if args.sign else ""
    print(f"staged {what}{signed}, into {where} (root {printable(str(config.models_root))})")
    return EXIT_OK


def _cmd_push(config: Config, args: argparse.Namespace) -> int:
    from service.publish import parse_target, push, settle
    from service.status import printable

    target = parse_target(args.target)
    src = Path(args.bundle_dir)
    sign = None if args.sign is None else Path(args.sign)
    overrides = settle(src, config.manifest_name, sign)
    auth = config.registry_auth_file or Path.home() / ".docker" / "config.json"
    result = push(
        src,
        target,
        overrides,
        insecure=frozenset(config.source_insecure),
        auth_file=auth,
        ca_file=config.registry_ca_file,
    )
    where = printable(f"{target.registry}/{target.repository}:{target.tag}")
    print(
        f"pushed {where} {result.digest}{', signed' if sign else ''}: "
        f"{result.layers} layers, {result.uploaded} uploaded, "
        f"{result.skipped} already in the registry"
    )
    return EXIT_OK


def _cmd_status(config: Config, args: argparse.Namespace) -> int:
    from service.lockfile import read_daemon
    from service.placement import check_placement
    from service.status import check_root, collect, render_text

    layout = Layout.from_config(config)
    check_root(layout)  # not placement.check_volume: status needs read access only
    check_placement(config)
    now = time.time()
    state = collect(layout, now, read_daemon(layout))
    print(json.dumps(state, indent=2, sort_keys=True) if args.json else render_text(state, now))
    return EXIT_OK


def _cmd_rollback(config: Config, args: argparse.Namespace) -> int:
    from service.app import rollback

    rollback(config, args.target)
    return EXIT_OK


HANDLERS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "run": _cmd_run,
    "stage": _cmd_stage,
    "push": _cmd_push,
    "status": _cmd_status,
    "rollback": _cmd_rollback,
}


def _help(parser: argparse.ArgumentParser, topic: str | None) -> int:
    if topic is None:
        parser.print_help()
    else:
        parser.parse_args([topic, "--help"])
    return EXIT_OK


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        return _main(
            list(sys.argv[1:] if argv is None else argv), os.environ if env is None else env
        )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, with an unknown option reported by the command's own parser (its
    usage lists the options it does take)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = _subparsers(parser).get(getattr(args, "command", None) or "", parser)
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _main(argv: list[str], env: Mapping[str, str]) -> int:
    parser = build_parser()
    try:
        args = _parse(parser, with_command(argv, _takes_value(parser)))
        if args.command == "help":
            return _help(parser, args.topic)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    try:
        config = load_config(vars(args), env)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from service.logsetup import setup_logging

    setup_logging(config.log_level, config.log_format)
    return _dispatch(config, args)


def _dispatch(config: Config, args: argparse.Namespace) -> int:
    try:
        return HANDLERS[args.command](config, args)
    except KeyboardInterrupt:
        print(
            f"{PROG} {args.command}: interrupted{_cleaned(args.command, config)}", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (SidecarError, OSError) as exc:
        print(f"{PROG} {args.command}: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


def _cleaned(command: str, config: Config) -> str:
    return (
        f"; what it had copied into {config.staging_dir} was removed" if command == "stage" else ""
    )
