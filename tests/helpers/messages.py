"""What the real ClientApp receives in a round: a small segmentation task, a train request
for it (with or without DP settings) and a hospital node's context."""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from tasks.config import validate
from tasks.packing import pack
from tasks.run_config import PRIVACY_KEYS
from tasks.segmentation import SegmentationTask

SETTINGS = {"channels": [8, 16], "spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32]}
TRAIN = {"batch_size": 2, "lr": 0.01, "weight_decay": 0.0, "seed": 0}


def privacy(**settings) -> dict:
    """A validated [privacy] section; two slices per patient, one augmentation each (the
    grouping at a test's cost) unless given."""
    return validate({"privacy": {"enabled": True, "slices_per_patient": 2, "augmentations": 1,
                                 **settings}}, {"privacy": PRIVACY_KEYS}, "test")["privacy"]


def task() -> SegmentationTask:
    return SegmentationTask(validate({"task": SETTINGS}, {"task": SegmentationTask.keys},
                                     "test")["task"])


def request(state: dict, server_round: int = 1, dp: dict | None = None, **config) -> Message:
    content = RecordDict({
        "arrays": pack(state),
        "config": ConfigRecord({
            "task": json.dumps({"name": "segmentation", "settings": task().settings}),
            "train": json.dumps(TRAIN), "privacy": json.dumps(dp or {}),
            "local-epochs": 1, "local-steps": 2, "num-rounds": 3,
            "server-round": server_round, **config}),
    })
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def evaluation(state: dict, server_round: int = 1, message_type: str = MessageType.EVALUATE
               ) -> Message:
    """An evaluate request of the global weights ``state``."""
    train = request(state, server_round)
    return Message(train.content, dst_node_id=1, message_type=message_type)


def node(folder, **budget) -> Context:
    return Context(run_id=1, node_id=1, node_config={"data-path": str(folder), **budget},
                   state=RecordDict(), run_config={})
