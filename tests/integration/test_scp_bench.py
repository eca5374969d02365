"""The ingest benchmark, run tiny, so it cannot rot: every target receives the whole corpus and is measured."""

from __future__ import annotations

import math

import pytest

from bench.ingest import FAST_PATH_ON, TARGETS, main

pytestmark = pytest.mark.slow


def test_the_ingest_benchmark_measures_every_target_on_a_tiny_corpus(tmp_path, capsys):
    results = main(["--size-mb", "1", "--rows", "128", "--senders", "2", "--receivers", "2", "--runs", "1",
                    "--latency-samples", "1", "--cache", str(tmp_path / "cache"), "--workdir", str(tmp_path),
                    "--targets", ",".join(TARGETS), "--fast-path", "on,off"])
    assert sorted(results) == [2]  # one sender count: every code path of the comparison, half the starts
    for measured in results.values():
        assert [r.target for r in measured] == [FAST_PATH_ON, *TARGETS]  # the fast path on and off, then the peers
        assert {r.instances for r in measured} == {math.ceil(1e6 / (128 * 128 * 2))}  # each target got every instance
        assert all(r.mb_per_s > 0 and r.instances_per_s > 0 for r in measured)
    printed = capsys.readouterr().out
    assert "m3edge/orthanc throughput x2:" in printed and "m3edge/storescp throughput x2:" in printed
    assert "m3edge/orthanc one-instance association latency:" in printed
    assert "fast path on/off (m3edge-fast/m3edge) throughput x2:" in printed and "DICOM_FAST_PATH=true" in printed
    assert "every row in the database" in printed
    assert "DICOM_RECEIVERS=2" in printed and "SyncStorageArea=true" in printed  # each target's configuration
