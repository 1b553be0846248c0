"""CLyman's transform math against its own test vectors and the seed's example (§5.4)."""

from __future__ import annotations

import math

import pytest

from services.objects.transform import IDENTITY, build_transform, matrix


def test_seed_create_example() -> None:
    # seed 004: translation [0,0,1], quaternion [0,1,0,0], scale [1,1,2]
    got = build_transform(translation=[0, 0, 1], quaternion_rotation=[0, 1, 0, 0], scale=[1, 1, 2])
    assert got == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1]


def test_clyman_transform_test_vectors() -> None:
    m = matrix(build_transform(translation=[1, 1, 1], euler_rotation=[3, 0, 0]))
    # transform_test.cpp applies T first then R, so the translation is rotated too: R·T
    # there, T·R·S here. Its vectors are the rotated translation column.
    rotated = matrix(build_transform(euler_rotation=[3, 0, 0]))
    column = [sum(rotated[i][k] * [1, 1, 1, 1][k] for k in range(4)) for i in range(4)]
    assert column[1] == pytest.approx(-1.13, abs=0.01)
    assert column[2] == pytest.approx(-0.85, abs=0.01)
    assert m[0][3] == 1 and m[1][3] == 1 and m[2][3] == 1
    scaled = [2 * c for c in column]
    assert scaled[0] == pytest.approx(2) and scaled[1] == pytest.approx(-2.26, abs=0.01)
    assert scaled[2] == pytest.approx(-1.69, abs=0.01)


def test_translation_lands_in_the_last_column_row_major() -> None:
    got = build_transform(translation=[4, 5, 6])
    assert (got[3], got[7], got[11]) == (4, 5, 6)


@pytest.mark.parametrize("q", [[0, 1, 0, 0], [1, 0, 0, 0], [0.0005, 1, 1, 1], []])
def test_quaternions_clyman_skips_leave_identity(q: list[float]) -> None:
    assert build_transform(quaternion_rotation=q) == list(IDENTITY)


def test_quaternion_is_used_unnormalised() -> None:
    half = math.sqrt(0.5)
    got = matrix(build_transform(quaternion_rotation=[half, 0, 0, half]))  # 90° about z
    assert got[0][1] == pytest.approx(-1) and got[1][0] == pytest.approx(1)
    raw = matrix(build_transform(quaternion_rotation=[1, 1, 0, 0]))
    assert raw[1][1] == pytest.approx(1 - 2 * 1)  # 1-2(x²+z²) with x=1, not normalised


def test_euler_has_priority_over_quaternion_and_is_yxz() -> None:
    both = build_transform(euler_rotation=[0, math.pi / 2, 0], quaternion_rotation=[0.7, 0.7, 0, 0])
    only_euler = build_transform(euler_rotation=[0, math.pi / 2, 0])
    assert both == only_euler
    m = matrix(only_euler)  # Ry(90°): x → -z
    assert m[2][0] == pytest.approx(-1) and m[0][2] == pytest.approx(1)
    a, b, c = 0.3, 0.5, 0.7
    yxz = matrix(build_transform(euler_rotation=[a, b, c]))
    # Ry(b)·Rx(a)·Rz(c): element [1][2] = -sin(a)
    assert yxz[1][2] == pytest.approx(-math.sin(a))


def test_thresholds_and_short_or_long_arrays() -> None:
    assert build_transform(scale=[1.0005, 1, 1], translation=[0.0001, 0, 0]) == list(IDENTITY)
    assert build_transform(scale=[2]) == build_transform(scale=[2, 1, 1])
    assert build_transform(translation=[1, 2, 3, 99]) == build_transform(translation=[1, 2, 3])
    # A fifth quaternion element overwrites z (CLyman's parser quirk).
    half = math.sqrt(0.5)
    assert build_transform(quaternion_rotation=[half, 0, 0, 0.2, half]) == build_transform(
        quaternion_rotation=[half, 0, 0, half]
    )
