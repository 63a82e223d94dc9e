"""Writes csrc/gamma_asymptotic.h: Temme's c_k(eta) (DLMF 8.12.9-10) and a Gauss-Legendre rule.

    c_0 = 1/(lambda - 1) - 1/eta,  c_k = (1/eta) c_{k-1}'(eta) + (-1)^k g_k / (lambda - 1),
    eta^2 / 2 = lambda - 1 - ln(lambda),  g_k the Stirling coefficients of Gamma*(a).

Taylor polynomials (|eta| < 1, where the closed forms cancel) from the series
reversion of eta(t); closed forms in (eta, t = lambda - 1) elsewhere.
Run: python tools/gen_gamma_asymptotic.py > csrc/gamma_asymptotic.h (then restore the header lines).
"""
import numpy as np
import sympy as sp

eta, t = sp.symbols("eta t")
G = [sp.Rational(1), sp.Rational(1, 12), sp.Rational(1, 288), sp.Rational(-139, 51840), sp.Rational(-571, 2488320),
     sp.Rational(163879, 209018880)]
N, NT = 40, [30, 30, 24, 20, 16]

ts = eta  # t(eta) by Newton steps on truncated series
for _ in range(N):
    f = sp.series(ts - sp.log(1 + ts) - eta**2 / 2, eta, 0, N + 2).removeO()
    ts = sp.expand(sp.series(ts - f * (1 + ts) / ts, eta, 0, N + 1).removeO())
inv_t = sp.series(1 / ts, eta, 0, N - 2).removeO()
series = [sp.expand(sp.series(inv_t - 1 / eta, eta, 0, N - 3).removeO())]
closed = [1 / t - 1 / eta]
for k in range(1, 5):
    series.append(sp.expand(sp.series(sp.diff(series[-1], eta) / eta + (-1) ** k * G[k] * inv_t, eta, 0,
                                      N - 3 - 2 * k).removeO()))
    d = sp.diff(closed[-1], eta) + sp.diff(closed[-1], t) * eta * (1 + t) / t  # dt/deta = eta (1 + t) / t
    closed.append(sp.together(sp.expand(d / eta + (-1) ** k * G[k] / t)))
for k in range(5):
    coefs = [float(series[k].coeff(eta, i)) for i in range(NT[k])]
    expr = repr(coefs[-1])
    for c in reversed(coefs[:-1]):
        expr = f"{c!r} + e * ({expr})"
    print(f"template <class T>\nRT_HD T temme_c{k}_series(T e) {{ return {expr}; }}")
for k in range(5):
    num, den = sp.fraction(sp.together(sp.simplify(closed[k])))
    print(f"RT_HD double temme_c{k}_closed(double eta, double t) {{ return "
          f"({sp.ccode(sp.horner(sp.expand(num), wrt=eta))}) / ({sp.ccode(den)}); }}")
x, w = np.polynomial.legendre.leggauss(32)
print("// 32-point Gauss-Legendre on [-1, 1]: nodes x_i > 0 and weights (the rule is symmetric).")
for name, values in (("node", x), ("weight", w)):
    print(f"RT_HD double gl32_{name}(int i) {{\n  switch (i) {{")
    for i in range(16):
        print(f"    case {i}: return {float(values[16 + i])!r};")
    print("  }\n  return 0.0;\n}")
