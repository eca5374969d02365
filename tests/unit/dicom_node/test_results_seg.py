"""SEG from a label volume on the source grid: frame order, orientation handling, coding, round trip."""

from __future__ import annotations

from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.results import LabelSegmentation, StructureSegment, build_segmentation, frames_on_source_grid
from dicom_node.results.seg import segment_pixels
from dicom_node.results.content import AlgorithmIdentity
from tests.support.result_cases import FIXED_TIME, brain_case, ct_case, cxr_case


def _roundtrip(dataset) -> pydicom.Dataset:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def test_frames_follow_source_instances_with_rows_and_columns_of_the_source():
    case = ct_case()
    findings = case.content.findings
    frames = frames_on_source_grid(findings.segmentation, findings.source_images)
    assert frames.shape == (6, 24, 20)  # (instances, rows, columns)
    np.testing.assert_array_equal(frames, np.transpose(case.labels, (2, 1, 0)))


def test_a_volume_reoriented_to_ras_gives_the_same_frames():
    case = ct_case()
    findings = case.content.findings
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = case.labels.shape[0] - 1, case.labels.shape[1] - 1  # index i -> (n-1) - i
    ras = LabelSegmentation(case.labels[::-1, ::-1, :].copy(), findings.segmentation.affine @ flip,
                            findings.segmentation.segments)
    np.testing.assert_array_equal(
        frames_on_source_grid(ras, findings.source_images), np.transpose(case.labels, (2, 1, 0))
    )


