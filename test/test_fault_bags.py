"""Damaged bags: `geo-depth replay` ends with a clear error (exit 2) for a bag it cannot open,
replays what an MCAP cut off while it was written (power loss) still holds, and keeps the
frames read before damage found while reading (exit 0, ``bag_error`` in the report); never a
traceback.

A small stereo bag (geo-depth scene's writer, 128 x 96, 6 frames) is written once as mcap and
as sqlite3; each test damages a copy: a truncated .mcap (rosbags-written: one uncompressed
chunk; mcap-library-written: small zstd chunks), garbage in / a truncated .db3, a missing
storage file, a chunk that fails its CRC in the middle of an otherwise intact file.
"""
from __future__ import annotations

import re
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from geo_depth_node.tools.scene_bag import write_scene_bag

W, H, FRAMES = 128, 96, 6
STEREO = ('/left/image_rect', '/left/camera_info', '/right/image_rect', '/right/camera_info')
PARAMS = """\
geo_depth_node:
  ros__parameters:
    stereo:
      matcher: opencv_sgbm
      num_disparities: 32
"""


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    out = tmp_path_factory.mktemp('fault_bags')
    mcap = write_scene_bag(out / 'mcap', frames=FRAMES, width=W, height=H, storage='mcap')
    db3 = write_scene_bag(out / 'sqlite3', frames=FRAMES, width=W, height=H, storage='sqlite3')
    params = out / 'params.yaml'
    params.write_text(PARAMS)
    zstd_file = out / 'zstd_chunks.mcap'
    _rewrite_with_zstd_chunks(Path(mcap['bag']) / 'bag.mcap', zstd_file)
    return {'mcap': Path(mcap['bag']), 'db3': Path(db3['bag']), 'params': str(params),
            'zstd': zstd_file, 'stamps': mcap['stamps_ns']}


def _rewrite_with_zstd_chunks(src: Path, dst: Path) -> None:
    """The messages of ``src`` in a bare MCAP of the mcap library's writer: zstd chunks of
    ~4 kB (one or two messages each), CRCs, full summary (as `ros2 bag record` writes)."""
    from mcap.reader import make_reader
    from mcap.writer import CompressionType, Writer

    with src.open('rb') as fin, dst.open('wb') as fout:
        writer = Writer(fout, chunk_size=4000, compression=CompressionType.ZSTD)
        writer.start(profile='ros2', library='test')
        schemas: dict[int, int] = {}
        channels: dict[int, int] = {}
        for schema, channel, msg in make_reader(fin).iter_messages(log_time_order=False):
            if schema.id not in schemas:
                schemas[schema.id] = writer.register_schema(schema.name, schema.encoding,
                                                            schema.data)
            if channel.id not in channels:
                channels[channel.id] = writer.register_channel(
                    channel.topic, channel.message_encoding, schemas[schema.id], channel.metadata)
            writer.add_message(channels[channel.id], msg.log_time, msg.data, msg.publish_time,
                               msg.sequence)
        writer.finish()


def _file_messages(path: Path) -> list[dict]:
    """Every message of an intact MCAP in file order: topic, log time, the file offset where
    its record ends (None inside a compressed chunk) and the offsets of its chunk record."""
    import zstandard

    data = path.read_bytes()
    topics: dict[int, str] = {}
    out: list[dict] = []
    pos = 8
    while pos < len(data) - 8:
        op, length = struct.unpack_from('<BQ', data, pos)
        if op == 0x06:  # chunk: start, end, size, crc, compression, records
            (n,) = struct.unpack_from('<I', data, pos + 9 + 28)
            compression = data[pos + 9 + 32:pos + 9 + 32 + n].decode()
            (rlen,) = struct.unpack_from('<Q', data, pos + 9 + 32 + n)
            start = pos + 9 + 32 + n + 8
            recs = data[start:start + rlen]
            if compression == 'zstd':
                recs = zstandard.ZstdDecompressor().decompress(recs)
            else:
                assert compression == ''
            ipos = 0
            while ipos < len(recs):
                iop, ilen = struct.unpack_from('<BQ', recs, ipos)
                body = recs[ipos + 9:ipos + 9 + ilen]
                if iop == 0x04:  # channel: id, schema id, topic
                    (cid,) = struct.unpack_from('<H', body, 0)
                    (tlen,) = struct.unpack_from('<I', body, 4)
                    topics[cid] = body[8:8 + tlen].decode()
                elif iop == 0x05:  # message: channel, sequence, log time
                    cid, _seq, log_time = struct.unpack_from('<HIQ', body, 0)
                    out.append({'topic': topics[cid], 'log_time': log_time,
                                'end': start + ipos + 9 + ilen if compression == '' else None,
                                'chunk_start': pos, 'chunk_end': pos + 9 + length})
                ipos += 9 + ilen
        pos += 9 + length
    return out


def _complete_frames(msgs: list[dict]) -> int:
    """Stamps for which all four stereo topics are among ``msgs``."""
    by_stamp: dict[int, set] = {}
    for m in msgs:
        by_stamp.setdefault(m['log_time'], set()).add(m['topic'])
    return sum(1 for s in by_stamp.values() if s >= set(STEREO))


