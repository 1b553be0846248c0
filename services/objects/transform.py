"""CLyman's object transform, exactly (api-spec §5.4).

M = T · R · S built from identity, each step applied only past CLyman's thresholds, and
serialised row-major (`transform[4*i + j] = M[i][j]`, translation at indices 3, 7, 11).
Euler angles (YXZ: Ry(y)·Rx(x)·Rz(z), radians) take priority over the quaternion `[w,x,y,z]`,
which is used un-normalised and only when |w| and some |x|,|y|,|z| exceed 0.001 — so the
seed's `[0,1,0,0]` leaves the object un-rotated, as CLyman does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Matrix = list[list[float]]

THRESHOLD = 0.001
SCALE_LOW, SCALE_HIGH = 0.999, 1.001
IDENTITY: tuple[float, ...] = (1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1)


def _identity() -> Matrix:
    return [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]


def _mul(a: Matrix, b: Matrix) -> Matrix:
    return [[sum(a[i][k] * b[k][j] for k in range(4)) for j in range(4)] for i in range(4)]


def _components(values: Sequence[float] | None, count: int, default: float) -> list[float]:
    """CLyman's parse: missing components default, extra ones are ignored."""
    out = [default] * count
    for index, value in enumerate((values or [])[:count]):
        out[index] = float(value)
    return out


def _rotation_euler(x: float, y: float, z: float) -> Matrix:
    cx, sx = math.cos(x), math.sin(x)
    cy, sy = math.cos(y), math.sin(y)
    cz, sz = math.cos(z), math.sin(z)
    ry: Matrix = [[cy, 0, sy, 0], [0, 1, 0, 0], [-sy, 0, cy, 0], [0, 0, 0, 1]]
    rx: Matrix = [[1, 0, 0, 0], [0, cx, -sx, 0], [0, sx, cx, 0], [0, 0, 0, 1]]
    rz: Matrix = [[cz, -sz, 0, 0], [sz, cz, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    return _mul(_mul(ry, rx), rz)


def _rotation_quaternion(w: float, x: float, y: float, z: float) -> Matrix:
    return [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y), 0.0],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x), 0.0],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y), 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]


def build_transform(
    *,
    translation: Sequence[float] | None = None,
    euler_rotation: Sequence[float] | None = None,
    quaternion_rotation: Sequence[float] | None = None,
    scale: Sequence[float] | None = None,
) -> list[float]:
    """The 16 row-major numbers CLyman stores for these inputs."""
    m = _identity()
    if scale:
        sx, sy, sz = _components(scale, 3, 1.0)
        if any(not SCALE_LOW <= s <= SCALE_HIGH for s in (sx, sy, sz)):
            m = _mul([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], m)
    euler = _components(euler_rotation, 3, 0.0) if euler_rotation else None
    quaternion = _quaternion(quaternion_rotation) if quaternion_rotation else None
    if euler is not None and any(abs(c) > THRESHOLD for c in euler):
        m = _mul(_rotation_euler(*euler), m)
    elif quaternion is not None:
        w, x, y, z = quaternion
        if abs(w) > THRESHOLD and any(abs(c) > THRESHOLD for c in (x, y, z)):
            m = _mul(_rotation_quaternion(w, x, y, z), m)
    if translation:
        tx, ty, tz = _components(translation, 3, 0.0)
        if any(abs(c) > THRESHOLD for c in (tx, ty, tz)):
            m = _mul([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], m)
    return [m[i][j] for i in range(4) for j in range(4)]


def _quaternion(values: Sequence[float]) -> tuple[float, float, float, float]:
    # CLyman's parser writes element 4 and beyond into z: the last one wins.
    w, x, y, z = _components(values, 4, 0.0)
    if len(values) > 4:
        z = float(values[-1])
    return w, x, y, z


def matrix(transform: Sequence[float]) -> Matrix:
    """The 4x4 matrix of a row-major 16-number transform."""
    if len(transform) != 16:
        raise ValueError("a transform has 16 numbers")
    return [[float(transform[4 * i + j]) for j in range(4)] for i in range(4)]
