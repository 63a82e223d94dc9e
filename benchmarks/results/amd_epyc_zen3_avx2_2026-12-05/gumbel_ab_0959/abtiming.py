"""The A/B case scripts' timer (abcase.py here, ../kl_series_fma_1244/klcase.py): us a call, the fastest of
9 blocks of `iters` calls after 30 of warm-up."""
import time


def timeit(fn, iters):
    for _ in range(30): fn()
    best = 1e9
    for rep in range(9):
        t = time.perf_counter()
        for _ in range(iters): fn()
        best = min(best, (time.perf_counter() - t) / iters * 1e6)
    return best
