"""The cache manager core: fileserver clients, callbacks, rotation, directories, errno mapping."""
