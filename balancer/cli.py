"""The `balancer` command (SPEC §1). The only module that prints usage and exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from balancer import __version__
from balancer.config import Config, ConfigError, load_config, summary
from balancer.config_warnings import config_warnings
from balancer.inactive import inactive
from balancer.overrides import NO_OVERRIDES, CommandLine

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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.config or os.environ.get("BALANCER_CONFIG") or DEFAULT_CONFIG
    if not (args.config or os.environ.get("BALANCER_CONFIG") or os.path.exists(DEFAULT_CONFIG)):
        print(NO_CONFIG, file=sys.stderr)
        return EXIT_BAD_CONFIG
    overrides = CommandLine(args.log_level, args.workers)
    try:
        config = overrides(load_config(path))
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
    return run(config, path, overrides)


def run(
    config: Config,
    path: str | None = None,
    overrides: CommandLine = NO_OVERRIDES,
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
        return _supervise(config, path, overrides)
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


def _supervise(config: Config, path: str | None, overrides: CommandLine) -> int:
    """workers > 1: a supervisor and its worker processes (SPEC §6)."""
    from balancer.supervisor import StartupError, supervise

    try:
        return supervise(config, path, overrides)
    except StartupError as exc:
        print(f"balancer: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # before the supervisor took SIGINT over
        return EXIT_OK
