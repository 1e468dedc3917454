"""The lakes a test runs on when it runs on both: a folder, and a bucket of the loopback S3 server (`s3_lake`).

The S3 twin is marked `s3`, which `make test-fast` leaves out.
"""

from __future__ import annotations

import pytest

LOCAL_AND_S3 = ["local", pytest.param("s3", marks=pytest.mark.s3)]
