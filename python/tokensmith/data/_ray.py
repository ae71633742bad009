"""``prepare`` on a Ray cluster (``ray=`` / ``--ray [ADDRESS]``): the cluster reads and
encodes, this process writes.

The input files are read by Ray tasks (one per file, with the same reader as a local run, so
bad lines, line numbers and text blocks are the same), the records encoded by a pool of actors
(one per cluster CPU but one, each holding one copy of the tokenizer) and the results streamed
back here in input order (``preserve_order``). The rows are then written by the same code as a
local run's: packing, shards, Megatron files and ``meta.json`` are those of a local run, byte for
byte. The output lands in ``out_dir`` on this machine as a local run's does; what the cluster
saves is the encoding, which is where the time goes (a chat template renders a few thousand
conversations a second on one core; writing is hundreds of MB/s).

Every node needs the input files at the same paths (a shared file system) and the same
tokensmith version.

A run resumes as a local run does (the same state, saved by the same code as it writes): the
readers are told how many records of their file were done (counted in input order from the
state's records per file), so the records done are neither read nor encoded again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .chat import Example
from .sources import BadRecord, ReadProgress, read_records, skip_in_file

#: Read records go to the encoders in blocks of about this many bytes (Ray Data would make
#: one block of a whole file, which one actor would encode): enough work per actor call
#: (0.1-0.5 s), small enough to spread a file over every actor.
_BLOCK_BYTES = 1 << 20


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[int]:
    """Connected to the Ray cluster at ``address`` (``None``: the one this machine belongs to,
    as ``RAY_ADDRESS`` or ``ray start`` said) for the block; yields its CPU count. A process
    that is already connected stays so."""
    try:
        import ray
    except ImportError:
        raise ImportError("ray= / --ray needs Ray Data: pip install 'ray[data]'") from None
    owned = not ray.is_initialized()
    if owned:
        try:
            ray.init(address=address or "auto", log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            where = f"at {address}" if address else "on this machine (no RAY_ADDRESS, no `ray start`)"
            raise ConnectionError(f"no Ray cluster {where}: start one with `ray start --head`, or give its address ({e})") from None
    try:
        yield max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if owned:
            ray.shutdown()


def encoded(
    files: list[tuple[str, str]], encoder: Any, streams: bool, doc_per_line: bool, cpus: int, reading: ReadProgress,
    skip: int = 0,
) -> Iterator[Any]:
    """Record results in input order, as Arrow tables (see :class:`_Encode`), from the files
    ``(path to open, name to report)``, but for the first ``skip`` records (a resumed run's
    done before), which are neither read nor encoded. ``reading`` follows the bytes read and
    counts each file's records once the rows of a later file come (as ``read_records``
    counts them once it is read to the end): a state saved meanwhile has the counts of the
    files before the one it stops in, which is what a Ray run resumed from it needs to know
    what each file's reader leaves out."""
    import numpy as np
    import ray.data  # first: importing it sets up its logging

    start = 0
    items = []
    for n, (path, name) in enumerate(files):
        # Each reader is told what its file has done: a file all done is not opened.
        here, _ = skip_in_file(skip, reading.file_records, n)
        known = reading.file_records[n] if n < len(reading.file_records) else None
        items.append({"path": str(Path(path).resolve()), "name": name, "start": start, "file": n, "skip": here, "records": known})
        skip -= here
        start += Path(path).stat().st_size
    counts = np.array([item["skip"] for item in items], dtype=np.int64)  # each file's records so far
    resuming = bool(counts.any())  # until the first record read anew

    def counted(files_read: int) -> None:
        while len(reading.file_records) < files_read:
            reading.file_records.append(int(counts[len(reading.file_records)]))

    with _settings(preserve_order=True, enable_progress_bars=False, target_max_block_size=_BLOCK_BYTES):
        ds = _plan(items, -(-start // _BLOCK_BYTES), encoder, streams, doc_per_line, cpus)
    # Ray Data's plan and progress messages: our own progress line says enough.
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4))
    try:
        for table in batches:
            if table.num_rows:
                file = table["file"].to_numpy()
                counts += np.bincount(file, minlength=len(counts))
                counted(int(file[-1]))  # the files before this table's last are read to the end
                if resuming:  # where read_records' skip ends: at this record, or at its file's start
                    first = items[file[0]]
                    reading.skipped = table["read"][0].as_py() if first["skip"] else first["start"]
                    reading.reached(reading.skipped)
                    resuming = False
                yield table
                reading.reached(table["read"][-1].as_py())
        counted(len(files))
        reading.reached(start)
        if resuming:  # nothing was left to read
            reading.skipped = start
    finally:
        # Stopped early (a fatal record): end the execution now, while still connected.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        logger.setLevel(level)


