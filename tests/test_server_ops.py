"""Running the server in production: connection bounds, listening, TLS, proxies, the
environment, ``hash-secret``."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner
from serverutil import ServerProcess, free_port, hash_secret, write_config

from prepsync.cli import main
from prepsync.client import ApiClient, RetryPolicy, ServerError, parse_api_url


class Launched:
    """``prepsync serve`` in a child process on 127.0.0.1, with the options given."""

    def __init__(
        self,
        tmp_path: Path,
        *options: str,
        scheme: str = "http",
        verify: ssl.SSLContext | bool = False,
        preexec: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        self.log = tmp_path / "server.log"
        config = tmp_path / "config.xml"
        if not config.exists():
            write_config(tmp_path)
        argv = [
            sys.executable,
            "-m",
            "prepsync",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(self.port),
            *options,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if self.get("/").status_code == 200:
                    return
            assert time.monotonic() < deadline, "server did not start: " + self.log.read_text()
            time.sleep(0.05)

    def get(self, path: str, timeout: float = 2, **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout, verify=self.verify, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)


@contextlib.contextmanager
def launched(tmp_path: Path, *options: str, **kwargs: object) -> Iterator[Launched]:
    server = Launched(tmp_path, *options, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ slow clients (issue 18.3)
DESCRIPTOR_LIMIT = 192


def _few_descriptors() -> None:
    # The child may not raise it back: the server must live within it, as under a service
    # manager's LimitNOFILE.
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))


def _half_request(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return connection


def test_connections_that_never_finish_their_headers_do_not_stop_the_server(
    tmp_path: Path,
) -> None:
    """More half-sent requests than the process may open files: the server still answers
    (it closes the connection idle the longest to make room), at once, not after a timeout."""
    slow: list[socket.socket] = []
    with launched(tmp_path, "--read-timeout", "60", preexec=_few_descriptors) as server:
        try:
            for _ in range(DESCRIPTOR_LIMIT + 60):
                slow.append(_half_request(server.port))
            started = time.monotonic()
            for _ in range(3):
                assert server.get("/", timeout=5).status_code == 200
            assert time.monotonic() - started < 5
        finally:
            for connection in slow:
                connection.close()
        log = server.log.read_text()
        # Dozens shed, a line or two said so: a flood of clients is not a flood of log lines.
        assert 1 <= log.count("connections open (limit") <= 2


def test_a_slow_client_is_cut_off_after_the_read_timeout(tmp_path: Path) -> None:
    with launched(tmp_path, "--read-timeout", "0.5", "--timeout-keep-alive", "0.5") as server:
        # Headers trickling in, a byte at a time: the deadline counts from the first byte.
        trickle = _half_request(server.port)
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 5 and not closed:
            try:
                trickle.sendall(b"x")
                trickle.settimeout(0.1)
                closed = trickle.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        assert closed and time.monotonic() - started < 3
        trickle.close()
        # A body that stops: the connection closes, the server goes on.
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        stalled.sendall(
            b"POST /connect/token HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nab"
        )
        assert stalled.recv(1024) == b""
        stalled.close()
        assert server.get("/").status_code == 200


# ------------------------------------------------------------------ listening, environment
def _serve_arguments(tmp_path: Path, port: int) -> list[str]:
    config = write_config(tmp_path)
    return [
        "serve",
        "--config",
        str(config),
        "--data-dir",
        str(tmp_path / "d"),
        "--port",
        str(port),
    ]


def test_a_port_in_use_is_one_line_and_exit_status_6(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, _serve_arguments(tmp_path, port))
    assert result.exit_code == 6, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in lines[-1]
    assert "Traceback" not in result.output


def test_every_serve_option_is_read_from_the_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        environment = {
            "PREPSYNC_CONFIG": str(config),
            "PREPSYNC_DATA_DIR": str(tmp_path / "d"),
            "PREPSYNC_PORT": str(port),
            "PREPSYNC_LOG_FORMAT": "json",
        }
        result = CliRunner().invoke(main, ["serve"], env=environment)
    assert result.exit_code == 6, result.output
    assert f"127.0.0.1:{port}" in result.stderr
    assert (tmp_path / "d" / "token.key").exists()  # the data directory given was used
    serve = main.commands["serve"]
    options = [p for p in serve.params if isinstance(p, click.Option) and p.name != "help"]
    assert len(options) >= 12
    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    for option in options:
        long_name = next(name for name in option.opts if name.startswith("--"))
        variable = "PREPSYNC_" + long_name[2:].upper().replace("-", "_")
        assert option.envvar == variable and variable in help_text, long_name


def test_certificate_and_key_go_together_and_must_load(tmp_path: Path) -> None:
    certificate = tmp_path / "cert.pem"
    certificate.write_text("not a certificate")
    arguments = _serve_arguments(tmp_path, free_port())
    alone = CliRunner().invoke(main, [*arguments, "--ssl-certfile", str(certificate)])
    assert alone.exit_code == 1 and "go together" in alone.stderr
    broken = CliRunner().invoke(
        main,
        [*arguments, "--ssl-certfile", str(certificate), "--ssl-keyfile", str(certificate)],
    )
    assert broken.exit_code == 1 and broken.stderr.startswith("error: cannot use ")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path: Path) -> None:
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(certificate),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    options = ("--ssl-certfile", str(certificate), "--ssl-keyfile", str(key))
    trust = ssl.create_default_context(cafile=str(certificate))
    with launched(tmp_path, *options, scheme="https", verify=trust) as server:
        page = server.get("/")
        assert page.status_code == 200 and "--api-url https://127.0.0.1:" in page.text
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{server.port}/", timeout=5)


def test_forwarded_headers_are_trusted_only_from_the_proxy_named(tmp_path: Path) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "Host": "sync.example"}
    (tmp_path / "direct").mkdir()
    (tmp_path / "proxied").mkdir()
    with launched(tmp_path / "direct") as direct:
        assert "--api-url http://sync.example" in direct.get("/", headers=forwarded).text
    with launched(tmp_path / "proxied", "--forwarded-allow-ips", "127.0.0.1") as proxied:
        assert "--api-url https://sync.example" in proxied.get("/", headers=forwarded).text


# ------------------------------------------------------------------ hash-secret
def test_hash_secret_reads_standard_input_never_an_argument() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["hash-secret"], input="s3cret, with spaces \n")
    assert result.exit_code == 0, result.output
    assert result.stdout == hash_secret("s3cret, with spaces ") + "\n"
    assert runner.invoke(main, ["hash-secret", "s3cret"]).exit_code == 2
    empty = runner.invoke(main, ["hash-secret"], input="\n")
    assert empty.exit_code == 1 and empty.stderr == "error: the secret is empty\n"


# ------------------------------------------------------------------ the agent meets plain HTTP
def test_a_bare_api_url_on_a_plain_http_server_says_so(server: ServerProcess) -> None:
    bare = f"127.0.0.1:{server.port}"  # no scheme: https
    api = ApiClient(
        parse_api_url(bare), "agent", "agent-secret", retry=RetryPolicy(total_seconds=60)
    )
    started = time.monotonic()
    with api, pytest.raises(ServerError) as refused:
        api.mappings("AD")
    assert time.monotonic() - started < 10  # not retried for a minute: no retry cures it
    message = str(refused.value)
    assert f"https://{bare} answers in plain HTTP, not TLS" in message
    assert f"use --api-url http://{bare} " in message and "\n" not in message
