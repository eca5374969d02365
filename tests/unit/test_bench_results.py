"""``bench.results`` runs end to end on a small case and refuses to report writers that disagree."""

from __future__ import annotations

import io

import pytest

import bench.results as bench_results


def test_the_results_bench_measures_both_writers_on_the_same_objects(tmp_path, capsys):
    rows = bench_results.main(["--cases", "demo,full", "--size", "64", "--slices", "12", "--structures", "6",
                               "--rounds", "1", "--json", str(tmp_path / "results.json")])
    assert [row["case"] for row in rows] == ["demo", "full"]
    for row in rows:
        assert row["frames"] > 0 and row["segments"] > 0
        side = 48 if row["case"] == "demo" else 64
        assert row["seg_bytes"] > row["frames"] * side * side // 8  # at least each frame's bits
        assert row["seg_ratio"] > 0 and row["sr_ratio"] > 0
    assert "ratio" in capsys.readouterr().out
    assert (tmp_path / "results.json").read_text().count('"case"') == 2


def test_the_results_bench_stops_when_the_writers_disagree(monkeypatch):
    def truncated(dataset, handle: io.BytesIO) -> None:
        dataset.save_as(handle, enforce_file_format=True)
        handle.truncate(handle.tell() - 2)

    monkeypatch.setattr("dicom_node.results.write_result", truncated)
    with pytest.raises(SystemExit, match="different bytes"):
        bench_results.main(["--cases", "demo", "--rounds", "1"])
