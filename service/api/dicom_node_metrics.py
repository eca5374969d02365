"""Prometheus metrics of the DICOM node, read at scrape time from the status it publishes (``dicom_node.scp.status``),
so the API reports the node whether it runs in this process (``serve``) or in another beside the same HOME (``scp``)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dicom_node.scp.status import NodeStatusFile

__all__ = ["DicomNodeCollector"]


class DicomNodeCollector:
    def __init__(self, status_file: Path) -> None:
        self._file = NodeStatusFile(status_file)

    def collect(self):
        status = self._file.read()
        if status is None:  # no node publishes beside this HOME: nothing to report
            return
        accepting = GaugeMetricFamily("m3edge_dicom_node_accepting",
                                      "1 while the DICOM node accepts associations (fresh status, a receiver ready)")
        accepting.add_metric([], 0 if status.problem() else 1)
        yield accepting
        ready = GaugeMetricFamily("m3edge_dicom_receivers_ready", "Receiving processes accepting associations")
        ready.add_metric([], status.receivers_ready if status.fresh() else 0)
        yield ready
        deaths = CounterMetricFamily("m3edge_dicom_receiver_deaths", "Receiving processes that died since the node "
                                     "started (each is restarted with back-off)")
        deaths.add_metric([], status.receiver_deaths)
        yield deaths
        restarts = CounterMetricFamily("m3edge_dicom_receiver_restarts", "Receiving processes started again")
        restarts.add_metric([], status.receiver_restarts)
        yield restarts
