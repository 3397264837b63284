"""WebDataset-style tar shards read by random access: members are indexed once, then pread.

Captions come from a sample's ``.txt`` and ``.json`` members together, as img2dataset writes
them: the raw caption is the ``.txt`` text, else the JSON's ``caption`` (or ``raw_caption``, the
DreamLIP column the official SAIL encoder reads); the rewritten caption is the first non-empty
JSON field of ``REWRITTEN_FIELDS`` (vlalign's ``caption_rewritten``, then common names and the
DreamLIP long/short captions, ShareGPT4V's first, as in the official recipe). JSON
``"captions": [raw, rewritten]`` is read too.

Shards must be local, uncompressed ``.tar`` files: samples are read by random access (an
encode resumes shard by shard and its DataLoader workers read any item), which neither a
stream (``http(s)://``, ``pipe:``, ``gs://``, ``s3://``, ... as webdataset's ``gopen`` opens)
nor a compressed tar (``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz``/``.tar.zst``, which
webdataset reads only front to back) allows. Such a shard is refused up front in one line that
names it and says what to run (download it, decompress it), before any item is read.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from vlalign.data.base import RAW, REWRITTEN, BadItem, Example
from vlalign.data.images import decode_image
from vlalign.errors import DataError, UserError
from vlalign.utils.optional import require

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTS = ("txt", "json")
RAW_FIELDS = ("caption", "raw_caption")
REWRITTEN_FIELDS = ("caption_rewritten", "rewritten_caption", "long_caption", "longSV_captions",
                    "shortSV_captions", "longIB_captions", "shortIB_captions",
                    "longLLA_captions", "shortLLA_captions", "short_caption")
LIST_FIELD = "captions"  # [raw, rewritten, ...]

# One member's location in its shard: (data offset, size, extension).
Member = tuple[int, int, str]
Shards = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


# Compressed tars: (suffixes, leading magic bytes, compression, the command that decompresses)
COMPRESSED = ((((".tar.gz", ".tgz"), b"\x1f\x8b", "gzip", "gunzip -k"),
               ((".tar.bz2", ".tbz2", ".tbz"), b"BZh", "bzip2", "bunzip2 -k"),
               ((".tar.xz", ".txz"), b"\xfd7zXZ\x00", "xz", "unxz -k"),
               ((".tar.zst", ".tzst"), b"\x28\xb5\x2f\xfd", "zstd", "unzstd")))
_REMOTE = re.compile(r"^(pipe:|[a-z][a-z0-9+.-]*://)", re.IGNORECASE)


def expand_shards(shards: Shards) -> list[Path]:
    """Brace-expand (``shard-{000..003}.tar``) and glob (``*``, ``?``) names; all must exist
    and be local uncompressed tars (a UserError naming the first that is not, and what to do)."""
    require("braceexpand", "data")
    from braceexpand import braceexpand  # installed with webdataset (the ``data`` extra)

    paths: list[Path] = []
    for pattern in _patterns(shards):
        for name in braceexpand(pattern):
            refuse_remote(name)
            matches = sorted(glob.glob(name)) if any(c in name for c in "*?") else [name]
            if not matches or not Path(matches[0]).is_file():
                raise UserError(f"webdataset shard not found: {name}")
            paths.extend(Path(m) for m in matches)
    if not paths:
        raise UserError(f"no webdataset shards match {shards!r}")
    for path in paths:
        refuse_compressed(path)
    return paths


def refuse_remote(name: str) -> None:
    """A UserError for a URL or ``pipe:`` shard: download it to a local .tar first."""
    match = _REMOTE.match(name)
    if not match:
        return
    if name.startswith("pipe:"):
        hint = f"run the command into a file first ({name[5:].strip()} > shard.tar)"
    else:
        fetch = {"s3": "aws s3 cp", "gs": "gsutil cp", "hf": "huggingface-cli download"}
        tool = fetch.get(match.group(1).split(":")[0].lower(), "curl -fLO")
        hint = f"download it first ({tool} {name}) and pass the local path"
    raise UserError(f"webdataset shard {name} is a stream, not a local file; vlalign reads "
                    f"shards by random access (encode resumes shard by shard): {hint}")


def refuse_compressed(path: Path) -> None:
    """A UserError for a compressed tar (by suffix or by its first bytes): decompress it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
    except OSError:
        return  # index_shard reports unreadable files
    name = path.name.lower()
    for suffixes, magic, kind, command in COMPRESSED:
        if name.endswith(suffixes) or head.startswith(magic):
            raise UserError(f"webdataset shard {path} is {kind}-compressed; vlalign reads shards "
                            f"by random access, which needs an uncompressed .tar: run "
                            f"`{command} {path}` and pass the .tar it writes")


