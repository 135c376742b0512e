"""The step cache's remote tier against real servers on 127.0.0.1: nginx WebDAV (http://) and moto's S3 server
(s3://). What the server holds is read through the server's own side (nginx's folder, a plain boto3 client), not
through the code under test."""
import hashlib
import json
import multiprocessing
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from cache_servers import NETRC_PASSWORD, NETRC_USER, TOKEN, moto_s3, nginx_missing, nginx_webdav
from conftest import copy_project, run_doit, smoke_env
from pipeline.core import cache, provenance, remote_cache
from test_cache import Step, no_remote_from_the_shell, sha, sources  # noqa: F401 - fixtures used here

needs_nginx = pytest.mark.skipif(bool(nginx_missing()), reason=nginx_missing() or "")


@pytest.fixture(scope="module")
def webdav(tmp_path_factory):
    if nginx_missing():
        pytest.skip(nginx_missing())
    with nginx_webdav(tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


class HttpSide:
    """A fresh folder on the nginx server, seen from the server's disk."""

    def __init__(self, server, name):
        self.server, self.url = server, server.url(f"cache/{name}")
        self.folder = server.www / "cache" / name

    def objects(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.folder)): p.read_bytes() for p in self.folder.rglob("*") if p.is_file()}

    def write(self, name: str, data: bytes | None) -> None:
        if data is None:
            (self.folder / name).unlink()
        else:
            (self.folder / name).write_bytes(data)


class S3Side:
    """A fresh bucket on the moto server, seen through a plain boto3 client."""

    def __init__(self, server, name):
        self.server, self.bucket = server, server.new_bucket(name)
        self.url = f"s3://{self.bucket}/team"

    def objects(self) -> dict[str, bytes]:
        return {key.removeprefix("team/"): data for key, data in self.server.objects(self.bucket).items()}

    def write(self, name: str, data: bytes | None) -> None:
        if data is None:
            self.server.client().delete_object(Bucket=self.bucket, Key=f"team/{name}")
        else:
            self.server.client().put_object(Bucket=self.bucket, Key=f"team/{name}", Body=data)


