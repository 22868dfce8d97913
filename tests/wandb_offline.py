"""Read back what an offline W&B run wrote: its ``run-<id>.wandb`` file is the record log that ``wandb sync`` uploads.

The file is a 7-byte header (":W&B", magic, version) followed by LevelDB-style log blocks of 32 KiB: each chunk
has a 7-byte header (crc32, length, type) and a record is one FULL chunk or FIRST, MIDDLE..., LAST chunks.
"""

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


@dataclass
class OfflineRun:
    path: Path
    name: str = ""
    group: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    metric_summaries: dict[str, list[str]] = field(default_factory=dict)  # define_metric(name, summary=...)
    exit_code: int | None = None

    def metric(self, key: str) -> list:
        return [row[key] for row in self.history if key in row]


def records(data: bytes):
    assert data[:4] == b":W&B", "not a .wandb file"
    pos, chunks = HEADER, []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunks.append(data[pos + HEADER:pos + HEADER + length])
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def read_offline_run(run_dir: Path) -> OfflineRun:
    """The run in ``<save_dir>/wandb/offline-run-*`` (``run_dir``), from its records."""
    (path,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(path)
    for record in records(path.read_bytes()):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.name, run.group, run.project = record.run.display_name, record.run.run_group, record.run.project
            run.tags = list(record.run.tags)
            run.config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            run.config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run.history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
        elif kind == "summary":
            run.summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.summary.update})
        elif kind == "metric" and record.metric.name:
            run.metric_summaries[record.metric.name] = [name for name in ("min", "max", "mean", "last", "best")
                                                        if getattr(record.metric.summary, name, False)]
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(output_dir: Path) -> list[OfflineRun]:
    return [read_offline_run(d) for d in sorted((output_dir / "wandb").glob("offline-run-*"))]
