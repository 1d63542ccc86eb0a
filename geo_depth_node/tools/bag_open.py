"""Check a rosbag2 before rosbags opens it, and recover what a power loss left of an MCAP file.

rosbags' readers end in a traceback on a damaged bag: an MCAP file cut off while it was being
written (no footer, no summary), an SQLite file with garbage in it, a bag directory whose
``metadata.yaml`` names a storage file that is not there. :func:`open_checked` looks at the
bag first, cheaply (file magic, the MCAP footer and summary, the SQLite header and b-tree), and

* raises :class:`BagError` (a ValueError that names the file and the problem) for what cannot
  be read at all;
* for an MCAP file without a valid footer or summary, reads the records in file order (with
  the ``mcap`` library's record parsers) up to the first damage, writes every complete message
  to a new MCAP file and returns that file with a ``recovery`` report (messages per topic, last
  good log time, bytes read of the file); a WARNING log says the same;
* returns a healthy bag unchanged, without reading its messages.

:data:`READ_ERRORS` is what a rosbags reader raises on a damaged file while it opens or
iterates; :class:`~geo_depth_node.tools.bag_io.StereoBag` turns those into BagError too.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import struct
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Iterator

_LOG = logging.getLogger(__name__)

MCAP_MAGIC = b'\x89MCAP0\r\n'
SQLITE_MAGIC = b'SQLite format 3\x00'
#: footer record (opcode, length 20, summary start, summary offset start, summary crc) + magic
_FOOTER_SIZE = 1 + 8 + 20 + len(MCAP_MAGIC)
#: a summary section larger than this is not parsed by the health check (the footer is)
SUMMARY_CHECK_MAX_BYTES = 64 * 2**20
#: SQLite files up to this size get a full ``PRAGMA quick_check`` (it reads every page)
QUICK_CHECK_MAX_BYTES = 512 * 2**20
#: a longer MCAP record is taken for damage by the recovery (real chunks are a few MiB)
RECORD_MAX_BYTES = 2**30


class BagError(ValueError):
    """A bag that cannot be read (damaged or incomplete); the message says what and which file."""


def _read_errors() -> tuple[type[BaseException], ...]:
    """Exception types a rosbags reader raises on a damaged storage file."""
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as Reader1Error
    from rosbags.rosbag2 import ReaderError as Reader2Error
    from rosbags.serde import SerdeError

    errors: list[type[BaseException]] = [
        AnyReaderError, Reader1Error, Reader2Error, SerdeError, sqlite3.Error, struct.error,
        zlib.error, OSError, EOFError, ValueError, IndexError, KeyError,
        RuntimeError]  # RuntimeError: lz4.frame on a damaged chunk
    try:
        import apsw  # rosbags' SQLite binding
        errors.append(apsw.Error)
    except ImportError:
        _LOG.debug('apsw not importable: its errors are not listed')
    try:
        from compression.zstd import ZstdError  # Python >= 3.14
    except ImportError:
        try:
            from backports.zstd import ZstdError
        except ImportError:
            ZstdError = None
    if ZstdError is not None:
        errors.append(ZstdError)
    return tuple(errors)


#: exceptions of a rosbags reader (opening or iterating) that mean "the bag is damaged"
READ_ERRORS: tuple[type[BaseException], ...] = _read_errors()


# ------------------------------------------------------------------------ bag layout
def _natural_key(path: Path) -> list:
    """Sort key that orders bag_2.mcap before bag_10.mcap."""
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', path.name)]


@dataclass
class _Layout:
    """Where a bag's storage files are: a single file, or a directory with metadata.yaml."""

    storage_files: list[Path]
    storage: str  # 'mcap', 'sqlite3' or '' (other: left to rosbags)
    directory: Path | None = None
    compression_mode: str = ''
    compression_format: str = ''


