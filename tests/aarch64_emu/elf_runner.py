"""Runs a static aarch64 Linux executable on this machine, under the Unicorn CPU emulator.

This machine has no aarch64 CPU, no qemu-user and no network to install one;
Unicorn (QEMU's CPU emulation as a library, on PyPI) is enough for a static
program that only computes and writes: the runner loads its PT_LOAD segments,
builds the initial stack (argv, an empty environment, the auxiliary vector
musl's start-up reads) and answers the few system calls such a program makes.
Anything else gets -ENOSYS and is recorded, so an unexpected call shows up in
the result instead of silently doing nothing.

usage: python tests/aarch64_emu/elf_runner.py PROGRAM [ARG...]
       (forwards the program's stdout and stderr; exits with its status)
"""
from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field

from unicorn import UC_ARCH_ARM64, UC_HOOK_INTR, UC_MODE_ARM, UC_PROT_ALL, Uc, UcError
from unicorn.arm64_const import UC_ARM64_REG_PC, UC_ARM64_REG_SP, UC_ARM64_REG_X0, UC_ARM64_REG_X1, \
    UC_ARM64_REG_X2, UC_ARM64_REG_X3, UC_ARM64_REG_X8

PAGE = 0x1000
EM_AARCH64 = 183
PT_LOAD, PT_INTERP = 1, 3
HEAP_SIZE = 512 << 20  # brk grows into the first half, anonymous mmap takes the second
STACK_TOP = 0x7FFF_0000_0000
STACK_SIZE = 16 << 20
ERRNO = {"ENOTTY": 25, "ENOMEM": 12, "ENOSYS": 38}

# aarch64 Linux system call numbers (asm-generic/unistd.h)
SYS_IOCTL, SYS_WRITE, SYS_WRITEV, SYS_EXIT, SYS_EXIT_GROUP = 29, 64, 66, 93, 94
SYS_SET_TID_ADDRESS, SYS_SET_ROBUST_LIST, SYS_SCHED_GETAFFINITY = 96, 99, 123
SYS_TKILL, SYS_TGKILL, SYS_RT_SIGACTION, SYS_RT_SIGPROCMASK = 130, 131, 134, 135
SYS_GETPID, SYS_GETTID, SYS_BRK, SYS_MUNMAP, SYS_MMAP, SYS_MPROTECT, SYS_MADVISE = 172, 178, 214, 215, 222, 226, 233
ACCEPTED_AS_NO_OPS = {SYS_SET_ROBUST_LIST, SYS_RT_SIGACTION, SYS_RT_SIGPROCMASK, SYS_MUNMAP, SYS_MPROTECT, SYS_MADVISE}
MAP_FIXED, MAP_ANONYMOUS = 0x10, 0x20
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_ENTRY, AT_HWCAP, AT_SECURE, AT_RANDOM = 0, 3, 4, 5, 6, 9, 16, 23, 25
EXCP_SWI = 2  # QEMU's exception number for `svc`, a system call; any other is a fault (a `brk` trap, ...)


class ElfError(ValueError):
    pass


@dataclass
class RunResult:
    status: int | None  # the exit status; None when the program was stopped (signal, fault, time limit)
    stdout: bytes
    stderr: bytes
    failure: str = ""  # why the program stopped without exiting
    unhandled_syscalls: list = field(default_factory=list)


def _load_segments(uc, image):
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ElfError("not a little-endian 64-bit ELF file")
    e_type, e_machine = struct.unpack_from("<HH", image, 16)
    if e_machine != EM_AARCH64:
        raise ElfError(f"machine {e_machine} is not aarch64 ({EM_AARCH64})")
    entry, phoff = struct.unpack_from("<QQ", image, 24)
    phentsize, phnum = struct.unpack_from("<HH", image, 54)
    end, phdr = 0, 0
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", image, phoff + i * phentsize)
        if p_type == PT_INTERP:
            raise ElfError("a dynamically linked program: link it statically (-static)")
        if p_type != PT_LOAD:
            continue
        low, high = vaddr & ~(PAGE - 1), (vaddr + memsz + PAGE - 1) & ~(PAGE - 1)
        uc.mem_map(low, high - low, UC_PROT_ALL)
        uc.mem_write(vaddr, image[offset:offset + filesz])  # the rest (.bss) is already zero
        end = max(end, high)
        if offset <= phoff < offset + filesz:
            phdr = vaddr + phoff - offset  # where the program headers are in memory
    if e_type != 2 or end == 0 or phdr == 0:
        raise ElfError("not a static executable with loadable segments and program headers in memory")
    # musl's start-up finds the thread-local storage template (PT_TLS) through AT_PHDR: without it a
    # _Thread_local variable reads 0 instead of its initial value, silently.
    auxv = {AT_PHDR: phdr, AT_PHENT: phentsize, AT_PHNUM: phnum, AT_ENTRY: entry}
    return entry, end, auxv


