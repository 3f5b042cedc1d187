"""The production shape, started for real on loopback: Debian nginx with the shipped
``deploy/nginx.conf`` (TLS) in front of two ``infusion-pump-cds serve`` replicas on one
PostgreSQL database.

Proven here: load is spread over both replicas; a JWT accepted by one is refused as a
replay by the other; every acknowledged call is in the audit trail exactly once; when a
replica is killed mid-load, the calls in flight on it may fail (a 502 OperationOutcome
from the proxy, never retried, so never recorded twice) and every other call succeeds;
the proxy's own errors are OperationOutcomes. Skipped without nginx or PostgreSQL,
except in CI. The load is bounded in time (``CDS_LOAD_SECONDS``, default 6 s).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import FIXTURES, ORDER_SIGN, ROOT
from tests.postgres_cluster import PostgresServer
from tests.served_process import ServedProcess, free_port

ISSUER = "https://ehr.example.org"
LOAD_SECONDS = float(os.environ.get("CDS_LOAD_SECONDS", "6"))
CLIENTS = 6
SIGN_BODY = json.loads(
    (FIXTURES / "requests" / "order-sign__e0784-insulin__covered.json").read_text()
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        if _in_ci():
            pytest.fail("CI must test the production shape: install Debian package 'nginx'")
        pytest.skip("nginx not installed (Debian package 'nginx')")
    return found


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def render_nginx_conf(
    folder: Path, *, https_port: int, http_port: int, upstreams: list[int], cert: Path, key: Path
) -> Path:
    """``deploy/nginx.conf`` with this test's ports, certificate and paths (each
    replacement must apply: the shipped file is what is tested)."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    user = "user root;" if os.geteuid() == 0 else ""
    replacements = {
        "user www-data;": user,
        "pid /run/nginx-cds.pid;": f"pid {folder}/nginx.pid;",
        "/var/log/nginx/": f"{folder}/",
        "/var/lib/nginx/": f"{folder}/",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "/etc/ssl/cds/fullchain.pem": str(cert),
        "/etc/ssl/cds/privkey.pem": str(key),
        "server 127.0.0.1:8001 ": f"server 127.0.0.1:{upstreams[0]} ",
        "server 127.0.0.1:8002 ": f"server 127.0.0.1:{upstreams[1]} ",
        # One client address sends the whole load here.
        "rate=100r/s": "rate=100000r/s",
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    path = folder / "nginx.conf"
    path.write_text(text)
    return path


@dataclass
class Deployment:
    base: str
    plain_base: str
    replicas: list[ServedProcess]
    database_url: str
    cert: Path
    key: Any
    logs: list[Path]

    def token(self, path: str = ORDER_SIGN) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": f"{self.base}{path}",
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})

    def answered_by(self) -> list[int]:
        """POSTs each replica's access log shows."""
        return [log.read_text(errors="replace").count('"POST ') for log in self.logs]


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Deployment]:
    nginx = _nginx()
    folder = tmp_path_factory.mktemp("production")
    os.chmod(folder, 0o755)
    cert, cert_key = _certificate(folder)
    client_key = ec.generate_private_key(ec.SECP384R1())
    jwk = jwt.get_algorithm_by_name("ES384").to_jwk(client_key.public_key(), as_dict=True)
    https_port, http_port = free_port(), free_port()
    base = f"https://127.0.0.1:{https_port}"
    database_url = postgres_server.create_database()
    env = {
        "CDS_DATABASE_URL": database_url,
        "CDS_PUBLIC_URL": base,
        "CDS_FORWARDED_FOR_HOPS": "1",
        "CDS_TRUSTED_ISSUERS": json.dumps(
            {ISSUER: {"jwks": {"keys": [{**jwk, "kid": "k1", "alg": "ES384", "use": "sig"}]}}}
        ),
        "CDS_RATE_LIMIT_PER_S": "10000",
        "CDS_RATE_LIMIT_BURST": "10000",
    }
    logs = [folder / "replica-a.log", folder / "replica-b.log"]
    replicas = [ServedProcess(env, workers=1, log_path=log) for log in logs]
    starting = [threading.Thread(target=replica.start) for replica in replicas]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    conf = render_nginx_conf(
        folder,
        https_port=https_port,
        http_port=http_port,
        upstreams=[r.port for r in replicas],
        cert=cert,
        key=cert_key,
    )
    proxy = subprocess.Popen(
        [
            nginx,
            "-p",
            str(folder),
            "-c",
            str(conf),
            "-e",
            str(folder / "startup-error.log"),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"{base}/cds-services", verify=str(cert), timeout=2)
                break
            except requests.ConnectionError:
                if proxy.poll() is not None or time.monotonic() > deadline:
                    error = proxy.stderr.read().decode() if proxy.stderr else ""
                    pytest.fail(f"nginx did not start: {error}")
                time.sleep(0.1)
        yield Deployment(
            base, f"http://127.0.0.1:{http_port}", replicas, database_url, cert, client_key, logs
        )
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        if proxy.stderr:
            proxy.stderr.close()
        for replica in replicas:
            replica.stop()


def _sign(
    session: requests.Session, deployment: Deployment, token: str, hook_instance: str
) -> requests.Response:
    body = {**SIGN_BODY, "hookInstance": hook_instance}
    return session.post(
        f"{deployment.base}{ORDER_SIGN}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        verify=str(deployment.cert),
        timeout=30,
    )


def _audited(deployment: Deployment) -> Counter[str]:
    engine = sa.create_engine(deployment.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT hook_instance FROM service_call"))
            return Counter(row[0] for row in rows)
    finally:
        engine.dispose()


@dataclass
class _Load:
    results: list[tuple[str, int, float, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _run_load(deployment: Deployment, seconds: float, kill_at: float | None) -> _Load:
    load = _Load()
    started = time.monotonic()

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() - started < seconds:
                hook_instance = str(uuid.uuid4())
                began = time.perf_counter()
                response = _sign(session, deployment, deployment.token(), hook_instance)
                with load.lock:
                    load.results.append(
                        (
                            hook_instance,
                            response.status_code,
                            time.perf_counter() - began,
                            response.content,
                        )
                    )

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    if kill_at is not None:
        time.sleep(kill_at)
        deployment.replicas[1].kill()
    for thread in threads:
        thread.join()
    return load


def _figures(label: str, load: _Load, seconds: float) -> str:
    latencies = sorted(r[2] for r in load.results)
    statuses = Counter(r[1] for r in load.results)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    calls = len(load.results)
    return (
        f"{label}: {calls} calls in {seconds:.0f} s ({calls / seconds:.0f}/s)"
        f" with {CLIENTS} clients, p50 {statistics.median(latencies) * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms, statuses {dict(statuses)}"
    )


def test_load_is_spread_and_every_acknowledged_call_is_audited_once(
    deployment: Deployment,
) -> None:
    before = deployment.answered_by()
    load = _run_load(deployment, LOAD_SECONDS, kill_at=None)
    after = deployment.answered_by()
    audited = _audited(deployment)
    ok = [r for r in load.results if r[1] == 200]
    print(f"\n{_figures('two replicas', load, LOAD_SECONDS)}; audit rows {sum(audited.values())}")
    assert len(ok) == len(load.results) > 20
    assert all(audited[r[0]] == 1 for r in ok)
    spread = [a - b for a, b in zip(after, before, strict=True)]
    assert min(spread) >= len(ok) // 4, spread  # both replicas answered a good share


def test_a_jwt_accepted_by_one_replica_is_refused_by_the_other(deployment: Deployment) -> None:
    token = deployment.token()
    with requests.Session() as session:
        first = _sign(session, deployment, token, str(uuid.uuid4()))
        before = deployment.answered_by()
        replays = [_sign(session, deployment, token, str(uuid.uuid4())) for _ in range(4)]
        after = deployment.answered_by()
    assert first.status_code == 200
    assert [r.status_code for r in replays] == [401] * 4
    assert all(r.json()["resourceType"] == "OperationOutcome" for r in replays)
    assert all(a > b for a, b in zip(after, before, strict=True))  # both replicas refused it


def test_the_proxys_own_errors_are_operation_outcomes(deployment: Deployment) -> None:
    verify = str(deployment.cert)
    too_large = requests.post(
        f"{deployment.base}{ORDER_SIGN}",
        data=b"x" * (11 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
        verify=verify,
        timeout=30,
    )
    header_too_large = requests.get(
        f"{deployment.base}/cds-services",
        headers={"Authorization": "Bearer " + "a" * (1024 * 1024)},
        verify=verify,
        timeout=30,
    )
    uri_too_long = requests.get(
        f"{deployment.base}/cds-services?q=" + "x" * 17000, verify=verify, timeout=30
    )
    metrics = requests.get(f"{deployment.base}/metrics", verify=verify, timeout=30)
    for response, status in [
        (too_large, 413),
        (header_too_large, 431),
        (uri_too_long, 414),
    ]:
        assert response.status_code == status
        assert response.headers["Content-Type"].startswith("application/fhir+json")
        assert response.json()["resourceType"] == "OperationOutcome"
        assert "nginx" not in response.text
    assert metrics.status_code == 404
    plain = requests.get(f"{deployment.plain_base}/cds-services", allow_redirects=False, timeout=10)
    assert plain.status_code == 308
    assert plain.headers["Location"].startswith("https://")


def test_a_replica_killed_mid_load_fails_only_its_calls_in_flight(deployment: Deployment) -> None:
    load = _run_load(deployment, LOAD_SECONDS, kill_at=LOAD_SECONDS / 2)
    audited = _audited(deployment)
    ok = [r for r in load.results if r[1] == 200]
    failed = [r for r in load.results if r[1] != 200]
    print(
        f"\n{_figures('one replica killed at half time', load, LOAD_SECONDS)};"
        f" audit rows of these calls {sum(audited[r[0]] for r in load.results)}, 200s {len(ok)}"
    )
    assert {r[1] for r in failed} <= {502}
    assert len(failed) <= CLIENTS  # at most the calls in flight when it died
    for _, _, _, body in failed:
        assert json.loads(body)["resourceType"] == "OperationOutcome"
    assert all(audited[r[0]] == 1 for r in ok)
    assert all(audited[r[0]] <= 1 for r in failed)  # recorded at most once, never retried
    assert len(ok) > 20
    # The surviving replica answers everything after the kill.
    late = [r for r in load.results[-CLIENTS * 3 :]]
    assert all(r[1] == 200 for r in late)
