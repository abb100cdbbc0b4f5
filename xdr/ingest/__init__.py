"""Reading a corpus and validating it: formats (JSONL, CSV/TSV, Parquet), row rules, duplicates across
files, fixed-size parts; synthetic validated corpora for benchmarks."""
