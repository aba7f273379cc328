"""CAD results as a DICOM Comprehensive 3D SR with TID 1500 as its root (IHE AI Results): one
TID 1410 planar ROI group per candidate, its region as an image SCOORD on the source instance
(and frame), a finding, and the model's probability (DCM 122157) with the algorithm's name and
version; the CAD device as observer. Built and read with highdicom."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

ALGORITHM = "cad-aift"
SERIES_NUMBER = 9901
"""The series the gateway's SRs go in, one new series per SR, in the source's study."""
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")


@dataclass(frozen=True)
class Finding:
    """One classified candidate: the frame (0-based), its box in pixels, P(finding)."""

    frame_index: int
    x: float
    y: float
    width: float
    height: float
    probability: float


def build_sr(
    source: Dataset,
    findings: Sequence[Finding],
    model_version: str,
    device_uid: str,
    device_name: str = "cad-dicom-gateway",
    manufacturer: str = "cad-aift",
) -> hd.sr.Comprehensive3DSR:
    """The SR of ``findings`` on ``source``, in its study."""
    return build_series_sr(
        [(source, findings)], model_version, device_uid, device_name, manufacturer
    )


def build_series_sr(
    images: Sequence[tuple[Dataset, Sequence[Finding]]],
    model_version: str,
    device_uid: str,
    device_name: str = "cad-dicom-gateway",
    manufacturer: str = "cad-aift",
) -> hd.sr.Comprehensive3DSR:
    """One SR of the findings on several images of one series (each image with its own), in
    their study: a reading workstation shows a series' results as one object (IHE AI Results).
    The images' headers are enough (their pixel data is not read)."""
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM, version=model_version)
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    for source, findings in images:
        frames = int(getattr(source, "NumberOfFrames", 1) or 1)
        for f in findings:
            x0, y0, x1, y1 = f.x, f.y, f.x + f.width, f.y + f.height
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]),
                source_image=hd.sr.SourceImageForRegion(
                    referenced_sop_class_uid=source.SOPClassUID,
                    referenced_sop_instance_uid=source.SOPInstanceUID,
                    referenced_frame_numbers=[f.frame_index + 1] if frames > 1 else None,
                ),
            )
            groups.append(_group(len(groups), region, algorithm, f.probability))
    sources = [source for source, _ in images]
    return _report(sources, groups, model_version, device_uid, device_name, manufacturer)


