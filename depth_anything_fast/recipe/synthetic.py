"""Built-in synthetic RGB-D world: procedurally ray-cast scenes of several kinds, exact depth.

Four kinds of scene (`KINDS`), each with its own geometry, depth range, textures and light:

- "room": floor, walls and ceiling of a room with boxes and spheres standing on the floor;
- "closeup": a camera 0.25-0.7 m above a table top looking steeply down at small objects in
  front of a nearby wall (depths of 0.2-3 m);
- "street": a road between rows of buildings (facades with windows), cars, sky and haze;
- "field": open terrain under a sky with trees and rocks, low sun, long views.

The camera has a random height, pitch, roll, yaw and field of view. Surfaces carry textures
(checker tiles, planks, value noise, 3-D checkers, facades, asphalt, grass) whose perspective
foreshortening is a depth cue, Lambertian shading from a tinted directional light with cast
shadows, indoor light falloff and outdoor distance haze. Every pixel also has a semantic class
(`SEMANTIC_CLASSES`, from what the ray hit, never from its depth). Depth is the camera z-depth
in metres; sky and anything beyond `MAX_DEPTH` are invalid (0), and labelled depth maps get a
few random sensor-like holes. Everything is vectorised numpy over the pixels and deterministic
from the seed (~5-15 ms for 160x120).

`generate_dataset` writes the formats users bring: PNG/JPEG images and 16-bit PNG depth in
millimetres with a `spec.json` (kind "depth", scale 0.001, invalid [0]); the labelled split
also has sky masks (`depth/<name>_sky.png`, read through `LabelledSpec.sky_mask`), and every
split has its scene kinds in `<root>/kinds.json` and semantic maps in `<root>/semantic/`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depth_anything_fast.formats.layout import LABELLED_IMAGE_DIR, TARGET_DIRS
from depth_anything_fast.formats.spec import SPEC_FILE, LabelledSpec

MAX_DEPTH = 40.0  # metres; farther surfaces are stored as invalid (0)
DEPTH_SPEC = LabelledSpec(kind="depth", scale=0.001, invalid=(0,), max_depth=MAX_DEPTH)
SKY_SUFFIX = "_sky.png"
# The labelled split's spec: sky masks next to the depth maps (sky = disparity 0, farthest).
LABELLED_SPEC = LabelledSpec(kind="depth", scale=0.001, invalid=(0,), max_depth=MAX_DEPTH,
                             sky_mask=SKY_SUFFIX)
KINDS = ("room", "closeup", "street", "field")
SEMANTIC_CLASSES = ("sky", "floor", "wall", "ceiling", "road", "building", "terrain", "box",
                    "sphere", "tree")
_CLASS = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}
KINDS_FILE = "kinds.json"
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
    kind: str  # "checker2", "planks", "noise", "checker3", "facade", "asphalt", "grass"
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

    @classmethod
    def fixed(cls, rng: np.random.Generator, kind: str, colour_a: np.ndarray,
              colour_b: np.ndarray, period: float = 1.0) -> _Material:
        """A material of `kind` with given base colours (jittered a little in brightness)."""
        gain = np.float32(rng.uniform(0.8, 1.15))
        return cls(kind, np.clip(np.asarray(colour_a, np.float32) * gain, 0, 1),
                   np.clip(np.asarray(colour_b, np.float32) * gain, 0, 1), period, _Noise(rng))

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
        elif self.kind == "facade":  # wall with a grid of windows
            fu, fv = (u / (1.6 * self.period)) % 1.0, (v / (3.0 * self.period)) % 1.0
            mix = ((np.abs(fu - 0.5) < 0.22) & (np.abs(fv - 0.55) < 0.25))[:, None]
            mix = mix.astype(np.float32)
            tone = 0.8 + 0.4 * grain
        elif self.kind == "asphalt":  # dark road with a dashed centre line (u across, v along)
            mix = ((np.abs(u) < 0.08) & ((v / 3.0) % 1.0 < 0.5))[:, None].astype(np.float32)
            tone = 0.7 + 0.6 * self.noise(u * 4.0, v * 4.0)[:, None]
        elif self.kind == "grass":
            mix = self.noise(u * 0.3, v * 0.3)[:, None]
            tone = 0.6 + 0.8 * self.noise(u * 6.0, v * 6.0)[:, None]
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
    semantic: int = _CLASS["box"]

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
    semantic: int = _CLASS["sphere"]

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


@dataclass(frozen=True)
class Scene:
    """One rendered scene: `rgb` (H, W, 3) uint8, `depth` (H, W) float32 camera z-depth in
    metres (0 = invalid: sky, beyond `MAX_DEPTH`), `semantic` (H, W) uint8 index into
    `SEMANTIC_CLASSES`, `kind` one of `KINDS`."""

    rgb: np.ndarray
    depth: np.ndarray
    semantic: np.ndarray
    kind: str


@dataclass
class _World:
    """What a kind's builder sets up for the shared ray caster."""

    fov: float  # horizontal, radians
    cam_h: float
    yaw: float
    pitch: float  # radians, negative = looking down
    roll: float
    objects: list[_Box | _Sphere]
    # Indoor: the room box (lo, hi) and materials of floor, ceiling, walls. Outdoor: None and
    # the ground material, drawn in the frame rotated by `ground_heading` (road along v).
    room: tuple[np.ndarray, np.ndarray] | None
    env_materials: list[_Material]
    ground_class: int = _CLASS["floor"]
    ground_heading: float = 0.0
    light: np.ndarray | None = None  # direction towards the light, unnormalised
    light_colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.35
    haze_range: float | None = None  # metres; None indoors
    falloff: float = 0.0  # indoor light falloff 1 / (1 + falloff * z^2)
    horizon: tuple[float, float, float] = (0.80, 0.85, 0.92)
    zenith: tuple[float, float, float] = (0.25, 0.45, 0.85)