def _layout(path: Path) -> _Layout:
    """Storage files of the bag at ``path`` (a directory or one file).

    Raises:
        BagError: unreadable metadata.yaml, storage files missing, a directory without
            metadata.yaml and not exactly one storage file.
    """
    if not path.is_dir():
        storage = {'.mcap': 'mcap', '.db3': 'sqlite3'}.get(path.suffix, '')
        return _Layout([path], storage)
    meta = path / 'metadata.yaml'
    if not meta.is_file():
        found = sorted([*path.glob('*.mcap'), *path.glob('*.db3')], key=_natural_key)
        if len(found) == 1:
            _LOG.warning('bag directory %s has no metadata.yaml (the recording was not closed?): '
                         'reading its only storage file %s', path, found[0].name)
            return _layout(found[0])
        raise BagError(f'bag directory {path} has no metadata.yaml and '
                       + (f'{len(found)} storage files ({", ".join(f.name for f in found)}): '
                          'cannot tell how they belong together' if found
                          else 'no .mcap or .db3 file: it is not a rosbag2'))
    import yaml

    try:
        doc = yaml.safe_load(meta.read_text(encoding='utf-8'))
        info = doc['rosbag2_bagfile_information']
        names = [str(x) for x in info['relative_file_paths']]
        storage = str(info['storage_identifier'])
        mode = str(info.get('compression_mode') or '').lower()
        fmt = str(info.get('compression_format') or '').lower()
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise BagError(f'bag {path}: cannot read its metadata {meta}: '
                       f'{type(exc).__name__}: {exc}') from exc
    files = [path / Path(n).name for n in names]  # as rosbags resolves them
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        present = sorted(p.name for p in path.iterdir())
        raise BagError(f'bag {path} is incomplete: {meta} names storage file(s) '
                       f'{", ".join(missing)} that do not exist (the directory holds: '
                       f'{", ".join(present)})')
    if not files:
        raise BagError(f'bag {path}: {meta} lists no storage file (relative_file_paths is empty)')
    return _Layout(files, storage if mode != 'file' else '', path,
                   '' if mode == 'none' else mode, fmt)


# ------------------------------------------------------------------------ health checks
def _mcap_damage(file: Path) -> str | None:
    """Why ``file`` cannot be opened as an indexed MCAP (None: footer and summary are fine).

    Reads the header, the footer and the summary section only, never the messages.

    Raises:
        BagError: the file is empty or does not start with the MCAP magic (not recoverable).
    """
    size = file.stat().st_size
    with file.open('rb') as f:
        head = f.read(len(MCAP_MAGIC))
        if not head:
            raise BagError(f'MCAP file {file} is empty (0 bytes)')
        if head != MCAP_MAGIC:
            raise BagError(f'{file} is not an MCAP file: it starts with {head!r}, not the MCAP '
                           'magic')
        if size < len(MCAP_MAGIC) + _FOOTER_SIZE:
            return f'the file has only {size} bytes (no footer)'
        f.seek(size - _FOOTER_SIZE)
        tail = f.read(_FOOTER_SIZE)
        if tail[-len(MCAP_MAGIC):] != MCAP_MAGIC:
            return 'the file does not end with the MCAP magic (no footer: cut off while written?)'
        opcode, length, summary_start, _offsets, summary_crc = struct.unpack('<BQQQI', tail[:29])
        if opcode != 0x02 or length != 20:
            return 'the footer record is invalid'
        footer_start = size - _FOOTER_SIZE
        if summary_start == 0:
            return None  # valid: an MCAP without a summary (rosbags scans it)
        if not len(MCAP_MAGIC) < summary_start <= footer_start:
            return f'the footer points to a summary at byte {summary_start}, outside the file'
        if footer_start - summary_start > SUMMARY_CHECK_MAX_BYTES:
            return None
        f.seek(summary_start)
        summary = f.read(footer_start - summary_start)
    if summary_crc and zlib.crc32(tail[:1 + 8 + 16], zlib.crc32(summary)) != summary_crc:
        return 'the summary section fails its CRC'
    pos = 0
    while pos < len(summary):
        if len(summary) - pos < 9:
            return f'the summary section ends inside a record at byte {summary_start + pos}'
        opcode, length = struct.unpack_from('<BQ', summary, pos)
        if opcode == 0 or length > len(summary) - pos - 9:
            return f'the summary section has an invalid record at byte {summary_start + pos}'
        pos += 9 + length
    return None