@pytest.fixture(params=["http", "s3"])
def side(request, monkeypatch):
    """An empty remote cache of each kind, with the environment pointing boto3 at the S3 server."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{hashlib.sha256(request.node.name.encode()).hexdigest()[:8]}"  # unique: a bucket per test
    if request.param == "http":
        return HttpSide(request.getfixturevalue("webdav"), name)
    server = request.getfixturevalue("s3")
    for variable, value in server.env().items():
        monkeypatch.setenv(variable, value)
    return S3Side(server, name)


def remote(url: str, **settings) -> remote_cache.Remote:
    environ = {remote_cache.TIMEOUT_ENV: "5", **settings}
    return remote_cache.from_url(url, {**os.environ, **environ})


def run_step(tmp_path, folder: str, key: str, the_remote, seed: int = 1, ingredients=None):
    """A fresh checkout with an empty local cache running the step through the cache."""
    step = Step(tmp_path / folder / "build", seed)
    status = cache.cached_run("train", key, step.outputs, step, log=lambda m: None, ingredients=ingredients,
                              root=tmp_path / folder / "cache", remote=the_remote)
    return status, step


@pytest.fixture
def key_and_ingredients(sources):  # noqa: F811 - the imported fixture
    ingredients = cache.key_ingredients(**sources)
    return cache.key_of(ingredients), ingredients


def test_first_checkout_uploads_second_restores_without_running(tmp_path, side, key_and_ingredients):
    key, ingredients = key_and_ingredients
    status, first = run_step(tmp_path, "one", key, remote(side.url), ingredients=ingredients)
    assert status == "miss" and first.runs == 1
    stored = side.objects()
    assert {f"cas/{sha(c)}": c for c in first.contents}.items() <= stored.items()
    assert json.loads(stored[f"ac/{key}"])["outputs"][0]["sha256"] == sha(first.contents[0])

    status, second = run_step(tmp_path, "two", key, remote(side.url))
    assert (status, second.runs) == ("hit", 0) and second.outputs_are_right()
    assert cache.valid_keys(tmp_path / "two" / "cache") == [("train", key)]  # now in the local tier too


def test_local_hit_shares_an_entry_the_remote_lacks(tmp_path, side, key_and_ingredients):
    key, ingredients = key_and_ingredients
    run_step(tmp_path, "one", key, None, ingredients=ingredients)  # warmed before the remote existed
    _, first = run_step(tmp_path, "one", key, remote(side.url))
    assert first.runs == 0 and f"ac/{key}" in side.objects()
    assert {f"cas/{sha(c)}" for c in first.contents} <= set(side.objects())
    status, second = run_step(tmp_path, "two", key, remote(side.url))
    assert (status, second.runs) == ("hit", 0) and second.outputs_are_right()


def test_tampered_blob_is_reported_not_used_and_repaired(tmp_path, side, key_and_ingredients, capsys):
    key, ingredients = key_and_ingredients
    _, first = run_step(tmp_path, "one", key, remote(side.url), ingredients=ingredients)
    model = f"cas/{sha(first.contents[0])}"
    tampered = bytearray(first.contents[0])
    tampered[1000] ^= 0xFF
    side.write(model, bytes(tampered))
    capsys.readouterr()

    status, second = run_step(tmp_path, "two", key, remote(side.url), ingredients=ingredients)
    assert (status, second.runs) == ("miss", 1) and second.outputs_are_right()
    assert "does not match its sha256" in capsys.readouterr().err
    assert cache.entries(tmp_path / "two" / "cache") == [("train", key, tmp_path / "two" / "cache" / "train" / key)]
    assert side.objects()[model] == first.contents[0]  # the second run's publish re-uploaded the good blob
    assert run_step(tmp_path, "three", key, remote(side.url))[0] == "hit"


def test_manifest_without_its_blobs_is_not_used(tmp_path, side, key_and_ingredients, capsys):
    key, ingredients = key_and_ingredients
    _, first = run_step(tmp_path, "one", key, remote(side.url), ingredients=ingredients)
    side.write(f"cas/{sha(first.contents[1])}", None)
    capsys.readouterr()
    status, second = run_step(tmp_path, "two", key, remote(side.url))
    assert (status, second.runs) == ("miss", 1) and second.outputs_are_right()
    assert re.search(r"metrics\.json .* is missing", capsys.readouterr().err)
    assert cache.valid_keys(tmp_path / "two" / "cache") == [("train", key)]


MANIFEST_TAMPERING = {
    "another key's manifest": lambda m, key: dict(m, key="0" * 64),
    "ingredients changed": lambda m, key: dict(m, ingredients=dict(m["ingredients"], config={"lr": 9})),
    "blob name outside cas/": lambda m, key: dict(m, outputs=[dict(m["outputs"][0], sha256="../ac/" + key)]
                                                   + m["outputs"][1:]),
    "not JSON": lambda m, key: None,
}


@pytest.mark.parametrize("tampering", MANIFEST_TAMPERING, ids=list(MANIFEST_TAMPERING))
def test_tampered_manifest_is_reported_not_used(tmp_path, side, key_and_ingredients, capsys, tampering):
    key, ingredients = key_and_ingredients
    run_step(tmp_path, "one", key, remote(side.url), ingredients=ingredients)
    manifest = MANIFEST_TAMPERING[tampering](json.loads(side.objects()[f"ac/{key}"]), key)
    side.write(f"ac/{key}", b"{not json" if manifest is None else json.dumps(manifest).encode())
    capsys.readouterr()
    status, second = run_step(tmp_path, "two", key, remote(side.url, PIPELINE_CACHE_READONLY="1"))
    assert (status, second.runs) == ("miss", 1) and second.outputs_are_right()
    assert "ignoring remote entry" in capsys.readouterr().err


def test_read_only_run_never_writes(tmp_path, side, key_and_ingredients):
    key, ingredients = key_and_ingredients
    status, first = run_step(tmp_path, "one", key, remote(side.url, PIPELINE_CACHE_READONLY="1"),
                             ingredients=ingredients)
    assert status == "miss" and first.outputs_are_right() and side.objects() == {}

    run_step(tmp_path, "two", key, remote(side.url), ingredients=ingredients)  # a trusted build publishes
    before = side.objects()
    status, third = run_step(tmp_path, "three", key, remote(side.url, PIPELINE_CACHE_READONLY="1"))
    assert (status, third.runs) == ("hit", 0) and side.objects() == before


@needs_nginx
def test_blobs_are_written_before_the_manifest(tmp_path, webdav, key_and_ingredients):
    key, ingredients = key_and_ingredients
    folder = "/cache/publish-order/"
    _, step = run_step(tmp_path, "one", key, remote(webdav.url(folder.strip("/"))), ingredients=ingredients)
    written = [path.removeprefix(folder) for path in webdav.paths_written() if path.startswith(folder)]
    assert written == [f"cas/{sha(data)}" for data in step.contents] + [f"ac/{key}"]


@needs_nginx
def test_read_only_hit_sends_no_write_request(tmp_path, webdav, key_and_ingredients):
    key, ingredients = key_and_ingredients
    url = webdav.url("cache/read-only-hit")
    run_step(tmp_path, "one", key, remote(url), ingredients=ingredients)
    puts = webdav.requests_made("PUT")
    assert run_step(tmp_path, "two", key, remote(url, PIPELINE_CACHE_READONLY="1"))[0] == "hit"
    assert webdav.requests_made("PUT") == puts and webdav.requests_made("DELETE") == 0


# --- several writers at once: each publishes different bytes under one key; readers see one whole entry ---

def _racing_writer(url, environ, key, folder, seed, barrier, results):
    os.environ.update(environ)
    barrier.wait()
    status, step = run_step(Path(folder), "checkout", key, remote(url), seed=seed)
    results.put((seed, status, [sha(path.read_bytes()) for path in step.outputs]))


def test_racing_writers_leave_one_whole_entry(tmp_path, side, key_and_ingredients):
    key, _ = key_and_ingredients
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    writers = [context.Process(target=_racing_writer, args=(side.url, aws, key, str(tmp_path / f"w{seed}"), seed,
                                                            barrier, results)) for seed in range(4)]
    for writer in writers:
        writer.start()
    outcomes = [results.get(timeout=120) for _ in writers]  # before joining: a writer exits once it is read
    for writer in writers:
        writer.join(timeout=30)
        assert writer.exitcode == 0
    every_writers_files = [[sha(data) for data in Step(tmp_path, seed).contents] for seed in range(4)]
    for seed, status, files in outcomes:  # a miss keeps its own result; a hit restores one writer's, whole
        assert files == every_writers_files[seed] if status == "miss" else files in every_writers_files

    for reader in range(3):
        status, step = run_step(tmp_path, f"reader{reader}", key, remote(side.url))
        assert (status, step.runs) == ("hit", 0)
        assert [sha(path.read_bytes()) for path in step.outputs] in every_writers_files  # one writer's, no mix


# --- a server that is down, failing or too slow: one warning, the step runs, the same result ---

def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers (a hung server); stops with the test."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.accepted.append(self.socket.accept()[0])
            except OSError:
                return

    def close(self):
        self.socket.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


S3_ELSEWHERE = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_DEFAULT_REGION": "us-east-1"}


def unusable_remotes(kind, request):
    """(url, environment) of a remote cache that is down, answers 500, hangs, or reads but refuses writes."""
    if kind == "down":
        return f"http://127.0.0.1:{closed_port()}/cache", {}
    if kind == "http 500":
        return request.getfixturevalue("webdav").url("failing/cache"), {}
    if kind == "http refuses writes":
        return request.getfixturevalue("webdav").url("readonly/cache"), {}
    if kind == "http hangs":
        port = request.getfixturevalue("silent_server").port
        return f"http://127.0.0.1:{port}/cache", {remote_cache.TIMEOUT_ENV: "1"}
    endpoint = {"s3 down": lambda: f"http://127.0.0.1:{closed_port()}",
                "s3 500": lambda: request.getfixturevalue("webdav").url("failing"),
                "s3 refuses writes": lambda: request.getfixturevalue("webdav").url("readonly"),
                "s3 hangs": lambda: f"http://127.0.0.1:{request.getfixturevalue('silent_server').port}"}[kind]()
    return "s3://bucket-name/team", {**S3_ELSEWHERE, "AWS_ENDPOINT_URL": endpoint, remote_cache.TIMEOUT_ENV: "1"}


@pytest.mark.parametrize("kind", ["down", "http 500", "http hangs", "http refuses writes",
                                  "s3 down", "s3 500", "s3 hangs", "s3 refuses writes"])
def test_unusable_server_gives_one_warning_and_a_local_build(tmp_path, kind, request, monkeypatch, capsys,
                                                              key_and_ingredients):
    url, environ = unusable_remotes(kind, request)
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    key, ingredients = key_and_ingredients
    the_remote = remote(url, **environ)
    capsys.readouterr()
    started = time.monotonic()
    status, first = run_step(tmp_path, "one", key, the_remote, ingredients=ingredients)
    status_again, again = run_step(tmp_path, "two", key, the_remote, ingredients=ingredients)  # same process
    elapsed = time.monotonic() - started
    assert (status, first.runs, status_again, again.runs) == ("miss", 1, "miss", 1)
    assert first.outputs_are_right() and again.outputs_are_right()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "not usable" in line]
    assert len(warnings) == 1 and url in warnings[0] and "Traceback" not in warnings[0], warnings
    assert elapsed < 30, f"an unusable remote held the build up for {elapsed:.0f} s"


# --- credentials ---

@needs_nginx
def test_http_credentials_from_token_or_netrc(tmp_path, webdav, key_and_ingredients, monkeypatch, capsys):
    key, ingredients = key_and_ingredients
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc of the machine's user leaks in
    assert run_step(tmp_path, "no-token", key, remote(webdav.url("token/c")), ingredients=ingredients)[0] == "miss"
    assert "HTTP 401" in capsys.readouterr().err and not (webdav.www / "token").exists()

    with_token = remote(webdav.url("token/c"), PIPELINE_CACHE_TOKEN=TOKEN)
    run_step(tmp_path, "token", key, with_token, ingredients=ingredients)
    assert with_token.usable and (webdav.www / "token" / "c" / "ac" / key).is_file()

    netrc = tmp_path / "credentials.netrc"
    netrc.write_text(f"machine 127.0.0.1 login {NETRC_USER} password {NETRC_PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with_netrc = remote(webdav.url("netrc/c"))
    run_step(tmp_path, "netrc", key, with_netrc, ingredients=ingredients)
    assert with_netrc.usable and (webdav.www / "netrc" / "c" / "ac" / key).is_file()

    token_over_netrc = remote(webdav.url("token/d"), PIPELINE_CACHE_TOKEN=TOKEN)  # the token wins over .netrc
    run_step(tmp_path, "both", key, token_over_netrc, ingredients=ingredients)
    assert token_over_netrc.usable and (webdav.www / "token" / "d" / "ac" / key).is_file()


def test_bad_settings_are_named(monkeypatch):
    with pytest.raises(ValueError, match=r"PIPELINE_CACHE_URL='ftp://x/y'.*s3://bucket/prefix"):
        remote_cache.from_url("ftp://x/y", {})
    with pytest.raises(ValueError, match=r"PIPELINE_CACHE_TIMEOUT='soon'.*PIPELINE_CACHE_TIMEOUT=30"):
        remote_cache.from_url("http://127.0.0.1:1/c", {remote_cache.TIMEOUT_ENV: "soon"})
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(ValueError, match=r"s3://team-bucket/cache/: the AWS settings .*no-such-profile.*AWS_PROFILE"):
        remote_cache.from_url("s3://team-bucket/cache", {})


# --- the command line on the remote tier ---

def test_keys_check_and_prune_on_the_remote(tmp_path, side, key_and_ingredients, monkeypatch, capsys):
    key, ingredients = key_and_ingredients
    other = cache.key_of(dict(ingredients, config={"lr": 0.2}))
    run_step(tmp_path, "one", key, remote(side.url), ingredients=ingredients)
    run_step(tmp_path, "two", other, remote(side.url), seed=2, ingredients=dict(ingredients, config={"lr": 0.2}))
    monkeypatch.setenv(remote_cache.URL_ENV, side.url)
    capsys.readouterr()

    assert cache.main(["--remote", "keys"]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == sorted([f"train {key}", f"train {other}"])
    assert cache.main(["--remote", "check"]) == 0
    capsys.readouterr()
    first_model = f"cas/{sha(Step(tmp_path, 1).contents[0])}"
    side.write(first_model, b"tampered")
    assert cache.main(["--remote", "check"]) == 1
    assert first_model in capsys.readouterr().err

    time.sleep(1.1)  # server times are whole seconds: everything so far is from before `cutoff`
    cutoff = int(time.time())
    run_step(tmp_path, "three", other, remote(side.url))  # a hit marks `other` used now
    assert cache.main(["--remote", "prune", "--unused-since", str(cutoff)]) == 0
    left = side.objects()
    assert sorted(left) == sorted([f"ac/{other}"] + [f"cas/{sha(c)}" for c in Step(tmp_path, 2).contents])


# --- two fresh clones of the project, each with an empty local cache, sharing one remote ---

SMOKE = "config=configs/smoke.toml"


@needs_nginx
def test_second_clone_restores_dataset_training_and_tuning_from_the_remote(webdav, smoke_source, tmp_path):
    url = webdav.url("cache/clones")
    clones, logs = {}, {}
    for name in ("first", "second"):
        clones[name] = copy_project(tmp_path / name)
        env = {**smoke_env(smoke_source, tmp_path / f"{name}-cache"), remote_cache.URL_ENV: url}
        result = run_doit(clones[name], SMOKE, "tune", env=env)
        logs[name] = result.stdout + result.stderr
    cached_steps = ["build_dataset", "export", "profile", "train", "tune"]  # every cached step up to tune
    assert sorted(re.findall(r"^(\w+): cache miss", logs["first"], re.M)) == cached_steps
    restored = re.findall(rf"^(\w+): cache hit [0-9a-f]{{16}}, restored .* from {re.escape(url)}",
                          logs["second"], re.M)
    assert sorted(restored) == cached_steps, logs["second"][-3000:]
    assert not re.search(r"epoch \d+/\d+|tuning profile", logs["second"]), "training or tuning ran in the 2nd clone"
    assert "not usable" not in logs["first"] + logs["second"]

    first, second = (provenance.artifact_digests(clones[name] / "build") for name in ("first", "second"))
    assert {"cifar.pth", "profile_tuned.yml"} <= {Path(path).name for path in first}
    assert not provenance.tree_differences(first, second, names=("first clone", "second clone"))


def doit_env(tmp_path, cache_dir: str, **variables) -> dict:
    """The environment of a doit run of test_cache's small dodo.py, with its own local cache folder."""
    env = dict(os.environ, PIPELINE_CACHE_DIR=str(tmp_path / cache_dir), RUN_LOG=str(tmp_path / "runs.txt"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent), **variables)
    env.pop("FAIL", None)
    return env