def _patterns(shards: Shards) -> list[str]:
    if isinstance(shards, (str, os.PathLike)):
        return [os.fspath(shards)]
    return [os.fspath(pattern) for pattern in shards]


def index_shard(path: Path) -> dict[str, dict[str, Member]]:
    """Map each sample key (member name up to the first dot) to {extension: member location}."""
    samples: dict[str, dict[str, Member]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                directory, _, base = info.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not info.isfile() or not dot or base.startswith(("__", ".")):
                    continue
                key = f"{directory}/{stem}" if directory else stem
                ext = ext.lower()
                samples.setdefault(key, {})[ext] = (info.offset_data, info.size, ext)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"cannot index webdataset shard {path} (an uncompressed tar is needed): "
                        f"{error}") from None
    return samples


def _first(members: dict[str, Member], exts: tuple[str, ...]) -> Member | None:
    return next((members[e] for e in exts if e in members), None)


def _text(value: Any) -> str | None:
    """A caption's stripped text, or None for anything that is not a non-empty string."""
    return (value.strip() or None) if isinstance(value, str) else None


def _field(record: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    return next((text for text in map(_text, map(record.get, fields)) if text), None)


class WebDatasetShards:
    """Image-caption samples (jpg/jpeg/png/webp + txt and/or json) from tar shards.

    Open file handles are per process and never pickled, so the object can be sent to DataLoader
    workers; reads use ``os.pread`` and so share no file position.
    """

    class_names = None

    def __init__(self, shards: Shards) -> None:
        self._files: dict[int, BinaryIO] = {}
        self._pid = os.getpid()
        self.paths = expand_shards(shards)
        # (shard, key, image member, {caption extension: member})
        self.samples: list[tuple[int, str, Member | None, dict[str, Member]]] = []
        digest = hashlib.sha1(b"wds\n")
        for shard, path in enumerate(self.paths):
            stat = path.stat()
            digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
            for key, members in index_shard(path).items():
                self.samples.append((shard, key, _first(members, IMAGE_EXTS),
                                     {e: members[e] for e in CAPTION_EXTS if e in members}))
        self.name = f"wds:{','.join(_patterns(shards))}"
        self.fingerprint = digest.hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def __len__(self) -> int:
        return len(self.samples)

    def close(self) -> None:
        """Close the shard files this process opened; the next load reopens what it needs."""
        for handle in self._files.values():
            handle.close()
        self._files = {}

    def __del__(self) -> None:
        self.close()

    def _read(self, shard: int, member: Member) -> bytes:
        offset, size, _ = member
        if self._pid != os.getpid():  # forked worker: close the inherited copies, open its own
            self.close()
            self._pid = os.getpid()
        if shard not in self._files:
            self._files[shard] = open(self.paths[shard], "rb", buffering=0)  # noqa: SIM115
        data = os.pread(self._files[shard].fileno(), size, offset)
        if len(data) != size:
            raise BadItem(f"{self.paths[shard]}: member at offset {offset} is truncated")
        return data

    def load(self, index: int) -> Example:
        """Sample ``index``'s decoded image and captions, or BadItem saying what is wrong."""
        shard, key, image, captions = self.samples[index]
        where = f"{self.paths[shard]}:{key}"
        if image is None:
            raise BadItem(f"{where}: no image member ({'/'.join(IMAGE_EXTS)})")
        if not captions:
            raise BadItem(f"{where}: no caption member ({'/'.join(CAPTION_EXTS)})")
        texts = {ext: self._read(shard, member) for ext, member in captions.items()}
        return Example(key=key, image=decode_image(self._read(shard, image)),
                       captions=self._captions(where, texts.get("txt"), texts.get("json")))

    @staticmethod
    def _captions(where: str, txt: bytes | None, record: bytes | None) -> dict[str, str]:
        """{RAW: ..., REWRITTEN: ...} from a sample's .txt and .json members (see the module
        docstring); REWRITTEN only when the sample has one."""
        try:
            text = None if txt is None else txt.decode("utf-8")
            fields = {} if record is None else json.loads(record.decode("utf-8"))
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise BadItem(f"{where}: unreadable caption ({error})") from None
        if not isinstance(fields, dict):
            fields = {}
        listed = fields.get(LIST_FIELD)
        listed = [_text(c) for c in listed] if isinstance(listed, list) else []
        listed += [None, None]
        raw = _text(text) or _field(fields, RAW_FIELDS) or listed[0]
        if raw is None:
            raise BadItem(f"{where}: empty or missing caption")
        rewritten = _field(fields, REWRITTEN_FIELDS) or listed[1]
        return {RAW: raw} if rewritten is None else {RAW: raw, REWRITTEN: rewritten}