def _check_sqlite(file: Path) -> None:
    """Raise BagError unless ``file`` is a readable rosbag2 SQLite database.

    Checks the header (magic, page size, the page count against the file size), the tables,
    ``PRAGMA quick_check`` (files up to QUICK_CHECK_MAX_BYTES) and a read of the first and last
    rows of the messages table.
    """
    size = file.stat().st_size
    if size == 0:
        raise BagError(f'SQLite bag file {file} is empty (0 bytes)')
    with file.open('rb') as f:
        head = f.read(100)
    if not head.startswith(SQLITE_MAGIC):
        raise BagError(f'{file} is not an SQLite database (it starts with {head[:16]!r}): the '
                       'file is damaged or not a rosbag2 .db3')
    if len(head) == 100:
        (page,) = struct.unpack_from('>H', head, 16)
        page_size = 65536 if page == 1 else page
        (pages,) = struct.unpack_from('>I', head, 28)
        counter_ok = head[24:28] == head[92:96]  # the in-header page count is valid
        if counter_ok and pages and pages * page_size > size:
            raise BagError(f'SQLite bag file {file} is truncated: its header says '
                           f'{pages * page_size} bytes ({pages} pages of {page_size}), the file '
                           f'has {size}')
    try:
        conn = sqlite3.connect(f'{file.resolve().as_uri()}?mode=ro&immutable=1', uri=True)
    except sqlite3.Error as exc:
        raise BagError(f'cannot open SQLite bag file {file}: {exc}') from exc
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {'messages', 'topics'} <= tables:
            raise BagError(f'SQLite file {file} is not a rosbag2 bag: it has no messages/topics '
                           f'table (tables: {", ".join(sorted(tables)) or "none"})')
        if size <= QUICK_CHECK_MAX_BYTES:
            rows = [r[0] for r in conn.execute('PRAGMA quick_check(5)')]
            if rows != ['ok']:
                found = '; '.join(line for r in rows for line in str(r).splitlines())
                raise BagError(f'SQLite bag file {file} is damaged (PRAGMA quick_check: {found})')
        for order in ('ASC', 'DESC'):
            conn.execute('SELECT id, topic_id, timestamp, length(data) FROM messages '
                         f'ORDER BY id {order} LIMIT 1').fetchall()
        conn.execute('SELECT id, name, type, serialization_format FROM topics').fetchall()
    except sqlite3.DatabaseError as exc:
        raise BagError(f'SQLite bag file {file} is damaged: {exc}') from exc
    finally:
        conn.close()


# ------------------------------------------------------------------------ MCAP recovery
@dataclass
class _Salvage:
    """State of a record-by-record copy of damaged MCAP files into a new one."""

    out: Path
    decompress_message: Callable[[bytes], bytes] | None = None
    writer: Any = None
    stream: Any = None
    schemas: dict[tuple, int] = field(default_factory=dict)   # content -> new id
    channels: dict[tuple, int] = field(default_factory=dict)  # content -> new id
    schema_map: dict[int, int] = field(default_factory=dict)   # old id (this file) -> new id
    channel_map: dict[int, int] = field(default_factory=dict)  # old id (this file) -> new id
    topic_of: dict[int, str] = field(default_factory=dict)     # new channel id -> topic
    per_topic: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    orphans: int = 0  # messages whose channel record was lost
    first_log_time: int | None = None
    last_log_time: int | None = None

    def start(self, profile: str, library: str) -> None:
        """Open the output file (once, at the first header)."""
        if self.writer is not None:
            return
        from mcap.writer import CompressionType, Writer

        self.stream = self.out.open('wb')
        self.writer = Writer(self.stream, compression=CompressionType.ZSTD)
        self.writer.start(profile=profile, library=f'geo_depth_node recovery of {library}')

    def record(self, rec: Any) -> None:
        """Copy one Schema, Channel or Message record (other records are ignored)."""
        from mcap.records import Channel, Message, Schema

        if isinstance(rec, Schema):
            key = (rec.name, rec.encoding, bytes(rec.data))
            if key not in self.schemas:
                self.schemas[key] = self.writer.register_schema(rec.name, rec.encoding,
                                                                bytes(rec.data))
            self.schema_map[rec.id] = self.schemas[key]
        elif isinstance(rec, Channel):
            if rec.schema_id and rec.schema_id not in self.schema_map:
                return  # its schema was lost: the channel's messages count as orphans
            schema = self.schema_map.get(rec.schema_id, 0)
            key = (rec.topic, rec.message_encoding, schema, tuple(sorted(rec.metadata.items())))
            if key not in self.channels:
                self.channels[key] = self.writer.register_channel(
                    rec.topic, rec.message_encoding, schema, dict(rec.metadata))
                self.topic_of[self.channels[key]] = rec.topic
            self.channel_map[rec.id] = self.channels[key]
        elif isinstance(rec, Message):
            new = self.channel_map.get(rec.channel_id)
            if new is None:
                self.orphans += 1
                return
            data = bytes(rec.data)
            if self.decompress_message is not None:
                data = self.decompress_message(data)
            self.writer.add_message(new, rec.log_time, data, rec.publish_time, rec.sequence)
            self.messages += 1
            topic = self.topic_of[new]
            self.per_topic[topic] = self.per_topic.get(topic, 0) + 1
            self.first_log_time = rec.log_time if self.first_log_time is None \
                else min(self.first_log_time, rec.log_time)
            self.last_log_time = rec.log_time if self.last_log_time is None \
                else max(self.last_log_time, rec.log_time)

    def finish(self) -> None:
        """Write the summary and footer of the output file and close it."""
        if self.writer is not None:
            self.writer.finish()
            self.stream.close()


