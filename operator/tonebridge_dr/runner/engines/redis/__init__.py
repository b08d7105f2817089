"""The Redis engine: RDB backups over the replication protocol, restores key by key or as a file.

Modules: endpoints (URLs and credentials), resp (a raw RESP socket), replication
(AUTH/REPLCONF/SYNC and the streamed payload), rdb + crc64 (streaming RDB
verification), backup, restore + scratch (restore paths), commands (CLI glue).
"""