def _heading_point(heading: float, dist: float, spread: float, fov: float,
                   rng: np.random.Generator) -> np.ndarray:
    angle = heading + rng.uniform(-spread, spread) * fov
    return np.array([np.sin(angle) * dist, 0.0, np.cos(angle) * dist])


def _light_tint(rng: np.random.Generator, warmth: float) -> tuple[float, float, float]:
    """Light colour: warmth > 0 reddish (low sun, tungsten), < 0 bluish."""
    w = warmth * rng.uniform(0.5, 1.0)
    return (1.0 + 0.25 * w, 1.0 + 0.05 * w, 1.0 - 0.3 * w)


def _room(rng: np.random.Generator) -> _World:
    fov = np.deg2rad(rng.uniform(50, 80))
    cam_h = rng.uniform(0.6, 2.0)
    yaw = rng.uniform(-np.pi, np.pi)
    lo = np.array([-rng.uniform(2, 6), 0.0, -rng.uniform(2, 8)])
    hi = np.array([rng.uniform(2, 6), rng.uniform(2.4, 4.0), rng.uniform(2, 8)])
    hi[1] = max(hi[1], cam_h + 0.4)
    objects: list[_Box | _Sphere] = []
    for k in range(int(rng.integers(2, 9))):
        pos = np.clip(_heading_point(yaw, rng.uniform(1.5, 14.0), 0.65, fov, rng), lo + 0.6,
                      hi - 0.6)
        material = _Material.random(rng, ("checker3", "noise", "noise", "planks"))
        if k % 2 == 0:
            half = rng.uniform([0.15, 0.15, 0.15], [1.0, 1.3, 1.0])
            half[1] = min(half[1], (hi[1] - 0.1) / 2)
            pos[1] = half[1]
            objects.append(_Box(pos, half, float(rng.uniform(0, np.pi)), material))
        else:
            radius = float(rng.uniform(0.15, 0.9))
            pos[1] = radius + (rng.uniform(0.0, 1.0) if rng.random() < 0.2 else 0.0)
            objects.append(_Sphere(pos, radius, material))
    return _World(
        fov=fov, cam_h=cam_h, yaw=yaw, pitch=np.deg2rad(rng.uniform(-28, -2)),
        roll=np.deg2rad(rng.uniform(-4, 4)), objects=objects, room=(lo, hi),
        env_materials=[_Material.random(rng, ("checker2", "planks")),
                       _Material.random(rng, ("noise",)),
                       _Material.random(rng, ("noise", "planks", "checker2"))],
        light=np.array([rng.uniform(-1, 1), rng.uniform(0.6, 2.0), rng.uniform(-1, 1)]),
        light_colour=_light_tint(rng, rng.uniform(-0.5, 1.0)), ambient=rng.uniform(0.25, 0.45),
        falloff=0.015)


