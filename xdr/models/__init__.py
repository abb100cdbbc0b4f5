"""The models: what a model reference names (references), where its files come from (files), the dense
encoder and the xQG query generator with their factories, the USE port, benchmark stand-ins and the tiny
offline models for tests and the demo."""

from xdr.exports import lazy_exports

_WHERE = {
    "make_encoder": "encoder",
    "make_generator": "generator",
    "TextEncoder": "encoder",
    "Encoder": "encoder",
    "QueryGenerator": "generator",
    "ModelKind": "references",
    "model_kind": "references",
    "build_tiny_models": "tiny",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
