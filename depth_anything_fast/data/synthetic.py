"""Built-in synthetic RGB-D data: procedurally ray-cast scenes with exact per-pixel depth.

Each scene is a room (floor, walls, ceiling) or an outdoor ground plane under a sky, with boxes
(rotated about the vertical) and spheres standing on the floor, seen by a perspective camera with
a random height, pitch, roll, yaw and field of view. Surfaces carry textures (checker tiles,
planks, value noise, 3-D checkers) whose perspective foreshortening is a depth cue, Lambertian
shading from a directional light with cast shadows, and distance haze outdoors. Depth is the
camera z-depth in metres; sky and anything beyond `MAX_DEPTH` are invalid (0), and labelled depth
maps get a few random sensor-like holes. Everything is vectorised numpy over the pixels and
deterministic from the seed (~5-10 ms for 160x120).

`generate_dataset` writes the formats users bring: PNG/JPEG images and 16-bit PNG depth in
millimetres with a `spec.json` (kind "depth", scale 0.001, invalid [0]).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depth_anything_fast.formats.layout import LABELLED_IMAGE_DIR, TARGET_DIRS
from depth_anything_fast.formats.spec import SPEC_FILE, LabelledSpec

MAX_DEPTH = 40.0  # metres; farther surfaces are stored as invalid (0)
DEPTH_SPEC = LabelledSpec(kind="depth", scale=0.001, invalid=(0,), max_depth=MAX_DEPTH)
_SPLITS = {"labelled": 0, "unlabelled": 1, "val": 2}


@dataclass(frozen=True)
class DatasetLayout:
    """Folders written by `generate_dataset`."""

    root: Path
    labelled: Path
    unlabelled: Path
    val: Path


# ---------------------------------------------------------------------------------------------
# Textures


class _Noise:
    """Smooth value noise: bilinear interpolation of a random periodic lattice, two octaves."""

    def __init__(self, rng: np.random.Generator, cells: int = 32) -> None:
        self.grid = rng.random((cells, cells)).astype(np.float32)
        self.cells = cells

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return 0.65 * self._octave(u, v) + 0.35 * self._octave(2.7 * u + 13.1, 2.7 * v + 7.3)

    def _octave(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        n = self.cells
        fu, fv = np.floor(u), np.floor(v)
        au, av = (u - fu).astype(np.float32), (v - fv).astype(np.float32)
        i0 = fu.astype(np.int64) % n
        j0 = fv.astype(np.int64) % n
        i1, j1 = (i0 + 1) % n, (j0 + 1) % n
        g = self.grid
        top = g[i0, j0] * (1 - av) + g[i0, j1] * av
        bottom = g[i1, j0] * (1 - av) + g[i1, j1] * av
        return top * (1 - au) + bottom * au


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hue = rng.random() * 2 * np.pi
    sat = rng.uniform(0.2, 0.8)
    val = rng.uniform(0.35, 0.95)
    # Cheap hue wheel: three phase-shifted cosines.
    base = 0.5 + 0.5 * np.cos(hue + np.array([0.0, 2.094, 4.189]))
    return (val * (1 - sat + sat * base)).astype(np.float32)


@dataclass
class _Material:
    kind: str  # "checker2", "planks", "noise", "checker3"
    colour_a: np.ndarray
    colour_b: np.ndarray
    period: float
    noise: _Noise

    @classmethod
    def random(cls, rng: np.random.Generator, kinds: tuple[str, ...]) -> _Material:
        return cls(
            kind=str(rng.choice(kinds)),
            colour_a=_random_colour(rng),
            colour_b=_random_colour(rng),
            period=float(rng.uniform(0.25, 1.2)),
            noise=_Noise(rng),
        )

    def albedo(self, p: np.ndarray, uv: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Colour (M, 3) float32 at world points p (M, 3) with surface coordinates uv."""
        u, v = uv
        grain = self.noise(u / self.period * 3.0, v / self.period * 3.0)[:, None]
        if self.kind == "checker2":
            parity = (np.floor(u / self.period) + np.floor(v / self.period)) % 2
            mix = parity[:, None].astype(np.float32)
            tone = 0.85 + 0.3 * grain
        elif self.kind == "planks":
            row = np.floor(v / (0.4 * self.period))
            offset = (row * 0.37) % 1.0
            plank = np.floor(u / (2.0 * self.period) + offset)
            mix = ((row + plank) % 3 == 0)[:, None].astype(np.float32)
            streak = self.noise(u * 0.5, v * 12.0)[:, None]
            tone = 0.7 + 0.6 * streak
            seam = (np.abs(v / (0.4 * self.period) - np.round(v / (0.4 * self.period))) < 0.04)
            tone = np.where(seam[:, None], 0.45, tone)
        elif self.kind == "checker3":
            q = np.floor(p / self.period).sum(axis=1) % 2
            mix = q[:, None].astype(np.float32)
            tone = 0.85 + 0.3 * grain
        else:
            mix = grain
            tone = 0.75 + 0.5 * self.noise(u / self.period * 9.0, v / self.period * 9.0)[:, None]
        colour = self.colour_a * (1 - mix) + self.colour_b * mix
        return np.clip(colour * tone, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Geometry


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float64)


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float64)


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)


