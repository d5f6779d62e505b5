"""Embed metadata in an artifact as an appended ZIP, and read it back without trusting it.

TFLite (and HEF/engine) files carry a ZIP after the model bytes, as EdgeFirst and TFLite-Support's
associated files do. ONNX models keep the JSON in ``metadata_props`` (``edgefirst``, ``labels``).
Entries are written with a fixed timestamp so the same input gives byte-identical artifacts.

Reading parses the ZIP itself, from its end-of-central-directory record (EOCD) backwards, and never
trusts a declared size. :func:`read_appended` returns ``None`` when the file has no appended ZIP
(no EOCD at all) and raises :class:`ArtifactError`, naming the file and the member, when it has one
that is damaged or hostile:

* the EOCD, ZIP64 records or central directory are inconsistent (offsets outside the file, counts
  that disagree, multi-disk archives), or the central directory is larger than
  ``MAX_DIRECTORY_BYTES``; a file that ends in ZIP records without an EOCD is reported as truncated;
* more than ``MAX_MEMBERS`` members, duplicate names, members that overlap;
* a member whose local header disagrees with its central-directory entry (name, method, CRC,
  sizes), that is encrypted, or compressed with anything but stored / deflate;
* a member whose declared uncompressed size is above its cap (``MEMBER_CAPS``, else
  ``DEFAULT_MEMBER_CAP``), or whose declared ratio is above ``MAX_RATIO``;
* corrupt or truncated deflate data, output longer or shorter than declared, a CRC mismatch.

Decompression streams the member through ``zlib.decompressobj`` with ``max_length`` and stops after
``declared size + 1`` bytes of output, so a member that lies about its size costs at most its cap
(a 4 GiB member: refused from its header in milliseconds; one that declares 1 KiB and inflates to
4 GiB: refused after 1 KiB + 1 of output).

Caps, and why:

* ``edgefirst.json`` 4 MiB. Real ones are 3-12 KB (edgeq's, with provenance, ~11 KB). The JSON is
  parsed after reading, and JSON costs up to ~24 bytes of memory per input byte (millions of empty
  ``[]``): 16 MiB measured 400 MB and 1.7 s to parse, 4 MiB stays near 100 MB and 0.4 s.
* ``labels.txt`` 1 MiB (and at most ``MAX_LABELS`` lines, see :func:`parse_labels`): the largest
  label sets in use (ImageNet-21k, 21,841 names) are ~400 KB.
* ``metadata.json`` (Ultralytics) 1 MiB: ~2 KB in practice.
* ``edgefirst.yaml`` (legacy) 256 KiB: YAML parses in pure Python, ~100x slower than JSON.
* any other member 1 MiB (edgeq reads only the four above; :func:`read_embedded` reads all).
* ``MAX_MEMBERS`` 16: edgeq writes 2 members, EdgeFirst 3.
* ``MAX_RATIO`` 200:1 for members over 64 KiB: JSON and label text compress 3-10:1, deflate's
  maximum is ~1030:1 (runs of one byte).
"""
from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO

from edgeq.errors import ArtifactError

EDGEFIRST_JSON = "edgefirst.json"
EDGEFIRST_YAML = "edgefirst.yaml"
LABELS_TXT = "labels.txt"
METADATA_JSON = "metadata.json"
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)

MiB = 1 << 20
#: Largest declared uncompressed size read per member name.
MEMBER_CAPS: dict[str, int] = {
    EDGEFIRST_JSON: 4 * MiB,
    LABELS_TXT: 1 * MiB,
    METADATA_JSON: 1 * MiB,
    EDGEFIRST_YAML: 256 * 1024,
}
DEFAULT_MEMBER_CAP = 1 * MiB
MAX_MEMBERS = 16
MAX_DIRECTORY_BYTES = 64 * 1024
MAX_RATIO = 200
RATIO_MIN_SIZE = 64 * 1024
#: Most class names a labels.txt may hold.
MAX_LABELS = 65536

_DAMAGED_FIX = "the file was truncated or corrupted after it was written; copy it again or re-run `edgeq convert`"
_HOSTILE_FIX = "this is not metadata edgeq or EdgeFirst writes; re-run `edgeq convert` on the source model"
_CHUNK = 64 * 1024

