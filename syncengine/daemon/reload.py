"""Config reload: when the files changed, and whether a new config may replace the old one.

SIGHUP, or a changed config or mapping file (checked every ``reload_poll`` seconds), loads and
validates the config again; an invalid one is logged and ignored, the old one keeps running.
``[state] url`` and ``max_concurrent`` changes need a restart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from syncengine.config import Config, load_config
from syncengine.daemon.redaction import describe_error
from syncengine.errors import ConfigError
from syncengine.metrics import Metrics

__all__ = ["ConfigWatch", "FileStamp", "load_again", "watched_files"]

log = structlog.get_logger("syncengine.daemon")


@dataclass(frozen=True)
class FileStamp:
    """A watched file as seen: another size or modification time means it changed."""

    path: str
    mtime_ns: int
    size: int
    """-1 (and ``mtime_ns`` -1) for a file that could not be read."""


def watched_files(config: Config) -> tuple[FileStamp, ...]:
    """The config file and every mapping override file its pipelines name, as they are now."""
    paths = {config.path.resolve()}
    for pipeline in config.pipelines.values():
        for per_entity in pipeline.section.mappings.values():
            for override in per_entity.values():
                path = Path(override)
                paths.add(path if path.is_absolute() else config.base_dir / path)
    out = []
    for path in sorted(paths):
        try:
            stat = path.stat()
            out.append(FileStamp(str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            out.append(FileStamp(str(path), -1, -1))
    return tuple(out)


class ConfigWatch:
    """The config's files as last loaded, to tell whether they changed since."""

    def __init__(self, config: Config) -> None:
        self._seen = watched_files(config)

    def remember(self, config: Config) -> None:
        """These files, as they are now, are the ones loaded."""
        self._seen = watched_files(config)

    def changed(self, config: Config) -> bool:
        """Whether a file of ``config`` changed since it was remembered."""
        return watched_files(config) != self._seen


def load_again(old: Config, metrics: Metrics) -> Config | None:
    """The config loaded and validated again from ``old``'s file, or None when it is invalid
    (logged and counted as rejected; the old one keeps running). Changes that only a restart
    applies are warned about."""
    try:
        new = load_config(old.path)
    except ConfigError as exc:
        metrics.reloads.labels("rejected").inc()
        log.error(
            "config reload rejected; the previous config keeps running",
            path=str(old.path),
            problems=[str(p) for p in exc.problems],
        )
        return None
    except Exception as exc:
        metrics.reloads.labels("rejected").inc()
        log.error(
            "config reload rejected; the previous config keeps running",
            path=str(old.path),
            error=describe_error(exc, old.secrets),
        )
        return None
    if new.state_url != old.state_url:
        log.warning("[state] url changed: it takes effect when the daemon restarts")
    if new.daemon.max_concurrent != old.daemon.max_concurrent:
        log.warning("[daemon] max_concurrent changed: it takes effect when the daemon restarts")
    return new