def test_doit_checkouts_share_a_step_through_the_remote(tmp_path, side):
    """The environment alone (PIPELINE_CACHE_URL, AWS_* for S3) sets the remote up in a real doit run."""
    from test_cache import doit_checkout

    for checkout in ("one", "two"):
        result = doit_checkout(tmp_path / checkout, "cats",
                               doit_env(tmp_path, f"cache-{checkout}", PIPELINE_CACHE_URL=side.url))
        assert result.returncode == 0 and "not usable" not in result.stderr, result.stdout + result.stderr
    assert f"from {side.url}" in result.stdout and (tmp_path / "runs.txt").read_text() == "ran\n"
    assert (tmp_path / "two" / "build" / "m.pth").read_text() == "trained on cats"


def test_doit_build_with_an_unreachable_remote_warns_once_and_succeeds(tmp_path):
    from test_cache import doit_checkout

    url = f"http://127.0.0.1:{closed_port()}/cache"
    result = doit_checkout(tmp_path / "one", "cats", doit_env(tmp_path, "cache", PIPELINE_CACHE_URL=url))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "one" / "build" / "m.pth").read_text() == "trained on cats"
    warnings = [line for line in result.stderr.splitlines() if "not usable" in line]
    assert len(warnings) == 1 and url in warnings[0] and "Traceback" not in result.stderr, result.stderr


