"""High-precision references for the implicit gradients (tests only): quadrature at 60 digits.

dz/da = -(dF/da)(z) / p(z) written as an integral over the side of z where the
integrand decays, with breakpoints on the integrand's own scale so that
mpmath's tanh-sinh rule resolves it for any parameter size (1e-30 .. 1e30).
"""
import atexit
import json
import os
from pathlib import Path

import mpmath as mp


def _breakpoints(scale, length):
    points = [mp.mpf(0)]
    while points[-1] * 2 < length and len(points) < 400:
        points.append(scale if points[-1] == 0 else points[-1] * 2)
    points.append(length)
    return points


def _gamma_grad(a, x):
    """dz/dalpha of z ~ Gamma(a, 1) at z = x."""
    with mp.workdps(60):
        a, x = mp.mpf(a), mp.mpf(x)
        psi = mp.digamma(a)
        if a <= 1 or x < 1:  # t^(a-1) is nearly 1/t: the quadrature cannot resolve it; the series converges
            c, psi_n, total, n = x / a, mp.digamma(a + 1), mp.mpf(0), 0
            lx = mp.log(x)
            while True:
                term = c * (lx - psi_n)
                total += term
                n += 1
                if n > 5 and abs(term) < mp.mpf(10) ** -50 * abs(total):
                    return -total
                c = c * x / (a + n)
                psi_n += 1 / (a + n)
        if x < a - 1:
            f = lambda h: -(mp.log(x - h) - psi) * mp.exp((a - 1) * mp.log1p(-h / x) + h)
            length = x
        else:
            f = lambda h: (mp.log(x + h) - psi) * mp.exp((a - 1) * mp.log1p(h / x) - h)
            length = mp.inf
        slope = abs((a - 1) / x - 1)
        scale = min(1 / slope if slope > 0 else mp.inf, x / mp.sqrt(a) if a > 1 else x, length) / 4
        return mp.quad(f, _breakpoints(scale, length))


def _beta_series(a, b, x):
    """(dz/da, dz/db) by Gauss's series of I_x(a, b) = x^a (1-x)^b / (a B(a, b)) sum_n c_n, for x below
    (a + 1) / (a + b + 2), where its terms fall from the first: c_0 = 1, c_n = c_{n-1} (a + b + n - 1) x / (a + n).
    At 200 digits: dz/db's sum is O(a) out of terms up to 1/(a + b) apart (a = 1e-30, b = 1e30 needed more
    than 60 digits)."""
    with mp.workdps(200):
        a, b, x = mp.mpf(a), mp.mpf(b), mp.mpf(x)
        y = 1 - x
        da = mp.log(x) + mp.digamma(a + b) - mp.digamma(a + 1)
        db = mp.log(y) + mp.digamma(a + b) - mp.digamma(b)
        c, sa, sb, total, n = mp.mpf(1), da, db, mp.mpf(1), 0
        while True:
            n += 1
            c *= (a + b + n - 1) * x / (a + n)
            da += 1 / (a + b + n - 1) - 1 / (a + n)
            db += 1 / (a + b + n - 1)
            sa, sb, total = sa + c * da, sb + c * db, total + c
            if c < mp.mpf(10) ** -55 * total * (1 - x):
                return -x * y / a * sa, -x * y / a * sb


def _beta_quadrature(a, b, z):
    """(dz/da, dz/db) by quadrature over the side of z where the integrand decays."""
    ca, cb = mp.digamma(a + b) - mp.digamma(a), mp.digamma(a + b) - mp.digamma(b)
    phi = lambda t: (a - 1) * mp.log(t) + (b - 1) * mp.log1p(-t)
    pz = phi(z)
    if (a - 1) / z > (b - 1) / (1 - z):  # below the mode: integrate over (0, z)
        sign, t_of, length = -1, (lambda h: z - h), z
    else:
        sign, t_of, length = 1, (lambda h: z + h), 1 - z
    inside = lambda h: 0 < t_of(h) < 1  # the endpoints themselves contribute nothing
    fa = lambda h: sign * (mp.log(t_of(h)) + ca) * mp.exp(phi(t_of(h)) - pz) if inside(h) else 0
    fb = lambda h: sign * (mp.log1p(-t_of(h)) + cb) * mp.exp(phi(t_of(h)) - pz) if inside(h) else 0
    slope = abs((a - 1) / z - (b - 1) / (1 - z))
    sd = mp.sqrt(a * b / (a + b) ** 3) if a > 1 and b > 1 else min(z, 1 - z)
    scale = min(1 / slope if slope > 0 else mp.inf, sd, length) / 8
    points = _breakpoints(scale, length)
    return mp.quad(fa, points), mp.quad(fb, points)


def _beta_grad(a, b, z):
    """(dz/da, dz/db) of z ~ Beta(a, b) at z."""
    with mp.workdps(60):
        a, b, z = mp.mpf(a), mp.mpf(b), mp.mpf(z)
        # On the side where the series converges at once, for that side's parameter below 100: there
        # the integrand's t^(a-1) (or (1-t)^(b-1)) is too singular for the quadrature when the parameter
        # is below 1 (1/t for a = 1e-30), and slow to resolve at tiny z; the series is exact and fast.
        # Both agree to 1e-50 where both apply (tests/test_gradient_range.py checks a few points).
        if z < (a + 1) / (a + b + 2):
            if a < 100:
                return _beta_series(a, b, z)
        elif b < 100:
            gb, ga = _beta_series(b, a, 1 - z)
            return -ga, -gb
        return _beta_quadrature(a, b, z)


# The 60-digit quadratures take minutes over the whole range, too long for CI: their
# values at the points the tests use are kept in mpmath_reference.json (floats by repr,
# values as 20-digit strings). A point not in the file is computed; the file is rewritten
# only when RTRICK_WRITE_MPMATH_CACHE=1 (after changing the points or the reference:
# `RTRICK_WRITE_MPMATH_CACHE=1 pytest tests/test_gradient_range.py`).
_CACHE_PATH = Path(__file__).with_name("mpmath_reference.json")
_CACHE = json.loads(_CACHE_PATH.read_text()) if _CACHE_PATH.exists() else {}
_USED = {}


def _cached(name, compute, *args):
    key = name + repr(tuple(float(a) for a in args))
    if key not in _CACHE:
        value = compute(*args)
        values = value if isinstance(value, tuple) else (value,)
        _CACHE[key] = [mp.nstr(v, 20) for v in values]
    _USED[key] = _CACHE[key]
    values = tuple(mp.mpf(v) for v in _CACHE[key])
    return values if len(values) > 1 else values[0]


def gamma_grad(a, x):
    """d x / d a for x ~ Gamma(a, 1): -(dF/da)(x; a) / p(x; a), to 60 digits (cached)."""
    return _cached("gamma", _gamma_grad, a, x)


def beta_grad(a, b, z):
    """(dz/da, dz/db) for z ~ Beta(a, b), to 60 digits (cached)."""
    return _cached("beta", _beta_grad, a, b, z)


@atexit.register
def _write_cache():
    if os.environ.get("RTRICK_WRITE_MPMATH_CACHE") == "1" and _USED:
        _CACHE_PATH.write_text(json.dumps(dict(sorted(_USED.items())), indent=0) + "\n")
