"""Certificates made by the real `openssl` for the TLS tests: a CA, a server certificate for
127.0.0.1/localhost, a client certificate, and a second CA and key that belong to nothing."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here: "wrong CA"
    other_key: Path  # a key that matches no certificate
    expired_server_cert: Path  # signed by ca_cert, valid yesterday only
    expired_server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key(name: str, cwd: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name, cwd=cwd)


def _ca(name: str, cwd: Path) -> None:
    _key(f"{name}.key", cwd)
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-days", "2", "-subj", f"/CN={name}", "-out", f"{name}.crt",
        cwd=cwd,
    )  # fmt: skip


def _signed(name: str, cn: str, cwd: Path, extensions: str, days: str = "2", start: str | None = None) -> None:
    _key(f"{name}.key", cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    if start is None:
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", days, "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=cwd,
        )  # fmt: skip
        return
    # An expired certificate: `openssl ca` is the only openssl tool that takes explicit start/end dates.
    (cwd / "index.txt").write_text("")
    (cwd / "serial").write_text("1000\n")
    (cwd / "ca.cnf").write_text(
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nserial=serial\nnew_certs_dir=.\n"
        "default_md=sha256\npolicy=p\ncopy_extensions=none\n[p]\ncommonName=supplied\n"
    )
    _openssl(
        "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key", "-in", f"{name}.csr",
        "-startdate", start, "-enddate", days, "-extfile", f"{name}.ext", "-out", f"{name}.crt", "-notext",
        cwd=cwd,
    )  # fmt: skip


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    _ca("ca", directory)
    _ca("other-ca", directory)
    _signed(
        "server",
        "localhost",
        directory,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    _signed("client", "edgepose-client", directory, "extendedKeyUsage=clientAuth\n")
    _signed(
        "expired",
        "localhost",
        directory,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        days="20200102000000Z",
        start="20200101000000Z",
    )
    _key("stray.key", directory)
    return TlsFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca_cert=directory / "other-ca.crt",
        other_key=directory / "stray.key",
        expired_server_cert=directory / "expired.crt",
        expired_server_key=directory / "expired.key",
    )
