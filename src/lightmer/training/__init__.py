"""The training layer: `lightmer train` (paper Algorithm 1 and the full baseline).

One fold read top to bottom (train), folds and the D0 / U split (folds), the oracle of
Algorithm 1 (oracle), resumable state (resume), torchrun plumbing (distributed) and folds as
separate processes (fold_launcher). Imports core and datasets.
"""
