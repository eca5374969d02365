"""``bench.results`` runs end to end on a small case."""

from __future__ import annotations

import bench.results as bench_results


def test_the_results_bench_builds_and_writes_the_seg_and_the_sr(tmp_path, capsys):
    rows = bench_results.main(["--cases", "demo,full", "--size", "64", "--slices", "12", "--structures", "6",
                               "--rounds", "1", "--json", str(tmp_path / "results.json")])
    assert [row["case"] for row in rows] == ["demo", "full"]
    for row in rows:
        assert row["frames"] > 0 and row["segments"] > 0 and row["sr_bytes"] > 0
        assert min(row["build_seg_s"], row["write_seg_s"], row["build_sr_s"], row["write_sr_s"]) > 0
    assert "write SEG s" in capsys.readouterr().out
    assert (tmp_path / "results.json").read_text().count('"case"') == 2
