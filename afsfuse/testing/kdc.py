"""A throwaway MIT Kerberos KDC that lives entirely inside one work directory.

Every MIT tool run from here gets KRB5_CONFIG and KRB5_KDC_PROFILE pointing into the work
directory, so the machine's /etc/krb5.conf and /etc/krb5kdc are never read or written, and
several KDCs (one per test run) can coexist on different ports.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

_TOOL_TIMEOUT = 30.0
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 5


class KDCError(RuntimeError):
    """A KDC tool failed; the message carries its output."""


def _free_port(host: str) -> int:
    """A port number that is free for both UDP and TCP on host right now.

    The KDC binds it moments later; a lost race shows up as the KDC exiting at start,
    which start() answers by trying another port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


class KDC:
    """One realm, one krb5kdc process, all state under workdir."""

    def __init__(self, workdir: Path, realm: str, host: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir)
        self.realm = realm
        self.host = host
        self.krb5_config = self.workdir / "krb5.conf"
        self.kdc_profile = self.workdir / "kdc.conf"
        self.log_path = self.workdir / "kdc.log"
        self.port = 0
        self.pid = 0
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Create the database and run krb5kdc until it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(_PORT_ATTEMPTS):
            self.port = _free_port(self.host)
            self._write_configs()
            if not (self.workdir / "principal").exists():
                self._run(
                    "kdb5_util",
                    "create",
                    "-s",
                    "-r",
                    self.realm,
                    "-P",
                    secrets.token_urlsafe(24),
                )
            if self._launch():
                return
        raise KDCError(f"krb5kdc did not start after {_PORT_ATTEMPTS} ports; see {self.log_path}")

    def stop(self) -> None:
        """Stop krb5kdc (by its own PID) and reap it; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # -- principals and keys ----------------------------------------------------------

    def add_principal(self, name: str, password: str | None = None) -> None:
        """Create name@realm with a password, or with a random key when password is None."""
        key = "-randkey" if password is None else f"-pw {_word(password)}"
        self._kadmin(f"addprinc -clearpolicy {key} {_word(name)}")

    def export_keytab(
        self, principal: str, path: Path, enctypes: str = "aes256-cts-hmac-sha1-96:normal"
    ) -> None:
        """Write principal's keys to a keytab.

        Like `ktadd`, this gives the principal fresh random keys (its kvno goes up by one),
        so afterwards the keytab is the only holder of the key: do not use it on principals
        that must keep their password.
        """
        self._kadmin(f"ktadd -k {_word(str(path))} -e {_word(enctypes)} {_word(principal)}")

    # -- internals --------------------------------------------------------------------

    @property
    def _address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _write_configs(self) -> None:
        domain = self.realm.lower()
        self.krb5_config.write_text(
            "[libdefaults]\n"
            f"    default_realm = {self.realm}\n"
            "    dns_lookup_kdc = false\n"
            "    dns_lookup_realm = false\n"
            "    dns_canonicalize_hostname = false\n"
            "    rdns = false\n"
            "    allow_weak_crypto = false\n"
            "[realms]\n"
            f"    {self.realm} = {{\n"
            f"        kdc = {self._address}\n"
            "    }\n"
            "[domain_realm]\n"
            f"    {domain} = {self.realm}\n"
            f"    .{domain} = {self.realm}\n"
        )
        self.kdc_profile.write_text(
            "[kdcdefaults]\n"
            f"    kdc_listen = {self._address}\n"
            f"    kdc_tcp_listen = {self._address}\n"
            "[realms]\n"
            f"    {self.realm} = {{\n"
            f"        database_name = {self.workdir / 'principal'}\n"
            f"        key_stash_file = {self.workdir / 'stash'}\n"
            f"        acl_file = {self.workdir / 'kadm5.acl'}\n"
            f"        kdc_listen = {self._address}\n"
            f"        kdc_tcp_listen = {self._address}\n"
            "        master_key_type = aes256-cts-hmac-sha1-96\n"
            "        supported_enctypes = aes256-cts-hmac-sha1-96:normal"
            " aes128-cts-hmac-sha1-96:normal\n"
            "        max_life = 25h\n"
            "        max_renewable_life = 7d\n"
            "    }\n"
            "[logging]\n"
            f"    kdc = FILE:{self.log_path}\n"
        )
        (self.workdir / "kadm5.acl").write_text("")

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KRB5_CONFIG": str(self.krb5_config),
            "KRB5_KDC_PROFILE": str(self.kdc_profile),
        }

    def _run(self, *argv: str) -> str:
        result = subprocess.run(
            argv,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_TOOL_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise KDCError(f"{' '.join(argv[:2])} failed: {result.stderr.strip()}")
        return result.stderr

    def _kadmin(self, query: str) -> None:
        # kadmin.local exits 0 even when the query fails; a successful addprinc (with
        # -clearpolicy) or ktadd writes nothing to stderr, so any stderr means failure.
        stderr = self._run("kadmin.local", "-r", self.realm, "-q", query).strip()
        if stderr:
            raise KDCError(f"kadmin.local {query.split()[0]} failed: {stderr}")

    def _launch(self) -> bool:
        """Run krb5kdc; True once it accepts connections, False if it exited (port taken)."""
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                ["krb5kdc", "-n", "-r", self.realm, "-P", str(self.workdir / "krb5kdc.pid")],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._process = process
        self.pid = process.pid
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                return False
            if self._accepts_tcp():
                return True
            time.sleep(0.05)
        self.stop()
        raise KDCError(f"krb5kdc did not answer within {_START_TIMEOUT} s; see {self.log_path}")

    def _accepts_tcp(self) -> bool:
        # The KDC opens its UDP and TCP listeners together before it serves anything, so
        # an accepted TCP connection means both are ready.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False


def _word(value: str) -> str:
    """value as one kadmin query word (the query is split on whitespace, unquoted)."""
    if not value or any(ch.isspace() or ch in "\"'" for ch in value):
        raise ValueError(f"not usable in a kadmin query: {value!r}")
    return value
