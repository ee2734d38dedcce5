#!/usr/bin/env bash
# Downloads the audio and video signals of the DEQ-INR configs into
# ${DEQ_DATA_DIR:-datasets}/inr, the layout `configs/deq-inr/*.toml` read:
#   inr/audio/gt_bach.wav, inr/audio/gt_counting.wav  SIREN's clips (vsitzmann/siren, MIT):
#       mono 44.1 kHz 32-bit float WAV, checked against their SHA-256 below;
#   inr/video/carphone/0000.png ... 0119.png           the first 120 frames of the `carphone`
#       QCIF test sequence (176x144) from Xiph.org's Derf collection, converted from Y4M
#       (4:2:0, BT.601) to RGB PNG by the Python standard library (no packages needed).
# Needs internet, curl, sha256sum and python3. The images (camera, astronaut) are committed.
# Usage: datasets/fetch_inr.sh [audio] [video]   (default: both)
set -euo pipefail
dest="${DEQ_DATA_DIR:-$(dirname "$0")}/inr"
what=("$@")
[ ${#what[@]} -eq 0 ] && what=(audio video)
siren="https://raw.githubusercontent.com/vsitzmann/siren/4df34baee3f0f9c8f351630992c1fe1f69114b5f/data"
for w in "${what[@]}"; do
  case "$w" in
    audio)
      mkdir -p "$dest/audio"
      curl -fL --retry 3 -o "$dest/audio/gt_bach.wav" "$siren/gt_bach.wav"
      curl -fL --retry 3 -o "$dest/audio/gt_counting.wav" "$siren/gt_counting.wav"
      (cd "$dest/audio" && sha256sum -c - <<'SUMS'
023940a1bcc534349e16ff46f360ffbfffa993842961dbed955c168fd2f38190  gt_bach.wav
5becf4851addadb660da353e0e6ea6fd653d4d71e5ea1ce1f6973b556ad397ad  gt_counting.wav
SUMS
      )
      ;;
    video)
      out="$dest/video/carphone"
      mkdir -p "$out"
      tmp=$(mktemp -d)
      curl -fL --retry 3 -o "$tmp/carphone_qcif.y4m" "https://media.xiph.org/video/derf/y4m/carphone_qcif.y4m"
      python3 - "$tmp/carphone_qcif.y4m" "$out" 120 <<'PY'
import struct, sys, zlib
src, out, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, "rb").read()
head, _, body = data.partition(b"\n")
fields = head.split()
if fields[0] != b"YUV4MPEG2":
    sys.exit(f"{src}: not a YUV4MPEG2 file")
w = int(next(f[1:] for f in fields if f.startswith(b"W")))
h = int(next(f[1:] for f in fields if f.startswith(b"H")))
def png(path, rgb):
    rows = b"".join(b"\x00" + rgb[y * w * 3:(y + 1) * w * 3] for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
clip = lambda v: 0 if v < 0 else 255 if v > 255 else int(v + 0.5)
pos, n = 0, 0
ysz, csz = w * h, (w // 2) * (h // 2)
while pos < len(body) and n < limit:
    end = body.index(b"\n", pos)
    pos = end + 1
    Y, U, V = body[pos:pos + ysz], body[pos + ysz:pos + ysz + csz], body[pos + ysz + csz:pos + ysz + 2 * csz]
    pos += ysz + 2 * csz
    rgb = bytearray(ysz * 3)
    for y in range(h):
        for x in range(w):
            c = (y // 2) * (w // 2) + x // 2
            yy, u, v = 1.164 * (Y[y * w + x] - 16), U[c] - 128, V[c] - 128
            i = 3 * (y * w + x)
            rgb[i], rgb[i + 1], rgb[i + 2] = clip(yy + 1.596 * v), clip(yy - 0.392 * u - 0.813 * v), clip(yy + 2.017 * u)
    png(f"{out}/{n:04d}.png", bytes(rgb))
    n += 1
print(f"{n} frames of {w}x{h} in {out}")
PY
      rm -rf "$tmp"
      ;;
    *) echo "unknown part '$w' (audio or video)" >&2; exit 2 ;;
  esac
done
echo "DEQ-INR data in $dest"