@contextlib.contextmanager
def _settings(preserve_order: bool, **settings: Any) -> Iterator[None]:
    """Ray Data settings for the datasets made in the block (a dataset keeps the settings
    it was made with); the caller's own are back after it."""
    import copy

    import ray.data

    context = ray.data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in [*settings, "execution_options"]}
    try:
        context.execution_options = copy.deepcopy(context.execution_options)
        context.execution_options.preserve_order = preserve_order
        for name, value in settings.items():
            setattr(context, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


def _plan(items: list[dict[str, Any]], blocks: int, encoder: Any, streams: bool, doc_per_line: bool, cpus: int):
    """Read ``items`` (files) in tasks, encode in ``blocks`` blocks or so on an actor pool."""
    import ray.data

    from .. import __version__

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Readers ask for a quarter of a CPU: reading is light, and unlike resources keep Ray
    # from fusing them into the encoders (which would encode each file in one actor).
    ds = ds.map_batches(_read_files, batch_size=1, batch_format="pyarrow", num_cpus=0.25,
                        fn_kwargs={"doc_per_line": doc_per_line, "block_bytes": _BLOCK_BYTES})
    # Actors, not tasks: the tokenizer is loaded once per actor. One per block of input up to
    # every CPU but one, left to the readers (on a one-CPU cluster, one actor of 3/4 of it).
    # A fixed pool: an autoscaling one (Ray 2.60) failed a run under load with an actor it
    # had let go while a block was on its way to it.
    ds = ds.map_batches(
        _Encode, batch_size=None, batch_format="pyarrow", num_cpus=1 if cpus >= 2 else 0.75,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(cpus - 1, blocks))),
        fn_constructor_args=(encoder, streams, __version__),
    )
    return ds


#: The ``line`` of a row that says the file could not be read on (its ``error``): the run
#: stops there with the ``ValueError`` a local run raises.
_READ_FAILED = -1


def _read_files(batch, doc_per_line: bool, block_bytes: int):
    """The records of each file of ``batch`` but its first ``skip`` (``records``: how many it
    has, where known), in blocks: ``source``, ``line``, ``record`` (the pickled record, or
    null where the line could not be read), ``error``, ``read`` (bytes of the inputs read
    after this record), ``file`` (its index in the inputs)."""
    import pyarrow as pa

    columns = ("path", "name", "start", "file", "skip", "records")
    for path, name, start, file, skip, known in zip(*(batch[c].to_pylist() for c in columns)):
        progress = ReadProgress(file_records=[] if known is None else [known])
        rows: dict[str, list[Any]] = {"source": [], "line": [], "record": [], "error": [], "read": [], "file": []}
        size = 0

        def add(line: int, record: bytes | None, error: str | None) -> None:
            rows["source"].append(name)
            rows["line"].append(line)
            rows["record"].append(record)
            rows["error"].append(error)
            rows["read"].append(start + progress.bytes)
            rows["file"].append(file)

        try:
            for r in read_records([path], doc_per_line=doc_per_line, progress=progress, skip=skip):
                bad = isinstance(r, BadRecord)
                record = None if bad else pickle.dumps(r.data, protocol=pickle.HIGHEST_PROTOCOL)
                add(r.line, record, r.error if bad else None)
                size += 64 + (len(record) if record else 0)
                if size >= block_bytes:
                    yield pa.table(rows, schema=_schemas()[0])
                    rows, size = {c: [] for c in rows}, 0
            if progress.file_records[0] < skip:  # unlike a local run's, its reader cannot go on into the next file
                raise ValueError(f"{path}: {progress.file_records[0]} records, fewer than the {skip} that the run being "
                                 "resumed had done in it: changed since?")
        except (ValueError, OSError, ImportError) as e:  # a file cut short, no zstandard, ...
            add(_READ_FAILED, None, str(e).replace(path, name))  # named as the user named it
        if rows["line"]:
            yield pa.table(rows, schema=_schemas()[0])


@functools.lru_cache(maxsize=None)
def _schemas():
    """The reader's and the encoder's Arrow schemas (made when first used: importing
    tokensmith.data does not import pyarrow)."""
    import pyarrow as pa

    read = pa.schema([("source", pa.string()), ("line", pa.int64()), ("record", pa.binary()), ("error", pa.string()),
                      ("read", pa.int64()), ("file", pa.int32())])
    ids = pa.list_(pa.int32())
    encoded = pa.schema([
        ("source", pa.string()), ("line", pa.int64()), ("input_ids", ids), ("labels", ids), ("warnings", pa.list_(pa.string())),
        ("error", pa.string()), ("reason", pa.string()), ("fatal", pa.bool_()), ("read", pa.int64()), ("file", pa.int32()),
    ])
    return read, encoded



