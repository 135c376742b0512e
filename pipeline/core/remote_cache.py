"""The remote tier of the step cache: a bucket or web folder a whole team and CI fleet share.

`PIPELINE_CACHE_URL` names it:
  s3://bucket/prefix      any S3-compatible store, through boto3: credentials, region and endpoint from the
                          standard AWS variables and profiles (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL...)
  http(s)://host/path     plain GET/HEAD/PUT/DELETE of objects (nginx or Apache WebDAV, bazel-remote, Artifactory),
                          through requests: `Authorization: Bearer $PIPELINE_CACHE_TOKEN`, else the host's
                          ~/.netrc ($NETRC) login; listing (for keys/check/prune) uses WebDAV PROPFIND
`PIPELINE_CACHE_READONLY=1` never writes to it (untrusted builds); `PIPELINE_CACHE_TIMEOUT` (seconds, default 30)
bounds every connection and read.

Layout, the one bazel-remote serves: `<url>/cas/<sha256>` holds each output file, named by its content's SHA-256;
`<url>/ac/<key>` holds the entry's manifest (the same JSON as the local tier's). A publisher uploads the blobs
first and the manifest last, so a manifest is visible only once its blobs are; a reader checks the manifest
(format, stage, key, and that the key is the hash of the ingredients it lists) and every blob's size and SHA-256
before anything reaches the local tier. A remote that fails (unreachable, timing out, answering errors) is
reported once and left alone for the rest of the process: the step runs locally, with the same result.
"""
import json
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests

from pipeline.core import cache
from pipeline.core.provenance import file_sha256

URL_ENV = "PIPELINE_CACHE_URL"
TOKEN_ENV = "PIPELINE_CACHE_TOKEN"
READONLY_ENV = "PIPELINE_CACHE_READONLY"
TIMEOUT_ENV = "PIPELINE_CACHE_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
BLOBS, MANIFESTS = "cas", "ac"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class RemoteError(Exception):
    """The remote store could not be used (unreachable, too slow, refusing, failing)."""


