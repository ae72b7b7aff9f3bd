"""Write an output directory safely: checked up front, built aside, renamed into place when complete."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


def check_outside_protected(output: str | Path, protected: list[str | Path | None]) -> None:
    """Check that ``output`` neither is, contains nor lies inside an existing protected path.

    ``None`` entries and paths that do not exist are skipped.

    Raises:
        ValueError: naming the output and the protected path it overlaps.
    """
    target = Path(output).expanduser().resolve()
    for path in protected:
        if path is None or not Path(path).exists():
            continue
        source = Path(path).expanduser().resolve()
        if target == source or source in target.parents or target in source.parents:
            raise ValueError(
                f"Output directory {target} overlaps the input {source}; writing there could destroy the "
                "input model. Choose another --output directory."
            )


def check_output_dir(output: str | Path, overwrite: bool = False, protected: list[str | Path] | None = None) -> Path:
    """Validate an output directory before any work starts, and return its absolute path.

    Raises:
        ValueError: if ``output`` is, contains or lies inside a protected path (such as the
            input model), or is a non-empty directory and ``overwrite`` is false, or is a file.
    """
    target = Path(output).expanduser().resolve()
    check_outside_protected(target, protected or [])
    if target.exists() and not target.is_dir():
        raise ValueError(f"Output path {target} is a file, not a directory; choose another --output.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(
            f"Output directory {target} is not empty. Choose a new directory, or pass --overwrite to replace it."
        )
    return target


@contextmanager
def staged_directory(target: Path):
    """Yield a temporary directory beside ``target``; on success, make it ``target``.

    The temporary name starts with a dot and ends in ``.partial``, so an interrupted run
    never leaves a directory that looks like a finished model. On an exception the
    temporary directory is deleted and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    staging.chmod(0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
        os.replace(target, previous)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    logger.info("Wrote %s", target)
