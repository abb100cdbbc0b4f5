"""Experiments over the pieces: training sweeps (settings x seeds, paired tests) and index tuning (FAISS
factory x nprobe in the task metric, with its report)."""
