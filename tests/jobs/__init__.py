"""The jobs on a real local Ray and a real S3 server: outputs, resume after SIGKILL, failures, the endpoint."""
