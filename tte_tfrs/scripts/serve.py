"""tte-serve: recommendations over HTTP from an export folder, following its current version.

Loads the current version of --output_dir (and its --backend index), then serves it on
--host:--port (the loopback address unless told otherwise). A new export or a rollback is picked up
while serving: the new version is loaded and warmed in the background, then swapped in. Needs the
serve extra: pip install "tte_tfrs[serve]".

Examples:
  tte-serve                                   # saved_models/ on http://127.0.0.1:8080
  tte-serve --output_dir=/srv/models --port=9000 --backend=scann
  curl -d '{"user_id": "41", "k": 5}' localhost:8080/v1/recommend
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence

from absl import flags

from tte_tfrs.errors import ConfigError
from tte_tfrs.scripts import cli
from tte_tfrs.serving.config import ServeConfig

PROGRAM = "tte-serve"


def define_flags(values: flags.FlagValues) -> None:
    cli.define_config_flags(values, ServeConfig)


def config_from(values: flags.FlagValues) -> ServeConfig:
    settings = cli.config_values(values, ServeConfig)
    settings["output_dir"] = cli.expand_path(settings["output_dir"])
    return ServeConfig(**settings)


def main(values: flags.FlagValues) -> int:
    config = config_from(values)
    try:
        import uvicorn

        from tte_tfrs.serving.http import create_app
        from tte_tfrs.serving.versions import VersionManager
    except ImportError as exc:
        raise ConfigError(f"the service needs the serve extra ({exc}); install it with "
                          'pip install "tte_tfrs[serve]"') from None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROGRAM}: %(asctime)s %(levelname)s %(message)s"))
    service_log = logging.getLogger("tte_tfrs.serve")
    service_log.addHandler(handler)
    service_log.setLevel(logging.INFO)
    service_log.propagate = False

    manager = VersionManager(config)
    recommender = manager.load_current()              # a folder that cannot be served: exit 2
    server = uvicorn.Server(uvicorn.Config(create_app(manager, config), host=config.host,
                                           port=config.port, log_level="warning",
                                           access_log=False, proxy_headers=False,
                                           timeout_graceful_shutdown=10))
    if config.exit_after_s:
        timer = threading.Timer(config.exit_after_s, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    service_log.warning("serving version %d of %s (%s, %d items) on http://%s:%d",
                        recommender.version, config.output_dir, recommender.index.name,
                        recommender.catalogue_size, config.host, config.port)
    try:
        server.run()
    except SystemExit:                                # uvicorn could not listen (message above)
        return cli.fail(PROGRAM, f"cannot listen on {config.host}:{config.port}; choose "
                        "another --port or --host")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """The ``tte-serve`` console script; returns the exit code."""
    return cli.run(PROGRAM, __doc__, define_flags, main, argv)


if __name__ == "__main__":
    sys.exit(run())