@pytest.mark.parametrize("instances", ["in order", "reversed", "shuffled", "one left out"])
@pytest.mark.parametrize("order", [(0, 1, 2), (1, 0, 2), (2, 1, 0), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("flips", [(), (0,), (1, 2), (0, 1, 2)])
def test_any_axis_order_and_flip_of_the_volume_gives_the_same_frames(order, flips, instances):
    case = ct_case()
    findings = case.content.findings
    labels = np.transpose(case.labels, order)  # labels[i'] = case.labels[i], i[order[k]] = i'[k]
    permute = np.zeros((4, 4))
    permute[3, 3] = 1.0
    for k, axis in enumerate(order):
        permute[axis, k] = 1.0
    flip = np.eye(4)
    for axis in flips:
        labels = np.flip(labels, axis)
        flip[axis, axis], flip[axis, 3] = -1.0, labels.shape[axis] - 1
    moved = LabelSegmentation(np.ascontiguousarray(labels), findings.segmentation.affine @ permute @ flip,
                              findings.segmentation.segments)
    # consecutive slices (either way) are read as one block; any other order frame by frame
    picked = {"in order": [0, 1, 2, 3, 4, 5], "reversed": [5, 4, 3, 2, 1, 0], "shuffled": [2, 0, 5, 1, 4, 3],
              "one left out": [0, 1, 3, 4, 5]}[instances]
    sources = tuple(findings.source_images[i] for i in picked)
    frames = frames_on_source_grid(moved, sources)
    assert frames.flags.c_contiguous
    np.testing.assert_array_equal(frames, np.transpose(case.labels, (2, 1, 0))[picked])


def test_source_instances_of_different_sizes_are_refused():
    import copy

    findings = ct_case().content.findings
    sources = [copy.deepcopy(image) for image in findings.source_images]
    sources[2].Rows = int(sources[2].Rows) - 4
    with pytest.raises(ValueError, match="differ in Rows or Columns"):
        frames_on_source_grid(findings.segmentation, tuple(sources))


def test_segment_pixels_number_the_segments_and_drop_labels_not_asked_for():
    frames = np.array([[[0, 5, 14], [26, 99, -1], [5, 300, 1]]], dtype=np.int16)
    segments = tuple(StructureSegment(name, (label,)) for name, label in
                     (("liver", 1), ("right kidney", 5), ("left kidney", 14), ("hepatic tumor", 26)))
    pixels = segment_pixels(frames, segments)
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, [[[0, 2, 3], [4, 0, 0], [2, 0, 1]]])
    overlapping = (StructureSegment("tumor core", (1, 4)), StructureSegment("whole tumor", (1, 2, 4)))
    masks = segment_pixels(np.array([[[0, 1, 2, 4, 7]]]), overlapping)
    np.testing.assert_array_equal(masks[..., 0], [[[False, True, False, True, False]]])
    np.testing.assert_array_equal(masks[..., 1], [[[False, True, True, True, False]]])


def test_a_permuted_volume_is_copied_whole_block_by_block():
    from dicom_node.arrays import c_order_copy

    volume = np.random.default_rng(3).integers(0, 50, (70, 33, 9)).astype(np.uint8)
    view = np.transpose(volume[::-1], (2, 1, 0))
    for rows, columns in ((1, 1), (8, 32), (5, 7), (100, 100)):
        copied = c_order_copy(view, rows, columns)
        assert copied.flags.c_contiguous
        np.testing.assert_array_equal(copied, view)


def test_labels_off_the_source_grid_are_refused():
    case = ct_case()
    findings = case.content.findings
    shifted = findings.segmentation.affine.copy()
    shifted[:3, 3] += [0.3, 0.0, 0.0]
    off_grid = LabelSegmentation(case.labels, shifted, findings.segmentation.segments)
    with pytest.raises(ValueError, match="not on the source grid"):
        frames_on_source_grid(off_grid, findings.source_images)
    resampled = findings.segmentation.affine.copy()
    resampled[:3, 0] *= 2
    with pytest.raises(ValueError, match="not on the source grid"):
        frames_on_source_grid(LabelSegmentation(case.labels, resampled, findings.segmentation.segments),
                              findings.source_images)
    small = LabelSegmentation(case.labels[:10], findings.segmentation.affine, findings.segmentation.segments)
    with pytest.raises(ValueError, match="do not cover"):
        frames_on_source_grid(small, findings.source_images)


def test_ct_segmentation_round_trips_with_coded_segments_and_masks():
    case = ct_case()
    seg = hd.seg.Segmentation.from_dataset(_roundtrip(build_segmentation(case.content.findings, case.uids,
                                                                          now=FIXED_TIME)))
    assert seg.StudyInstanceUID == case.study.study_instance_uid
    assert seg.SeriesNumber == 9902 and seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == case.study.series["ct"][0].SeriesInstanceUID
    described = {d.SegmentLabel: d for d in seg.SegmentSequence}
    assert list(described) == ["liver", "right kidney", "left kidney", "hepatic tumor"]
    liver = described["liver"].SegmentedPropertyTypeCodeSequence[0]
    assert (liver.CodeValue, liver.CodingSchemeDesignator) == ("10200004", "SCT")
    kidney = described["left kidney"].SegmentedPropertyTypeCodeSequence[0]
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    assert described["hepatic tumor"].AnatomicRegionSequence[0].CodeMeaning == "Liver"
    assert described["liver"].TrackingUID == case.uids.tracking_uid("liver")
    assert described["liver"].SegmentAlgorithmName == "VISTA3D"
    equipment = seg.ContributingEquipmentSequence[-2]
    assert equipment.DeviceUID == case.uids.device_uid("sha256:" + "cd" * 32)
    source_uids = [ds.SOPInstanceUID for ds in case.study.series["ct"]]
    for number, label in ((1, 1), (2, 5), (3, 14), (4, 26)):
        volume = seg.get_pixels_by_source_instance(source_uids, segment_numbers=[number], skip_overlap_checks=True,
                                                   combine_segments=False)[..., 0]
        np.testing.assert_array_equal(volume.astype(bool), np.transpose(case.labels == label, (2, 1, 0)))


def test_brats_regions_are_overlapping_binary_segments():
    case = brain_case()
    seg = hd.seg.Segmentation.from_dataset(_roundtrip(build_segmentation(case.content.findings, case.uids)))
    source_uids = [ds.SOPInstanceUID for ds in case.study.series["t1c"]]
    pixels = seg.get_pixels_by_source_instance(source_uids, skip_overlap_checks=True, combine_segments=False)
    expected = {1: np.isin(case.labels, (1, 4)), 2: case.labels > 0, 3: case.labels == 4}
    for number, mask in expected.items():
        np.testing.assert_array_equal(pixels[..., number - 1].astype(bool), np.transpose(mask, (2, 1, 0)))
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "BRATS-WT"


def test_segmentation_needs_a_label_volume_and_the_right_study():
    case = ct_case()
    findings = case.content.findings
    with pytest.raises(ValueError, match="no segmentation"):
        build_segmentation(cxr_case().content.findings, cxr_case().uids)
    with pytest.raises(ValueError, match="another study"):
        build_segmentation(findings, brain_case().uids)
    with pytest.raises(TypeError, match="findings"):
        build_segmentation(object(), case.uids)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"labels": np.zeros((2, 2)), "affine": np.eye(4)}, ValueError, "3-D"),
        ({"labels": np.zeros((2, 2, 2), float), "affine": np.eye(4)}, TypeError, "integer"),
        ({"labels": np.zeros((2, 2, 2), int), "affine": np.zeros((4, 4))}, ValueError, "invertible"),
    ],
)
def test_label_segmentation_refuses_bad_volumes(kwargs, error, message):
    with pytest.raises(error, match=message):
        LabelSegmentation(segments=(StructureSegment("liver", (1,)),), **kwargs)


