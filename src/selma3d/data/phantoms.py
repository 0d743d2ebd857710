"""Geometric phantoms of the SELMA3D structures, as primitives in physical units (µm).

A structure is generated once as a list of primitives (ellipsoids for cells, nuclei, plaques and
somata; tapered capsules for vessel and microglia-process segments) inside a world box, and then
rasterized region by region: :meth:`Scene.rasterize` fills any z-range of planes, so a volume of
10⁹ voxels never has to be in memory and a slab gives exactly the same voxels as the whole.

All generators take a ``numpy.random.Generator`` and are deterministic for it, a ``density``
(objects per volume, × the generator's default) and a ``size`` (radius scale of cells, nuclei,
plaques, somata and tubes, × the default; spacing between objects scales with it). Coordinates are
(z, y, x) in µm; voxel ``(k, j, i)`` has its centre at ``(k, j, i) * spacing``.
No library draws vascular trees or blob phantoms with exact ground truth at this scale, so the
geometry is written here by hand (cKDTree from scipy finds loop partners).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

#: How much brighter the centre of a primitive is than its rim (1 - FALLOFF * (d/r)^2).
FALLOFF = 0.3


@dataclass
class Scene:
    """Primitives of one structure in a world of ``shape_zyx`` voxels with ``spacing_zyx`` µm.

    Ellipsoids: ``centres`` (N, 3) µm, ``axes`` (N, 3) semi-axes µm, ``rotations`` (N, 3, 3)
    (columns = the ellipsoid's axes in world zyx), ``brightness`` (N,).
    Capsules: segment ``p0``–``p1`` (M, 3) µm with radius tapering ``r0`` → ``r1``, ``cap_brightness``.
    """

    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    axes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    rotations: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 3)))
    brightness: np.ndarray = field(default_factory=lambda: np.zeros(0))
    p0: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    p1: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    r0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    r1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cap_brightness: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: number of separate objects by construction (trees, cells): tests compare components to it
    n_objects: int = 0

    def __post_init__(self):
        self.spacing = np.asarray(self.spacing_zyx, dtype=np.float64)
        self._index()

    def _index(self) -> None:
        """z-extent (in planes) of every primitive, to pick the ones touching a slab fast."""
        sz = self.spacing[0]
        reach = self.axes.max(axis=1) if len(self.axes) else np.zeros(0)
        self._ell_z = (np.floor((self.centres[:, 0] - reach) / sz),
                       np.ceil((self.centres[:, 0] + reach) / sz))
        rmax = np.maximum(self.r0, self.r1)
        lo = np.minimum(self.p0[:, 0], self.p1[:, 0]) - rmax
        hi = np.maximum(self.p0[:, 0], self.p1[:, 0]) + rmax
        self._cap_z = (np.floor(lo / sz), np.ceil(hi / sz))

    @property
    def n_primitives(self) -> int:
        return len(self.centres) + len(self.p0)

    def add_ellipsoids(self, centres, axes, rotations, brightness) -> None:
        self.centres = np.concatenate([self.centres, np.asarray(centres, float).reshape(-1, 3)])
        self.axes = np.concatenate([self.axes, np.asarray(axes, float).reshape(-1, 3)])
        self.rotations = np.concatenate([self.rotations, np.asarray(rotations, float).reshape(-1, 3, 3)])
        self.brightness = np.concatenate([self.brightness, np.asarray(brightness, float).reshape(-1)])
        self._index()

    def add_capsules(self, p0, p1, r0, r1, brightness) -> None:
        self.p0 = np.concatenate([self.p0, np.asarray(p0, float).reshape(-1, 3)])
        self.p1 = np.concatenate([self.p1, np.asarray(p1, float).reshape(-1, 3)])
        self.r0 = np.concatenate([self.r0, np.asarray(r0, float).reshape(-1)])
        self.r1 = np.concatenate([self.r1, np.asarray(r1, float).reshape(-1)])
        self.cap_brightness = np.concatenate([self.cap_brightness, np.asarray(brightness, float).reshape(-1)])
        self._index()

    # ------------------------------------------------------------------ rasterization
    def rasterize(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray]:
        """Planes ``z0:z1`` (clipped to the world) as (density float32, label bool).

        Density is the per-voxel maximum of the primitives' brightness profiles, label their
        union; both are independent of how the volume is cut into slabs.
        """
        nz, ny, nx = self.shape_zyx
        z0, z1 = max(0, int(z0)), min(nz, int(z1))
        density = np.zeros((max(0, z1 - z0), ny, nx), dtype=np.float32)
        label = np.zeros(density.shape, dtype=bool)
        if z1 <= z0:
            return density, label
        for idx in np.flatnonzero((self._ell_z[1] >= z0) & (self._ell_z[0] < z1)):
            self._draw_ellipsoid(idx, z0, z1, density, label)
        for idx in np.flatnonzero((self._cap_z[1] >= z0) & (self._cap_z[0] < z1)):
            self._draw_capsule(idx, z0, z1, density, label)
        return density, label

    def _box(self, lo_um, hi_um, z0, z1):
        """Voxel index ranges covering [lo, hi] µm, clipped to planes z0:z1 and the world."""
        lo = np.floor(np.asarray(lo_um) / self.spacing).astype(int)
        hi = np.ceil(np.asarray(hi_um) / self.spacing).astype(int) + 1
        bounds_lo = np.array([z0, 0, 0])
        bounds_hi = np.array([z1, self.shape_zyx[1], self.shape_zyx[2]])
        lo = np.maximum(lo, bounds_lo)
        hi = np.minimum(hi, bounds_hi)
        if np.any(hi <= lo):
            return None
        return lo, hi

    def _grid(self, lo, hi):
        s = self.spacing
        return (np.arange(lo[0], hi[0])[:, None, None] * s[0],
                np.arange(lo[1], hi[1])[None, :, None] * s[1],
                np.arange(lo[2], hi[2])[None, None, :] * s[2])

    @staticmethod
    def _paint(density, label, lo, hi, z0, inside, value):
        sl = (slice(lo[0] - z0, hi[0] - z0), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        np.maximum(density[sl], np.where(inside, value, 0).astype(np.float32), out=density[sl])
        label[sl] |= inside

    def _draw_ellipsoid(self, idx, z0, z1, density, label):
        c, a, rot = self.centres[idx], self.axes[idx], self.rotations[idx]
        reach = a.max()
        box = self._box(c - reach, c + reach, z0, z1)
        if box is None:
            return
        lo, hi = box
        gz, gy, gx = self._grid(lo, hi)
        dz, dy, dx = gz - c[0], gy - c[1], gx - c[2]
        # coordinates in the ellipsoid's frame, normalized by its semi-axes
        q = 0.0
        for k in range(3):
            u = (dz * rot[0, k] + dy * rot[1, k] + dx * rot[2, k]) / a[k]
            q = q + u * u
        inside = q <= 1.0
        if inside.any():
            self._paint(density, label, lo, hi, z0, inside, self.brightness[idx] * (1.0 - FALLOFF * q))

    def _draw_capsule(self, idx, z0, z1, density, label):
        a, b = self.p0[idx], self.p1[idx]
        ra, rb = self.r0[idx], self.r1[idx]
        rmax = max(ra, rb)
        box = self._box(np.minimum(a, b) - rmax, np.maximum(a, b) + rmax, z0, z1)
        if box is None:
            return
        lo, hi = box
        gz, gy, gx = self._grid(lo, hi)
        d = b - a
        dd = float(d @ d) or 1e-12
        pz, py, px = gz - a[0], gy - a[1], gx - a[2]
        t = np.clip((pz * d[0] + py * d[1] + px * d[2]) / dd, 0.0, 1.0)
        ez, ey, ex = pz - t * d[0], py - t * d[1], px - t * d[2]
        dist2 = ez * ez + ey * ey + ex * ex
        radius = ra + t * (rb - ra)
        q = dist2 / (radius * radius)
        inside = q <= 1.0
        if inside.any():
            self._paint(density, label, lo, hi, z0, inside, self.cap_brightness[idx] * (1.0 - FALLOFF * q))


# ---------------------------------------------------------------------- helpers
def world_extent(shape_zyx, spacing_zyx) -> np.ndarray:
    """Size of the world box in µm (the last voxel centre is at (n-1)*spacing)."""
    return (np.asarray(shape_zyx) - 1) * np.asarray(spacing_zyx, dtype=float)


def hard_core_points(extent_um, density_per_um3: float, min_distance: float, rng) -> np.ndarray:
    """Random centres (a Poisson number with mean ``density × volume``) no two closer than
    ``min_distance``: uniform candidates thinned by random sequential adsorption (each
    candidate, in random order, is kept unless it is too close to an earlier kept one).
    Vectorized with a k-d tree, so millions of cells are cheap."""
    extent_um = np.asarray(extent_um, dtype=np.float64)
    target = int(rng.poisson(density_per_um3 * float(np.prod(extent_um))))
    if target == 0:
        return np.zeros((0, 3))
    candidates = rng.uniform(0.0, 1.0, (2 * target, 3)) * extent_um[None]
    alive = np.ones(len(candidates), dtype=bool)
    pairs = cKDTree(candidates).query_pairs(min_distance, output_type="ndarray")
    if len(pairs):
        pairs = np.sort(pairs, axis=1)
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        for i, j in pairs.tolist():  # pairs sorted by i: alive[i] is final when read
            if alive[i]:
                alive[j] = False
    return candidates[alive][:target]


def random_rotations(n: int, rng) -> np.ndarray:
    if n == 0:
        return np.zeros((0, 3, 3))
    return Rotation.random(n, random_state=rng).as_matrix()


def _unit(v):
    n = np.linalg.norm(v)
    return v / n if n > 0 else np.array([0.0, 0.0, 1.0])


def _perturb(direction, angle_sd, rng):
    """Direction turned by a random angle with standard deviation ``angle_sd`` (radians)."""
    return _unit(direction + rng.normal(0.0, angle_sd, 3))


def _branch_direction(direction, angle, rng):
    """A direction at ``angle`` radians from ``direction`` about a random perpendicular axis."""
    perp = np.cross(direction, rng.normal(size=3))
    perp = _unit(perp)
    return _unit(np.cos(angle) * direction + np.sin(angle) * perp)


# ---------------------------------------------------------------------- spot structures
def cfos_cells(shape_zyx, spacing_zyx, rng, density: float = 1.0, size: float = 1.0) -> Scene:
    """Sparse c-Fos+ nuclei: small ellipsoids (radius ~3–5 µm × ``size``) of varying
    brightness, never touching (a hard-core point process)."""
    scene = Scene(tuple(shape_zyx), tuple(spacing_zyx))
    extent = world_extent(shape_zyx, spacing_zyx)
    centres = hard_core_points(extent, 6.0e-5 * density, min_distance=12.0 * max(1.0, size), rng=rng)
    n = len(centres)
    radius = rng.uniform(3.2, 5.0, n) * size
    axes = radius[:, None] * rng.uniform(0.85, 1.15, (n, 3))
    brightness = rng.uniform(0.45, 1.0, n)
    scene.add_ellipsoids(centres, axes, random_rotations(n, rng), brightness)
    scene.n_objects = n
    return scene


def cell_nuclei(shape_zyx, spacing_zyx, rng, density: float = 1.0, size: float = 1.0) -> Scene:
    """Dense nuclei (human brain): ellipsoids of radius ~3.5–5 µm × ``size`` packed densely
    (centres only 7 µm × ``size`` apart at least), so many touch their neighbours."""
    scene = Scene(tuple(shape_zyx), tuple(spacing_zyx))
    extent = world_extent(shape_zyx, spacing_zyx)
    centres = hard_core_points(extent, 6.0e-4 * density / size ** 3, min_distance=7.0 * size, rng=rng)
    n = len(centres)
    axes = size * np.stack([rng.uniform(3.0, 4.2, n), rng.uniform(3.6, 5.0, n), rng.uniform(3.6, 5.0, n)], 1)
    brightness = rng.uniform(0.5, 1.0, n)
    scene.add_ellipsoids(centres, axes, random_rotations(n, rng), brightness)
    scene.n_objects = n
    return scene


def amyloid_plaques(shape_zyx, spacing_zyx, rng, density: float = 1.0, size: float = 1.0) -> Scene:
    """Aβ plaques: irregular blobs of many sizes (log-normal radius 3–22 µm × ``size``), each
    a bright dense core with a cluster of overlapping satellite ellipsoids around it."""
    scene = Scene(tuple(shape_zyx), tuple(spacing_zyx))
    extent = world_extent(shape_zyx, spacing_zyx)
    seeds = hard_core_points(extent, 6.0e-6 * density, min_distance=30.0 * max(1.0, size), rng=rng)
    centres, axes, brightness = [], [], []
    for c in seeds:
        r = size * float(np.clip(rng.lognormal(np.log(7.0), 0.45), 3.0, 22.0))
        b = rng.uniform(0.5, 1.0)
        centres.append(c)
        axes.append(r * rng.uniform(0.8, 1.2, 3))
        brightness.append(b)
        for _ in range(rng.integers(3, 10)):  # satellites make the outline irregular
            direction = _unit(rng.normal(size=3))
            rs = r * rng.uniform(0.3, 0.65)
            centres.append(c + direction * r * rng.uniform(0.6, 1.1))
            axes.append(rs * rng.uniform(0.7, 1.3, 3))
            brightness.append(b * rng.uniform(0.45, 0.8))  # halo dimmer than the core
    n = len(centres)
    if n:
        scene.add_ellipsoids(np.array(centres), np.array(axes), random_rotations(n, rng), np.array(brightness))
    scene.n_objects = len(seeds)
    return scene


# ---------------------------------------------------------------------- tree structures
@dataclass
class _TreeBuilder:
    """Grows branching tubes by a persistent random walk; radius shrinks along each branch
    and at every bifurcation (children ~0.7–0.85 of the parent, as in Murray's law)."""

    extent: np.ndarray
    rng: np.random.Generator
    r_min: float
    segment_length: tuple[float, float]
    branch_prob: float
    turn_sd: float
    taper: tuple[float, float] = (0.92, 0.99)
    max_segments: int = 10_000
    nodes: list = field(default_factory=list)  # node positions, node 0.. (for loops)
    parent: list = field(default_factory=list)
    segments: list = field(default_factory=list)  # (i0, i1, r0, r1)

    def inside(self, p, margin=0.0):
        return bool(np.all(p >= -margin) and np.all(p <= self.extent + margin))

    def grow(self, start, direction, radius, max_segments, parent: int | None = None):
        """Grow from ``start`` (a new root, or the existing node ``parent``)."""
        rng = self.rng
        if parent is None:
            self.nodes.append(np.asarray(start, float))
            self.parent.append(-1)
            parent = len(self.nodes) - 1
        stack = [(parent, _unit(np.asarray(direction, float)), float(radius))]
        count = 0
        while stack and count < max_segments:
            node, d, r = stack.pop()
            p = self.nodes[node]
            length = rng.uniform(*self.segment_length) * max(1.0, r / (2 * self.r_min)) ** 0.5
            d = _perturb(d, self.turn_sd, rng)
            q = p + d * length
            r_end = max(self.r_min, r * rng.uniform(*self.taper))
            self.nodes.append(q)
            self.parent.append(node)
            child = len(self.nodes) - 1
            self.segments.append((node, child, r, r_end))
            count += 1
            if not self.inside(q):
                continue  # the branch leaves the world: stop it (never re-enters)
            if rng.random() < self.branch_prob:
                split = rng.uniform(0.25, 0.5)
                ra = max(self.r_min, r_end * rng.uniform(0.7, 0.9))
                rb = max(self.r_min, r_end * rng.uniform(0.55, 0.8))
                stack.append((child, _branch_direction(d, split, rng), ra))
                stack.append((child, _branch_direction(d, -split - rng.uniform(0.2, 0.6), rng), rb))
            elif r_end > self.r_min or rng.random() < 0.93:
                stack.append((child, d, r_end))
        return count

    def random_inner_node(self, margin: float, tries: int = 20):
        """A random node at least ``margin`` inside the world, or None."""
        for _ in range(tries if self.nodes else 0):
            i = int(self.rng.integers(len(self.nodes)))
            if self.inside(self.nodes[i], margin=-margin):
                return i
        return None

    def add_loops(self, probability: float, max_distance: float):
        """Anastomoses: connect some tips to the nearest node of another branch."""
        if len(self.nodes) < 4:
            return
        pts = np.array(self.nodes)
        has_child = np.zeros(len(pts), bool)
        for p in self.parent:
            if p >= 0:
                has_child[p] = True
        tips = [i for i in range(len(pts)) if not has_child[i] and self.inside(pts[i])]
        tree = cKDTree(pts)
        for tip in tips:
            if self.rng.random() >= probability:
                continue
            near = [j for j in tree.query_ball_point(pts[tip], max_distance)
                    if j != tip and not self._related(tip, j, 6) and self.inside(pts[j])]
            if near:
                j = min(near, key=lambda k: np.linalg.norm(pts[k] - pts[tip]))
                self.segments.append((tip, j, self.r_min, self.r_min))

    def _related(self, a, b, depth):
        """True when ``b`` is within ``depth`` generations of ``a``'s ancestry (or vice versa)."""
        for x, y in ((a, b), (b, a)):
            node = x
            for _ in range(depth):
                node = self.parent[node]
                if node < 0:
                    break
                if node == y:
                    return True
        return False

    def capsules(self):
        if not self.segments:
            return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0)
        pts = np.array(self.nodes)
        seg = np.array(self.segments, dtype=float).reshape(-1, 4)
        i0, i1 = seg[:, 0].astype(int), seg[:, 1].astype(int)
        return pts[i0], pts[i1], seg[:, 2], seg[:, 3]


def _min_radius(spacing_zyx) -> float:
    """Smallest tube radius whose voxelization stays 26-connected: every point of the axis
    then has a voxel centre within the radius (half the voxel diagonal)."""
    return 0.5 * float(np.linalg.norm(spacing_zyx)) * 1.05


def _entry_point(extent, rng):
    """A point on a random face of the world and the inward normal there."""
    axis = rng.integers(0, 3)
    side = rng.integers(0, 2)
    p = rng.uniform(0.15, 0.85, 3) * extent
    p[axis] = 0.0 if side == 0 else extent[axis]
    d = np.zeros(3)
    d[axis] = 1.0 if side == 0 else -1.0
    return p, d


def vessel_tree(shape_zyx, spacing_zyx, rng, density: float = 1.0, size: float = 1.0) -> Scene:
    """Vascular trees entering from the faces of the world — some thick trunks (radius
    5–9 µm × ``size``), most small arterioles (2.5–4 µm × ``size``) — branching down to
    capillaries (2 µm × ``size``, never below the connectivity floor), with a few anastomoses
    (loops). Trees are added until the vessel volume reaches ~2.5 % of the world (× ``density``)."""
    scene = Scene(tuple(shape_zyx), tuple(spacing_zyx))
    extent = world_extent(shape_zyx, spacing_zyx)
    r_min = max(2.0 * size, _min_radius(spacing_zyx))
    target = 0.025 * density * float(np.prod(extent + np.asarray(spacing_zyx)))
    builder = _TreeBuilder(extent, rng, r_min=r_min, segment_length=(10.0, 22.0),
                           branch_prob=0.22, turn_sd=0.25)
    volume, trees = 0.0, 0
    while volume < target and len(builder.segments) < 2_000_000:
        budget = int(np.clip((target - volume) / (np.pi * r_min ** 2 * 15.0), 20, 600))
        node = builder.random_inner_node(margin=r_min)
        first = len(builder.segments)
        if node is not None and rng.random() < 0.75:
            # a capillary sprouting from the network grown so far keeps it one piece
            builder.grow(builder.nodes[node], _unit(rng.normal(size=3)),
                         r_min * rng.uniform(1.0, 1.6), budget, parent=node)
        else:
            # a new vessel entering the world; most brain vessels are capillaries, few are trunks
            start, direction = _entry_point(extent, rng)
            root_radius = size * (rng.uniform(5.0, 9.0) if rng.random() < 0.3 else rng.uniform(2.5, 4.0))
            root_radius = max(root_radius, r_min)
            builder.grow(start, direction, root_radius, budget)
            trees += 1
        for i0, i1, ra, rb in builder.segments[first:]:
            length = float(np.linalg.norm(builder.nodes[i1] - builder.nodes[i0]))
            volume += np.pi * ((ra + rb) / 2) ** 2 * length
    # anastomoses within and between trees make one vascular network (with loops)
    builder.add_loops(probability=0.5, max_distance=30.0)
    p0, p1, r0, r1 = builder.capsules()
    # larger vessels (arteries) carry more stain than capillaries; small variation per segment
    brightness = np.clip(0.55 + 0.05 * (r0 + r1) / 2, 0.6, 1.0) * rng.uniform(0.85, 1.0, len(r0))
    scene.add_capsules(p0, p1, r0, r1, brightness)
    scene.n_objects = trees
    return scene


def microglia_cells(shape_zyx, spacing_zyx, rng, density: float = 1.0, size: float = 1.0) -> Scene:
    """Microglia: a small soma (radius ~4–5.5 µm × ``size``) with 4–7 thin processes (radius
    1.2–1.5 × the connectivity floor × ``size``, never below it) that branch 1–3 times and reach
    15–40 µm; cells are spread so their arbours rarely touch."""
    scene = Scene(tuple(shape_zyx), tuple(spacing_zyx))
    extent = world_extent(shape_zyx, spacing_zyx)
    r_min = _min_radius(spacing_zyx)
    somata = hard_core_points(extent, 2.0e-6 * density, min_distance=55.0, rng=rng)
    if len(somata) == 0:  # a patch smaller than one territory still shows one cell
        somata = (extent * rng.uniform(0.35, 0.65, 3))[None]
    p0s, p1s, r0s, r1s = [], [], [], []
    for soma in somata:
        r_soma = rng.uniform(4.0, 5.5) * size
        scene.add_ellipsoids(soma[None], (r_soma * rng.uniform(0.8, 1.2, 3))[None],
                             random_rotations(1, rng), [rng.uniform(0.8, 1.0)])
        builder = _TreeBuilder(extent, rng, r_min=r_min, segment_length=(4.0, 8.0),
                               branch_prob=0.3, turn_sd=0.35, taper=(0.85, 0.95))
        for _ in range(rng.integers(4, 8)):
            direction = _unit(rng.normal(size=3))
            start = soma + direction * r_soma * 0.6  # inside the soma, so the cell is one piece
            if builder.inside(start):  # a process may only leave the world, never enter it
                builder.grow(start, direction, max(r_min, size * rng.uniform(1.2, 1.5) * r_min),
                             int(rng.integers(5, 11)))
        p0, p1, r0, r1 = builder.capsules()
        p0s.append(p0), p1s.append(p1), r0s.append(r0), r1s.append(r1)
    if p0s:
        p0, p1 = np.concatenate(p0s), np.concatenate(p1s)
        scene.add_capsules(p0, p1, np.concatenate(r0s), np.concatenate(r1s),
                           rng.uniform(0.55, 0.8, len(p0)))
    scene.n_objects = len(somata)
    return scene


GENERATORS = {
    "vessel": vessel_tree,
    "cfos": cfos_cells,
    "nucleus": cell_nuclei,
    "plaque": amyloid_plaques,
    "microglia": microglia_cells,
}
