"""The bench's fileserver-limit table: which run is the crypt limit, and the crypt client's share."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from limits import Limit, cold_read_mb_per_s, crypt_limit, render, summary, to_json

MIB_64 = 64 << 20


def _result(cold_seconds: float | None, limits: list[Limit] | None) -> dict:
    crypt = {"median_seconds": cold_seconds, "failed": None if cold_seconds else "x"}
    return {
        "workloads": [
            {"key": "cold-read", "bytes": MIB_64, "clients": {"afsfuse crypt": crypt}},
            {"key": "create", "bytes": None, "clients": {"afsfuse crypt": crypt}},
        ],
        "fileserver_limits": None if limits is None else to_json(limits),
        "meta": {"net": "lan"},
    }


def _limits() -> list[Limit]:
    return [
        Limit("none", 1, MIB_64, 1.0, 0.5, 0.4),
        Limit("crypt", 1, MIB_64, 4.0, 1.0, 3.9),
        Limit("crypt", 2, 2 * MIB_64, 5.0, 2.0, 7.5),
        Limit("crypt", 4, 4 * MIB_64, None, error="afsfuse-io exit 1: permission denied"),
    ]


def test_the_fastest_crypt_run_is_the_limit_and_failures_are_left_out() -> None:
    runs = to_json(_limits())
    assert runs[0]["mb_per_s"] == MIB_64 / 1e6
    best = crypt_limit(runs)
    assert best is not None and best["streams"] == 2
    assert best["mb_per_s"] == 2 * MIB_64 / 5.0 / 1e6
    assert crypt_limit([r for r in runs if r["level"] == "none"]) is None


def test_cold_read_share_of_the_limit() -> None:
    result = _result(8.0, _limits())  # 8.4 MB/s against 26.8 MB/s
    assert cold_read_mb_per_s(result["workloads"]) == MIB_64 / 8.0 / 1e6
    share = summary(result)
    assert share is not None
    assert abs(share["percent"] - 100 * 5.0 / (2 * 8.0)) < 1e-9
    assert share["limit_streams"] == 2 and not share["meets_target"]
    fast = summary(_result(2.7, _limits()))  # 24.9 MB/s: 93 %
    assert fast is not None and fast["meets_target"]


def test_no_share_without_a_cold_read_or_a_limit() -> None:
    assert summary(_result(None, _limits())) is None
    assert summary(_result(8.0, None)) is None
    assert cold_read_mb_per_s([], "afsfuse crypt") is None


def test_render_names_every_run_and_the_share() -> None:
    text = render(_result(8.0, _limits()))
    assert "fileserver limit at clear (rxnull) (afsfuse-io, 1 stream)" in text
    assert "fileserver limit at crypt (afsfuse-io, 2 streams)" in text
    assert "failed: afsfuse-io exit 1: permission denied" in text
    assert "26.8" in text and "= 31 % (below 90 %)" in text
    assert "| 17.9 " in text  # 2 x 64 MiB for 7.5 s of the fileserver's CPU
    assert render(_result(8.0, None)).startswith("fileserver limits: not measured (no cold-read")
    far = {**_result(8.0, None), "meta": {"net": "wan10"}}
    assert render(far).startswith("fileserver limits: not measured under --net wan10")