def _initial_stack(uc, argv, program_auxv):
    """argc, argv[], NULL, envp[] (empty), NULL, auxv pairs, AT_NULL; strings above them."""
    uc.mem_map(STACK_TOP - STACK_SIZE, STACK_SIZE, UC_PROT_ALL)
    if sum(len(arg.encode()) + 1 for arg in argv) + 16 > 4096:
        raise ValueError("the arguments exceed the 4 KiB this runner reserves for them")
    cursor = STACK_TOP - 4096
    pointers = []
    for arg in argv:
        text = arg.encode() + b"\0"
        uc.mem_write(cursor, text)
        pointers.append(cursor)
        cursor += len(text)
    random_bytes = cursor
    uc.mem_write(random_bytes, bytes(range(16)))  # AT_RANDOM: musl's stack-protector seed
    auxv = [AT_PAGESZ, PAGE, AT_RANDOM, random_bytes, AT_HWCAP, 0, AT_SECURE, 0]
    for key, value in program_auxv.items():
        auxv += [key, value]
    auxv += [AT_NULL, 0]
    words = [len(argv), *pointers, 0, 0, *auxv]
    sp = (STACK_TOP - 8192) & ~15
    uc.mem_write(sp, struct.pack(f"<{len(words)}Q", *words))
    uc.reg_write(UC_ARM64_REG_SP, sp)


def run(program, argv=None, time_limit_s=600.0):
    """Runs the static aarch64 executable `program` with arguments argv (argv[0] included)."""
    with open(program, "rb") as f:
        image = f.read()
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    entry, image_end, program_auxv = _load_segments(uc, image)
    heap = image_end
    uc.mem_map(heap, HEAP_SIZE, UC_PROT_ALL)
    brk = [heap]
    mmap_next = [heap + HEAP_SIZE // 2]
    _initial_stack(uc, list(argv or [program]), program_auxv)
    stdout, stderr = bytearray(), bytearray()
    result = RunResult(None, b"", b"")

    def write(fd, data):
        if fd == 1:
            stdout.extend(data)
        elif fd == 2:
            stderr.extend(data)
        else:
            return -9  # EBADF
        return len(data)

    def syscall(uc, intno, _user):
        if intno != EXCP_SWI:  # a trap or fault: retrying the instruction would raise it again, forever
            result.failure = f"exception {intno} at pc {uc.reg_read(UC_ARM64_REG_PC):#x}"
            uc.emu_stop()
            return
        number = uc.reg_read(UC_ARM64_REG_X8)
        a0, a1, a2 = (uc.reg_read(r) for r in (UC_ARM64_REG_X0, UC_ARM64_REG_X1, UC_ARM64_REG_X2))
        if number in (SYS_EXIT, SYS_EXIT_GROUP):
            result.status = a0 & 0xFF
            uc.emu_stop()
            return
        if number == SYS_WRITE:
            ret = write(a0, bytes(uc.mem_read(a1, a2)))
        elif number == SYS_WRITEV:
            ret = 0
            for k in range(a2):
                base, length = struct.unpack("<QQ", uc.mem_read(a1 + 16 * k, 16))
                ret += write(a0, bytes(uc.mem_read(base, length)))
        elif number == SYS_BRK:
            if heap <= a0 <= heap + HEAP_SIZE // 2:
                brk[0] = a0
            ret = brk[0]
        elif number == SYS_MMAP:
            length = (a1 + PAGE - 1) & ~(PAGE - 1)
            flags = uc.reg_read(UC_ARM64_REG_X3)
            # an address without MAP_FIXED is a hint (musl's malloc passes one), which may be ignored
            if flags & MAP_FIXED or not flags & MAP_ANONYMOUS or mmap_next[0] + length > heap + HEAP_SIZE:
                ret = -ERRNO["ENOMEM"]
            else:
                ret = mmap_next[0]
                mmap_next[0] += length
                uc.mem_write(ret, bytes(length))  # anonymous memory is zero (munmap frees nothing: no reuse)
        elif number in (SYS_TKILL, SYS_TGKILL):  # abort(): the program stopped itself with a signal
            result.failure = f"signal {a1 if number == SYS_TKILL else a2}"
            uc.emu_stop()
            return
        elif number == SYS_SCHED_GETAFFINITY:  # one CPU
            uc.mem_write(a2, (1).to_bytes(8, "little"))
            ret = 8
        elif number == SYS_IOCTL:
            ret = -ERRNO["ENOTTY"]  # stdout is not a terminal
        elif number in (SYS_SET_TID_ADDRESS, SYS_GETPID, SYS_GETTID):
            ret = 1
        elif number in ACCEPTED_AS_NO_OPS:
            ret = 0
        else:
            result.unhandled_syscalls.append(number)
            ret = -ERRNO["ENOSYS"]
        uc.reg_write(UC_ARM64_REG_X0, ret & 0xFFFF_FFFF_FFFF_FFFF)

    uc.hook_add(UC_HOOK_INTR, syscall)
    try:
        uc.emu_start(entry, 0, timeout=int(time_limit_s * 1e6))
    except UcError as error:
        result.failure = f"{error} at pc {uc.reg_read(UC_ARM64_REG_PC):#x}"
    if result.status is None and not result.failure:
        result.failure = f"time limit ({time_limit_s} s)"
    result.stdout, result.stderr = bytes(stdout), bytes(stderr)
    return result


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    result = run(sys.argv[1], sys.argv[1:])
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    if result.unhandled_syscalls:
        print(f"elf_runner: unhandled system calls {sorted(set(result.unhandled_syscalls))}", file=sys.stderr)
    if result.failure:
        print(f"elf_runner: {result.failure}", file=sys.stderr)
        sys.exit(128)
    sys.exit(result.status)


if __name__ == "__main__":
    main()
