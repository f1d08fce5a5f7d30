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


def test_an_idle_agent_loads_no_aiohttp() -> None:
    """The GraphQL transport is httpx's; aiohttp (~9 MiB) is loaded only by the health server, if asked."""
    code = "import sys\nimport agent.cli, agent.agent, agent.api.cloud\nprint('aiohttp' in sys.modules)\n"
    assert python(code).strip() == "False"


HANDSHAKE = """
import asyncio, ssl, sys
from agent.api.transport import GraphQLHttp

async def main() -> None:
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(sys.argv[1], sys.argv[2])
    async def answer(reader, writer):
        await reader.readuntil(b"\\r\\n\\r\\n")
        body = b'{"data": {"hello": "ok"}}'
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: "
                     + str(len(body)).encode() + b"\\r\\nConnection: close\\r\\n\\r\\n" + body)
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=served)
    port = server.sockets[0].getsockname()[1]
    http = GraphQLHttp(f"https://127.0.0.1:{port}/", {})
    await http.connect()
    try:
        print((await http.post("{ hello }"))["data"]["hello"])
    except Exception as exc:
        print("rejected:", type(exc).__name__, exc)
    finally:
        await http.close()

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
                         [(True, "ok"),
                          (False, "rejected: NetworkError ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] "
                                  "certificate verify failed: self-signed certificate")])
def test_an_https_api_is_verified_against_the_system_cas(self_signed: tuple[Path, Path], trusted: bool,
                                                          answer: str, tmp_path: Path) -> None:
    """The agent's transport checks an HTTPS API's certificate against the system CAs, SSL_CERT_FILE
    included: trusted, the request passes; otherwise it is refused with OpenSSL's reason."""
    cert, key = self_signed
    other = tmp_path / "other-ca.pem"
    other.write_text("")
    env = {"PATH": "/usr/bin:/bin", "SSL_CERT_FILE": str(cert if trusted else other),
           "SSL_CERT_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", HANDSHAKE, str(cert), str(key)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(answer)
