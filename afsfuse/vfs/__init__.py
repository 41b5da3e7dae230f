"""The FUSE face: pyfuse3 operations, inodes, the dynamic root and mount points."""
