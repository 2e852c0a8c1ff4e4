"""Spine segmentation: vertebrae, intervertebral discs and the spinal canal."""

from tasks.segmentation.task import SegmentationTask

__all__ = ["SegmentationTask"]