_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment len
_EOCD_SIG = b"PK\x05\x06"
_LOC64 = struct.Struct("<4sLQL")  # signature, disk of the zip64 EOCD, its offset, disks
_LOC64_SIG = b"PK\x06\x07"
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # ..., entries here, entries, cd size, cd offset
_EOCD64_SIG = b"PK\x06\x06"
_CDH = struct.Struct("<4s6H3L5H2L")  # central directory file header (46 bytes)
_CDH_SIG = b"PK\x01\x02"
_LFH = struct.Struct("<4s5H3L2H")  # local file header (30 bytes)
_LFH_SIG = b"PK\x03\x04"
_STORED, _DEFLATED = 0, 8
_U16, _U32 = 0xFFFF, 0xFFFFFFFF


# ----------------------------------------------------------------------------- writing


def metadata_files(meta_json: dict[str, Any], labels: list[str]) -> dict[str, bytes]:
    """The associated files edgeq embeds: edgefirst.json and labels.txt."""
    text = json.dumps(meta_json, indent=1, sort_keys=False) + "\n"
    return {EDGEFIRST_JSON: text.encode(), LABELS_TXT: ("\n".join(labels) + "\n").encode()}


def append_zip(model_bytes: bytes, files: dict[str, bytes]) -> bytes:
    """Model bytes followed by a ZIP whose offsets are relative to the start of the whole file.

    Raises:
        ArtifactError: a file is larger than readers accept (``MEMBER_CAPS``), or there are more
            than ``MAX_MEMBERS``; writing it would give an artifact nobody can read back.
    """
    import zipfile

    if len(files) > MAX_MEMBERS:
        raise ArtifactError(f"cannot embed {len(files)} files; readers accept at most {MAX_MEMBERS}")
    for name, data in files.items():
        if len(data) > member_cap(name):
            raise ArtifactError(
                f"cannot embed {name}: {len(data)} bytes, readers accept at most {member_cap(name)}",
                "embed less (fewer labels, a shorter description)",
            )
    buf = io.BytesIO()
    buf.write(model_bytes)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


# ----------------------------------------------------------------------------- reading


def member_cap(name: str) -> int:
    """The largest uncompressed size read for a member called ``name``."""
    return MEMBER_CAPS.get(name, DEFAULT_MEMBER_CAP)


@dataclass(frozen=True)
class ZipMember:
    """One central-directory entry, offsets absolute in the file."""

    name: str
    raw_name: bytes
    method: int
    flags: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int


@dataclass(frozen=True)
class AppendedZip:
    """The appended ZIP of a file: where it starts and what it holds (nothing decompressed yet)."""

    path: str
    start: int
    directory_start: int
    members: tuple[ZipMember, ...]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> ZipMember | None:
        return next((m for m in self.members if m.name == name), None)


class _Damaged(Exception):
    """Internal: an inconsistency found while parsing; becomes an ArtifactError naming the file."""


def _read_at(fp: BinaryIO, offset: int, n: int) -> bytes:
    fp.seek(offset)
    return fp.read(n)


def _find_eocd(fp: BinaryIO, size: int) -> tuple[int, tuple] | None:
    """(offset, fields) of the end-of-central-directory record, None when there is none."""
    tail_len = min(size, _EOCD.size + _U16)
    tail = _read_at(fp, size - tail_len, tail_len)
    i = tail.rfind(_EOCD_SIG)
    first = i
    while i >= 0:
        if i + _EOCD.size <= len(tail):
            fields = _EOCD.unpack_from(tail, i)
            if i + _EOCD.size + fields[7] <= len(tail):
                return size - tail_len + i, fields
        i = tail.rfind(_EOCD_SIG, 0, i)
    if first >= 0:
        raise _Damaged(f"its end-of-central-directory record at offset {size - tail_len + first} is cut short")
    for sig, what in ((_CDH_SIG, "central-directory"), (_LFH_SIG, "local file")):
        j = tail.rfind(sig)
        if j >= 0:
            raise _Damaged(
                f"it has no end-of-central-directory record, but a ZIP {what} header at offset "
                f"{size - tail_len + j}: the archive looks truncated"
            )
    return None


def _zip64_end(fp: BinaryIO, eocd_pos: int) -> tuple[int, int, int, int] | None:
    """(entries, cd size, cd offset, zip64 EOCD position) from the ZIP64 records, if present."""
    if eocd_pos < _LOC64.size:
        return None
    loc = _read_at(fp, eocd_pos - _LOC64.size, _LOC64.size)
    if loc[:4] != _LOC64_SIG:
        return None
    _, disk, _, disks = _LOC64.unpack(loc)
    if disk != 0 or disks > 1:
        raise _Damaged("its ZIP64 locator points at another disk (multi-disk archives are not read)")
    pos = eocd_pos - _LOC64.size - _EOCD64.size
    rec = _read_at(fp, pos, _EOCD64.size) if pos >= 0 else b""
    if len(rec) != _EOCD64.size or rec[:4] != _EOCD64_SIG:
        raise _Damaged("its ZIP64 end record is missing where the ZIP64 locator says it is")
    _, _, _, _, d, cd_disk, n_here, n_total, cd_size, cd_offset = _EOCD64.unpack(rec)
    if d != 0 or cd_disk != 0 or n_here != n_total:
        raise _Damaged("its ZIP64 end record describes a multi-disk archive")
    return n_total, cd_size, cd_offset, pos