def _closeup(rng: np.random.Generator) -> _World:
    fov = np.deg2rad(rng.uniform(45, 70))
    cam_h = rng.uniform(0.25, 0.7)
    yaw = rng.uniform(-np.pi, np.pi)
    # A small room whose floor is the table top: the back wall is 0.8-2.5 m away.
    lo = np.array([-rng.uniform(0.8, 2.0), 0.0, -rng.uniform(0.6, 2.0)])
    hi = np.array([rng.uniform(0.8, 2.0), rng.uniform(1.0, 2.0), rng.uniform(0.8, 2.5)])
    objects: list[_Box | _Sphere] = []
    for _ in range(int(rng.integers(3, 10))):
        pos = np.clip(_heading_point(yaw, rng.uniform(0.25, 1.5), 0.5, fov, rng), lo + 0.15,
                      hi - 0.15)
        material = _Material.random(rng, ("checker3", "noise", "planks", "checker2"))
        material.period *= 0.15  # small objects, fine texture
        if rng.random() < 0.5:
            half = rng.uniform([0.03, 0.03, 0.03], [0.15, 0.2, 0.15])
            pos[1] = half[1]
            objects.append(_Box(pos, half, float(rng.uniform(0, np.pi)), material))
        else:
            radius = float(rng.uniform(0.03, 0.15))
            pos[1] = radius
            objects.append(_Sphere(pos, radius, material))
    table = _Material.random(rng, ("planks", "checker2", "noise"))
    table.period *= 0.3
    return _World(
        fov=fov, cam_h=cam_h, yaw=yaw, pitch=np.deg2rad(rng.uniform(-55, -22)),
        roll=np.deg2rad(rng.uniform(-6, 6)), objects=objects, room=(lo, hi),
        env_materials=[table, _Material.random(rng, ("noise",)),
                       _Material.random(rng, ("noise", "checker2"))],
        light=np.array([rng.uniform(-1, 1), rng.uniform(0.8, 2.0), rng.uniform(-1, 1)]),
        light_colour=_light_tint(rng, rng.uniform(-0.5, 1.0)), ambient=rng.uniform(0.2, 0.45),
        falloff=0.3)


def _street(rng: np.random.Generator) -> _World:
    fov = np.deg2rad(rng.uniform(55, 85))
    yaw = rng.uniform(-np.pi, np.pi)
    road = yaw + rng.uniform(-0.25, 0.25)  # direction of the road
    along = np.array([np.sin(road), 0.0, np.cos(road)])
    lateral = np.array([np.cos(road), 0.0, -np.sin(road)])
    half_width = rng.uniform(4.0, 8.0)
    objects: list[_Box | _Sphere] = []
    for side in (-1.0, 1.0):
        s = rng.uniform(-8.0, 0.0)
        while s < 60.0:
            length, depth, height = rng.uniform(6, 14), rng.uniform(6, 12), rng.uniform(5, 18)
            offset = half_width + rng.uniform(0.5, 2.5) + depth / 2
            centre = along * (s + length / 2) + lateral * side * offset
            centre[1] = height / 2
            facade = _Material.fixed(rng, "facade", _random_colour(rng),
                                     rng.uniform(0.05, 0.25, 3), rng.uniform(0.8, 1.3))
            objects.append(_Box(centre, np.array([depth / 2, height / 2, length / 2]), road,
                                facade, _CLASS["building"]))
            s += length + rng.uniform(0.0, 4.0)
    for _ in range(int(rng.integers(1, 6))):  # cars
        centre = along * rng.uniform(4, 40) + lateral * rng.uniform(-half_width + 1,
                                                                    half_width - 1)
        half = np.array([rng.uniform(0.8, 1.0), rng.uniform(0.6, 0.9), rng.uniform(1.8, 2.4)])
        centre[1] = half[1] + 0.15
        objects.append(_Box(centre, half, road + rng.uniform(-0.1, 0.1),
                            _Material.random(rng, ("noise", "checker3"))))
    for _ in range(int(rng.integers(0, 3))):  # round street furniture
        radius = float(rng.uniform(0.3, 0.8))
        centre = along * rng.uniform(3, 30) + lateral * rng.choice([-1, 1]) * (half_width + 0.5)
        centre[1] = radius
        objects.append(_Sphere(centre, radius, _Material.random(rng, ("noise",))))
    grey = np.full(3, rng.uniform(0.22, 0.38), np.float32)
    asphalt = _Material.fixed(rng, "asphalt", grey, (0.9, 0.9, 0.85))
    return _World(
        fov=fov, cam_h=rng.uniform(1.2, 2.2), yaw=yaw, pitch=np.deg2rad(rng.uniform(-14, -2)),
        roll=np.deg2rad(rng.uniform(-3, 3)), objects=objects, room=None,
        env_materials=[asphalt], ground_class=_CLASS["road"], ground_heading=road,
        light=np.array([rng.uniform(-1, 1), rng.uniform(0.5, 2.0), rng.uniform(-1, 1)]),
        light_colour=_light_tint(rng, rng.uniform(-0.3, 0.6)), ambient=rng.uniform(0.3, 0.5),
        haze_range=rng.uniform(40, 120))


