"""The three vessel-aligned planes of one synthetic and one real-CT PE candidate, as a PNG.

    .venv/bin/python scripts/pe_figure.py [--out docs/pe-planes.png]

Synthetic: a contrast-filled vessel (300 HU, 3 mm radius) with a clot (40 HU), oblique to every
patient axis, in a series with a tilted orientation and 0.6 x 0.8 x 2.0 mm voxels, written as
DICOM and assembled like any upload; the axis is estimated. Real: pydicom's enhanced CT test
file (eCT_Supplemental.dcm, a head CT: 2 slices of 512 x 512, 10 mm apart), the point half-way
between its slices; it has no pulmonary vessel, so the axis is given as the slice normal (the
cross-section is then the axial plane, the longitudinal views cross both slices). Each plane 30 mm wide in the CTPA window (-250..450 HU),
beside the axial slice with the point marked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "pe-planes.png"))
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cad.aift.vessel import PE_WINDOW, VesselAxis, review_planes, vessel_axis
    from cad.series import assemble_series
    from support.ctpa import rotation, series_bytes, tube_volume
    from tests.ct import ENHANCED_CT, dicom_test_file

    aff = np.eye(4)
    aff[:3, :3] = rotation([1.0, 2.0, 3.0], 0.4) * np.array([0.6, 0.8, 2.0])
    aff[:3, 3] = (-20.0, 10.0, 5.0)
    hu, centre, direction = tube_volume((20, 50, 67), aff, [33, 24.5, 9.5], (0.3, -0.5, 0.81))
    synthetic = assemble_series(series_bytes(hu, aff))
    real = assemble_series([dicom_test_file(ENHANCED_CT).read_bytes()])
    k, j, i = real.shape
    real_point = real.to_patient([i / 2 - 60, j / 2 + 40, 0.5])
    cases = [
        ("synthetic vessel with a clot", synthetic, centre, direction),
        ("real CT (eCT_Supplemental, head)", real, real_point, "normal"),
    ]
    low, high = PE_WINDOW[0] - PE_WINDOW[1] / 2, PE_WINDOW[0] + PE_WINDOW[1] / 2
    fig, axes = plt.subplots(2, 4, figsize=(14, 7.2), dpi=100)
    for row, (name, volume, point, truth) in enumerate(cases):
        if isinstance(truth, str):  # given: the slice normal
            normal = volume.affine[:3, 2] / np.linalg.norm(volume.affine[:3, 2])
            axis = VesselAxis((float(normal[0]), float(normal[1]), float(normal[2])), 0.0, False)
        else:
            axis = vessel_axis(volume, point)
        planes = review_planes(volume, point, axis.direction, 30.0, 150)
        ijk = volume.to_voxel(point)
        axial = volume.hu[int(round(min(max(ijk[2], 0), volume.shape[0] - 1)))]
        ax = axes[row, 0]
        ax.imshow(axial, cmap="gray", vmin=low, vmax=high)
        ax.plot([ijk[0]], [ijk[1]], "r+", ms=14, mew=2)
        ax.set_title(f"{name}\nslice {int(round(ijk[2]))} of {volume.shape[0]}", fontsize=9)
        note = f"axis {np.round(axis.direction, 2).tolist()}" + (
            f" estimated at {axis.scale_mm} mm" if axis.estimated else " given (slice normal)"
        )
        if truth is not None and not isinstance(truth, str):
            err = np.degrees(np.arccos(min(1.0, abs(float(np.dot(axis.direction, truth))))))
            note += f" ({err:.1f} deg from the true axis)"
        for col, (plane, title) in enumerate(
            zip(
                planes,
                ("cross-section", "longitudinal (u, axis down)", "longitudinal (v, axis down)"),
                strict=True,
            ),
            start=1,
        ):
            ax = axes[row, col]
            ax.imshow(plane, cmap="gray", vmin=low, vmax=high, extent=(-15, 15, 15, -15))
            ax.plot([0], [0], "r+", ms=10)
            ax.set_title(title + ("\n" + note if col == 2 else ""), fontsize=9)
            ax.set_xlabel("mm")
    for ax in axes[:, 0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("PE candidates: the three vessel-aligned planes (30 mm, window -250..450 HU)")
    fig.tight_layout()
    fig.savefig(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