def _replay(bag: Path, bags: dict, out: Path, capsys) -> tuple[int, str]:
    from geo_depth_node.tools.replay import main

    capsys.readouterr()
    rc = main([str(bag), '--params', bags['params'], '--out', str(out), '--quiet',
               '--pictures', '0'])
    return rc, capsys.readouterr().err


def _report(out: Path) -> dict:
    import json

    return json.loads((out / 'report.json').read_text())


def _truncate(path: Path, fraction: float) -> int:
    size = int(path.stat().st_size * fraction)
    with path.open('r+b') as f:
        f.truncate(size)
    return size


# ----------------------------------------------------------------------------- truncated MCAP
def test_truncated_mcap_bag_dir_replays_the_recovered_frames(bags, tmp_path, capsys, caplog):
    from geo_depth_node.tools.bag_io import StereoBag, input_topics

    intact = _file_messages(bags['mcap'] / 'bag.mcap')
    assert len(intact) == 4 * FRAMES
    bag = tmp_path / 'bag'
    shutil.copytree(bags['mcap'], bag)
    cut = _truncate(bag / 'bag.mcap', 0.6)
    before = [m for m in intact if m['end'] <= cut]  # written completely before the cut
    assert 0 < len(before) < len(intact)
    frames = _complete_frames(before)
    assert 0 < frames < FRAMES

    with caplog.at_level('WARNING', logger='geo_depth_node.tools.bag_open'):
        rc, err = _replay(bag, bags, tmp_path / 'out', capsys)
    assert rc == 0, err
    report = _report(tmp_path / 'out')
    assert report['frames'] == frames == report['frames_in_bag']
    assert report['stamps_ns']['last'] == bags['stamps'][frames - 1]
    assert report['bag_recovery']['messages_recovered'] == len(before)
    assert report['bag_error'] is None
    assert f'recovered {len(before)} message(s)' in caplog.text
    assert f'of {cut} bytes read' in caplog.text

    with StereoBag(bag, input_topics(False), workdir=tmp_path) as sb:
        rec = sb.recovery
        assert sb.read_path.is_file() and sb.read_path.parent.parent == tmp_path
        assert {n: sb.count(n) for n in ('left_image', 'right_image')} == {
            'left_image': Counter(m['topic'] for m in before)['/left/image_rect'],
            'right_image': Counter(m['topic'] for m in before)['/right/image_rect']}
    assert not sb.read_path.exists()  # the recovered copy goes with the StereoBag
    assert rec['truncated'] is True
    assert rec['messages_recovered'] == len(before)
    assert rec['per_topic'] == dict(Counter(m['topic'] for m in before))
    assert rec['last_log_time_ns'] == before[-1]['log_time']
    assert rec['bytes_read'] == before[-1]['end'] and rec['bytes_total'] == cut
    assert 'ends inside a chunk' in rec['damage']


def test_truncated_bare_mcap_with_zstd_chunks(bags, tmp_path, capsys):
    from geo_depth_node.tools.bag_open import open_checked

    intact = _file_messages(bags['zstd'])
    assert len(intact) == 4 * FRAMES and len({m['chunk_start'] for m in intact}) > FRAMES
    bag = tmp_path / 'cut.mcap'
    shutil.copyfile(bags['zstd'], bag)
    cut = _truncate(bag, 0.6)
    complete = sum(1 for m in intact if m['chunk_end'] <= cut)
    started = sum(1 for m in intact if m['chunk_start'] < cut)
    assert 0 < complete < len(intact)

    path, rec = open_checked(bag, tmp_path / 'work')
    n = rec['messages_recovered']
    assert complete <= n <= started  # whole chunks, plus what the cut one still decompresses
    assert rec['per_topic'] == dict(Counter(m['topic'] for m in intact[:n]))
    assert rec['last_log_time_ns'] == max(m['log_time'] for m in intact[:n])
    assert rec['bytes_total'] == cut and 0 < rec['bytes_read'] <= cut
    assert path.parent == tmp_path / 'work' and path.suffix == '.mcap'

    rc, err = _replay(bag, bags, tmp_path / 'out', capsys)
    assert rc == 0, err
    report = _report(tmp_path / 'out')
    assert report['frames'] == _complete_frames(intact[:n]) > 0
    assert report['bag_recovery']['per_topic'] == rec['per_topic']


def test_mcap_dir_without_metadata_reads_its_only_file(bags, tmp_path, caplog):
    """A recording cut off before rosbag2 wrote metadata.yaml: the one .mcap is used."""
    from geo_depth_node.tools.bag_open import open_checked

    bag = tmp_path / 'bag'
    shutil.copytree(bags['mcap'], bag)
    (bag / 'metadata.yaml').unlink()
    assert open_checked(bag, tmp_path / 'w') == (bag / 'bag.mcap', {})
    cut = _truncate(bag / 'bag.mcap', 0.6)
    with caplog.at_level('WARNING', logger='geo_depth_node.tools.bag_open'):
        _path, rec = open_checked(bag, tmp_path / 'w')
    assert rec['bytes_total'] == cut and rec['messages_recovered'] > 0
    assert 'no metadata.yaml' in caplog.text