def _field(rng: np.random.Generator) -> _World:
    fov = np.deg2rad(rng.uniform(50, 80))
    yaw = rng.uniform(-np.pi, np.pi)
    objects: list[_Box | _Sphere] = []
    for _ in range(int(rng.integers(4, 13))):
        pos = _heading_point(yaw, rng.uniform(3.0, 35.0), 0.6, fov, rng)
        if rng.random() < 0.6:  # a tree: trunk and canopy
            trunk_h = rng.uniform(1.0, 3.0)
            bark = _Material.fixed(rng, "noise", (0.35, 0.25, 0.15), (0.2, 0.14, 0.08), 0.3)
            trunk = pos.copy()
            trunk[1] = trunk_h / 2
            width = rng.uniform(0.1, 0.3)
            objects.append(_Box(trunk, np.array([width, trunk_h / 2, width]),
                                float(rng.uniform(0, np.pi)), bark, _CLASS["tree"]))
            radius = float(rng.uniform(0.8, 2.5))
            leaves = _Material.fixed(rng, "noise", (0.15, 0.4, 0.1), (0.3, 0.5, 0.15), 0.4)
            crown = pos.copy()
            crown[1] = trunk_h + radius * 0.8
            objects.append(_Sphere(crown, radius, leaves, _CLASS["tree"]))
        else:  # a half-buried rock
            radius = float(rng.uniform(0.3, 1.5))
            pos[1] = radius * rng.uniform(0.1, 0.6)
            grey = np.full(3, rng.uniform(0.35, 0.6))
            objects.append(_Sphere(pos, radius, _Material.fixed(rng, "noise", grey, grey * 0.7,
                                                                 0.5)))
    grass = _Material.fixed(rng, "grass", (0.25, 0.45, 0.12), (0.45, 0.4, 0.2),
                            rng.uniform(0.5, 1.5))
    sunset = rng.random() < 0.5
    return _World(
        fov=fov, cam_h=rng.uniform(1.0, 3.0), yaw=yaw, pitch=np.deg2rad(rng.uniform(-16, -2)),
        roll=np.deg2rad(rng.uniform(-4, 4)), objects=objects, room=None, env_materials=[grass],
        ground_class=_CLASS["terrain"],
        light=np.array([rng.uniform(-1, 1), rng.uniform(0.15, 0.5) if sunset
                        else rng.uniform(0.6, 2.0), rng.uniform(-1, 1)]),
        light_colour=_light_tint(rng, 1.0 if sunset else -0.2), ambient=rng.uniform(0.25, 0.45),
        haze_range=rng.uniform(25, 80),
        horizon=(0.95, 0.75, 0.6) if sunset else (0.80, 0.85, 0.92),
        zenith=(0.35, 0.4, 0.7) if sunset else (0.25, 0.45, 0.85))


_BUILDERS = {"room": _room, "closeup": _closeup, "street": _street, "field": _field}


