"""Entry points that wire the xdr library to Ray (`ray job submit -- python -m ray_jobs.<job>`)."""