def _zip64_extra(extra: bytes, wanted: list[str], name: str) -> dict[str, int]:
    """Values of the ZIP64 extra field (id 1) for the ``wanted`` fields, in spec order."""
    i = 0
    while i + 4 <= len(extra):
        tag, n = struct.unpack_from("<2H", extra, i)
        if tag == 1:
            body = extra[i + 4 : i + 4 + n]
            if len(body) < 8 * len(wanted):
                raise _Damaged(f"member {name!r}: its ZIP64 extra field is too short")
            return {k: struct.unpack_from("<Q", body, 8 * j)[0] for j, k in enumerate(wanted)}
        i += 4 + n
    raise _Damaged(f"member {name!r}: sizes say ZIP64 but it has no ZIP64 extra field")


def _directory(fp: BinaryIO, size: int) -> AppendedZip | None:
    found = _find_eocd(fp, size)
    if found is None:
        return None
    pos, (_, disk, cd_disk, n_here, n_total, cd_size, cd_offset, _) = found
    end = pos
    z64 = _zip64_end(fp, pos)
    if z64 is not None:
        n_total, cd_size, cd_offset, end = z64
        n_here = n_total
    elif disk != 0 or cd_disk != 0 or n_here != n_total:
        raise _Damaged("its end record describes a multi-disk archive (disk numbers or entry counts disagree)")
    if n_total > MAX_MEMBERS:
        raise ArtifactError(f"has an appended ZIP with {n_total} members, more than the {MAX_MEMBERS} edgeq reads", _HOSTILE_FIX)
    if cd_size > MAX_DIRECTORY_BYTES:
        raise ArtifactError(
            f"has an appended ZIP whose central directory is {cd_size} bytes, more than the {MAX_DIRECTORY_BYTES} edgeq reads",
            _HOSTILE_FIX,
        )
    cd_start = end - cd_size
    if cd_start < 0:
        raise _Damaged(f"its end record gives a central directory of {cd_size} bytes, more than precedes it ({end})")
    concat = cd_start - cd_offset  # bytes before the ZIP that its offsets do not count
    if concat < 0:
        raise _Damaged(f"its end record puts the central directory at offset {cd_offset}, past where it ends ({cd_start})")
    cd = _read_at(fp, cd_start, cd_size)
    if len(cd) != cd_size:
        raise _Damaged("its central directory is cut short")
    members: list[ZipMember] = []
    i = 0
    for k in range(n_total):
        if i + _CDH.size > len(cd) or cd[i : i + 4] != _CDH_SIG:
            raise _Damaged(f"central-directory entry {k} at offset {cd_start + i} is not a ZIP directory record")
        (_, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, mdisk, _, _, offset) = _CDH.unpack_from(cd, i)
        raw_name = cd[i + _CDH.size : i + _CDH.size + nlen]
        extra = cd[i + _CDH.size + nlen : i + _CDH.size + nlen + elen]
        i += _CDH.size + nlen + elen + clen
        if i > len(cd):
            raise _Damaged(f"central-directory entry {k} runs past the end of the directory")
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        wanted = [f for f, v in (("size", usize), ("csize", csize), ("offset", offset)) if v == _U32]
        if mdisk == _U16:
            wanted.append("disk")
        if wanted:
            vals = _zip64_extra(extra, wanted, name)
            usize, csize, offset = vals.get("size", usize), vals.get("csize", csize), vals.get("offset", offset)
            mdisk = vals.get("disk", mdisk)
        if mdisk != 0:
            raise _Damaged(f"member {name!r} is on disk {mdisk} (multi-disk archives are not read)")
        header = offset + concat
        if header + _LFH.size + nlen + csize > cd_start:
            raise _Damaged(
                f"member {name!r}: its local header offset {offset} and compressed size {csize} reach past"
                f" the central directory (offset {cd_start})"
            )
        if any(m.name == name for m in members):
            raise ArtifactError(f"has an appended ZIP that holds member {name!r} twice", _HOSTILE_FIX)
        members.append(ZipMember(name, raw_name, method, flags, crc, csize, usize, header))
    if i != len(cd):
        raise _Damaged(f"its central directory is {cd_size} bytes but its {n_total} entries take {i}")
    ordered = sorted(members, key=lambda m: m.header_offset)
    for a, b in pairwise(ordered):
        if a.header_offset + _LFH.size + len(a.raw_name) + a.compressed_size > b.header_offset:
            raise _Damaged(f"members {a.name!r} and {b.name!r} overlap")
    start = ordered[0].header_offset if ordered else cd_start
    return AppendedZip("", start, cd_start, tuple(members))


