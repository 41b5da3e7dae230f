"""ACL texts (as `CacheManager.set_acl` takes them) that several test modules give volumes."""

from __future__ import annotations

#: alice administers the test volumes; everyone may look and read.
ALICE_ALL = "3\n0\nsystem:administrators 127\nalice 127\nsystem:anyuser 9\n"
#: Where root (no token: anonymous) may write.
ANYONE_WRITES = "2\n0\nsystem:administrators 127\nsystem:anyuser 63\n"