class _BearerToken(requests.auth.AuthBase):
    """`Authorization: Bearer <token>` on every request."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


class HttpStore:
    """Objects under a base URL: GET/HEAD/PUT/DELETE, and WebDAV PROPFIND to list a folder."""

    def __init__(self, url: str, token: str | None, timeout: float):
        self.base = url.rstrip("/") + "/"
        self.timeout = timeout
        self.session = requests.Session()  # without a token, requests sends the ~/.netrc login for the host
        if token:
            self.session.auth = _BearerToken(token)  # an auth object, so that a netrc entry does not replace it

    def _request(self, method: str, name: str, absent_ok: bool = False, **kwargs):
        try:
            response = self.session.request(method, self.base + name, timeout=self.timeout, **kwargs)
        except requests.RequestException as error:
            raise RemoteError(f"{method} {self.base}{name}: {type(error).__name__}: {error}") from error
        if absent_ok and response.status_code == 404:
            response.close()
            return None
        if not 200 <= response.status_code < 300:
            response.close()
            raise RemoteError(f"{method} {self.base}{name}: HTTP {response.status_code} {response.reason}")
        return response

    def get(self, name: str, dest: Path) -> bool:
        response = self._request("GET", name, absent_ok=True, stream=True)
        if response is None:
            return False
        try:
            with response, open(dest, "wb") as out:
                for chunk in response.iter_content(_CHUNK):
                    out.write(chunk)
        except requests.RequestException as error:
            raise RemoteError(f"GET {self.base}{name}: {type(error).__name__}: {error}") from error
        return True

    def exists(self, name: str) -> bool:
        return self._request("HEAD", name, absent_ok=True) is not None

    def put(self, name: str, source: Path) -> None:
        with open(source, "rb") as data:
            self._request("PUT", name, data=data).close()

    def delete(self, name: str) -> None:
        response = self._request("DELETE", name, absent_ok=True)
        if response is not None:
            response.close()

    def list(self, folder: str) -> list[tuple[str, float]]:
        """(name, last-modified epoch) of the objects directly in `folder`."""
        response = self._request("PROPFIND", folder + "/", absent_ok=True, headers={"Depth": "1"})
        if response is None:
            return []
        dav = "{DAV:}"
        try:
            tree = ElementTree.fromstring(response.content)
        except ElementTree.ParseError as error:
            raise RemoteError(f"PROPFIND {self.base}{folder}/: not a WebDAV listing ({error})") from error
        listed = []
        for item in tree.iter(f"{dav}response"):
            name = unquote(item.findtext(f"{dav}href", "")).rstrip("/").rsplit("/", 1)[-1]
            modified = item.findtext(f".//{dav}getlastmodified")
            if item.find(f".//{dav}collection") is None and modified:
                listed.append((name, parsedate_to_datetime(modified).timestamp()))
        return listed


class S3Store:
    """Objects under s3://bucket/prefix, through boto3 (standard AWS credentials, region and endpoint settings)."""

    def __init__(self, bucket: str, prefix: str, timeout: float):
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        try:
            self.client = boto3.session.Session().client("s3", config=Config(
                connect_timeout=timeout, read_timeout=timeout, retries={"mode": "standard", "max_attempts": 2}))
        except (BotoCoreError, ValueError) as error:  # e.g. an unknown AWS_PROFILE, an empty AWS_DEFAULT_REGION
            raise ValueError(f"{URL_ENV}=s3://{bucket}/{self.prefix}: the AWS settings do not make an S3 client "
                             f"({error}); fix AWS_PROFILE / AWS_DEFAULT_REGION / AWS_ENDPOINT_URL, or unset "
                             f"{URL_ENV}") from error

    def _call(self, what: str, name: str, call, absent_ok: bool = False):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if absent_ok and code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise RemoteError(f"{what} s3://{self.bucket}/{self.prefix}{name}: {error}") from error
        except (BotoCoreError, OSError) as error:
            raise RemoteError(f"{what} s3://{self.bucket}/{self.prefix}{name}: {type(error).__name__}: "
                              f"{error}") from error

    def get(self, name: str, dest: Path) -> bool:
        def download():
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
            with open(dest, "wb") as out:
                for chunk in body.iter_chunks(_CHUNK):
                    out.write(chunk)
            return True
        return bool(self._call("GET", name, download, absent_ok=True))

    def exists(self, name: str) -> bool:
        return self._call("HEAD", name, lambda: self.client.head_object(Bucket=self.bucket, Key=self.prefix + name),
                          absent_ok=True) is not None

    def put(self, name: str, source: Path) -> None:
        def upload():  # one PUT per object (up to 5 GB): the object appears whole or not at all
            with open(source, "rb") as data:
                self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)
        self._call("PUT", name, upload)

    def delete(self, name: str) -> None:
        self._call("DELETE", name, lambda: self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name))

    def list(self, folder: str) -> list[tuple[str, float]]:
        def listing():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}{folder}/")
            return [(item["Key"].rsplit("/", 1)[-1], item["LastModified"].timestamp())
                    for page in pages for item in page.get("Contents", [])]
        return self._call("LIST", folder + "/", listing)


def _timeout_from(environ) -> float:
    text = environ.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds above 0; set it like "
                         f"{TIMEOUT_ENV}=30, or unset it for the default {DEFAULT_TIMEOUT:g} s")
    return value


def open_store(url: str, environ=os.environ):
    """The store behind `url` (s3://bucket/prefix or http(s)://host/path); ValueError naming the fix otherwise."""
    parts = urlsplit(url)
    timeout = _timeout_from(environ)
    if parts.scheme == "s3" and parts.netloc:
        return S3Store(parts.netloc, parts.path, timeout)
    if parts.scheme in ("http", "https") and parts.netloc:
        return HttpStore(url, environ.get(TOKEN_ENV) or None, timeout)
    raise ValueError(f"{URL_ENV}={url!r} is not a remote cache address; use s3://bucket/prefix or "
                     "http(s)://host/path, or unset it to use the local cache folder only")


