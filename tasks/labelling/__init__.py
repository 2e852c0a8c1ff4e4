"""Vertebra labelling: locate and name each vertebra (T1-L5, sacrum) in CT and MR."""

from tasks.labelling.task import LabellingTask

__all__ = ["LabellingTask"]
