"""Content-addressed cache for expensive steps (training, tuning).

A step's key is a SHA-256 over everything that determines its outputs: its code, the config values it reads,
the content of its inputs and the versions of the libraries that compute it. Entries live in
`<cache root>/<stage>/<key>/` as `manifest.json` plus `files/<n>` (the n-th output). An entry is built in a
temp folder beside it and renamed into place whole, so readers never see a half-written one; the manifest
lists every file's sha256, and a hit restores only after checking them. Behind this local tier,
$PIPELINE_CACHE_URL may name a shared remote one (pipeline/core/remote_cache.py): looked up after the local tier,
its hits are downloaded into the local tier, and a miss's result is published to both.

Command line (for CI; `--remote` works on the remote tier instead):
  python -m pipeline.core.cache keys [--digest]        every valid entry as `stage key`, or one digest of that list
  python -m pipeline.core.cache prune --unused-since T drop entries not used since epoch T (and stale temp folders)
  python -m pipeline.core.cache check                  report incomplete or corrupt entries (exit 1 if any)
`doit cache_key` also prints the keys the current tree and config give train and tune (print_keys).
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pipeline.core.atomic import atomic_path
from pipeline.core.provenance import content_sha256, file_sha256, package_versions

CACHE_ENV = "PIPELINE_CACHE_DIR"
CACHE_FORMAT = 1  # bump when the entry layout or key recipe changes
MANIFEST = "manifest.json"
FILES = "files"
STALE_TEMP_SECONDS = 24 * 3600  # a temp entry older than this was left by a killed writer


class CorruptEntry(Exception):
    """A cache entry that must not be used; the message says why."""


def cache_root() -> Path:
    """$PIPELINE_CACHE_DIR, else $XDG_CACHE_HOME/an13331-pipeline, else ~/.cache/an13331-pipeline."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "an13331-pipeline"


def canonical_json(value, what: str) -> str:
    """Compact, key-sorted JSON, so equal values always give equal bytes."""
    def refuse(obj):
        raise ValueError(
            f"{what}: value {obj!r} of type {type(obj).__name__} cannot go into a cache key; pass plain "
            "str/int/float/bool/None/list/dict values (file contents go in input_files, not their paths)"
        )
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=refuse)


def key_ingredients(stage: str, code_files, config_subset: dict, input_files, library_versions: dict) -> dict:
    """What a key is computed from, as JSON-ready data (also stored in each entry's manifest for debugging).
    Files count by content and base name only, so the same step in another checkout gets the same key.
    Order of `code_files` / `input_files` matters: pass fixed lists. A folder counts as its whole tree."""
    def described(paths):
        return [{"name": Path(p).name, "sha256": content_sha256(p)} for p in paths]

    ingredients = {
        "format": CACHE_FORMAT,
        "stage": stage,
        "code": described(code_files),
        "config": config_subset,
        "inputs": described(input_files),
        "libraries": dict(library_versions),
    }
    canonical_json(ingredients, f"cache key of stage {stage!r}")  # fail here, naming the stage
    return ingredients


def key_of(ingredients: dict) -> str:
    return hashlib.sha256(canonical_json(ingredients, "cache key").encode("utf-8")).hexdigest()


def cache_key(stage: str, code_files, config_subset: dict, input_files, library_versions: dict) -> str:
    """Hex SHA-256 over the step's code, config values, input contents and library versions."""
    return key_of(key_ingredients(stage, code_files, config_subset, input_files, library_versions))


def _warn(message: str) -> None:
    print(f"pipeline cache: {message}", file=sys.stderr)