def _read_member(fp: BinaryIO, z: AppendedZip, m: ZipMember) -> bytes:
    cap = member_cap(m.name)
    if m.flags & 0x1:
        raise ArtifactError(f"appended ZIP member {m.name!r} is encrypted", _HOSTILE_FIX)
    if m.method not in (_STORED, _DEFLATED):
        raise ArtifactError(
            f"appended ZIP member {m.name!r} uses compression method {m.method}; edgeq reads stored (0) and deflate (8)",
            _HOSTILE_FIX,
        )
    if m.size > cap:
        raise ArtifactError(
            f"appended ZIP member {m.name!r} declares {m.size} bytes uncompressed, more than the {cap} edgeq reads",
            _HOSTILE_FIX,
        )
    if m.size > RATIO_MIN_SIZE and m.size > MAX_RATIO * max(m.compressed_size, 1):
        raise ArtifactError(
            f"appended ZIP member {m.name!r} declares a compression ratio of {m.size // max(m.compressed_size, 1)}:1"
            f" ({m.compressed_size} -> {m.size} bytes), above the {MAX_RATIO}:1 edgeq accepts",
            _HOSTILE_FIX,
        )
    if m.method == _STORED and m.compressed_size != m.size:
        raise _Damaged(f"member {m.name!r} is stored but its sizes differ ({m.compressed_size} vs {m.size})")
    if m.method == _DEFLATED and m.compressed_size > m.size + (m.size >> 12) + (m.size >> 14) + 64:
        raise _Damaged(f"member {m.name!r}: {m.compressed_size} compressed bytes is more than deflate makes of {m.size}")
    head = _read_at(fp, m.header_offset, _LFH.size)
    if len(head) != _LFH.size or head[:4] != _LFH_SIG:
        raise _Damaged(f"member {m.name!r}: no local file header at offset {m.header_offset}")
    _, _, flags, method, _, _, crc, csize, usize, nlen, elen = _LFH.unpack(head)
    name_extra = fp.read(nlen + elen)
    if name_extra[:nlen] != m.raw_name:
        raise _Damaged(f"member {m.name!r}: its local header names {name_extra[:nlen]!r}")
    if method != m.method or (flags & 0x9) != (m.flags & 0x9):
        raise _Damaged(f"member {m.name!r}: local header and central directory disagree on method or flags")
    if not flags & 0x8:  # no data descriptor: the local header carries CRC and sizes
        wanted = [f for f, v in (("size", usize), ("csize", csize)) if v == _U32]
        vals = _zip64_extra(name_extra[nlen:], wanted, m.name) if wanted else {}
        usize, csize = vals.get("size", usize), vals.get("csize", csize)
        if (crc, csize, usize) != (m.crc, m.compressed_size, m.size):
            raise _Damaged(
                f"member {m.name!r}: local header (crc {crc:#x}, {csize} -> {usize} bytes) and central directory"
                f" (crc {m.crc:#x}, {m.compressed_size} -> {m.size} bytes) disagree"
            )
    data_start = m.header_offset + _LFH.size + nlen + elen
    if data_start + m.compressed_size > z.directory_start:
        raise _Damaged(f"member {m.name!r}: its data runs into the central directory")
    out = _inflate(fp, m) if m.method == _DEFLATED else fp.read(m.compressed_size)
    if len(out) != m.size:
        more = "more" if len(out) > m.size else "fewer"
        raise _Damaged(f"member {m.name!r} holds {more} bytes than the {m.size} it declares")
    if zlib.crc32(out) != m.crc:
        raise _Damaged(f"member {m.name!r} fails its CRC check (crc {zlib.crc32(out):#x}, declared {m.crc:#x}): the data is corrupt")
    return bytes(out)


