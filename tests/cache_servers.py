"""Real cache servers on 127.0.0.1 for the remote-tier tests and benchmark, each started on an ephemeral port and
stopped on exit: nginx with WebDAV (Debian's nginx, PUT/DELETE from its dav module, PROPFIND from dav-ext) and
moto's S3-compatible server (S3's REST API in a separate process)."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NGINX_MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")
DAV_EXT_MODULE = "ngx_http_dav_ext_module.so"
START_SECONDS = 20
TOKEN = "test-token-0123"
NETRC_USER, NETRC_PASSWORD = "ci", "netrc-secret"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


def nginx_missing() -> str | None:
    """Why the nginx server cannot start here (None when it can)."""
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        return "nginx is not installed (scripts/bootstrap-debian.sh installs it: apt-get install nginx)"
    if not any((Path(d) / DAV_EXT_MODULE).exists() for d in NGINX_MODULE_DIRS):
        return "nginx's WebDAV PROPFIND module is missing (apt-get install libnginx-mod-http-dav-ext)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {START_SECONDS} s")


@contextlib.contextmanager
def running(command: list[str], port: int, log: Path, env=None):
    """Start `command`, wait until it listens on `port`, and always stop it."""
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(port, process, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class WebDav:
    port: int
    www: Path  # what the server stores: the server's own view, independent of the client
    access_log: Path

    def url(self, location: str = "cache") -> str:
        return f"http://127.0.0.1:{self.port}/{location}"

    def _log(self) -> list[list[str]]:
        """nginx's access log, a line per request: method, status, request body length, response body length,
        path."""
        return [line.split() for line in self.access_log.read_text().splitlines()]

    def requests_made(self, method: str) -> int:
        return sum(fields[0] == method for fields in self._log())

    def paths_written(self) -> list[str]:
        """The path of every successful PUT, in the order the server received them."""
        return [fields[4] for fields in self._log() if fields[0] == "PUT" and fields[1].startswith("2")]

    def transferred(self) -> tuple[int, int]:
        """Bytes received in request bodies (uploads) and sent in response bodies (downloads) so far."""
        up = sum(int(fields[2]) for fields in self._log() if fields[2] != "-")
        return up, sum(int(fields[3]) for fields in self._log())


NGINX_CONF = """
load_module {module};
daemon off;
master_process off;
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format volume '$request_method $status $content_length $body_bytes_sent $request_uri';
    access_log {state}/access.log volume;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        dav_methods PUT DELETE;
        dav_ext_methods PROPFIND;
        create_full_put_path on;
        dav_access user:rw group:r all:r;
        location /failing/ {{ return 500; }}
        location /readonly/ {{ limit_except GET HEAD {{ deny all; }} }}
        location /token/ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
        }}
        location /netrc/ {{
            if ($http_authorization != "Basic {basic}") {{ return 401; }}
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_webdav(folder: Path):
    """nginx serving `folder`/www read-write over WebDAV at /cache/ (also /token/ needing the bearer TOKEN,
    /netrc/ needing the NETRC_USER login, /readonly/ refusing writes with 403, and /failing/ answering 500 to
    everything)."""
    import base64

    why = nginx_missing()
    if why:
        raise RuntimeError(why)
    state, www = folder / "nginx", folder / "www"
    state.mkdir(parents=True)
    www.mkdir()
    port = free_port()
    module = next(Path(d) / DAV_EXT_MODULE for d in NGINX_MODULE_DIRS if (Path(d) / DAV_EXT_MODULE).exists())
    basic = base64.b64encode(f"{NETRC_USER}:{NETRC_PASSWORD}".encode()).decode()
    conf = state / "nginx.conf"
    conf.write_text(NGINX_CONF.format(module=module, state=state, www=www, port=port, token=TOKEN, basic=basic))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with running([nginx, "-c", str(conf), "-p", str(state), "-e", str(state / "error.log")], port,
                 state / "error.log"):
        yield WebDav(port, www, state / "access.log")


@dataclass
class S3Server:
    endpoint: str

    def env(self) -> dict:
        """The standard AWS variables that point boto3 (and any AWS SDK) at this server."""
        return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                     region_name="us-east-1").client("s3", endpoint_url=self.endpoint)

    def new_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        client = self.client()
        keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for item in page.get("Contents", [])]
        return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


@contextlib.contextmanager
def moto_s3(folder: Path):
    """moto's S3-compatible server (in-memory) in its own process on an ephemeral loopback port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with running([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port,
                 folder / "moto.log", env=env):
        yield S3Server(f"http://127.0.0.1:{port}")
