"""Class raster → polygons, one band of rows at a time, equal to polygonizing the whole raster.

Each band of rows is polygonized on its own (:func:`rsseg.io.polygons.polygonize`, pixel
coordinates). A region crossing a band seam comes out as several pieces; :class:`SeamMerger`
keeps the pieces that touch the band's lower seam open and, with the next band, joins pieces
of the same class that share an edge of the seam (a shared segment, not a corner: regions are
4-connected, as GDAL's polygonize makes them). A group whose pieces no longer touch the open seam
is finished: the union of its pieces is exactly the polygon GDAL gives for the whole raster
(:func:`shapely.union_all` on integer pixel coordinates is exact; collinear vertices left on
the seams are dropped).

Memory: one band of rows, the open groups (regions still crossing the current seam) and the
finished polygons (the result).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely

from rsseg.io.polygons import polygonize

_SHARED_EDGE = "F***1****"  # interiors disjoint, boundaries meet along a line: a shared edge


@dataclass
class _Group:
    value: int
    pieces: list = field(default_factory=list)  # every piece of the region so far
    bottom: list = field(default_factory=list)  # its pieces on the current lower seam


class SeamMerger:
    """Merges per-band polygons of a ``height``-row raster across the band seams.

    Call :meth:`add` with the pieces of each band, top to bottom, and collect the finished
    ``(geometries, values)`` it returns; :meth:`finish` returns the rest.
    """

    def __init__(self, height: int) -> None:
        self.height = height
        self.next_row = 0
        self.dtype = np.dtype(np.uint8)
        self._open: list[_Group] = []

    def add(self, row: int, rows: int, geoms: np.ndarray,
            values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pieces (pixel coordinates) of scene rows ``row .. row + rows``; returns finished ones."""
        if row != self.next_row:
            raise ValueError(f"bands must come in order: got row {row}, expected {self.next_row}")
        self.next_row = row + rows
        self.dtype = values.dtype
        bounds = shapely.bounds(geoms) if len(geoms) else np.zeros((0, 4))
        top = (bounds[:, 1] == row) & (row > 0)
        bottom = (bounds[:, 3] == row + rows) & (row + rows < self.height)
        parent = list(range(len(self._open) + len(geoms)))  # union-find: groups, then pieces

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for piece, group in self._seam_links(geoms, values, top):
            parent[find(len(self._open) + piece)] = find(group)
        members: dict[int, list[int]] = {}
        for i in range(len(parent)):
            members.setdefault(find(i), []).append(i)
        done_geoms, done_values, still_open = [], [], []
        for ids in members.values():
            groups = [self._open[i] for i in ids if i < len(self._open)]
            pieces = [i - len(self._open) for i in ids if i >= len(self._open)]
            if not groups and len(pieces) == 1 and not bottom[pieces[0]]:
                done_geoms.append(geoms[pieces[0]])  # a region inside the band: GDAL's polygon
                done_values.append(values[pieces[0]])
                continue
            value = groups[0].value if groups else int(values[pieces[0]])
            merged = _Group(value, [g for grp in groups for g in grp.pieces]
                            + [geoms[p] for p in pieces],
                            [geoms[p] for p in pieces if bottom[p]])
            if merged.bottom:
                still_open.append(merged)
            else:
                done_geoms.append(_union(merged.pieces))
                done_values.append(value)
        self._open = still_open
        return _arrays(done_geoms, done_values, values.dtype)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The regions still open (none once every row was added)."""
        groups, self._open = self._open, []
        return _arrays([_union(g.pieces) for g in groups], [g.value for g in groups], self.dtype)

    def _seam_links(self, geoms: np.ndarray, values: np.ndarray,
                    top: np.ndarray) -> list[tuple[int, int]]:
        """``(piece, group)`` pairs of the same class sharing an edge of the upper seam."""
        if not self._open or not top.any():
            return []
        seam = [(g, k) for k, grp in enumerate(self._open) for g in grp.bottom]
        tree = shapely.STRtree([g for g, _ in seam])
        candidates = np.flatnonzero(top)
        pieces, others = tree.query(geoms[candidates], predicate="intersects")
        links = []
        for p, o in zip(candidates[pieces], others, strict=True):
            group = seam[o][1]
            if (self._open[group].value == values[p]
                    and shapely.relate_pattern(geoms[p], seam[o][0], _SHARED_EDGE)):
                links.append((int(p), group))
        return links


def _union(pieces: list) -> shapely.Geometry:
    if len(pieces) == 1:
        return pieces[0]
    return shapely.simplify(shapely.union_all(pieces), 0)  # drop collinear seam vertices


def _arrays(geoms: list, values: list, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty(len(geoms), dtype=object)
    out[:] = geoms
    return out, np.asarray(values, dtype=dtype)


class BandPolygonizer:
    """Class rows in (any band heights, top to bottom), polygons of the whole raster out.

    Polygons are in pixel coordinates; ``nodata`` pixels get none.
    """

    def __init__(self, height: int, nodata: int | None) -> None:
        self.merger = SeamMerger(height)
        self.nodata = nodata
        self._geoms: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def add(self, row: int, classes: np.ndarray) -> None:
        valid = classes != self.nodata if self.nodata is not None else np.ones_like(classes, bool)
        geoms, values = polygonize(classes, valid, row)
        self._keep(self.merger.add(row, classes.shape[0], geoms, values))

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Every polygon, as ``(geometries, class values)``."""
        self._keep(self.merger.finish())
        geoms = np.concatenate(self._geoms) if self._geoms else np.empty(0, dtype=object)
        values = np.concatenate(self._values) if self._values else np.empty(0, dtype=np.uint8)
        return geoms, values

    def _keep(self, found: tuple[np.ndarray, np.ndarray]) -> None:
        if len(found[0]):
            self._geoms.append(found[0])
            self._values.append(found[1])
