"""roost's durable store: LMDB with group commit (or PostgreSQL, `roost[postgres]`), checkpoints,
run records, the tool ledger and gates."""

from roost.storage._interface import SnapshotReader, StoreInterface
from roost.storage.checkpoints import (
    Checkpoint,
    CheckpointStore,
    Pruned,
    checkpoint_key,
    decode_state,
    encode_state,
)
from roost.storage.codecs import Record, RecordCodec
from roost.storage.gates import GateEvent, GateRecord, GateStore, TimeoutStep
from roost.storage.ledger import Claim, Ledger, LedgerEntry
from roost.storage.opening import open_store
from roost.storage.ops import DATABASES, Append, Delete, Fence, Insert, Lease, Op, Put, Update
from roost.storage.postgres import PostgresStore, is_postgres_url
from roost.storage.results import StepResults
from roost.storage.runs import RunRecord, RunStatus, RunStore
from roost.storage.store import Durability, Store, StoreOpening, StoreStatistics

__all__ = [
    "DATABASES",
    "Append",
    "Checkpoint",
    "CheckpointStore",
    "Claim",
    "Delete",
    "Durability",
    "Fence",
    "GateEvent",
    "GateRecord",
    "GateStore",
    "Insert",
    "Lease",
    "Ledger",
    "LedgerEntry",
    "Op",
    "PostgresStore",
    "Pruned",
    "Put",
    "Record",
    "RecordCodec",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "SnapshotReader",
    "StepResults",
    "Store",
    "StoreInterface",
    "StoreOpening",
    "StoreStatistics",
    "TimeoutStep",
    "Update",
    "checkpoint_key",
    "decode_state",
    "encode_state",
    "is_postgres_url",
    "open_store",
]
