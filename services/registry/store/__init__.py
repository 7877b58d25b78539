"""The on-disk OCI image layout: blobs, index.json and the manifest/config formats."""
