"""Where things are and what they hold: storage behind URIs (local, s3://), the layouts of run and index
folders, the Parquet schemas of each stage, run manifests."""
