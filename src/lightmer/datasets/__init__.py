"""CREMA-D and RAVDESS as downloaded, a generated corpus in both layouts, the training cache.

Light names are imported here; `SegmentDataset`, `load_index` and `CacheIndex` (torch) are
loaded on first use, so indexing a dataset does not pay for importing torch.
"""
from lightmer.datasets.loaders import ClipRecord, Skipped, format_skipped, index_dataset
from lightmer.datasets.media import MediaError, decode_audio, decode_video, decode_video_at

__all__ = ['CacheIndex', 'ClipRecord', 'MediaError', 'SegmentDataset', 'Skipped',
           'decode_audio', 'decode_video', 'decode_video_at', 'format_skipped',
           'index_dataset', 'load_index']

_LAZY = {'SegmentDataset', 'load_index', 'CacheIndex'}


def __getattr__(name: str):
    if name in _LAZY:
        from lightmer.datasets import cache  # torch: indexing a dataset does not need it

        return getattr(cache, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
