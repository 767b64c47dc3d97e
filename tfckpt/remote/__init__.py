"""A run directory's copy in a bucket (S3, GCS, Azure or any fsspec URL):
the remote tier's layout, commit protocol, lease and transfers."""