# ----------------------------------------------------------------------------- unreadable
def test_sqlite_with_garbage_is_a_clear_error(bags, tmp_path, capsys):
    bag = tmp_path / 'bag'
    shutil.copytree(bags['db3'], bag)
    db = bag / 'bag.db3'
    size = db.stat().st_size
    with db.open('r+b') as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(np.random.default_rng(3).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    rc, err = _replay(bag, bags, tmp_path / 'out', capsys)
    assert rc == 2
    assert f'SQLite bag file {db} is damaged' in err and 'quick_check' in err
    assert 'Traceback' not in err


def test_sqlite_damage_found_while_reading(bags, tmp_path, capsys, monkeypatch):
    """Past the quick_check size (a big bag), the damage shows while reading: a BagError
    that says how far the reading got; replay keeps the frames read before it."""
    import geo_depth_node.tools.bag_open as bag_open

    monkeypatch.setattr(bag_open, 'QUICK_CHECK_MAX_BYTES', 0)
    bag = tmp_path / 'bag'
    shutil.copytree(bags['db3'], bag)
    db = bag / 'bag.db3'
    with db.open('r+b') as f:
        f.seek(db.stat().st_size // 2 // 4096 * 4096)
        f.write(np.random.default_rng(3).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    from geo_depth_node.tools.bag_io import StereoBag, input_topics
    from geo_depth_node.tools.bag_open import BagError

    with StereoBag(bag, input_topics(False)) as sb:
        assert sb.recovery == {}
        got: list = []
        with pytest.raises(BagError, match=re.escape(f'bag {bag} is damaged: reading stopped '
                                                     'after ') + r'\d+ of 24 message\(s\)'
                                                                 r'.*CorruptError') as info:
            got.extend(sb.messages())
    n = len(got)
    assert 0 < n < 24 and f'after {n} of 24' in str(info.value)
    rc, err = _replay(bag, bags, tmp_path / 'out', capsys)
    assert rc == 0, err
    report = _report(tmp_path / 'out')
    assert report['bag_error'] == str(info.value)
    assert report['frames'] == n // 4  # messages sorted by stamp, 4 per frame


def test_truncated_sqlite_is_a_clear_error(bags, tmp_path, capsys):
    bag = tmp_path / 'bag'
    shutil.copytree(bags['db3'], bag)
    cut = _truncate(bag / 'bag.db3', 0.6)
    rc, err = _replay(bag, bags, tmp_path / 'out', capsys)
    assert rc == 2
    assert f'SQLite bag file {bag / "bag.db3"} is truncated' in err and f'has {cut}' in err


def test_missing_storage_file_is_a_clear_error(bags, tmp_path, capsys):
    bag = tmp_path / 'bag'
    shutil.copytree(bags['mcap'], bag)
    (bag / 'bag.mcap').unlink()
    rc, err = _replay(bag, bags, tmp_path / 'out', capsys)
    assert rc == 2
    assert (f'{bag / "metadata.yaml"} names storage file(s) {bag / "bag.mcap"} that do not '
            'exist') in err


def test_corrupt_chunk_in_an_intact_mcap_says_how_far_it_got(bags, tmp_path, capsys):
    """Footer and summary fine (so no recovery), one chunk in the middle fails its CRC: the
    reading stops there with a BagError counting the messages read; replay keeps the frames
    read before it and reports the error."""
    from geo_depth_node.tools.bag_open import open_checked

    intact = _file_messages(bags['zstd'])
    chunks = sorted({(m['chunk_start'], m['chunk_end']) for m in intact})
    start, end = chunks[len(chunks) // 2]
    first_t = min(m['log_time'] for m in intact if m['chunk_start'] == start)
    expected = sum(1 for m in intact if m['log_time'] < first_t)  # read in time order
    bag = tmp_path / 'bad_chunk.mcap'
    shutil.copyfile(bags['zstd'], bag)
    with bag.open('r+b') as f:
        f.seek((start + end) // 2)
        f.write(b'\xa5' * 64)
    assert open_checked(bag, tmp_path / 'w') == (bag, {})
    rc, err = _replay(bag, bags, tmp_path / 'out', capsys)
    assert rc == 0, err
    report = _report(tmp_path / 'out')
    assert report['bag_error'].startswith(
        f'bag {bag} is damaged: reading stopped after {expected} of {len(intact)} message(s)')
    assert report['frames'] == len({m['log_time'] for m in intact if m['log_time'] < first_t})
    assert report['bag_recovery'] is None


def test_healthy_bags_are_not_copied(bags, tmp_path):
    from geo_depth_node.tools.bag_open import open_checked

    work = tmp_path / 'w'
    for bag in (bags['mcap'], bags['db3'], bags['mcap'] / 'bag.mcap', bags['zstd']):
        assert open_checked(bag, work) == (bag, {})
    assert not work.exists()
    with pytest.raises(FileNotFoundError):
        open_checked(tmp_path / 'nope', work)
