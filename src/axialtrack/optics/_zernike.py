"""Zernike polynomials on the unit disk, Noll-indexed and RMS-normalized."""

from __future__ import annotations

from math import factorial, sqrt

import numpy as np

NOLL_NAMES: dict[int, str] = {
    1: "piston",
    2: "tilt x",
    3: "tilt y",
    4: "defocus",
    5: "oblique astigmatism",
    6: "vertical astigmatism",
    7: "vertical coma",
    8: "horizontal coma",
    9: "vertical trefoil",
    10: "oblique trefoil",
    11: "primary spherical",
}


def noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order ``n`` and signed azimuthal frequency ``m`` of Noll index ``j``.

    ``m > 0`` is a cosine term, ``m < 0`` a sine term (Noll 1976: even ``j`` are
    cosines, odd ``j`` sines).

    Examples
    --------
    >>> [noll_to_nm(j) for j in (1, 2, 3, 4, 5, 6, 11)]
    [(0, 0), (1, 1), (1, -1), (2, 0), (2, -2), (2, 2), (4, 0)]
    """
    if j < 1:
        raise ValueError(f"Noll indices start at 1; got {j}")
    n = 0
    j1 = j - 1
    while j1 > n:
        n += 1
        j1 -= n
    m_abs = (n % 2) + 2 * ((j1 + ((n + 1) % 2)) // 2)
    m = m_abs if j % 2 == 0 else -m_abs
    return n, m


def radial_polynomial(n: int, m: int, rho: np.ndarray) -> np.ndarray:
    """Zernike radial polynomial ``R_n^|m|(rho)``."""
    m = abs(m)
    if (n - m) % 2:
        return np.zeros_like(rho)
    out = np.zeros_like(rho, dtype=float)
    for s in range((n - m) // 2 + 1):
        c = (-1) ** s * factorial(n - s)
        c /= factorial(s) * factorial((n + m) // 2 - s) * factorial((n - m) // 2 - s)
        out = out + c * rho ** (n - 2 * s)
    return out


def zernike(j: int, rho: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Noll-normalized Zernike polynomial ``Z_j(rho, phi)``.

    Normalized so that its RMS over the unit disk is 1 (``j > 1``): an amplitude
    ``a`` then means ``a`` waves RMS of wavefront error. Values outside the unit
    disk are returned as evaluated (callers mask them).

    Parameters
    ----------
    j
        Noll index (1 = piston).
    rho, phi
        Normalized pupil radius (1 at the aperture edge) and azimuth in radians.
    """
    n, m = noll_to_nm(j)
    rho = np.asarray(rho, dtype=float)
    phi = np.asarray(phi, dtype=float)
    r = radial_polynomial(n, m, rho)
    if m == 0:
        return sqrt(n + 1) * r
    norm = sqrt(2 * (n + 1))
    if m > 0:
        return norm * r * np.cos(m * phi)
    return norm * r * np.sin(-m * phi)


def zernike_phase(
    coefficients: dict[int, float], rho: np.ndarray, phi: np.ndarray
) -> np.ndarray:
    """Pupil phase in radians for ``coefficients`` (Noll index -> waves RMS)."""
    out = np.zeros(np.broadcast(rho, phi).shape, dtype=float)
    for j, a in coefficients.items():
        if a:
            out = out + 2.0 * np.pi * a * zernike(j, rho, phi)
    return out
