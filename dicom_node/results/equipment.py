"""IHE AI Results: each algorithm that contributed, as an item of the Contributing Equipment Sequence.

Purpose of Reference is (109102, DCM, "Processing Equipment") from CID 7005 "Contributing Equipment Purposes of
Reference": CID 7005 has no "Processing Algorithm" concept (109103 is "Modifying Equipment", which is for equipment that
changed the instance's own data). The Device UID is derived from the weights digest under the organisation root, so a
new model or new weights give a new Device UID.
"""

from __future__ import annotations

import datetime

from highdicom import ContributingEquipment
from pydicom.sr.codedict import codes

from dicom_node.results.content import AlgorithmIdentity
from dicom_node.results.uids import ResultUids

__all__ = ["WRITER_MANUFACTURER", "PROCESSING_EQUIPMENT", "algorithm_equipment", "describe_algorithm"]

PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment
WRITER_MANUFACTURER = "m3edge"  # Manufacturer of the SR and KO documents: the node that writes them


def describe_algorithm(algorithm: AlgorithmIdentity) -> str:
    """One line naming what ran: model, version, backend, weights, and DEMO for random demo weights."""
    text = f"{algorithm.name} {algorithm.version} on {algorithm.backend}, weights {algorithm.weights_digest}"
    return f"{text} (DEMO weights, not a real model)" if algorithm.demo else text


def algorithm_equipment(
    algorithm: AlgorithmIdentity,
    uids: ResultUids,
    contribution_datetime: datetime.datetime,
) -> ContributingEquipment:
    """The Contributing Equipment item of one algorithm, with its Device UID."""
    if not isinstance(algorithm, AlgorithmIdentity):
        raise TypeError("algorithm must be an AlgorithmIdentity")
    if not isinstance(uids, ResultUids):
        raise TypeError("uids must be a ResultUids")
    item = ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.weights_digest[:64],
        contribution_datetime=contribution_datetime,
        contribution_description=describe_algorithm(algorithm)[:1024],
    )
    item.DeviceUID = uids.device_uid(algorithm.weights_digest)
    return item
