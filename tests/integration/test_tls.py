"""TLS on both sides of the proxy: clients to pgrouter, pgrouter to servers."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from harness import ProxyProcess, base_config
from util import CertPair, connect, login_error, scalar, self_signed_cert

from router.localcluster import LocalCluster

pytestmark = pytest.mark.integration

ProxyFactory = Callable[..., ProxyProcess]
ClusterFactory = Callable[..., LocalCluster]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory, pg_cluster: LocalCluster) -> CertPair:
    # pg_cluster first: it makes sure the postgres OS user exists before the chown.
    return self_signed_cert(tmp_path_factory.mktemp("tls") / "certs")


def client_tls(cert: CertPair, mode: str) -> dict[str, object]:
    return {"tls": {"client_mode": mode, "cert_file": str(cert.cert), "key_file": str(cert.key)}}


def test_client_mode_allow_serves_tls_and_plain_clients(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, cert: CertPair
) -> None:
    proxy = start_proxy(base_config(pg_cluster, **client_tls(cert, "allow")))
    with connect(proxy.dsn(sslmode="require")) as conn:
        assert conn.info.pgconn.ssl_in_use is True
        assert scalar(conn, "SELECT current_user") == LocalCluster.APP_USER
    with connect(proxy.dsn(sslmode="disable")) as conn:
        assert conn.info.pgconn.ssl_in_use is False
        assert scalar(conn, "SELECT 1") == 1


def test_client_mode_require_refuses_plaintext(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory, cert: CertPair
) -> None:
    proxy = start_proxy(base_config(pg_cluster, **client_tls(cert, "require")))
    error = login_error(proxy.port, LocalCluster.APP_USER, LocalCluster.APP_PASSWORD)
    assert error.sqlstate == "08P01"
    assert error.severity_nonlocalized == "FATAL"
    assert "TLS" in error.message
    with pytest.raises(psycopg.OperationalError, match="TLS"):
        connect(proxy.dsn(sslmode="disable"))
    with connect(proxy.dsn(sslmode="require")) as conn:
        assert conn.info.pgconn.ssl_in_use is True
        assert scalar(conn, "SELECT 2") == 2


def test_server_mode_require_uses_tls_to_the_server(
    make_cluster: ClusterFactory, start_proxy: ProxyFactory, cert: CertPair
) -> None:
    cluster = make_cluster(
        replicas=0,
        extra_conf={"ssl": "on", "ssl_cert_file": str(cert.cert), "ssl_key_file": str(cert.key)},
    )
    proxy = start_proxy(base_config(cluster, tls={"server_mode": "require"}))
    with connect(proxy.dsn(sslmode="disable")) as conn:
        assert conn.info.pgconn.ssl_in_use is False  # client side stays plain
        assert scalar(conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        assert scalar(conn, "SELECT current_user") == LocalCluster.APP_USER


def test_server_mode_require_without_server_tls_names_the_backend(
    pg_cluster: LocalCluster, start_proxy: ProxyFactory
) -> None:
    assert pg_cluster.primary.psql("SHOW ssl") == "off"
    proxy = start_proxy(base_config(pg_cluster, tls={"server_mode": "require"}))
    error = login_error(proxy.port, LocalCluster.APP_USER, LocalCluster.APP_PASSWORD)
    assert error.sqlstate.startswith("08"), error
    assert error.sqlstate == "08001"
    assert f"primary 127.0.0.1:{pg_cluster.primary.port}" in error.message
    assert "TLS" in error.message
    with pytest.raises(psycopg.OperationalError, match=f"127.0.0.1:{pg_cluster.primary.port}"):
        connect(proxy.dsn())