@functools.cache
def _parse_errors() -> tuple[type[BaseException], ...]:
    """Errors of the mcap record parsers and decompressors on damaged bytes."""
    from mcap.exceptions import McapError

    errors: list[type[BaseException]] = [McapError, struct.error, ValueError, EOFError,
                                         zlib.error, RuntimeError]  # RuntimeError: lz4
    try:
        import zstandard
        errors.append(zstandard.ZstdError)
    except ImportError:
        _LOG.debug('zstandard not importable: zstd chunks cannot be recovered')
    return tuple(errors)


def _parse(cls: Any, body: bytes) -> Any:
    """One record body -> the mcap record (``cls.read``)."""
    from mcap.data_stream import ReadDataStream
    from mcap.records import Message

    stream = ReadDataStream(BytesIO(body))
    return cls.read(stream, len(body)) if cls is Message else cls.read(stream)


_INNER = {0x03: 'Schema', 0x04: 'Channel', 0x05: 'Message'}


def _walk_inner(data: bytes, sink: _Salvage) -> tuple[int, str | None]:
    """Copy the Schema/Channel/Message records of (possibly partial) chunk content.

    Returns:
        (bytes of ``data`` used up to the end of the last complete record, the problem that
        stopped the walk or None when ``data`` ended exactly after a record).
    """
    from mcap import records

    pos = 0
    while pos < len(data):
        if len(data) - pos < 9:
            return pos, 'ends inside a record header'
        opcode, length = struct.unpack_from('<BQ', data, pos)
        if length > len(data) - pos - 9:
            return pos, f'ends inside a {_INNER.get(opcode, "record")} record'
        if opcode in _INNER:
            try:
                rec = _parse(getattr(records, _INNER[opcode]), data[pos + 9:pos + 9 + length])
            except _parse_errors() as exc:
                return pos, f'has an undecodable {_INNER[opcode]} record ({exc})'
            sink.record(rec)
        pos += 9 + length
    return pos, None


def _partial_chunk(body: bytes, sink: _Salvage) -> tuple[int, str]:
    """Copy what the beginning ``body`` of a cut-off Chunk record holds.

    Returns:
        (bytes of ``body`` used, what stopped the copy).
    """
    import zstandard

    head = 8 + 8 + 8 + 4
    if len(body) < head + 4:
        return 0, 'its header is incomplete'
    (n,) = struct.unpack_from('<I', body, head)
    start = head + 4 + n + 8
    if len(body) < start:
        return 0, 'its header is incomplete'
    compression = body[head + 4:head + 4 + n].decode('utf-8', 'replace')
    part = body[start:]
    try:
        if compression == '':
            data = part
        elif compression == 'zstd':
            data = zstandard.ZstdDecompressor().decompressobj().decompress(part)
        elif compression == 'lz4':
            import lz4.frame
            data = lz4.frame.LZ4FrameDecompressor().decompress(part)
        else:
            return 0, f'its compression {compression!r} is unknown'
    except _parse_errors() as exc:
        return 0, f'its {compression} data does not decompress ({exc})'
    used, why = _walk_inner(data, sink)
    if compression == '':
        return start + used, f'its content {why or "ends after a complete record"}'
    (size,) = struct.unpack_from('<Q', body, 16)
    if not data:
        return 0, f'nothing of its {compression} content ({size} bytes) decompresses'
    return (len(body) if used else 0), (f'{len(data)} of its {size} bytes of {compression} '
                                        f'content decompress, {why or "up to a whole record"}')


