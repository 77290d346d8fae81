"""Grid comparison: two rasters must share size, transform and CRS to be compared pixel by pixel."""

from __future__ import annotations

from rsseg.errors import InputError
from rsseg.io.raster import SceneInfo


def check_same_grid(a: SceneInfo, b: SceneInfo, fix: str) -> None:
    """Raise :class:`InputError` naming the first difference (size, transform, CRS) and both values.

    Transforms are compared with a tolerance of 1e-6 pixel; a missing CRS only matches a missing
    CRS.
    """
    where = f"{a.path.name} and {b.path.name} are on different grids"
    if (a.width, a.height) != (b.width, b.height):
        raise InputError(f"{where}: size {a.width}x{a.height} vs {b.width}x{b.height} px", fix)
    if not a.transform.almost_equals(b.transform, precision=1e-6 * min(a.resolution)):
        raise InputError(f"{where}: transform {_affine(a.transform)} vs {_affine(b.transform)}",
                         fix)
    if a.crs != b.crs:
        raise InputError(f"{where}: CRS {_crs(a.crs)} vs {_crs(b.crs)}", fix)


def _affine(t: object) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in tuple(t)[:6]) + ")"  # type: ignore[arg-type]


def _crs(crs: object | None) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()  # type: ignore[attr-defined]
    return f"EPSG:{epsg}" if epsg else crs.to_string()  # type: ignore[attr-defined]
