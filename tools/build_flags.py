"""The C++ flags the random stream's bits depend on, defined once.

setup.py builds the extension with them, and the two harnesses that compile
the kernels outside setup.py (tests/cuda_emu, tests/aarch64_emu) use them too,
so that what they check is what users run.

Contraction off: every backend evaluates the stream with the same IEEE
operations, so a seed gives the same bits on any CPU (docs/stream.md); Clang
contracts a*b+c within an expression by default, and would round differently
on any target with an FMA instruction (aarch64, x86-64 with FMA).
No errno or trapping semantics: lets the compiler vectorise sqrt and selects.
"""
STREAM_CXX_FLAGS = ["-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