def _group(
    i: int,
    region: Any,
    algorithm: hd.sr.AlgorithmIdentification,
    probability: float,
    finding: Any = codes.SCT.PolypOfColon,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """Candidate ``i``'s TID 1410 group: its region, what the model looks for (a polyp of the
    colon on images, a pulmonary embolism in CT volumes), the model's probability that it is
    there."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"candidate {i + 1}"
        ),
        referenced_region=region,
        finding_type=finding,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=codes.DCM.Probability,
                value=float(probability),
                unit=UNITLESS,
                algorithm_id=algorithm,
            )
        ],
    )


def _report(
    evidence: list[Dataset],
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations],
    model_version: str,
    device_uid: str,
    device_name: str,
    manufacturer: str,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 SR of ``groups``, the device as observer, in the evidence's study."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=device_name, model_name=f"{ALGORITHM} {model_version}"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    sources = sorted(str(d.SOPInstanceUID) for d in evidence)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        # one SR series per source series and model version, so that a study's results show as
        # one "CAD results" series in a viewer, not one anonymous series per image; the same
        # result made twice (a gateway killed before it could forget the image) has the same
        # UID, and the PACS keeps it once
        series_instance_uid=generate_uid(
            entropy_srcs=["series", device_uid, model_version, str(evidence[0].SeriesInstanceUID)]
        ),
        series_number=SERIES_NUMBER,
        series_description=f"CAD results, {ALGORITHM} model v{model_version}"[:64],
        sop_instance_uid=generate_uid(entropy_srcs=["sr", device_uid, model_version, *sources]),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=device_name,
        software_versions=f"{device_name} {_package_version()}"[:64],
        contributing_equipment=[algorithm_equipment(model_version, manufacturer)],
        is_complete=True,
    )


def algorithm_equipment(model_version: str, manufacturer: str) -> hd.ContributingEquipment:
    """The algorithm as Contributing Equipment (IHE AI Results): its name, the model version as
    its software version, and a Device UID that changes with every published model (as MONAI
    Deploy's SR writer does), so a result names the exact model that made it."""
    equipment = hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=ALGORITHM,
        software_versions=f"model v{model_version}"[:64],
        contribution_description="Probabilities of a finding per candidate (AIFT model)",
    )
    equipment.DeviceUID = model_device_uid(model_version)
    return equipment


def model_device_uid(model_version: str) -> str:
    """The Device UID of one model version of the algorithm (the same everywhere)."""
    return str(generate_uid(entropy_srcs=["device", ALGORITHM, model_version]))


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cad-aift")
    except PackageNotFoundError:
        return "unknown"


def read_findings(ds: Dataset) -> list[tuple[str, int | None, np.ndarray, float, str]]:
    """What an SR of :func:`build_sr` says, read back with highdicom: per region group the
    referenced instance, frame number (1-based, None for a single-frame image), the region's
    points, the probability and the algorithm version."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    report: Any = sr.content  # a MeasurementReport once read
    out = []
    for group in report.get_planar_roi_measurement_groups():
        region = group.roi
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]  # the SELECTED FROM image
        frames = getattr(ref, "ReferencedFrameNumber", None)
        frame = (
            int(frames if not isinstance(frames, list | tuple) else frames[0]) if frames else None
        )
        (measurement,) = group.get_measurements(name=codes.DCM.Probability)
        out.append(
            (
                str(ref.ReferencedSOPInstanceUID),
                frame,
                np.asarray(region.value, dtype=float),
                float(measurement.value),
                _text_item(group, codes.DCM.AlgorithmVersion.value),
            )
        )
    return out


def _text_item(item: Any, code_value: str) -> str:
    """The text of the first content item below ``item`` (an item, or a sequence of them: a
    highdicom template) named by ``code_value`` ("" if none)."""
    children = getattr(item, "ContentSequence", []) if isinstance(item, Dataset) else list(item)
    for child in children:
        name = (
            child.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in child else ""
        )
        if name == code_value and "TextValue" in child:
            return str(child.TextValue)
        found = _text_item(child, code_value)
        if found:
            return found
    return ""


@dataclass(frozen=True)
class Region:
    """An image region an upstream SR names: the instance, the frame (0-based), the box."""

    sop_instance_uid: str
    frame_index: int
    x: float
    y: float
    width: float
    height: float


def regions_of(ds: Dataset) -> list[Region]:
    """Every image region (SCOORD) of any SR, as the bounding box of its points, with the image
    (and frame) it was selected from: the candidates an upstream CAD proposes."""
    found: list[Region] = []

    def walk(item: Any) -> None:
        for child in getattr(item, "ContentSequence", []):
            if getattr(child, "ValueType", "") == "SCOORD" and "GraphicData" in child:
                points = np.asarray(child.GraphicData, dtype=float).reshape(-1, 2)
                for ref_item in getattr(child, "ContentSequence", []):
                    for ref in getattr(ref_item, "ReferencedSOPSequence", []):
                        frames = getattr(ref, "ReferencedFrameNumber", None) or [1]
                        frames = frames if isinstance(frames, list | tuple) else [frames]
                        (x0, y0), (x1, y1) = points.min(0), points.max(0)
                        for frame in frames:
                            found.append(
                                Region(
                                    str(ref.ReferencedSOPInstanceUID),
                                    int(frame) - 1,
                                    float(x0),
                                    float(y0),
                                    float(x1 - x0),
                                    float(y1 - y0),
                                )
                            )
            walk(child)

    walk(ds)
    return found


# ------------------------------------------------------------------ points in a CT volume (PE)


@dataclass(frozen=True)
class Point3D:
    """A 3D point an SR names (SCOORD3D): patient mm in a frame of reference."""

    frame_of_reference_uid: str
    x: float
    y: float
    z: float


@dataclass(frozen=True)
class Finding3D:
    """One classified PE candidate: its point and P(finding)."""

    point: Point3D
    probability: float


def points_of(ds: Dataset) -> list[Point3D]:
    """Every SCOORD3D of any SR (a point, or the centroid of a shape), with its frame of
    reference: the PE candidates an upstream CAD proposes in a CT series."""
    found: list[Point3D] = []

    def walk(item: Any) -> None:
        for child in getattr(item, "ContentSequence", []):
            if getattr(child, "ValueType", "") == "SCOORD3D" and "GraphicData" in child:
                found.append(_point(child))
            walk(child)

    walk(ds)
    return found


def _point(item: Dataset) -> Point3D:
    pts = np.asarray(item.GraphicData, dtype=float).reshape(-1, 3)
    x, y, z = pts.mean(axis=0)
    return Point3D(
        str(getattr(item, "ReferencedFrameOfReferenceUID", "")), float(x), float(y), float(z)
    )


def build_volume_sr(
    series: Sequence[Dataset],
    findings: Sequence[Finding3D],
    model_version: str,
    device_uid: str,
    device_name: str = "cad-dicom-gateway",
    manufacturer: str = "cad-aift",
) -> hd.sr.Comprehensive3DSR:
    """The SR of PE ``findings`` in the CT ``series`` (its instances are the evidence): one TID
    1410 group per candidate, its point as an SCOORD3D POINT in the series' frame of reference,
    a finding and the model's probability."""
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM, version=model_version)
    groups = [
        _group(
            i,
            hd.sr.ImageRegion3D(
                graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=np.array([[f.point.x, f.point.y, f.point.z]]),
                frame_of_reference_uid=f.point.frame_of_reference_uid,
            ),
            algorithm,
            f.probability,
            codes.SCT.PulmonaryEmbolism,
        )
        for i, f in enumerate(findings)
    ]
    return _report(list(series), groups, model_version, device_uid, device_name, manufacturer)


def read_points(ds: Dataset) -> list[tuple[Point3D, float, str]]:
    """What an SR of :func:`build_volume_sr` says: per group its point, the probability and the
    algorithm version."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    report: Any = sr.content
    out = []
    for group in report.get_planar_roi_measurement_groups():
        point = _point(group.roi)  # the SCOORD3D the group is about
        (measurement,) = group.get_measurements(name=codes.DCM.Probability)
        out.append(
            (point, float(measurement.value), _text_item(group, codes.DCM.AlgorithmVersion.value))
        )
    return out
