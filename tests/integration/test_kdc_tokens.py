"""The throwaway KDC and rxkad-k5 token acquisition against it (real MIT krb5kdc and kinit)."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import krb5
import pytest

from afsfuse.keyring import Token, TokenError, token_from_ccache, token_from_keytab
from afsfuse.rx.rxkad import derive_des_key
from afsfuse.testing.kdc import KDC, KDCError

REALM = "TEST.EXAMPLE"
CELL = "test.example"
ALICE_PASSWORD = "alice-" + secrets.token_hex(4)
AES256 = 18


@pytest.fixture(scope="module")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KDC]:
    server = KDC(tmp_path_factory.mktemp("kdc"), REALM)
    server.start()
    try:
        server.add_principal("alice", ALICE_PASSWORD)
        server.add_principal(f"afs/{CELL}")
        server.add_principal("afs")  # the old-style afs@REALM, for the fallback test
        server.add_principal("svc")
        yield server
    finally:
        server.stop()


@pytest.fixture
def client_env(kdc: KDC, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's libkrb5 at the test KDC."""
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_config))


def kinit_alice(kdc: KDC, ccache_name: str) -> None:
    env = {**os.environ, "KRB5_CONFIG": str(kdc.krb5_config), "KRB5CCNAME": ccache_name}
    subprocess.run(
        ["kinit", "alice"],
        input=ALICE_PASSWORD + "\n",
        text=True,
        env=env,
        capture_output=True,
        check=True,
        timeout=10,
    )


def cached_services(ccache_name: str) -> dict[str, krb5.Creds]:
    context = krb5.init_context()
    cache = krb5.cc_resolve(context, ccache_name.encode())
    return {creds.server.name.decode(): creds for creds in cache}


def assert_alice_token(token: Token) -> None:
    assert token.cell == CELL
    assert token.realm == REALM
    assert token.client == f"alice@{REALM}"
    assert token.ticket[0] == 0x61  # DER [APPLICATION 1]: a Kerberos 5 Ticket
    assert token.kvno == 256
    assert token.viceid is None
    assert len(token.session_key) == 8
    assert token.begin <= time.time() < token.end


def tgs_requests(kdc: KDC) -> int:
    return kdc.log_path.read_text().count("TGS_REQ")


def test_token_from_file_ccache(kdc: KDC, client_env: None, tmp_path: Path) -> None:
    ccache = f"FILE:{tmp_path / 'cc'}"
    kinit_alice(kdc, ccache)

    token = token_from_ccache(CELL, ccache)

    assert_alice_token(token)
    service = cached_services(ccache)[f"afs/{CELL}@{REALM}"]
    assert service.ticket == token.ticket
    assert service.keyblock.enctype == AES256
    assert token.session_key == derive_des_key(AES256, service.keyblock.data)
    assert token.session_key != service.keyblock.data[:8]


def test_second_token_comes_from_the_cache(kdc: KDC, client_env: None, tmp_path: Path) -> None:
    ccache = f"FILE:{tmp_path / 'cc'}"
    kinit_alice(kdc, ccache)
    first = token_from_ccache(CELL, ccache)
    requests = tgs_requests(kdc)

    second = token_from_ccache(CELL, ccache)

    assert second == first
    assert tgs_requests(kdc) == requests


def test_default_ccache_from_krb5ccname(
    kdc: KDC, client_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ccache = f"FILE:{tmp_path / 'cc'}"
    kinit_alice(kdc, ccache)
    monkeypatch.setenv("KRB5CCNAME", ccache)

    assert_alice_token(token_from_ccache(CELL))


def test_token_from_keyring_ccache(kdc: KDC, client_env: None) -> None:
    # The session keyring is inherited by kinit, so both processes see the same cache.
    ccache = f"KEYRING:session:afsfuse-test-{secrets.token_hex(4)}"
    kinit_alice(kdc, ccache)
    try:
        token = token_from_ccache(CELL, ccache)
        assert_alice_token(token)
        assert cached_services(ccache)[f"afs/{CELL}@{REALM}"].ticket == token.ticket
    finally:
        context = krb5.init_context()
        krb5.cc_destroy(context, krb5.cc_resolve(context, ccache.encode()))


def test_falls_back_to_plain_afs_principal(kdc: KDC, client_env: None, tmp_path: Path) -> None:
    ccache = f"FILE:{tmp_path / 'cc'}"
    kinit_alice(kdc, ccache)

    token = token_from_ccache("legacy.example", ccache, realm=REALM)

    assert token.cell == "legacy.example"
    assert cached_services(ccache)[f"afs@{REALM}"].ticket == token.ticket


def test_unknown_realm_is_a_token_error(kdc: KDC, client_env: None, tmp_path: Path) -> None:
    ccache = f"FILE:{tmp_path / 'cc'}"
    kinit_alice(kdc, ccache)

    with pytest.raises(TokenError):
        token_from_ccache("nowhere.example", ccache, realm="NOWHERE.EXAMPLE")


def test_missing_ccache_is_a_token_error(client_env: None, tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="no usable Kerberos credentials"):
        token_from_ccache(CELL, f"FILE:{tmp_path / 'absent'}")


def test_token_from_keytab(kdc: KDC, client_env: None, tmp_path: Path) -> None:
    keytab = tmp_path / "svc.keytab"
    kdc.export_keytab("svc", keytab)

    token = token_from_keytab(CELL, keytab, f"svc@{REALM}")

    assert token.client == f"svc@{REALM}"
    assert token.realm == REALM
    assert token.ticket[0] == 0x61
    assert len(token.session_key) == 8
    assert token.begin <= time.time() < token.end


def test_duplicate_principal_is_refused(kdc: KDC) -> None:
    with pytest.raises(KDCError, match="already exists"):
        kdc.add_principal("alice", "another-password")


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    server = KDC(tmp_path, "STOP.EXAMPLE")
    server.start()
    pid = server.pid
    os.kill(pid, 0)  # running

    server.stop()
    server.stop()  # a second stop is harmless

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (tmp_path / "principal").exists()  # the database lived in the work directory
