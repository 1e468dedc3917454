"""The code server's probes in helm/medallion ask what a real `dagster api grpc` server answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import helm_python
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFINITIONS = '''
import dagster as dg

@dg.asset
def probe_asset() -> None:
    """Nothing."""

defs = dg.Definitions(assets=[probe_asset])
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int, service: str) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_grpc_probe_service_reports_serving_once_definitions_load(repo_root: Path, tmp_path: Path) -> None:
    with helm_python.Chart.load(repo_root / "helm" / "medallion") as chart:
        values = {"image": {"tag": "1.0.0"}, "config": {"lake": {"root": "s3://acme-lake/medallion"}}}
        rendered = chart.render(values, name="medallion", namespace="data")
    deployment = yaml.safe_load(rendered["medallion/templates/deployment-user-code.yaml"])
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]

    (tmp_path / "probe_defs.py").write_text(DEFINITIONS)
    port = free_port()
    dagster = Path(sys.executable).parent / "dagster"
    server = subprocess.Popen(
        [str(dagster), "api", "grpc", "-h", "127.0.0.1", "-p", str(port), "-f", str(tmp_path / "probe_defs.py")],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while health(port, probe["service"]) != "SERVING":
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else "server exited"
            assert time.monotonic() < deadline, "code server never reported SERVING"
            time.sleep(0.5)
        # The probe names a service the server knows; an unknown one would never pass.
        assert health(port, "NoSuchService") == "NOT_FOUND"
        check = subprocess.run(
            [str(dagster), "api", "grpc-health-check", "-p", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # shutting down is not what this test is about: a loaded machine
            server.kill()
            server.wait()
