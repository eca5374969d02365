"""``bench.results`` runs end to end on a small case."""

from __future__ import annotations

import bench.results as bench_results


def test_the_results_bench_builds_and_writes_the_seg_both_ways_and_the_sr(tmp_path, capsys):
    rows = bench_results.main(["--cases", "demo,full", "--size", "64", "--slices", "12", "--structures", "6",
                               "--rounds", "1", "--json", str(tmp_path / "results.json")])
    assert [row["case"] for row in rows] == ["demo", "full"]
    for row in rows:
        assert row["frames"] > 0 and row["segments"] > 0 and row["sr_bytes"] > 0
        assert min(row["build_seg_j2k_s"], row["write_seg_plain_s"], row["build_sr_s"], row["write_sr_s"]) > 0
        assert row["seg_size_ratio"] == row["seg_plain_bytes"] / row["seg_j2k_bytes"] > 1  # compression pays
    assert "SEG JPEG 2000: MB" in capsys.readouterr().out
    assert (tmp_path / "results.json").read_text().count('"case"') == 2