def test_doit_build_with_a_bad_cache_url_names_it(tmp_path):
    from test_cache import doit_checkout

    result = doit_checkout(tmp_path / "one", "cats", doit_env(tmp_path, "cache", PIPELINE_CACHE_URL="ftp://team/cache"))
    assert result.returncode != 0 and not (tmp_path / "runs.txt").exists()
    log = result.stdout + result.stderr
    assert "PIPELINE_CACHE_URL='ftp://team/cache' is not a remote cache address" in log and "Traceback" not in log


def test_cache_key_listing_shows_the_remote_entries(tmp_path, side, key_and_ingredients, monkeypatch, capsys):
    key, ingredients = key_and_ingredients
    run_step(tmp_path, "one", key, remote(side.url), ingredients=ingredients)
    monkeypatch.setenv(remote_cache.URL_ENV, side.url)
    capsys.readouterr()
    cache.print_keys([], root=tmp_path / "empty-local")
    remote_part = capsys.readouterr().out.split(f"# entries in {side.url}\n")[1]
    assert remote_part.splitlines() == [f"train {key}"]

    monkeypatch.setenv(remote_cache.URL_ENV, f"http://127.0.0.1:{closed_port()}/cache")
    cache.print_keys([], root=tmp_path / "empty-local")
    assert "# (not usable: PROPFIND" in capsys.readouterr().out