def _inflate(fp: BinaryIO, m: ZipMember) -> bytearray:
    """At most ``m.size + 1`` bytes of the member's raw deflate stream."""
    limit = m.size + 1
    d = zlib.decompressobj(-15)
    out = bytearray()
    left = m.compressed_size
    try:
        while left > 0 and len(out) < limit and not d.eof:
            chunk = fp.read(min(_CHUNK, left))
            if not chunk:
                raise _Damaged(f"member {m.name!r}: the file ends inside its compressed data")
            left -= len(chunk)
            while chunk and len(out) < limit and not d.eof:
                out += d.decompress(chunk, limit - len(out))
                chunk = d.unconsumed_tail
        while not d.eof and len(out) < limit:  # output zlib still holds back
            more = d.decompress(b"", limit - len(out))
            if not more:
                break
            out += more
    except zlib.error as e:
        raise _Damaged(f"member {m.name!r} has corrupt compressed data ({e})") from None
    if len(out) >= limit:
        raise _Damaged(f"member {m.name!r} decompresses to more than the {m.size} bytes it declares")
    if not d.eof:
        raise _Damaged(f"member {m.name!r}: its compressed data ends before the deflate stream does (truncated)")
    if left > 0 or d.unused_data:
        raise _Damaged(f"member {m.name!r}: bytes follow the end of its deflate stream")
    return out


def _where(path: str | Path, what: str) -> str:
    return f"{path}: {what}" if what.startswith("appended") else f"{path} {what}"


def read_appended(path: str | Path, names: Iterable[str] | None = None) -> tuple[AppendedZip, dict[str, bytes]] | None:
    """The appended ZIP of ``path`` and the contents of its members called ``names`` (all if None).

    Returns None when the file has no appended ZIP at all (no end-of-central-directory record).

    Raises:
        ArtifactError: the file cannot be read, or its ZIP is damaged or exceeds a cap (see the
            module docstring); the message names the file and the member.
    """
    try:
        with open(path, "rb") as fp:
            return _read_appended(fp, os.fstat(fp.fileno()).st_size, str(path), names)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None


def read_appended_bytes(data: bytes, label: str = "<bytes>", names: Iterable[str] | None = None) -> tuple[AppendedZip, dict[str, bytes]] | None:
    """:func:`read_appended` on bytes in memory (``label`` names them in messages)."""
    return _read_appended(io.BytesIO(data), len(data), label, names)


def _read_appended(fp: BinaryIO, size: int, label: str, names: Iterable[str] | None) -> tuple[AppendedZip, dict[str, bytes]] | None:
    try:
        z = _directory(fp, size)
        if z is None:
            return None
        z = AppendedZip(label, z.start, z.directory_start, z.members)
        wanted = z.names if names is None else [n for n in names if z.member(n) is not None]
        files = {}
        for n in wanted:
            m = z.member(n)
            assert m is not None
            files[n] = _read_member(fp, z, m)
        return z, files
    except _Damaged as e:
        raise ArtifactError(f"{label} has an appended ZIP that is damaged: {e}", _DAMAGED_FIX) from None
    except ArtifactError as e:
        raise ArtifactError(_where(label, e.what), e.fix) from None


def read_embedded(path: str | Path) -> dict[str, bytes]:
    """All files embedded in an artifact's ZIP trailer (empty dict if it has none), each bounded.

    Raises:
        ArtifactError: the trailer is damaged or a member exceeds its cap.
    """
    found = read_appended(path)
    return {} if found is None else found[1]


def zip_start(data: bytes) -> int | None:
    """Offset where an appended ZIP starts (the model bytes end), or None if there is none or it is damaged."""
    try:
        z = _directory(io.BytesIO(data), len(data))
    except (_Damaged, ArtifactError):
        return None
    return None if z is None or not z.members else z.start


def parse_labels(data: bytes, where: str = LABELS_TXT) -> list[str]:
    """Class names from labels.txt bytes: one per non-empty line, at most ``MAX_LABELS``.

    Undecodable bytes are replaced (labels are for display).
    """
    if len(data) > member_cap(LABELS_TXT):
        raise ArtifactError(f"{where} is {len(data)} bytes, more than the {member_cap(LABELS_TXT)} edgeq reads", _HOSTILE_FIX)
    labels = [s for s in (line.strip() for line in data.decode("utf-8", "replace").splitlines()) if s]
    if len(labels) > MAX_LABELS:
        raise ArtifactError(f"{where} lists {len(labels)} labels, more than the {MAX_LABELS} edgeq reads", _HOSTILE_FIX)
    return labels


def read_labels(files: dict[str, bytes], where: str = LABELS_TXT) -> list[str]:
    return parse_labels(files.get(LABELS_TXT, b""), where)
