"""Helpers the tests share: S3 server, job runners, reference implementations, in-process builds."""
