"""pipeline/atomic.py: a rewrite with the same bytes keeps the old timestamp, a changed one does not."""
import os

from pipeline.core import atomic

PAST_NS = 1_600_000_000_123_456_789


def age(path):
    os.utime(path, ns=(PAST_NS, PAST_NS))


def test_same_bytes_keep_the_timestamp_and_new_bytes_do_not(tmp_path):
    target = tmp_path / "a.bin"
    atomic.write_bytes(target, b"same")
    age(target)
    atomic.write_bytes(target, b"same")
    assert target.stat().st_mtime_ns == PAST_NS
    atomic.write_bytes(target, b"sama")  # same size, other bytes
    assert target.read_bytes() == b"sama" and target.stat().st_mtime_ns != PAST_NS


def test_a_replaced_folder_keeps_the_timestamps_of_its_unchanged_files(tmp_path):
    folder = tmp_path / "images"
    with atomic.atomic_dir(folder) as tmp:
        (tmp / "cat").mkdir()
        (tmp / "cat" / "0001.png").write_bytes(b"kept")
        (tmp / "cat" / "0002.png").write_bytes(b"old")
    for name in ("0001.png", "0002.png"):
        age(folder / "cat" / name)
    with atomic.atomic_dir(folder) as tmp:
        (tmp / "cat").mkdir()
        (tmp / "cat" / "0001.png").write_bytes(b"kept")
        (tmp / "cat" / "0002.png").write_bytes(b"new!")
        (tmp / "cat" / "0003.png").write_bytes(b"added")
    assert (folder / "cat" / "0001.png").stat().st_mtime_ns == PAST_NS
    assert (folder / "cat" / "0002.png").read_bytes() == b"new!"
    assert (folder / "cat" / "0002.png").stat().st_mtime_ns != PAST_NS
    assert (folder / "cat" / "0003.png").read_bytes() == b"added"
