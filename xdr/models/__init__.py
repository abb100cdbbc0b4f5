"""The models: what a model reference names (references), where its files come from (files), the dense
encoder and the xQG query generator with their factories, the USE port, benchmark stand-ins and the tiny
offline models for tests and the demo."""
