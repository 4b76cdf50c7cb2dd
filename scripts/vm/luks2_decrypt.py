#!/usr/bin/python3
"""Independent LUKS2 decryptor for the VM harness (host side).

usage: luks2_decrypt.py IMAGE KEYFILE OUT

The volume key comes from `cryptsetup luksDump --dump-volume-key` (the KDF and
anti-forensic split are cryptsetup's); everything else is done here: the LUKS2
binary header and JSON area are parsed from the image, and segment 0 is
decrypted with AES-XTS from python3-cryptography, with the plain64 IV counting
512-byte units (dm-crypt's LUKS2 default, no iv_large_sectors) even for
4096-byte sectors. OUT gets the whole mapping (image size - segment offset,
or the segment's fixed size).
"""
import json
import os
import re
import struct
import subprocess
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def read_header(f):
    f.seek(0)
    hdr = f.read(4096)
    if hdr[:6] != b"LUKS\xba\xbe":
        sys.exit("not a LUKS image")
    version, hdr_size = struct.unpack(">HQ", hdr[6:16])
    if version != 2:
        sys.exit(f"not LUKS2 (version {version})")
    f.seek(4096)
    area = f.read(hdr_size - 4096)
    return json.loads(area.split(b"\0", 1)[0])


def volume_key(image, keyfile):
    out = subprocess.run(
        ["cryptsetup", "luksDump", "--dump-volume-key", "-q",
         "--key-file", keyfile, image],
        check=True, capture_output=True, text=True).stdout
    m = re.search(r"MK dump:\s*((?:[0-9a-f]{2}\s+)+)", out + "\n")
    if not m:
        sys.exit("no MK dump in luksDump output")
    return bytes.fromhex("".join(m.group(1).split()))


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    image, keyfile, out = sys.argv[1:]
    with open(image, "rb") as f:
        meta = read_header(f)
        seg = meta["segments"]["0"]
        if seg["type"] != "crypt" or seg["encryption"] != "aes-xts-plain64":
            sys.exit(f"unsupported segment {seg}")
        offset = int(seg["offset"])
        sector = int(seg.get("sector_size", 512))
        tweak0 = int(seg.get("iv_tweak", "0"))
        total = os.fstat(f.fileno()).st_size
        size = total - offset if seg["size"] == "dynamic" else int(seg["size"])
        if size % sector:
            sys.exit(f"mapping size {size} not a multiple of sector {sector}")
        key = volume_key(image, keyfile)
        f.seek(offset)
        with open(out, "wb") as o:
            pos = 0
            chunk = 1 << 20
            while pos < size:
                buf = f.read(min(chunk, size - pos))
                if not buf:
                    sys.exit("short read")
                res = bytearray()
                for i in range(0, len(buf), sector):
                    iv = tweak0 + (pos + i) // 512
                    tweak = iv.to_bytes(16, "little")
                    d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
                    res += d.update(buf[i:i + sector]) + d.finalize()
                o.write(res)
                pos += len(buf)


if __name__ == "__main__":
    main()
