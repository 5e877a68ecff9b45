#!/usr/bin/env python3
"""Regenerate the hand-broken modules in this directory from the real fixtures.

Each file breaks exactly one thing; tests/verify_reader.rs pins the error each one produces.
Run from anywhere: python3 tests/data/broken/make.py
"""
import gzip, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
MODS = os.path.join(HERE, "..", "modules")
base = open(os.path.join(MODS, "amd64", "hello.ko"), "rb").read()
signed = open(os.path.join(MODS, "arm64", "crc7-signed.ko"), "rb").read()
MAGIC = b"~Module signature appended~\n"

shoff, = struct.unpack_from("<Q", base, 0x28)
shnum, shstrndx = struct.unpack_from("<HH", base, 0x3C)[0], struct.unpack_from("<H", base, 0x3E)[0]
def shdr(i):
    return shoff + 64 * i
stroff, = struct.unpack_from("<Q", base, shdr(shstrndx) + 24)
def section(name):
    for i in range(shnum):
        n, = struct.unpack_from("<I", base, shdr(i))
        end = base.index(b"\0", stroff + n)
        if base[stroff + n:end] == name:
            return i
    raise KeyError(name)

def patch(data, off, fmt, *vals):
    b = bytearray(data)
    struct.pack_into(fmt, b, off, *vals)
    return bytes(b)

def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)

write("empty.ko", b"")
write("bad-magic.ko", b"\x7fELG" + base[4:])
write("bad-class.ko", patch(base, 4, "B", 3))
write("bad-encoding.ko", patch(base, 5, "B", 0))
write("exec.ko", patch(base, 0x10, "<H", 2))
write("bad-shentsize.ko", patch(base, 0x3A, "<H", 40))
write("shoff-past-end.ko", patch(base, 0x28, "<Q", len(base) - 64))
modinfo = section(b".modinfo")
write("section-past-end.ko", patch(base, shdr(modinfo) + 24, "<Q", len(base)))
# Rename .modinfo to .modinfX in the section name table.
n, = struct.unpack_from("<I", base, shdr(modinfo))
write("no-modinfo.ko", patch(base, stroff + n + len(".modinf"), "B", ord("X")))
versions = section(b"__versions")
vsize, = struct.unpack_from("<Q", base, shdr(versions) + 32)
write("versions-size.ko", patch(base, shdr(versions) + 32, "<Q", vsize - 1))
voff, = struct.unpack_from("<Q", base, shdr(versions) + 24)
# Record 1's name (after its 8-byte CRC) filled to the end of the record with no NUL.
b = bytearray(base)
b[voff + 64 + 8: voff + 128] = b"x" * 56
write("versions-unterminated.ko", bytes(b))
# .modinfo one byte shorter: its last string loses its NUL (kmod tolerates this).
msize, = struct.unpack_from("<Q", base, shdr(modinfo) + 32)
write("modinfo-unterminated.ko", patch(base, shdr(modinfo) + 32, "<Q", msize - 1))
# A valid xz stream header (magic, flags, CRC32 of the flags) followed by garbage.
write("lying.ko.xz", bytes.fromhex("fd377a585a000000ff12d941") + b"\xa5" * 256)
write("lying.ko.gz", gzip.compress(base)[:10] + b"\xa5" * 256)
# Signature magic with too few bytes before it for the 12-byte descriptor.
write("signature-truncated.ko", base[:8] + MAGIC)
# A signature length larger than the whole file.
info_at = len(signed) - len(MAGIC) - 12
write("signature-too-long.ko", patch(signed, info_at + 8, ">I", 0x00FFFFFF))