def render(
    seed: int | np.random.SeedSequence | list[int], size: tuple[int, int] = (120, 160),
    kind: str | None = None,
) -> Scene:
    """Render one random scene of `kind` (one of `KINDS`; None draws it from the seed).

    The same (seed, size, kind) gives the same scene. Raises ValueError for an unknown kind or
    a size under 2x2.
    """
    h, w = size
    if h < 2 or w < 2:
        raise ValueError(f"size must be at least 2x2, got {size}")
    rng = np.random.default_rng(seed)
    if kind is None:
        kind = str(rng.choice(KINDS))
    if kind not in _BUILDERS:
        raise ValueError(f"unknown scene kind {kind!r}; known: {', '.join(KINDS)}")
    world = _BUILDERS[kind](rng)

    f = (w / 2) / np.tan(world.fov / 2)
    rot = _rot_y(world.yaw) @ _rot_x(-world.pitch) @ _rot_z(world.roll)
    # Camera frame: x right, y up, z forward; image rows go down. Rays have camera z = 1, so the
    # ray parameter t of a hit is its z-depth.
    jj, ii = np.meshgrid(
        np.arange(w, dtype=np.float32) + 0.5 - w / 2, np.arange(h, dtype=np.float32) + 0.5 - h / 2
    )
    cam_dirs = np.stack([jj / f, -ii / f, np.ones_like(jj)], axis=-1).reshape(-1, 3)
    d = (cam_dirs @ rot.T).astype(np.float32)
    cam = np.array([0.0, world.cam_h, 0.0], np.float32)
    objects = world.objects

    n_rays = d.shape[0]
    normal = np.zeros((n_rays, 3), np.float32)
    obj_id = np.full(n_rays, -1, np.int64)  # -1 sky; -2 floor/ground, -3 ceiling, -4 walls
    if world.room is not None:
        t_best, normal, axis = _room_exit(cam, d, *world.room)
        obj_id = np.where(axis == 1, np.where(d[:, 1] < 0, -2, -3), -4)
        env_classes = {-2: world.ground_class, -3: _CLASS["ceiling"], -4: _CLASS["wall"]}
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = np.where(d[:, 1] < 0, -world.cam_h / d[:, 1], np.inf)
        ground = np.isfinite(t_ground)
        t_best = np.where(ground, t_ground, np.inf).astype(np.float32)
        normal[ground] = (0.0, 1.0, 0.0)
        obj_id[ground] = -2
        env_classes = {-2: world.ground_class}

    for k, obj in enumerate(objects):
        t = obj.intersect(cam, d)
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        obj_id[closer] = k

    hit = np.isfinite(t_best)
    p = cam + np.where(hit, t_best, 0.0)[:, None] * d
    albedo = np.zeros((n_rays, 3), np.float32)
    for k, obj in enumerate(objects):
        sel = obj_id == k
        if sel.any():
            normal[sel] = obj.normal(p[sel])
            albedo[sel] = obj.material.albedo(p[sel], obj.uv(p[sel], normal[sel]))
    for e, material in enumerate(world.env_materials):
        sel = obj_id == -2 - e
        if not sel.any():
            continue
        ps = p[sel]
        if e == 2:  # walls: u along the wall, v up
            u = np.where(np.abs(normal[sel, 0]) > 0.5, ps[:, 2], ps[:, 0])
            albedo[sel] = material.albedo(ps, (u, ps[:, 1]))
        else:  # floor / ground / ceiling, in the ground frame (road: u across, v along)
            c, s = np.cos(world.ground_heading), np.sin(world.ground_heading)
            u, v = ps[:, 0] * c - ps[:, 2] * s, ps[:, 0] * s + ps[:, 2] * c
            albedo[sel] = material.albedo(ps, (u, v))

    # Cast shadows from the objects onto everything.
    light = world.light / np.linalg.norm(world.light)
    light = light.astype(np.float32)
    lit = np.maximum((normal * light).sum(axis=1), 0.0)
    idx = np.flatnonzero(hit & (lit > 0))
    if idx.size:
        origins = p[idx] + normal[idx] * 1e-3
        dirs = np.broadcast_to(light, origins.shape)
        shadow = np.zeros(idx.size, bool)
        for obj in objects:
            shadow |= np.isfinite(obj.intersect(origins, dirs))
        lit[idx[shadow]] *= 0.15
    ambient = np.float32(world.ambient)
    shade = (ambient + (1 - ambient) * lit)[:, None] * np.asarray(world.light_colour, np.float32)
    if world.falloff:  # light falloff away from the camera
        shade = shade * ((1.0 / (1.0 + world.falloff * t_best**2)) ** 0.5)[:, None]
    colour = albedo * shade.astype(np.float32)

    # Sky: vertical gradient; outdoors distance haze towards the horizon colour.
    horizon = np.asarray(world.horizon, np.float32) * rng.uniform(0.8, 1.05)
    zenith = np.asarray(world.zenith, np.float32) * rng.uniform(0.7, 1.1)
    elevation = np.clip(d[:, 1] / np.linalg.norm(d, axis=1), 0, 1)[:, None].astype(np.float32)
    sky = horizon * (1 - elevation) + zenith * elevation
    if world.haze_range is not None:
        haze = 1.0 - np.exp(-np.where(hit, t_best, 0.0) / np.float32(world.haze_range))
        colour = colour * (1 - haze[:, None]) + horizon * haze[:, None]
    colour = np.where(hit[:, None], colour, sky)

    colour = colour.reshape(h, w, 3) + 0.012 * rng.standard_normal((h, w, 3), np.float32)
    rgb = (np.clip(colour, 0, 1) * 255 + 0.5).astype(np.uint8)
    depth = np.where(hit & (t_best <= MAX_DEPTH), t_best, 0.0).reshape(h, w).astype(np.float32)
    classes = np.array([o.semantic for o in objects] + [0], np.int64)
    semantic = classes[np.where(obj_id >= 0, obj_id, len(objects))]  # sky (-1) -> class 0
    for env_id, cls in env_classes.items():
        semantic[obj_id == env_id] = cls
    return Scene(rgb, depth, semantic.reshape(h, w).astype(np.uint8), kind)


