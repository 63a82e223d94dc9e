"""The CPU instruction sets a test can force, for the tests that compare their bits."""
import rtrick_ops as rt


def each_cpu_isa():
    """Yields the name of every CPU ISA this machine and build have, with rt.set_cpu_isa set to it; "auto"
    afterwards."""
    isa = rt.cpu_isa()
    try:
        for name in ("default", "avx2", "avx512"):
            try:
                rt.set_cpu_isa(name)
            except Exception:
                continue
            yield name
    finally:
        rt.set_cpu_isa("auto")
    assert rt.cpu_isa() == isa
