"""xdr: cross-lingual dense-retrieval indexes at corpus scale (xQG + hybrid-batch training).

The library holds all logic and imports no Ray; `ray_jobs/` wires it to Ray.
"""

__version__ = "0.1.0"