@dataclass
class _Box:
    centre: np.ndarray
    half: np.ndarray
    yaw: float
    material: _Material

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Entry distance (N,) (inf on a miss) of rays o + t d; o is (3,) or (N, 3)."""
        r = _rot_y(-self.yaw).astype(np.float32)
        lo = (o - self.centre).astype(np.float32) @ r.T
        ld = d @ r.T
        t_in = np.full(d.shape[0], -np.inf, np.float32)
        t_out = np.full(d.shape[0], np.inf, np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):
                inv = 1.0 / ld[:, a]
                t1 = (-self.half[a] - lo[..., a]) * inv
                t2 = (self.half[a] - lo[..., a]) * inv
                t_in = np.maximum(t_in, np.minimum(t1, t2))
                t_out = np.minimum(t_out, np.maximum(t1, t2))
        return np.where((t_out >= t_in) & (t_in > 1e-4), t_in, np.inf).astype(np.float32)

    def normal(self, p: np.ndarray) -> np.ndarray:
        """Outward normal (M, 3) at surface points p (M, 3): the face the point lies on."""
        r = _rot_y(-self.yaw)
        lp = (p - self.centre) @ r.T
        axis = np.abs(lp / self.half).argmax(axis=1)
        n = np.zeros_like(lp)
        n[np.arange(len(lp)), axis] = np.sign(lp[np.arange(len(lp)), axis])
        return n @ r

    def uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lp = (p - self.centre) @ _rot_y(-self.yaw).T
        horizontal = np.abs(n[:, 1]) > 0.5
        u = np.where(horizontal, lp[:, 0], lp[:, 0] + lp[:, 2])
        v = np.where(horizontal, lp[:, 2], lp[:, 1])
        return u, v


@dataclass
class _Sphere:
    centre: np.ndarray
    radius: float
    material: _Material

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Entry distance (N,) (inf on a miss) of rays o + t d; o is (3,) or (N, 3)."""
        oc = (o - self.centre).astype(np.float32)
        a = (d * d).sum(axis=1)
        if oc.ndim == 1:
            b = d @ oc
            c = float(oc @ oc) - self.radius**2
        else:
            b = (d * oc).sum(axis=1)
            c = (oc * oc).sum(axis=1) - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (t > 1e-4), t, np.inf).astype(np.float32)

    def normal(self, p: np.ndarray) -> np.ndarray:
        return (p - self.centre) / self.radius

    def uv(self, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = np.arctan2(n[:, 0], n[:, 2])
        return theta * self.radius * 2.0, np.arcsin(np.clip(n[:, 1], -1, 1)) * self.radius * 2.0


def _room_exit(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Exit distance (N,) and inward normal (N, 3) of rays leaving the box [lo, hi] from inside."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(d > 0, hi, lo)
        t = (bound - o) / d
    t = np.where(np.isfinite(t) & (t > 0), t, np.inf)
    axis = t.argmin(axis=1)
    idx = np.arange(len(d))
    normal = np.zeros_like(d)
    normal[idx, axis] = -np.sign(d[idx, axis])
    return t[idx, axis], normal, axis


# ---------------------------------------------------------------------------------------------
# Rendering


def render_scene(
    seed: int | np.random.SeedSequence, size: tuple[int, int] = (120, 160)
) -> tuple[np.ndarray, np.ndarray]:
    """Render one random scene.

    Returns `rgb` (H, W, 3) uint8 and `depth` (H, W) float32 camera z-depth in metres, 0 where
    invalid (sky, beyond `MAX_DEPTH`). The same seed gives the same scene.
    """
    h, w = size
    if h < 2 or w < 2:
        raise ValueError(f"size must be at least 2x2, got {size}")
    rng = np.random.default_rng(seed)
    indoor = rng.random() < 0.5

    fov = np.deg2rad(rng.uniform(50, 80))  # horizontal
    f = (w / 2) / np.tan(fov / 2)
    cam_h = rng.uniform(0.6, 2.0) if indoor else rng.uniform(0.8, 2.5)
    yaw = rng.uniform(-np.pi, np.pi)
    pitch = np.deg2rad(rng.uniform(-28, -2))
    roll = np.deg2rad(rng.uniform(-4, 4))
    rot = _rot_y(yaw) @ _rot_x(-pitch) @ _rot_z(roll)
    # Camera frame: x right, y up, z forward; image rows go down. Rays have camera z = 1, so the
    # ray parameter t of a hit is its z-depth.
    jj, ii = np.meshgrid(
        np.arange(w, dtype=np.float32) + 0.5 - w / 2, np.arange(h, dtype=np.float32) + 0.5 - h / 2
    )
    cam_dirs = np.stack([jj / f, -ii / f, np.ones_like(jj)], axis=-1).reshape(-1, 3)
    d = (cam_dirs @ rot.T).astype(np.float32)
    cam = np.array([0.0, cam_h, 0.0], np.float32)
    forward = rot @ np.array([0.0, 0.0, 1.0])
    heading = np.arctan2(forward[0], forward[2])

    objects: list[_Box | _Sphere] = []
    if indoor:
        room_lo = np.array([-rng.uniform(2, 6), 0.0, -rng.uniform(2, 8)])
        room_hi = np.array([rng.uniform(2, 6), rng.uniform(2.4, 4.0), rng.uniform(2, 8)])
        room_hi[1] = max(room_hi[1], cam_h + 0.4)
    for k in range(int(rng.integers(2, 9))):
        dist = rng.uniform(1.5, 14.0)
        angle = heading + rng.uniform(-0.65, 0.65) * fov
        pos = np.array([np.sin(angle) * dist, 0.0, np.cos(angle) * dist])
        material = _Material.random(rng, ("checker3", "noise", "noise", "planks"))
        if indoor:
            pos = np.clip(pos, room_lo + 0.6, room_hi - 0.6)
        if k % 2 == 0:
            half = rng.uniform([0.15, 0.15, 0.15], [1.0, 1.3, 1.0])
            if indoor:
                half[1] = min(half[1], (room_hi[1] - 0.1) / 2)
            pos[1] = half[1]
            objects.append(_Box(pos, half, float(rng.uniform(0, np.pi)), material))
        else:
            radius = float(rng.uniform(0.15, 0.9))
            pos[1] = radius + (rng.uniform(0.0, 1.0) if rng.random() < 0.2 else 0.0)
            objects.append(_Sphere(pos, radius, material))

    n_rays = d.shape[0]
    t_best = np.full(n_rays, np.inf, np.float32)
    normal = np.zeros((n_rays, 3), np.float32)
    obj_id = np.full(n_rays, -1, np.int64)  # -1 sky; -2.. environment surfaces

    env_materials: list[_Material] = []
    if indoor:
        t_room, n_room, axis = _room_exit(cam, d, room_lo, room_hi)
        # Environment ids: -2 floor, -3 ceiling, -4 walls.
        env = np.where(axis == 1, np.where(d[:, 1] < 0, -2, -3), -4)
        t_best, normal, obj_id = t_room, n_room, env
        env_materials = [
            _Material.random(rng, ("checker2", "planks")),
            _Material.random(rng, ("noise",)),
            _Material.random(rng, ("noise", "planks", "checker2")),
        ]
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = np.where(d[:, 1] < 0, -cam_h / d[:, 1], np.inf)
        ground = np.isfinite(t_ground)
        t_best = np.where(ground, t_ground, np.inf)
        normal[ground] = (0.0, 1.0, 0.0)
        obj_id[ground] = -2
        env_materials = [_Material.random(rng, ("checker2", "noise", "planks"))]

    for k, obj in enumerate(objects):
        t = obj.intersect(cam, d)
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        obj_id[closer] = k

    hit = np.isfinite(t_best)
    p = cam + np.where(hit, t_best, 0.0)[:, None] * d
    for k, obj in enumerate(objects):
        sel = obj_id == k
        if sel.any():
            normal[sel] = obj.normal(p[sel])

    light = np.array([rng.uniform(-1, 1), rng.uniform(0.6, 2.0), rng.uniform(-1, 1)])
    light = (light / np.linalg.norm(light)).astype(np.float32)
    albedo = np.zeros((n_rays, 3), np.float32)
    for k, obj in enumerate(objects):
        sel = obj_id == k
        if sel.any():
            albedo[sel] = obj.material.albedo(p[sel], obj.uv(p[sel], normal[sel]))
    for e, material in enumerate(env_materials):
        sel = obj_id == -2 - e
        if e == 2:  # walls: u along the wall, v up
            sel = obj_id == -4
        if sel.any():
            ps = p[sel]
            if e == 2:
                u = np.where(np.abs(normal[sel, 0]) > 0.5, ps[:, 2], ps[:, 0])
                albedo[sel] = material.albedo(ps, (u, ps[:, 1]))
            else:
                albedo[sel] = material.albedo(ps, (ps[:, 0], ps[:, 2]))

    # Cast shadows from the objects onto everything.
    lit = np.maximum((normal * light).sum(axis=1), 0.0)
    idx = np.flatnonzero(hit & (lit > 0))
    if idx.size:
        origins = p[idx] + normal[idx] * 1e-3
        dirs = np.broadcast_to(light, origins.shape)
        shadow = np.zeros(idx.size, bool)
        for obj in objects:
            shadow |= np.isfinite(obj.intersect(origins, dirs))
        lit[idx[shadow]] *= 0.15
    ambient = rng.uniform(0.25, 0.45)
    shade = np.float32(ambient) + np.float32(1 - ambient) * lit
    if indoor:
        shade = shade * (1.0 / (1.0 + 0.015 * t_best**2)) ** 0.5  # light falloff away from camera
    colour = albedo * shade[:, None].astype(np.float32)

    # Sky: vertical gradient; outdoors distance haze towards the horizon colour.
    horizon = np.array([0.80, 0.85, 0.92], np.float32) * rng.uniform(0.8, 1.05)
    zenith = np.array([0.25, 0.45, 0.85], np.float32) * rng.uniform(0.7, 1.1)
    elevation = np.clip(d[:, 1] / np.linalg.norm(d, axis=1), 0, 1)[:, None].astype(np.float32)
    sky = horizon * (1 - elevation) + zenith * elevation
    if not indoor:
        haze = 1.0 - np.exp(-np.where(hit, t_best, 0.0) / np.float32(rng.uniform(25, 80)))
        colour = colour * (1 - haze[:, None]) + horizon * haze[:, None]
    colour = np.where(hit[:, None], colour, sky)

    colour = colour.reshape(h, w, 3) + 0.012 * rng.standard_normal((h, w, 3), np.float32)
    rgb = (np.clip(colour, 0, 1) * 255 + 0.5).astype(np.uint8)
    depth = np.where(hit & (t_best <= MAX_DEPTH), t_best, 0.0).reshape(h, w).astype(np.float32)
    return rgb, depth


def add_holes(depth: np.ndarray, rng: np.random.Generator, max_holes: int = 3) -> np.ndarray:
    """Copy of `depth` (H, W) with 0..max_holes random elliptical dropouts set to 0."""
    h, w = depth.shape
    out = depth.copy()
    yy, xx = np.ogrid[:h, :w]
    for _ in range(int(rng.integers(0, max_holes + 1))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.01, 0.06) * h, rng.uniform(0.01, 0.06) * w
        out[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 0.0
    return out


def depth_to_png16(depth: np.ndarray) -> np.ndarray:
    """Metres (H, W) float -> uint16 millimetres, 0 stays invalid, clipped to 65.535 m."""
    return np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)


def _write_split(
    folder: Path, count: int, size: tuple[int, int], seed: int, split: str, ext: str,
    with_depth: bool,
) -> None:
    from PIL import Image

    image_dir, depth_dir = folder / LABELLED_IMAGE_DIR, folder / TARGET_DIRS[0]
    image_dir.mkdir(parents=True, exist_ok=True)
    if with_depth:
        depth_dir.mkdir(parents=True, exist_ok=True)
        DEPTH_SPEC.to_json(folder / SPEC_FILE)
    for i in range(count):
        seq = np.random.SeedSequence([seed, _SPLITS[split], i])
        rgb, depth = render_scene(seq, size)
        name = f"{i:05d}"
        if ext == ".jpg":
            Image.fromarray(rgb).save(image_dir / f"{name}.jpg", quality=92)
        else:
            Image.fromarray(rgb).save(image_dir / f"{name}.png", compress_level=1)
        if with_depth:
            holes_rng = np.random.default_rng(seq.spawn(1)[0])
            mm = depth_to_png16(add_holes(depth, holes_rng))
            Image.fromarray(mm).save(depth_dir / f"{name}.png", compress_level=1)


def generate_dataset(
    root: str | os.PathLike,
    *,
    n_labelled: int,
    n_unlabelled: int,
    n_val: int,
    size: tuple[int, int] = (120, 160),
    seed: int = 0,
) -> DatasetLayout:
    """Write a synthetic RGB-D dataset under `root` and return its layout.

    `root/labelled/{images/NNNNN.png, depth/NNNNN.png, spec.json}`,
    `root/unlabelled/images/NNNNN.jpg`, `root/val/{images, depth, spec.json}`; depth is 16-bit
    PNG in millimetres with 0 = invalid. `size` is (H, W). Deterministic in (seed, split, index).
    """
    for name, n in (("n_labelled", n_labelled), ("n_unlabelled", n_unlabelled), ("n_val", n_val)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    root = Path(root)
    layout = DatasetLayout(root, root / "labelled", root / "unlabelled", root / "val")
    _write_split(layout.labelled, n_labelled, size, seed, "labelled", ".png", True)
    _write_split(layout.unlabelled, n_unlabelled, size, seed, "unlabelled", ".jpg", False)
    _write_split(layout.val, n_val, size, seed, "val", ".png", True)
    return layout
