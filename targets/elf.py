"""What an ELF file was built for, read from its header (no `file`/readelf needed)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bnn_tvm.errors import BnnError

MACHINE_NAMES = {62: "x86-64", 183: "AArch64", 40: "ARM"}
# platform.machine() -> the ELF e_machine of its shared libraries
HOST_ELF_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183, "armv7l": 40, "armv8l": 40}
EF_ARM_ABI_FLOAT_HARD = 0x400
EF_ARM_EABIMASK = 0xFF000000


@dataclass(frozen=True)
class ElfHeader:
    bits: int  # 32 or 64
    machine: int  # e_machine
    flags: int  # e_flags
    shared: bool  # ET_DYN

    @property
    def machine_name(self) -> str:
        return MACHINE_NAMES.get(self.machine, f"machine {self.machine}")

    @property
    def arm_hard_float(self) -> bool:
        return self.machine == 40 and bool(self.flags & EF_ARM_ABI_FLOAT_HARD)

    @property
    def arm_eabi_version(self) -> int:
        return (self.flags & EF_ARM_EABIMASK) >> 24

    def describe(self) -> str:
        text = f"ELF {self.bits}-bit {'shared object' if self.shared else 'file'}, {self.machine_name}"
        if self.machine == 40:
            text += f", EABI{self.arm_eabi_version}, {'hard' if self.arm_hard_float else 'soft'}-float ABI"
        return text


def read_header(path: str) -> ElfHeader:
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] != b"\x7fELF":
        raise BnnError(f"{path} is not an ELF file")
    bits = {1: 32, 2: 64}[head[4]]
    endian = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(endian + "HH", head, 16)
    flags_offset = 36 if bits == 32 else 48  # after e_entry/e_phoff/e_shoff, which are 4 or 8 bytes
    (e_flags,) = struct.unpack_from(endian + "I", head, flags_offset)
    return ElfHeader(bits, e_machine, e_flags, e_type == 3)


SHT_DYNSYM = 11


def dynamic_symbols(path: str) -> set[str]:
    """The names a shared object exports (defined symbols of its ``.dynsym``), for any ELF class
    and machine: how ``bnn_tvm`` tells a standalone library from a TVM module without loading it
    (an ARM library cannot be loaded on x86)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise BnnError(f"{path} is not an ELF file")
    bits = {1: 32, 2: 64}[data[4]]
    endian = "<" if data[5] == 1 else ">"
    if bits == 32:
        shoff, = struct.unpack_from(endian + "I", data, 32)
        shentsize, shnum = struct.unpack_from(endian + "HH", data, 46)
        section = lambda i: struct.unpack_from(endian + "IIIIIIIIII", data, shoff + i * shentsize)  # noqa: E731
    else:
        shoff, = struct.unpack_from(endian + "Q", data, 40)
        shentsize, shnum = struct.unpack_from(endian + "HH", data, 58)
        section = lambda i: struct.unpack_from(endian + "IIQQQQIIQQ", data, shoff + i * shentsize)  # noqa: E731
    names: set[str] = set()
    for i in range(shnum):
        _, sh_type, _, _, offset, size, link, _, _, entsize = section(i)
        if sh_type != SHT_DYNSYM or not entsize:
            continue
        _, _, _, _, str_offset, _, _, _, _, _ = section(link)
        for start in range(offset, offset + size, entsize):
            if bits == 32:
                name, _, _, _, _, shndx = struct.unpack_from(endian + "IIIBBH", data, start)
            else:
                name, _, _, shndx, _, _ = struct.unpack_from(endian + "IBBHQQ", data, start)
            if name and shndx:
                end = data.index(b"\0", str_offset + name)
                names.add(data[str_offset + name:end].decode("utf-8", "replace"))
    return names