class Remote:
    """One remote tier: fetch entries into the local tier, publish entries, list, check and prune them.
    After the first failure it reports once and stays off for the rest of the process (`usable` is False)."""

    def __init__(self, url: str, store, readonly: bool = False, warn=None):
        self.url, self.store, self.readonly = url, store, readonly
        self.usable = True
        self._warn = warn or (lambda message: print(f"pipeline cache: {message}", file=sys.stderr))
        self._bad_blobs: set[str] = set()  # found corrupt here: re-uploaded by the next publish

    def _give_up(self, error: RemoteError) -> None:
        self.usable = False
        self._warn(f"remote cache {self.url} is not usable, building without it ({error})")

    # --- one entry ---

    def fetch(self, stage: str, key: str, stage_dir: Path) -> bool:
        """Download the entry for `key` into the local tier (stage_dir/key), verified. False when the remote
        has no such entry, has a bad one (reported) or fails (reported once; the remote is then off)."""
        if not self.usable:
            return False
        try:
            cache.install_entry(stage_dir, key, lambda tmp: self._download(stage, key, tmp))
            return True
        except _Absent:
            return False
        except cache.CorruptEntry as problem:
            self._warn(f"ignoring remote entry: {problem}")
        except RemoteError as error:
            self._give_up(error)
        except OSError as error:  # the local tier cannot take it (full disk, read-only folder)
            self._warn(f"could not download {stage} {key[:16]} from {self.url} into {stage_dir}: {error}")
        return False

    def _download(self, stage: str, key: str, tmp: Path) -> None:
        where = f"{self.url}/{MANIFESTS}/{key}"
        if not self.store.get(f"{MANIFESTS}/{key}", tmp / cache.MANIFEST):
            raise _Absent()
        manifest = verified_manifest(tmp / cache.MANIFEST, stage, key, where)
        (tmp / cache.FILES).mkdir()
        for index, record in enumerate(manifest["outputs"]):
            blob, stored = f"{BLOBS}/{record['sha256']}", tmp / cache.FILES / str(index)
            if not self.store.get(blob, stored):
                raise cache.CorruptEntry(f"{where}: its file {record['name']} ({self.url}/{blob}) is missing")
            if stored.stat().st_size != record["size"] or file_sha256(stored) != record["sha256"]:
                self._bad_blobs.add(record["sha256"])
                raise cache.CorruptEntry(f"{where}: its file {record['name']} ({self.url}/{blob}) does not match "
                                         "its sha256 (tampered or damaged)")

    def publish(self, key: str, files, manifest: dict) -> None:
        """Upload the step's files (those the remote lacks, by content) and then the manifest."""
        if self.readonly or not self.usable:
            return
        try:
            for path, record in zip(files, manifest["outputs"]):
                blob = f"{BLOBS}/{record['sha256']}"
                if record["sha256"] in self._bad_blobs or not self.store.exists(blob):
                    self.store.put(blob, Path(path))
            self._put_manifest(key, manifest)
        except RemoteError as error:
            self._give_up(error)

    def share(self, key: str, entry: Path) -> None:
        """After a local hit: publish the local entry if the remote lacks it (a cache warmed before the remote
        was set up, or by a read-only build)."""
        if self.readonly or not self.usable:
            return
        try:
            if self.store.exists(f"{MANIFESTS}/{key}"):
                return
        except RemoteError as error:
            self._give_up(error)
            return
        manifest = json.loads((entry / cache.MANIFEST).read_text(encoding="utf-8"))
        self.publish(key, [entry / cache.FILES / str(n) for n in range(len(manifest["outputs"]))], manifest)

    def _put_manifest(self, key: str, manifest: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / cache.MANIFEST
            path.write_text(cache.manifest_text(manifest), encoding="utf-8")
            self.store.put(f"{MANIFESTS}/{key}", path)

    def mark_used(self, key: str, entry: Path) -> None:
        """Rewrite the manifest (same bytes) so its time says it was used: prune by use keeps it."""
        if self.readonly or not self.usable:
            return
        try:
            self.store.put(f"{MANIFESTS}/{key}", entry / cache.MANIFEST)
        except RemoteError as error:
            self._give_up(error)

    # --- the whole store (command line) ---

    def entries(self) -> list[tuple[str, str, float]]:
        """(stage, key, last used) of every entry whose manifest is readable; unreadable ones are reported."""
        found = []
        with tempfile.TemporaryDirectory() as folder:
            for key, modified in sorted(self.store.list(MANIFESTS)):
                path = Path(folder) / key
                try:
                    self.store.get(f"{MANIFESTS}/{key}", path)
                    stage = json.loads(path.read_text(encoding="utf-8"))["stage"]
                    found.append((str(stage), key, modified))
                except (ValueError, KeyError, TypeError) as error:
                    self._warn(f"ignoring remote entry {self.url}/{MANIFESTS}/{key}: unreadable manifest ({error})")
        return sorted(found)

    def check(self) -> tuple[int, int]:
        """Download and verify every entry (manifest and blobs); report bad ones. Returns (entries, bad)."""
        total, bad = 0, 0
        for stage, key, _ in self.entries():
            total += 1
            with tempfile.TemporaryDirectory() as folder:
                try:
                    self._download(stage, key, Path(folder))
                except cache.CorruptEntry as problem:
                    bad += 1
                    self._warn(f"bad remote entry: {problem}")
                except _Absent:
                    pass  # pruned by someone else since it was listed
        return total, bad

    def prune(self, unused_since: float) -> list[str]:
        """Delete manifests not used since `unused_since`, then blobs that no remaining manifest lists and that
        are older than that too (a younger one may belong to an entry being published now)."""
        removed = []
        kept_blobs = set()
        with tempfile.TemporaryDirectory() as folder:
            for key, modified in self.store.list(MANIFESTS):
                if modified < unused_since:
                    self.store.delete(f"{MANIFESTS}/{key}")
                    removed.append(f"{MANIFESTS}/{key}")
                    continue
                path = Path(folder) / key
                if self.store.get(f"{MANIFESTS}/{key}", path):
                    try:
                        kept_blobs |= {o["sha256"] for o in json.loads(path.read_text("utf-8"))["outputs"]}
                    except (ValueError, KeyError, TypeError):
                        pass  # an unreadable manifest keeps nothing alive
        for blob, modified in self.store.list(BLOBS):
            if blob not in kept_blobs and modified < unused_since:
                self.store.delete(f"{BLOBS}/{blob}")
                removed.append(f"{BLOBS}/{blob}")
        return removed


class _Absent(Exception):
    """The remote has no entry for the key (an ordinary miss)."""


def verified_manifest(path: Path, stage: str, key: str, where: str) -> dict:
    """The downloaded manifest, if it is one of this stage and key whose ingredients hash to the key and whose
    blob names are SHA-256 digests; CorruptEntry otherwise."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        ingredients = manifest.get("ingredients")
        if manifest["format"] != cache.CACHE_FORMAT or manifest["key"] != key or manifest["stage"] != stage:
            raise cache.CorruptEntry(f"{where}: manifest written for another format, stage or key")
        if ingredients is not None and cache.key_of(ingredients) != key:
            raise cache.CorruptEntry(f"{where}: the ingredients it lists do not hash to its key")
        for record in manifest["outputs"]:
            if not (SHA256_HEX.fullmatch(record["sha256"]) and isinstance(record["size"], int)
                    and isinstance(record["name"], str)):
                raise cache.CorruptEntry(f"{where}: malformed output record {record!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise cache.CorruptEntry(f"{where}: unreadable manifest ({error})") from error
    return manifest


def from_url(url: str, environ=os.environ) -> Remote:
    return Remote(url.rstrip("/"), open_store(url, environ), readonly=environ.get(READONLY_ENV, "") not in ("", "0"))


_FROM_ENVIRONMENT: dict[tuple, Remote] = {}


def from_environment(environ=os.environ) -> Remote | None:
    """The remote tier $PIPELINE_CACHE_URL names, one per process (so a failure is reported once), or None."""
    url = environ.get(URL_ENV, "")
    if not url:
        return None
    settings = (url, environ.get(TOKEN_ENV), environ.get(READONLY_ENV), environ.get(TIMEOUT_ENV))
    if settings not in _FROM_ENVIRONMENT:
        _FROM_ENVIRONMENT[settings] = from_url(url, environ)
    return _FROM_ENVIRONMENT[settings]
