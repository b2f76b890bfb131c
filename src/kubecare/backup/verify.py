"""``kubecare backup verify``: every member's sha256 against its type's checksums file, every
checksums file and frame against the manifest, and the frames tiling the file with nothing
hidden between them (so ``tar -x`` extracts exactly what kubecare checked)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .archive import FOOTER_SIZE, ArchiveError, ArchiveReader, Member, group_dir, parse_member_path


@dataclass
class VerifyReport:
    name: str
    types: int = 0
    objects: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _frame_sha(reader: ArchiveReader, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    reader.f.seek(offset)
    left = length
    while left:
        chunk = reader.f.read(min(left, 1 << 20))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def checked_members(reader: ArchiveReader, entry: dict[str, Any]) -> Iterator[Member]:
    """The object members of one type, each checked against the type's checksums file, which
    comes last in the frame: a mismatch raises at the end, after every member was seen."""
    group, resource = str(entry.get("group") or ""), str(entry.get("resource") or "")
    prefix = f"resources/{group_dir(group)}/{resource}/"
    sums_path = (entry.get("checksums") or {}).get("path")
    seen: dict[str, str] = {}
    listed: dict[str, str] | None = None
    for m in reader.type_members(entry):
        if m.path == sums_path:
            if hashlib.sha256(m.data).hexdigest() != entry["checksums"].get("sha256"):
                raise ArchiveError(f"{reader.name}: {m.path} does not match the manifest")
            listed = _parse_sums(m.data, reader.name, m.path)
            continue
        if listed is not None or not m.path.startswith(prefix):
            raise ArchiveError(f"{reader.name}: unexpected member {m.path} in the {resource} frame")
        parse_member_path(m.path)
        seen[m.path] = hashlib.sha256(m.data).hexdigest()
        yield m
    if entry.get("frame") and listed is None:
        raise ArchiveError(f"{reader.name}: the checksums of {resource} are missing")
    listed = listed or {}
    for path in sorted(set(seen) | set(listed)):
        if path not in seen:
            raise ArchiveError(f"{reader.name}: {path} is listed but missing")
        if path not in listed:
            raise ArchiveError(f"{reader.name}: {path} is not in the checksums")
        if seen[path] != listed[path]:
            raise ArchiveError(f"{reader.name}: {path} does not match its sha256 (changed)")
    if len(seen) != int(entry.get("count") or 0):
        raise ArchiveError(
            f"{reader.name}: {resource} has {len(seen)} objects, the manifest says "
            f"{entry.get('count')}"
        )


def _parse_sums(data: bytes, name: str, path: str) -> dict[str, str]:
    out = {}
    for line in data.decode("utf-8", "replace").split("\n"):  # not splitlines(): U+2028 is a name
        if not line:
            continue
        digest, sep, member = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ArchiveError(f"{name}: {path} is corrupt")
        out[member] = digest
    return out


def verify(reader: ArchiveReader) -> VerifyReport:
    report = VerifyReport(reader.name)
    manifest = reader.manifest
    spans = []
    for entry in manifest.get("types") or []:
        report.types += 1
        frame = entry.get("frame")
        if not frame:
            if int(entry.get("count") or 0) > 0:
                report.problems.append(f"{entry.get('resource')}: objects listed but no data")
            continue
        offset, length = int(frame["offset"]), int(frame["length"])
        spans.append((offset, length))
        if _frame_sha(reader, offset, length) != frame.get("sha256"):
            report.problems.append(
                f"{entry.get('resource')}: the compressed data does not match its sha256"
            )
            continue
        try:
            for _ in checked_members(reader, entry):
                report.objects += 1
        except ArchiveError as e:
            report.problems.append(e.message.removeprefix(f"{reader.name}: "))
    for vol in manifest.get("volumes") or []:
        what = f"volume {vol['namespace']}/{vol['claim']}"
        changed = False
        for span in (vol["header"], vol["frame"]):
            spans.append((int(span["offset"]), int(span["length"])))
            changed = changed or (
                _frame_sha(reader, int(span["offset"]), int(span["length"])) != span["sha256"]
            )
        if changed:
            report.problems.append(f"{what}: the compressed data does not match its sha256")
            continue
        from .volumes import volume_chunks

        try:
            for _ in volume_chunks(reader, vol):
                pass
        except ArchiveError as e:
            report.problems.append(e.message.removeprefix(f"{reader.name} "))
    # The frames, then the manifest frame and the footer, must cover the file exactly.
    pos = 0
    for offset, length in sorted(spans):
        if offset != pos:
            report.problems.append(f"unlisted or overlapping data at byte {pos}")
            break
        pos = offset + length
    reader.f.seek(0, 2)
    end = reader.f.tell()
    manifest_at = reader.manifest_offset
    if not report.problems and pos != manifest_at:
        report.problems.append(f"unlisted data between byte {pos} and the manifest")
    if manifest_at + reader.manifest_length + FOOTER_SIZE != end:
        report.problems.append("unexpected data after the manifest")
    return report
