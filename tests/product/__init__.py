"""What a user meets: the demo and the docs' commands, the docs' links, the cluster configs, the benchmarks
in tiny mode."""