def _read_manifest(entry: Path) -> dict:
    """The entry's manifest after checking every listed file's size and sha256; CorruptEntry otherwise."""
    manifest_path = entry / MANIFEST
    if not manifest_path.is_file():
        raise CorruptEntry(f"{entry}: no {MANIFEST} (incomplete entry)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest["format"] != CACHE_FORMAT or manifest["key"] != entry.name:
            raise CorruptEntry(f"{manifest_path}: written for another format or key")
        for index, output in enumerate(manifest["outputs"]):
            name, size, sha256 = output["name"], output["size"], output["sha256"]
            stored = entry / FILES / str(index)
            if not stored.is_file():
                raise CorruptEntry(f"{entry}: file {FILES}/{index} ({name}) is missing")
            if stored.stat().st_size != size or file_sha256(stored) != sha256:
                raise CorruptEntry(f"{entry}: file {FILES}/{index} ({name}) does not match its sha256")
    except (ValueError, KeyError, TypeError) as error:  # unreadable or truncated manifest
        raise CorruptEntry(f"{manifest_path}: unreadable manifest ({error})") from error
    return manifest


def _restore(entry: Path, manifest: dict, outputs: list[Path]) -> None:
    """Copy each stored file to its output atomically, checking the copy's sha256 (the entry may change
    under us if another process replaces it)."""
    for index, (output, record) in enumerate(zip(outputs, manifest["outputs"])):
        with atomic_path(output) as tmp:
            shutil.copyfile(entry / FILES / str(index), tmp)
            if file_sha256(tmp) != record["sha256"]:
                raise CorruptEntry(f"{entry}: file {FILES}/{index} changed while being restored")


def manifest_of(stage: str, key: str, outputs: list[Path], ingredients) -> dict:
    """The manifest of an entry holding `outputs`: each one's name, size and sha256, and the key's ingredients."""
    records = [{"name": o.name, "size": o.stat().st_size, "sha256": file_sha256(o)} for o in outputs]
    return {"format": CACHE_FORMAT, "stage": stage, "key": key, "outputs": records, "ingredients": ingredients}


def manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def install_entry(stage_dir: Path, key: str, fill) -> None:
    """Have `fill(tmp)` write an entry (manifest and files/) into a temp folder beside its final place, then
    rename it there. If another writer got there first with a good entry, keep theirs; a bad entry in the way is
    moved aside and replaced. Whatever `fill` raises propagates, and nothing is left behind."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=stage_dir))
    try:
        fill(tmp)
        entry = stage_dir / key
        try:
            os.rename(tmp, entry)
            return
        except OSError:  # the entry exists already (another writer, or an old bad entry)
            pass
        try:
            _read_manifest(entry)
            return  # lost the race to a good entry: fine
        except CorruptEntry as problem:
            _warn(f"replacing bad entry: {problem}")
        aside = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".bad", dir=stage_dir))
        try:
            os.rename(entry, aside / key)
        except OSError:
            pass  # someone else moved it first
        shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            pass  # another writer's entry landed in between; it was verified by its writer
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _store(stage_dir: Path, key: str, outputs: list[Path], manifest: dict) -> None:
    def fill(tmp: Path) -> None:
        (tmp / FILES).mkdir()
        for index, (output, record) in enumerate(zip(outputs, manifest["outputs"])):
            stored = tmp / FILES / str(index)
            shutil.copyfile(output, stored)
            if file_sha256(stored) != record["sha256"]:
                raise OSError(f"{output} changed while being stored")
        (tmp / MANIFEST).write_text(manifest_text(manifest), encoding="utf-8")
    install_entry(stage_dir, key, fill)


def _restore_entry(stage: str, key: str, entry: Path, outputs: list[Path], log, origin: str) -> bool:
    """Restore `outputs` from a verified local entry; False (reported) if it is missing, corrupt or another
    step's."""
    if not entry.exists():
        return False
    try:
        manifest = _read_manifest(entry)
        # Output paths are not in the key (a renamed project gets the same model), so an entry restores into
        # this step's outputs in order; it must hold as many files, of the same kinds.
        stored_names = [record["name"] for record in manifest["outputs"]]
        if [Path(name).suffix for name in stored_names] != [o.suffix for o in outputs]:
            raise CorruptEntry(f"{entry}: holds {stored_names}, not this step's outputs "
                               f"{[o.name for o in outputs]}")
        _restore(entry, manifest, outputs)
    except CorruptEntry as problem:
        _warn(f"ignoring entry: {problem}")
        return False
    _mark_used(entry)
    log(f"{stage}: cache hit {key[:16]}, restored {', '.join(o.name for o in outputs)} from {origin}")
    return True


def cached_run(stage: str, key: str, outputs, run, log=print, ingredients: dict | None = None,
               root=None, remote=None) -> str:
    """Restore `outputs` from the cache entry for `key` ("hit"), or call `run()` to make them and store
    them ("miss"). Looks in the local tier (`root`, default cache_root()), then in the remote tier (`remote`, a
    pipeline.core.remote_cache.Remote; default: the one $PIPELINE_CACHE_URL names, if any), whose entry is first
    downloaded into the local tier and verified. A miss stores the outputs locally, then publishes them remotely;
    a local hit publishes the entry when the remote lacks it.
    A corrupt or incomplete entry is reported on stderr and treated as a miss; a failing remote is reported once
    and skipped. `ingredients` (from key_ingredients) is stored in the manifest to explain the key."""
    outputs = [Path(o) for o in outputs]
    if ingredients is not None and key_of(ingredients) != key:
        raise ValueError(f"cache key {key} of stage {stage!r} was not computed from the ingredients given")
    if remote is None:
        from pipeline.core import remote_cache  # boto3 is imported only when an s3:// remote is configured

        remote = remote_cache.from_environment()
    stage_dir = Path(root if root is not None else cache_root()) / stage
    entry = stage_dir / key
    if _restore_entry(stage, key, entry, outputs, log, str(entry)):
        if remote is not None:
            remote.share(key, entry)
        return "hit"
    if remote is not None and remote.fetch(stage, key, stage_dir) and \
            _restore_entry(stage, key, entry, outputs, log, f"{remote.url} (via {entry})"):
        remote.mark_used(key, entry)
        return "hit"
    log(f"{stage}: cache miss {key[:16]}, running")
    run()
    missing = [str(o) for o in outputs if not o.is_file()]
    if missing:
        raise ValueError(f"stage {stage!r} ran but did not write its outputs {missing}; fix the stage function")
    manifest = manifest_of(stage, key, outputs, ingredients)
    try:
        _store(stage_dir, key, outputs, manifest)
    except OSError as error:  # e.g. a read-only shared cache or a full disk: the step itself succeeded
        _warn(f"could not store {stage} {key[:16]} in {stage_dir}: {error}")
    if remote is not None:
        remote.publish(key, outputs, manifest)
    return "miss"


class _StepUnfinished(Exception):
    """The wrapped action failed or skipped itself: pass its result on and store nothing."""

    def __init__(self, outcome):
        super().__init__(outcome)
        self.outcome = outcome


def cached_action(stage: str, action: tuple, code_files, config_subset: dict, input_files, libraries, outputs):
    """A doit python-action running `action` (a (callable, args) pair, e.g. from pipeline.graph.stage) through
    the cache. The key is computed when the task runs, once its input files exist; `libraries` names the
    Python packages whose versions go into it. The action returns {"cache": "hit"|"miss", "cache_key": key}."""
    return (run_cached_action, (stage, action, list(code_files), config_subset, list(input_files),
                                list(libraries), [str(o) for o in outputs]))


def run_cached_action(stage, action, code_files, config_subset, input_files, libraries, outputs):
    from doit.exceptions import TaskFailed

    def run():
        function, args = action
        outcome = function(*args)
        # doit's failure results (False, TaskFailed) and a skipped stage ({"skipped": reason}) leave no outputs
        if outcome is False or not isinstance(outcome, (dict, str, bool, type(None))) or \
                (isinstance(outcome, dict) and "skipped" in outcome):
            raise _StepUnfinished(outcome)

    try:
        ingredients = key_ingredients(stage, code_files, config_subset, input_files, package_versions(libraries))
        key = key_of(ingredients)
        status = cached_run(stage, key, outputs, run, ingredients=ingredients)
    except _StepUnfinished as unfinished:
        return unfinished.outcome
    except ValueError as error:  # a missing input, a bad cache setting: one paragraph naming it, no traceback
        return TaskFailed(f"{stage}: {error}")
    return {"cache": status, "cache_key": key}


def current_keys(actions) -> list[tuple[str, str | None, str]]:
    """(stage, key, "") for each cached_action among `actions` (a task's doit actions) whose inputs exist, as
    the task would compute it if it ran now; (stage, None, why) for one whose inputs are not built yet."""
    keys = []
    for _, args in (a for a in actions if isinstance(a, tuple) and a[0] is run_cached_action):
        stage, _, code_files, config_subset, input_files, libraries, _ = args
        try:
            keys.append((stage, cache_key(stage, code_files, config_subset, input_files,
                                          package_versions(libraries)), ""))
        except ValueError as missing:
            keys.append((stage, None, str(missing)))
    return keys


def print_keys(actions, root=None) -> None:
    """For `doit cache_key`: the keys this tree and config give its cached steps (`stage key`, or `stage -`
    and why when an input is not built yet), then the valid entries in the local cache and the entries in the
    remote one ($PIPELINE_CACHE_URL, when set), as `stage key` lines."""
    root = Path(root if root is not None else cache_root())
    print("# keys of this tree and config (stage key; '-' until the step's inputs are built)")
    for stage, key, why in current_keys(actions):
        print(f"{stage} {key}" if key else f"{stage} - ({why})")
    print(f"# valid entries in {root}")
    for stage, key in valid_keys(root):
        print(f"{stage} {key}")
    from pipeline.core import remote_cache

    remote = remote_cache.from_environment()
    if remote is not None:
        print(f"# entries in {remote.url}")
        try:
            for stage, key, _ in remote.entries():
                print(f"{stage} {key}")
        except remote_cache.RemoteError as error:
            print(f"# (not usable: {error})")


def _mark_used(entry: Path) -> None:
    """Touch the manifest so `prune --unused-since` keeps entries this build used (best effort: a
    read-only shared cache simply is not pruned by use)."""
    try:
        os.utime(entry / MANIFEST)
    except OSError:
        pass


def entries(root) -> list[tuple[str, str, Path]]:
    """(stage, key, folder) of every entry folder in the cache, valid or not, sorted; temp folders excluded."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [(stage.name, entry.name, entry)
            for stage in sorted(root.iterdir()) if stage.is_dir() and not stage.name.startswith(".")
            for entry in sorted(stage.iterdir()) if entry.is_dir() and not entry.name.startswith(".")]


def valid_keys(root) -> list[tuple[str, str]]:
    """(stage, key) of every entry that passes verification; bad ones are reported on stderr."""
    keys = []
    for stage, key, entry in entries(root):
        try:
            _read_manifest(entry)
            keys.append((stage, key))
        except CorruptEntry as problem:
            _warn(f"ignoring entry: {problem}")
    return keys


def prune(root, unused_since: float) -> list[Path]:
    """Delete entries whose manifest was last used before `unused_since` (epoch seconds), entries without a
    readable manifest, and temp folders left by killed writers. Returns what was removed."""
    removed = []
    now = time.time()
    for stage, key, entry in entries(root):
        manifest = entry / MANIFEST
        if not manifest.is_file() or manifest.stat().st_mtime < unused_since:
            removed.append(entry)
    root = Path(root)
    for stage in (root.iterdir() if root.is_dir() else []):
        if stage.is_dir():
            removed += [tmp for tmp in stage.glob(".*") if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _remote_main(args) -> int:
    """keys / check / prune on the remote tier (--url, else $PIPELINE_CACHE_URL)."""
    from pipeline.core import remote_cache

    url = args.url or os.environ.get(remote_cache.URL_ENV, "")
    if not url:
        print(f"--remote needs {remote_cache.URL_ENV} set, or --url URL", file=sys.stderr)
        return 2
    remote = remote_cache.from_url(url)
    try:
        if args.command == "keys":
            listing = "".join(f"{stage} {key}\n" for stage, key, _ in remote.entries())
            print(hashlib.sha256(listing.encode("utf-8")).hexdigest() if args.digest else listing.rstrip("\n"))
            return 0
        if args.command == "prune":
            if remote.readonly:
                print(f"{remote_cache.READONLY_ENV} is set: not pruning {url}", file=sys.stderr)
                return 2
            for name in remote.prune(args.unused_since):
                print(f"removed {url}/{name}")
            return 0
        total, bad = remote.check()
        print(f"{url}: {total} entries, {bad} bad")
        return 1 if bad else 0
    except remote_cache.RemoteError as error:
        print(f"remote cache {url}: {error}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.core.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help=f"cache folder (default: ${CACHE_ENV} or the per-user cache)")
    parser.add_argument("--remote", action="store_true",
                        help="work on the remote tier instead ($PIPELINE_CACHE_URL, or --url)")
    parser.add_argument("--url", default=None, help="the remote tier's address for --remote")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="print `stage key` of every valid entry")
    keys.add_argument("--digest", action="store_true", help="print one sha256 of the key list instead")
    drop = commands.add_parser("prune", help="delete entries unused since a time, and stale temp folders")
    drop.add_argument("--unused-since", type=float, required=True, metavar="EPOCH_SECONDS")
    commands.add_parser("check", help="verify every entry; exit 1 if any is incomplete or corrupt")
    args = parser.parse_args(argv)
    if args.remote:
        return _remote_main(args)
    root = args.root if args.root is not None else cache_root()

    if args.command == "keys":
        listing = "".join(f"{stage} {key}\n" for stage, key in valid_keys(root))
        print(hashlib.sha256(listing.encode("utf-8")).hexdigest() if args.digest else listing.rstrip("\n"))
        return 0
    if args.command == "prune":
        for path in prune(root, args.unused_since):
            print(f"removed {path}")
        return 0
    total, good = len(entries(root)), len(valid_keys(root))
    print(f"{root}: {total} entries, {total - good} bad")
    return 1 if total != good else 0


if __name__ == "__main__":
    sys.exit(main())
