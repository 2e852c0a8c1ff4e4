"""The model on the wire: its floating-point weights as one array.

Flower sends every array of a message as objects of its own (the array and its chunks),
and in a deployment each object is a signed HTTPS request through the proxy, which the
SuperLink serves one at a time: the default segmentation model's 37 tensors took about
80 requests per hospital each way, about 5 s of a round on this machine. ``pack`` puts
every floating-point tensor of a state dict, by sorted name, into one float32 array
(``weights``); any other tensor (BatchNorm's batch counter) keeps its own name.
``unpack`` restores the state dict from the names, shapes and dtypes of a model of the
same task (both sides build it from the task's settings; no layout travels).

A reply may carry its update in float16 instead (``pack_reply``: new weights minus the
weights the request carried, scaled to float16's range, under ``UPDATE``), half the bytes;
the coordinator adds it back to the weights it sent (``full_weights``) before any
strategy sees the reply. A non-finite update goes as float32 weights (and is refused).

Strategies treat the packed array as they treated the tensors: averages, medians, trimmed
means and adaptive updates are element-wise, and update norms, DP clipping and SecAgg+'s
clipping and masking are over the whole update or element-wise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

PACKED = "weights"
UPDATE = "update-float16"
UPDATE_SCALE = "update-scale"
PRECISIONS = ("float32", "float16")


def pack(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """``state``'s floating-point tensors as one float32 array, the rest by name."""
    floats = sorted(key for key, value in state.items() if value.is_floating_point())
    flat = np.concatenate([state[key].detach().to("cpu", torch.float32).reshape(-1).numpy()
                           for key in floats]) if floats else np.zeros(0, np.float32)
    record = {PACKED: Array(flat)}
    record.update({key: Array(value.detach().cpu().numpy()) for key, value in state.items()
                   if not value.is_floating_point()})
    return ArrayRecord(record)


def unpack(record: ArrayRecord, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict ``record`` packs, laid out as ``like`` (a state dict of the same
    model: names, shapes and dtypes); ValueError when the record does not fit it."""
    if PACKED not in record:
        raise ValueError(f"the model's weights are not packed into '{PACKED}' (arrays: "
                         f"{', '.join(sorted(record.keys())) or 'none'})")
    flat = torch.from_numpy(np.ascontiguousarray(record[PACKED].numpy()))
    floats = sorted(key for key, value in like.items() if value.is_floating_point())
    expected = sum(like[key].numel() for key in floats)
    if flat.numel() != expected:
        raise ValueError(f"the packed weights hold {flat.numel()} values; the model has "
                         f"{expected}")
    state, start = {}, 0
    for key in floats:
        size = like[key].numel()
        state[key] = flat[start:start + size].reshape(like[key].shape).to(like[key].dtype)
        start += size
    for key, value in like.items():
        if not value.is_floating_point():
            if key not in record:
                raise ValueError(f"the model's '{key}' is missing from the message")
            state[key] = torch.from_numpy(record[key].numpy()).reshape(value.shape).to(
                value.dtype)
    return {key: state[key] for key in like}


def pack_reply(state: Mapping[str, torch.Tensor], sent: ArrayRecord, precision: str
               ) -> ArrayRecord:
    """``state`` packed for a reply to a request that carried ``sent``: its weights, or in
    ``precision`` float16 its update (weights minus ``sent``'s) under ``UPDATE``, scaled so
    that its largest value is 2^15 (``UPDATE_SCALE`` holds the scale): every value keeps
    float16's relative precision, 2^-11, down to 2^-29 of the largest."""
    record = pack(state)
    if precision == "float32":
        return record
    update = record[PACKED].numpy() - sent[PACKED].numpy()
    if not np.all(np.isfinite(update)):
        return record
    largest = float(np.max(np.abs(update))) if update.size else 0.0
    scale = largest / 2 ** 15 if largest > 0 else 1.0
    reply = ArrayRecord()
    for key in record:
        if key == PACKED:
            reply[UPDATE] = Array((update / scale).astype(np.float16))
            reply[UPDATE_SCALE] = Array(np.array([scale], np.float32))
        else:
            reply[key] = record[key]
    return reply


def full_weights(record: ArrayRecord, sent: ArrayRecord) -> ArrayRecord:
    """``record`` with packed float32 weights, in ``pack``'s order: its float16 update,
    scaled back, added to ``sent``'s weights; itself when it carries weights; ValueError
    when the update does not fit."""
    if UPDATE not in record:
        return record
    base = sent[PACKED].numpy()
    update = record[UPDATE].numpy()
    if update.shape != base.shape:
        raise ValueError(f"the float16 update holds {update.size} values; the weights sent "
                         f"{base.size}")
    if UPDATE_SCALE not in record or record[UPDATE_SCALE].numpy().size != 1:
        raise ValueError(f"the float16 update comes without its scale ('{UPDATE_SCALE}')")
    scale = float(record[UPDATE_SCALE].numpy()[0])
    full = ArrayRecord()
    for key in record:
        if key == UPDATE:
            full[PACKED] = Array(base + update.astype(np.float32) * np.float32(scale))
        elif key != UPDATE_SCALE:
            full[key] = record[key]
    return full
