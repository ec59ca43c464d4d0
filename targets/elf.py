"""What an ELF file was built for, read from its header (no `file`/readelf needed)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bnn_tvm.errors import BnnError

MACHINE_NAMES = {62: "x86-64", 183: "AArch64", 40: "ARM"}
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
