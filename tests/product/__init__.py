"""What a user meets: the README's commands, the docs, the cluster configs, the benchmarks in tiny mode."""