def render_scene(
    seed: int | np.random.SeedSequence | list[int], size: tuple[int, int] = (120, 160),
    kind: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`render`'s (rgb (H, W, 3) uint8, depth (H, W) float32 metres, 0 where invalid)."""
    scene = render(seed, size, kind)
    return scene.rgb, scene.depth


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


def _scene_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of image `index` of `split` in a dataset generated with `seed`."""
    return np.random.SeedSequence([seed, _SPLITS[split], index])


def split_scene(seed: int, split: str, index: int, kind: str,
                size: tuple[int, int] = (120, 160)) -> Scene:
    """Image `index` (of `kind`) of `split` as `generate_dataset(seed=seed, size=size)` rendered
    it, with its exact depth and classes: the depth of the unlabelled split, which the dataset
    does not store, for measuring how good pseudo-labels are (never for training)."""
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(_SPLITS)}")
    return render(_scene_seed(seed, split, index), size, kind)


_SPLIT_FILES = {"labelled": (".png", True), "unlabelled": (".jpg", False), "val": (".png", True)}


def _make_split_folders(root: Path, split: str) -> None:
    """root/<split>'s folders (and, where it has depth, its spec.json)."""
    folder = root / split
    (folder / LABELLED_IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / "semantic" / split).mkdir(parents=True, exist_ok=True)
    if _SPLIT_FILES[split][1]:
        (folder / TARGET_DIRS[0]).mkdir(parents=True, exist_ok=True)
        # Labelled images carry sky masks (sky = farthest); validation scores depth only.
        spec = LABELLED_SPEC if split == "labelled" else DEPTH_SPEC
        spec.to_json(folder / SPEC_FILE)


def _write_scene(job: tuple[Path, str, int, str, tuple[int, int], int]) -> tuple[str, str]:
    """Render image `index` of `split` with `kind` and write its files (`generate_dataset`'s
    layout); returns (name, kind)."""
    from PIL import Image

    root, split, index, kind, size, seed = job
    ext, with_depth = _SPLIT_FILES[split]
    folder = root / split
    image_dir, depth_dir = folder / LABELLED_IMAGE_DIR, folder / TARGET_DIRS[0]
    seq = _scene_seed(seed, split, index)
    scene = render(seq, size, kind)
    name = f"{index:05d}"
    if ext == ".jpg":
        Image.fromarray(scene.rgb).save(image_dir / f"{name}.jpg", quality=92)
    else:
        Image.fromarray(scene.rgb).save(image_dir / f"{name}.png", compress_level=1)
    Image.fromarray(scene.semantic).save(root / "semantic" / split / f"{name}.png",
                                         compress_level=1)
    if with_depth:
        holes_rng = np.random.default_rng(seq.spawn(1)[0])
        mm = depth_to_png16(add_holes(scene.depth, holes_rng))
        Image.fromarray(mm).save(depth_dir / f"{name}.png", compress_level=1)
        if split == "labelled":
            sky = (scene.semantic == _CLASS["sky"]).astype(np.uint8) * 255
            Image.fromarray(sky).save(depth_dir / f"{name}{SKY_SUFFIX}", compress_level=1)
    return name, scene.kind


def _check_kinds(name: str, kinds: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ValueError(f"{name}: expected a non-empty list of scene kinds from {KINDS}, "
                         f"got {list(kinds)}")
    return kinds


def generate_dataset(
    root: str | os.PathLike,
    *,
    n_labelled: int,
    n_unlabelled: int,
    n_val: int,
    size: tuple[int, int] = (120, 160),
    seed: int = 0,
    labelled_kinds: tuple[str, ...] | list[str] = KINDS,
    unlabelled_kinds: tuple[str, ...] | list[str] = KINDS,
    val_kinds: tuple[str, ...] | list[str] = KINDS,
    workers: int = 1,
) -> DatasetLayout:
    """Write a synthetic RGB-D dataset under `root` and return its layout.

    `root/labelled/{images/NNNNN.png, depth/NNNNN.png, depth/NNNNN_sky.png, spec.json}`,
    `root/unlabelled/images/NNNNN.jpg`, `root/val/{images, depth, spec.json}`; depth is 16-bit
    PNG in millimetres with 0 = invalid, sky masks are 8-bit (255 = sky). Each split cycles
    through its kinds (image i has kind kinds[i % len(kinds)]); `root/kinds.json` maps split ->
    image name -> kind and `root/semantic/<split>/NNNNN.png` holds the 8-bit class maps
    (indices into `SEMANTIC_CLASSES`). `size` is (H, W). Deterministic in (seed, split, index,
    kind), whatever the number of `workers` (processes rendering side by side).
    """
    for name, n in (("n_labelled", n_labelled), ("n_unlabelled", n_unlabelled), ("n_val", n_val)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    kinds = {"labelled": _check_kinds("labelled_kinds", labelled_kinds),
             "unlabelled": _check_kinds("unlabelled_kinds", unlabelled_kinds),
             "val": _check_kinds("val_kinds", val_kinds)}
    root = Path(root)
    layout = DatasetLayout(root, root / "labelled", root / "unlabelled", root / "val")
    counts = {"labelled": n_labelled, "unlabelled": n_unlabelled, "val": n_val}
    jobs = []
    for split, count in counts.items():
        _make_split_folders(root, split)
        split_kinds = kinds[split]
        jobs += [(root, split, i, split_kinds[i % len(split_kinds)], size, seed)
                 for i in range(count)]
    if workers <= 1 or len(jobs) < 2 * workers:
        written = list(map(_write_scene, jobs))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the caller may hold torch's thread pools, which a fork would copy
        with ProcessPoolExecutor(workers,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            written = list(pool.map(_write_scene, jobs,
                                    chunksize=max(len(jobs) // (8 * workers), 1)))
    index: dict[str, dict[str, str]] = {split: {} for split in counts}
    for job, (name, kind) in zip(jobs, written, strict=True):
        index[job[1]][name] = kind
    (root / KINDS_FILE).write_text(json.dumps(index, indent=1) + "\n")
    return layout


def read_kinds(root: str | os.PathLike, split: str) -> dict[str, str]:
    """Image name (without extension) -> scene kind of one split written by `generate_dataset`."""
    path = Path(root) / KINDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (not a generate_dataset folder?)")
    index = json.loads(path.read_text())
    if split not in index:
        raise KeyError(f"{path} has no split {split!r} (has {sorted(index)})")
    return index[split]