def _salvage_file(file: Path, sink: _Salvage) -> dict[str, Any]:
    """Copy the records of one MCAP file up to its first damage into ``sink``.

    Returns:
        {'file', 'bytes_read', 'bytes_total', 'truncated', 'damage'}.
    """
    from mcap import records
    from mcap.stream_reader import get_chunk_data_stream

    sink.schema_map.clear()
    sink.channel_map.clear()
    size = file.stat().st_size
    damage: str | None = None
    truncated = True
    good = pos = len(MCAP_MAGIC)
    with file.open('rb') as f:
        f.seek(pos)
        first = True
        while True:
            hdr = f.read(9)
            if len(hdr) < 9:
                damage = (f'the file ends at byte {size} after the last complete record' if not hdr
                          else f'the file ends inside a record header at byte {pos}')
                break
            opcode, length = struct.unpack('<BQ', hdr)
            if opcode == 0x00:
                damage = f'invalid record (opcode 0x00, zeroed or garbage bytes) at byte {pos}'
                break
            if first and opcode != 0x01:
                raise BagError(f'MCAP file {file} is damaged: the first record is not a header')
            rest = size - pos - 9
            if length > RECORD_MAX_BYTES:
                damage = (f'implausible record length {length} (opcode 0x{opcode:02x}) at byte '
                          f'{pos}: garbage bytes')
                break
            if length > rest:
                if opcode == 0x06 and sink.writer is not None:
                    used, why = _partial_chunk(f.read(rest), sink)
                    good = pos + 9 + used if used else good
                    damage = (f'the file ends inside a chunk (record at byte {pos}, {length} bytes '
                              f'long, {rest} present); {why}')
                else:
                    damage = (f'the file ends inside a record (opcode 0x{opcode:02x} at byte '
                              f'{pos}, {length} bytes long, {rest} present)')
                break
            body = f.read(length)
            try:
                if opcode == 0x01:
                    header = _parse(records.Header, body)
                    sink.start(header.profile, header.library)
                    first = False
                elif opcode in _INNER:
                    sink.record(_parse(getattr(records, _INNER[opcode]), body))
                elif opcode == 0x06:
                    chunk = _parse(records.Chunk, body)
                    stream, n = get_chunk_data_stream(chunk, validate_crc=True)
                    used, why = _walk_inner(stream.read(n) if n else b'', sink)
                    if why:
                        good = pos + 9 + used if chunk.compression == '' else good
                        damage = f'the chunk at byte {pos} {why}'
                        break
            except _parse_errors() as exc:
                damage = f'undecodable record (opcode 0x{opcode:02x}) at byte {pos}: {exc}'
                break
            pos += 9 + length
            good = pos
            if opcode in (0x0F, 0x02):  # DataEnd, Footer: every message has been read
                why = _mcap_damage(file)
                damage = f'the data section is complete; {why}' if why else None
                truncated = False
                break
    return {'file': str(file), 'bytes_read': good, 'bytes_total': size, 'truncated': truncated,
            'damage': damage}


def recover_mcap(files: list[Path], out: Path, *,
                 decompress_message: Callable[[bytes], bytes] | None = None) -> dict[str, Any]:
    """Copy every complete message of the MCAP ``files`` (in order) into the new MCAP ``out``.

    Each file is read record by record up to its first damage (end of file inside a record,
    zeroed bytes, a chunk failing its CRC or not decompressing); a chunk cut off by the end
    of the file is decompressed as far as it goes. Schemas, channels (topic, encoding,
    metadata incl. the offered QoS) and messages (log/publish time, sequence, data) are kept.

    Args:
        files: the storage files of one bag, in order.
        out: the MCAP file to write (replaced).
        decompress_message: applied to each message's data (rosbag2 'message' compression).

    Returns:
        The recovery report: ``truncated`` (the messages of a file end before its data
        section does: cut off or damaged there),
        ``damage`` (what stopped the reading), ``messages_recovered``, ``per_topic``,
        ``first_log_time_ns``, ``last_log_time_ns``, ``bytes_read`` and ``bytes_total``
        (summed over the files; ``bytes_read`` ends at the last record used),
        ``messages_without_channel``, ``files`` (per file), ``recovered_file``.

    Raises:
        BagError: a file is not an MCAP file, or no complete message is left.
    """
    sink = _Salvage(out, decompress_message)
    try:
        per_file = [_salvage_file(f, sink) for f in files]
    finally:
        sink.finish()
    damage = '; '.join(f'{Path(p["file"]).name}: {p["damage"]}' for p in per_file
                       if p['damage'])
    if sink.messages == 0:
        out.unlink(missing_ok=True)
        raise BagError(f'MCAP bag file(s) {", ".join(str(f) for f in files)} damaged and no '
                       f'complete message is left before the damage ({damage})')
    return {'truncated': any(p['truncated'] for p in per_file), 'damage': damage,
            'messages_recovered': sink.messages, 'per_topic': dict(sink.per_topic),
            'first_log_time_ns': sink.first_log_time, 'last_log_time_ns': sink.last_log_time,
            'bytes_read': sum(p['bytes_read'] for p in per_file),
            'bytes_total': sum(p['bytes_total'] for p in per_file),
            'messages_without_channel': sink.orphans, 'files': per_file,
            'recovered_file': str(out)}


