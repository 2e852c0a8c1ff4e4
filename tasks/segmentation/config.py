"""Settings of the segmentation task (the ``[task]`` section of a run config): the
segmenter's own keys."""

from tasks.blocks.settings import SEGMENTER_KEYS

KEYS = SEGMENTER_KEYS
