"""The active layer: learning on a robot's own recordings.

Bags pooled into segments and windows (pool), which windows to ask (selection, query), the
answers people give (answers, oracles) and fine-tuning on them (finetune). Imports core, stream,
datasets, training and evaluation.
"""