class _Encode:
    """A Ray actor that encodes blocks of read records. Out, one row per record, in order:
    ``input_ids``, ``labels`` and ``warnings`` of an example, or ``error``, ``reason`` and
    ``fatal`` of a record that gives none. Token streams (``streams``) have documents' ids
    (with the EOS id) and no labels, encoded a block at a time as a local run does."""

    def __init__(self, encoder: Any, streams: bool, version: str) -> None:
        from .. import __version__

        if version != __version__:
            raise RuntimeError(f"tokensmith {__version__} on this Ray node, {version} where prepare runs: install the same on every node")
        self.encoder, self.streams = encoder, streams

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        from .prepare import RecordError, _encode_one

        sources, lines = batch["source"].to_pylist(), batch["line"].to_pylist()
        records, read_errors = batch["record"].to_pylist(), batch["error"].to_pylist()
        values: list[Any] = [
            pickle.loads(record) if record is not None
            else RecordError(error, "read failed" if line == _READ_FAILED else "unreadable line")
            for record, error, line in zip(records, read_errors, lines)
        ]
        if self.streams:
            lengths, ids = self._documents(values)
            offsets = np.zeros(len(values) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            input_ids: Any = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids.astype(np.int32)))
            labels: Any = [None] * len(values)
        else:
            values = [v if isinstance(v, RecordError) else _encode_one(self.encoder, s, n, v)[2] for s, n, v in zip(sources, lines, values)]
            input_ids = [[] if isinstance(v, RecordError) else v.input_ids for v in values]
            labels = [[] if isinstance(v, RecordError) else v.labels for v in values]
        failed = [v if isinstance(v, RecordError) else None for v in values]
        columns = {
            "source": sources,
            "line": lines,
            "input_ids": input_ids,
            "labels": labels,
            "warnings": [[] if isinstance(v, RecordError) else v.warnings for v in values],
            "error": [e and e.message for e in failed],
            "reason": [e and e.reason for e in failed],
            "fatal": [e is not None and e.fatal for e in failed],
            "read": batch["read"],
            "file": batch["file"],
        }
        return pa.table(columns, schema=_schemas()[1])

    def _documents(self, values: list[Any]):
        """Records' data to documents: the ids of each row (0 for a record that gives none,
        made a :class:`RecordError` in ``values``) and all the ids, as a local run encodes them."""
        import numpy as np

        from .prepare import RecordError, _encode_documents, _text_of

        texts, where = [], []
        for i, value in enumerate(values):
            if not isinstance(value, RecordError):
                value = values[i] = _text_of(value, self.encoder)
            if isinstance(value, str):
                texts.append(value)
                where.append(i)
        ids, lengths, refused = _encode_documents(self.encoder, texts, where)
        for i, error in refused:
            values[i] = error
        rows = np.zeros(len(values), dtype=np.int64)
        rows[[i for i in where if not isinstance(values[i], RecordError)]] = lengths
        for i in where:
            if isinstance(values[i], str):
                values[i] = Example([], [])  # its ids are in ``ids``
        return rows, ids


def examples(tables: Iterator[Any]) -> Iterator[tuple[str, int, Any]]:
    """``(source, line, Example or RecordError)`` of each record, as a local run has them."""
    from .prepare import RecordError

    for table in tables:
        for row in table.to_pylist():
            if row["line"] == _READ_FAILED:
                raise ValueError(row["error"])
            if row["error"] is None:
                yield row["source"], row["line"], Example(row["input_ids"], row["labels"], row["warnings"])
            else:
                yield row["source"], row["line"], RecordError(row["error"], row["reason"], row["fatal"])


def documents(tables: Iterator[Any], records_done: int = 0) -> Iterator[tuple[list[tuple[str, int, Any]], int, Any, Any]]:
    """``(errors, records done after it, ids, lengths)`` of each block of records, as
    ``_write_documents`` takes them: the records that gave no document in order, the count
    of records (from ``records_done``, a resumed run's), and the documents' ids as one array."""
    import numpy as np
    import pyarrow.compute as pc

    from .prepare import RecordError

    for table in tables:
        cut = pc.index(table["line"], _READ_FAILED).as_py()  # -1: none
        if cut >= 0:  # what was read before it, then the reader's error
            yield from documents(iter([table.slice(0, cut)]), records_done)
            raise ValueError(table["error"][cut].as_py())
        records_done += table.num_rows
        failed = table.filter(pc.is_valid(table["error"]))
        errors = [(r["source"], r["line"], RecordError(r["error"], r["reason"], r["fatal"])) for r in failed.select(
            ["source", "line", "error", "reason", "fatal"]).to_pylist()]
        ids = table["input_ids"].combine_chunks()
        lengths = pc.list_value_length(ids).filter(pc.is_null(table["error"]).combine_chunks())
        yield errors, records_done, np.asarray(ids.flatten()), np.asarray(lengths, dtype=np.int64)