def test_structure_segments_and_algorithms_refuse_bad_values():
    with pytest.raises(ValueError, match="label_ids of segment 'liver'"):
        StructureSegment("liver", (0,))
    with pytest.raises(ValueError, match="volume_ml"):
        StructureSegment("liver", (1,), -1.0)
    with pytest.raises(ValueError, match="unique"):
        LabelSegmentation(
            np.zeros((2, 2, 2), int), np.eye(4), (StructureSegment("a", (1,)), StructureSegment("a", (2,)))
        )
    with pytest.raises(ValueError, match="backend must not be empty"):
        AlgorithmIdentity("VISTA3D", "1", "NVIDIA", " ", "sha256:00")
    with pytest.raises(TypeError, match="demo must be a bool"):
        AlgorithmIdentity("VISTA3D", "1", "NVIDIA", "torch", "sha256:00", demo="yes")


def test_a_seg_on_an_enhanced_multi_frame_source_has_the_frames_of_the_single_frame_series():
    from tests.support.synthetic_series import enhanced_series

    case = ct_case()
    findings = case.content.findings
    enhanced = enhanced_series(case.study.series["ct"])  # one Legacy Converted Enhanced CT instance, 6 frames
    single = frames_on_source_grid(findings.segmentation, findings.source_images)
    positions = [tuple(float(v) for v in ds.ImagePositionPatient) for ds in findings.source_images]
    order = [positions.index(tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient))
             for item in enhanced.PerFrameFunctionalGroupsSequence]  # its frames, in its own order
    assert sorted(order) == list(range(6))
    np.testing.assert_array_equal(frames_on_source_grid(findings.segmentation, (enhanced,)), single[order])
    with pytest.raises(ValueError, match="a SEG lies on one multi-frame instance or on single-frame instances"):
        frames_on_source_grid(findings.segmentation, (enhanced, *findings.source_images))


def test_a_seg_of_a_real_enhanced_ct_references_its_frames():
    from tests.support.result_cases import enhanced_ct_case

    case = enhanced_ct_case()
    source = case.study.series["ct"][0]
    seg = hd.seg.Segmentation.from_dataset(_roundtrip(build_segmentation(case.content.findings, case.uids,
                                                                          now=FIXED_TIME)))
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [r.ReferencedSOPInstanceUID for r in referenced] == [source.SOPInstanceUID]
    frames = {int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
              for item in seg.PerFrameFunctionalGroupsSequence}
    assert frames == {1, 2}
    liver = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [1, 2], segment_numbers=[1],
                                           combine_segments=False, skip_overlap_checks=True)[..., 0]
    np.testing.assert_array_equal(liver.astype(bool), np.transpose(case.labels == 1, (2, 1, 0)))


def _display_rgb(seg) -> dict[str, tuple[int, int, int]]:
    return {str(d.SegmentLabel): hd.color.CIELabColor.from_dicom_value(d.RecommendedDisplayCIELabValue).to_rgb()
            for d in seg.SegmentSequence}


def test_every_segment_carries_the_colour_the_overlay_legend_gave_its_structure():
    """OHIF shows a SEG without display colours in colours of its own, with a notice: each segment has one, the
    overlay's where the model saw the structure (the study page's legend), the overlay's rule for the others."""
    case = ct_case()
    seg = build_segmentation(case.content.findings, case.uids, now=FIXED_TIME,
                             overlay_legend=[["red", "liver"], ["green", "hepatic tumor"]])
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    written = pydicom.dcmread(BytesIO(buffer.getvalue()))
    colours = _display_rgb(written)
    assert colours["liver"] == (255, 0, 0) and colours["hepatic tumor"] == (0, 128, 0)  # as the legend says
    assert len(set(colours.values())) == 4  # the kidneys take colours no other segment has
    # Without a legend: the overlay's rule (label ids in increasing order take the colour cycle in turn).
    plain = _display_rgb(build_segmentation(case.content.findings, case.uids, now=FIXED_TIME))
    assert plain == {"liver": (255, 0, 0), "right kidney": (0, 0, 255), "left kidney": (255, 255, 0),
                     "hepatic tumor": (255, 0, 255)}


def test_brats_regions_take_the_training_legend_colours_from_their_labels():
    from dicom_node.results.seg import SEGMENT_COLOUR_CYCLE, segment_colours
    from engines.images import OVERLAY_COLORS

    assert SEGMENT_COLOUR_CYCLE == OVERLAY_COLORS  # the overlay's cycle (dicom_node does not import engines)
    segments = brain_case().content.findings.segmentation.segments
    names = {1: "necrotic tumor core", 2: "peritumoral edema", 4: "enhancing tumor"}
    # "yellow and red: tumor core, only yellow: enhancing tumor, all colors: whole tumor"
    assert segment_colours(segments, [["red", names[1]], ["blue", names[2]], ["yellow", names[4]]], names) == [
        "red", "blue", "yellow"]
    # A slice without edema drew enhancing tumour in blue: ET keeps the colour the reader saw it in.
    assert segment_colours(segments, [["red", names[1]], ["blue", names[4]]], names) == ["red", "yellow", "blue"]
    assert segment_colours(segments, [["not-a-colour", names[1]]], names) == ["red", "blue", "yellow"]
