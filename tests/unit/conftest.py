"""Unit tests never read the machine's own AFS client files (an openafs-client's cacheinfo
would set their cache size): the default places are empty directories of each test's."""

from __future__ import annotations

import pytest

from afsfuse import config


@pytest.fixture(autouse=True)
def no_client_files(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    empty = tmp_path_factory.mktemp("etc")
    monkeypatch.setattr(config, "DEFAULT_OPENAFS_DIR", empty / "openafs")
    monkeypatch.setattr(config, "DEFAULT_KAFS_CONFIG", empty / "kafs" / "client.conf")
