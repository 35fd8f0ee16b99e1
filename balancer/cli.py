"""The `balancer` command (SPEC §1). The only module that prints usage and exits."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable

from balancer import __version__
from balancer.config import (
    LOG_LEVELS,
    Config,
    ConfigError,
    check_workers,
    load_config,
    summary,
)
from balancer.config_warnings import config_warnings
from balancer.inactive import inactive

EXIT_OK, EXIT_FAILURE, EXIT_BAD_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "balancer.yaml"
NO_CONFIG = (
    "balancer: no configuration file: pass one with -c FILE or set $BALANCER_CONFIG "
    f"(there is no ./{DEFAULT_CONFIG} either)"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="balancer", description="A reverse-proxy HTTP load balancer."
    )
    parser.add_argument(
        "-c", "--config", help="the YAML file [$BALANCER_CONFIG, then ./balancer.yaml]"
    )
    parser.add_argument("--check", action="store_true", help="validate the file and exit")
    parser.add_argument("--version", action="version", version=f"balancer {__version__}")
    parser.add_argument("--workers", help="processes sharing the port (a number or 'auto')")
    parser.add_argument("--log-level", help="debug | info | warning | error")
    return parser.parse_args(argv)


def _apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    problems: list[str] = []
    changes: dict[str, object] = {}
    if args.log_level is not None:
        level = args.log_level.upper()
        if level in LOG_LEVELS:
            changes["log_level"] = level
        else:
            problems.append(
                f"--log-level: unknown level {args.log_level!r} "
                "(valid: debug, info, warning, error)"
            )
    if args.workers is not None:
        if args.workers == "auto":
            changes["workers"] = os.cpu_count() or 1
            changes["workers_auto"] = True
        elif args.workers.isdigit() and int(args.workers) >= 1:
            changes["workers"] = int(args.workers)
            changes["workers_auto"] = False
        else:
            problems.append(f"--workers: expected a number >= 1 or 'auto', got {args.workers!r}")
    if problems:
        raise ValueError("\n".join(problems))
    if not changes:
        return config
    config = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
    return check_workers(config, from_file=False) if "workers" in changes else config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.config or os.environ.get("BALANCER_CONFIG") or DEFAULT_CONFIG
    if not (args.config or os.environ.get("BALANCER_CONFIG") or os.path.exists(DEFAULT_CONFIG)):
        print(NO_CONFIG, file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        config = _apply_overrides(load_config(path), args)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_BAD_CONFIG
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.check:
        for warning in config_warnings(config):
            print(f"warning: {warning.render(config.source)}", file=sys.stderr)
        print(summary(config))
        print(f"{path}: configuration is valid")
        return EXIT_OK
    return run(config, path, lambda reread: _apply_overrides(reread, args))


def run(
    config: Config,
    path: str | None = None,
    overrides: Callable[[Config], Config] = lambda config: config,
) -> int:
    """Serve `config`; a reload re-reads `path` and applies the same command-line overrides."""
    import uvloop

    from balancer.server import StartupError, serve
    from balancer.strategies import UnknownStrategy

    logging.basicConfig(
        stream=sys.stderr,
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("balancer.config")
    for entry in inactive(config):
        log.warning("%s", entry.notice)
    for warning in config_warnings(config):
        log.warning("%s", warning.render(config.source))
    if config.workers > 1:
        return _supervise(config)
    try:
        status = uvloop.run(serve(config, config_path=path, overrides=overrides))
    except UnknownStrategy as exc:
        print(f"{config.source}: strategy: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except StartupError as exc:
        print(f"balancer: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return status


def _supervise(config: Config) -> int:
    """workers > 1: a supervisor and its worker processes (SPEC §6)."""
    from balancer.supervisor import StartupError, supervise

    try:
        return supervise(config)
    except StartupError as exc:
        print(f"balancer: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # before the supervisor took SIGINT over
        return EXIT_OK
