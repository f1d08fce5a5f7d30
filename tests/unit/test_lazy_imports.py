"""What an idle agent does not load (idle RSS and launch -> first poll are mostly imports), and that what it
defers still works when it is needed. Each check runs in a fresh interpreter: imports happen once per process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH_ONLY = ("agent.policy.host_config", "agent.policy.host_config_types", "agent.policy.container_options",
               "agent.policy.agent_options")


def python(code: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_agent_loads_the_container_option_models_only_for_a_launch() -> None:
    code = ("import json, sys\nimport agent.cli, agent.agent\n"
            f"print(json.dumps([m for m in {LAUNCH_ONLY!r} if m in sys.modules]))\n"
            "from agent.launch.plan import load_container_options\nload_container_options()\n"
            f"print(json.dumps([m for m in {LAUNCH_ONLY!r} if m in sys.modules]))\n")
    idle, loaded = python(code).splitlines()
    assert json.loads(idle) == []
    assert set(json.loads(loaded)) == set(LAUNCH_ONLY)


HANDSHAKE = """
import asyncio, ssl, sys
import agent.api.transport
import aiohttp

async def main() -> None:
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(sys.argv[1], sys.argv[2])
    async def answer(reader, writer):
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=served)
    port = server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:  # ssl=True: aiohttp's own verifying context
        try:
            async with session.get(f"https://127.0.0.1:{port}/") as response:
                print(response.status, await response.text())
        except aiohttp.ClientConnectorCertificateError as exc:
            print("rejected:", exc.certificate_error.verify_message)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a certificate with")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.mark.parametrize(("trusted", "answer"),
                         [(True, "200 ok"), (False, "rejected: self-signed certificate")])
def test_the_deferred_cas_are_read_at_the_first_handshake(self_signed: tuple[Path, Path], trusted: bool,
                                                          answer: str, tmp_path: Path) -> None:
    """SSL_CERT_FILE is read when the CAs load: trusted, the certificate passes; otherwise it is refused."""
    cert, key = self_signed
    other = tmp_path / "other-ca.pem"
    other.write_text("")
    env = {"PATH": "/usr/bin:/bin", "SSL_CERT_FILE": str(cert if trusted else other),
           "SSL_CERT_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", HANDSHAKE, str(cert), str(key)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == answer
