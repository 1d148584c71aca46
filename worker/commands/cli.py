"""The ``ackworker`` command line: parses arguments and hands off to one module per command.

Every command turns a :class:`~worker.errors.ConfigError` into one line on stderr and exit
code 2, with no traceback. Imports are deferred to the chosen command so that, for example,
``check-config`` starts without loading the HTTP stack.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from worker.entries import DEFAULT_ACCOUNT
from worker.errors import ConfigError

if TYPE_CHECKING:
    from worker.config.settings import Settings

Handler = Callable[[argparse.Namespace], int]


def _cmd_check_config(args: argparse.Namespace) -> int:
    from worker.config.describe import describe_settings
    from worker.config.settings import load_settings

    settings = load_settings(args.config, os.environ)
    print(describe_settings(settings))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from worker.commands.run import run_worker
    from worker.config.settings import load_settings

    settings = load_settings(args.config, os.environ)
    return run_worker(settings)


def _cmd_enqueue(args: argparse.Namespace) -> int:
    from worker.commands.enqueue import enqueue_command
    from worker.config.settings import load_settings

    settings = load_settings(args.config, os.environ, require_credentials=False)
    ids: list[str] = list(args.ids) if args.ids else [line.strip() for line in sys.stdin]
    return enqueue_command(
        settings, [i for i in ids if i], task_no=args.task_no, domain=args.domain
    )


def _cmd_poll(args: argparse.Namespace) -> int:
    from worker.commands.poll import poll_command
    from worker.config.settings import load_settings

    # The polled account's credentials are loaded by poll_command, not the default's.
    settings = load_settings(args.config, os.environ, require_credentials=False)
    return poll_command(settings, args.account, once=args.once)


def _cmd_mock_api(args: argparse.Namespace) -> int:
    from worker.dev.mockapi.main import mock_api_command

    return mock_api_command(args, os.environ)


def _ops_settings(args: argparse.Namespace) -> Settings:
    """Settings for the operator commands: they never call the API, so no credentials."""
    from worker.config.settings import load_settings

    return load_settings(args.config, os.environ, require_credentials=False)


def _cmd_health(args: argparse.Namespace) -> int:
    from worker.commands.health import health_command

    return health_command(_ops_settings(args))


def _cmd_status(args: argparse.Namespace) -> int:
    from worker.commands.status import status_command

    return status_command(_ops_settings(args), as_json=args.json)


def _cmd_dead_list(args: argparse.Namespace) -> int:
    from worker.commands.common import parse_limit
    from worker.commands.dead import dead_list_command

    limit = parse_limit(args.limit)
    return dead_list_command(
        _ops_settings(args), reason=args.reason, limit=limit, as_json=args.json
    )


def _cmd_dead_replay(args: argparse.Namespace) -> int:
    from worker.commands.dead import dead_replay_command

    settings = _ops_settings(args)
    return dead_replay_command(settings, reason=args.reason, ids=args.ids, dry_run=args.dry_run)


def _cmd_dead_purge(args: argparse.Namespace) -> int:
    from worker.commands.dead import dead_purge_command

    settings = _ops_settings(args)
    return dead_purge_command(settings, older_than=args.older_than, yes=args.yes)


def _cmd_reconcile_list(args: argparse.Namespace) -> int:
    from worker.commands.common import parse_limit
    from worker.commands.reconcile import reconcile_list_command

    limit = parse_limit(args.limit)
    return reconcile_list_command(_ops_settings(args), limit=limit, as_json=args.json)


def _add_ops_commands(sub: Any, config_opt: argparse.ArgumentParser) -> None:
    """``health``, ``status``, ``dead list|replay|purge`` and ``reconcile list``."""
    p = sub.add_parser(
        "health", parents=[config_opt], help="exit 0 if this host's worker heartbeat is fresh"
    )
    p.set_defaults(handler=_cmd_health)
    p = sub.add_parser("status", parents=[config_opt], help="backlog, dead letters, workers")
    p.add_argument("--json", action="store_true", help="stable JSON instead of a table")
    p.set_defaults(handler=_cmd_status)

    dead = sub.add_parser("dead", parents=[config_opt], help="list, replay or purge dead letters")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("list", parents=[config_opt], help="dead letters, oldest first")
    p.add_argument("--reason", default=None, help="only this reason")
    p.add_argument("--limit", default="20", metavar="N", help="show at most N (default 20)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(handler=_cmd_dead_list)
    p = actions.add_parser("replay", parents=[config_opt], help="move dead letters back to tasks")
    p.add_argument("--reason", default=None, help="only this reason")
    p.add_argument(
        "--id",
        dest="ids",
        action="extend",
        nargs="+",
        default=[],
        metavar="ID",
        help="only these task-detail numbers",
    )
    p.add_argument("--dry-run", action="store_true", help="count what would move; move nothing")
    p.set_defaults(handler=_cmd_dead_replay)
    p = actions.add_parser("purge", parents=[config_opt], help="delete old dead letters")
    p.add_argument("--older-than", required=True, metavar="DURATION", help="30m, 12h, 7d...")
    p.add_argument("--yes", action="store_true", help="really delete (else: count, exit 2)")
    p.set_defaults(handler=_cmd_dead_purge)

    rec = sub.add_parser("reconcile", parents=[config_opt], help="list reconcile records")
    actions = rec.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("list", parents=[config_opt], help="records, oldest first")
    p.add_argument("--limit", default="20", metavar="N", help="show at most N (default 20)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(handler=_cmd_reconcile_list)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser; each sub-command stores its handler in ``handler``."""
    parser = argparse.ArgumentParser(prog="ackworker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", metavar="FILE", default=None, help="TOML settings file (or ACKWORKER_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # `--config` is accepted after the command too (`ackworker run --config FILE`).
    config_opt = argparse.ArgumentParser(add_help=False)
    config_opt.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)

    p = sub.add_parser(
        "run", parents=[config_opt], help="consume the task stream and acknowledge task results"
    )
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser(
        "enqueue", parents=[config_opt], help="add task-detail numbers to the task stream"
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="task-detail numbers (default: stdin)")
    p.add_argument("--task-no", default=None, help="task number the ids belong to")
    p.add_argument("--domain", default=None, help="domain name the ids belong to")
    p.set_defaults(handler=_cmd_enqueue)

    p = sub.add_parser(
        "poll", parents=[config_opt], help="poll PollTaskResult and enqueue what it returns"
    )
    p.add_argument("--once", action="store_true", help="one cycle, then exit (1 if it failed)")
    p.add_argument(
        "--account", default=DEFAULT_ACCOUNT, help="the account to poll (default: %(default)s)"
    )
    p.set_defaults(handler=_cmd_poll)

    p = sub.add_parser(
        "check-config", parents=[config_opt], help="print the effective settings and their sources"
    )
    p.set_defaults(handler=_cmd_check_config)

    _add_ops_commands(sub, config_opt)

    # Development only: its flags belong to worker.dev and are parsed by _mock_api_args, so
    # that no other command loads the stand-in's code.
    p = sub.add_parser("mock-api", add_help=False, help="run a local stand-in for the Domain API")
    p.set_defaults(handler=_cmd_mock_api)
    return parser


def _mock_api_args(argv: Sequence[str]) -> argparse.Namespace:
    from worker.dev.mockapi.main import add_mock_api_arguments

    parser = argparse.ArgumentParser(
        prog="ackworker mock-api", description="Run a local stand-in for the Domain API."
    )
    add_mock_api_arguments(parser)
    return parser.parse_args(argv, argparse.Namespace(handler=_cmd_mock_api))


def _config_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError behind ``exc``, also when a task group wrapped it in a group."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _config_error(exc.exceptions[0])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ackworker`` script; returns the process exit code."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "mock-api":
        args = _mock_api_args(rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ackworker check-config | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        error = _config_error(exc)
        if error is None:
            raise
        print(f"ackworker: {error}", file=sys.stderr)
        return 2