# ------------------------------------------------------------------------ reading
def read_guarded(reader: Any, connections: list, path: str | os.PathLike
                 ) -> Iterator[tuple[Any, int, Any]]:
    """(connection, bag time ns, deserialized message) of an open rosbags AnyReader.

    Args:
        reader: the open ``rosbags.highlevel.AnyReader``.
        connections: the connections to read (in bag order, as ``reader.messages``); an
            empty list reads nothing (rosbags would read every connection).
        path: the bag, for the error message.

    Raises:
        BagError: the reader failed (READ_ERRORS: a damaged chunk or page, an undecodable
            message); the message says after how many of how many messages and at which
            bag time.
    """
    if not connections:
        return
    total = sum(c.msgcount for c in connections)
    n, last = 0, None
    it = reader.messages(connections=connections)
    while True:
        try:
            conn, stamp, raw = next(it)
            msg = reader.deserialize(raw, conn.msgtype)
        except StopIteration:
            return
        except READ_ERRORS as exc:
            where = f'last good bag time {last} ns' if last is not None else 'at the first message'
            raise BagError(f'bag {path} is damaged: reading stopped after {n} of {total} '
                           f'message(s) ({where}): {type(exc).__name__}: {exc}') from exc
        n, last = n + 1, stamp
        yield conn, stamp, msg


# ------------------------------------------------------------------------ entry point
def open_checked(path: str | os.PathLike, workdir: str | os.PathLike) -> tuple[Path, dict]:
    """Check the bag at ``path`` before rosbags opens it; recover a damaged MCAP.

    Args:
        path: a rosbag2 directory or a single .mcap / .db3 file.
        workdir: where a recovered MCAP is written (created when needed); the caller owns it.

    Returns:
        (the path to open, {}) for a healthy bag (the original path: nothing copied or
        scanned), or (the recovered .mcap in ``workdir``, the recovery report of
        :func:`recover_mcap` plus ``source``) when an MCAP storage file has no valid
        footer/summary. A bag directory without metadata.yaml but with one storage file
        opens that file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        BagError: storage files named by metadata.yaml missing, a damaged SQLite file, a file
            that is not MCAP/SQLite, or a damaged MCAP with no complete message.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'bag {path} does not exist')
    lay = _layout(path)
    if lay.storage == 'sqlite3':
        for f in lay.storage_files:
            _check_sqlite(f)
        return (lay.directory or lay.storage_files[0]), {}
    if lay.storage != 'mcap':
        return path, {}
    damaged = {f: why for f in lay.storage_files if (why := _mcap_damage(f)) is not None}
    if not damaged:
        return (lay.directory or lay.storage_files[0]), {}
    decompress = None
    if lay.compression_mode == 'message':
        if lay.compression_format != 'zstd':
            return path, {}  # rosbags refuses it with its own error
        import zstandard
        decompress = zstandard.ZstdDecompressor().decompress
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    out = work / f'{(lay.directory or lay.storage_files[0]).name.removesuffix(".mcap")}' \
                 '.recovered.mcap'
    rec = recover_mcap(lay.storage_files, out, decompress_message=decompress)
    rec['source'] = str(path)
    rec['damaged_files'] = {str(f): why for f, why in damaged.items()}
    _LOG.warning('bag %s is damaged (%s): recovered %d message(s) (%s) up to log time %s ns, '
                 '%d of %d bytes read; reading the recovered copy %s', path, rec['damage'],
                 rec['messages_recovered'],
                 ', '.join(f'{t} {n}' for t, n in sorted(rec['per_topic'].items())),
                 rec['last_log_time_ns'], rec['bytes_read'], rec['bytes_total'], out)
    return out, rec
