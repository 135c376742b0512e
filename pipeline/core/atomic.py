"""Write targets atomically: a temp file beside the target, renamed into place only when complete,
so an interrupted step never leaves a half-written file that doit would take as up to date.

A rewritten file whose bytes did not change keeps its old timestamp: doit then sees it unchanged from the
timestamp alone, instead of re-hashing it on every later run (a rebuilt dataset made no-op runs 4x slower)."""
import contextlib
import filecmp
import os
import shutil
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def keep_timestamp_if_unchanged(new: Path, old: Path) -> None:
    """Give `new` the timestamps of `old` when both hold the same bytes."""
    try:
        old_stat = old.stat()
    except FileNotFoundError:
        return
    if old_stat.st_size == new.stat().st_size and filecmp.cmp(new, old, shallow=False):
        os.utime(new, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temp path in the target's folder; on success rename it over `target`, on error delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; targets get ordinary permissions
        keep_timestamp_if_unchanged(Path(tmp), target)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(target, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def save_npy(target, array) -> None:
    import numpy as np

    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_png(target, figure) -> None:
    """A matplotlib figure as PNG, without the metadata that would make two builds differ."""
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})


@contextlib.contextmanager
def atomic_dir(target):
    """Yield a temp folder beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        for new in (p for p in tmp.rglob("*") if p.is_file()):
            keep_timestamp_if_unchanged(new, target / new.relative_to(tmp))
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
