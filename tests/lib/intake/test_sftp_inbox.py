"""Taking one file from a real SFTP server (on loopback) into a lake, or into quarantine with a true reason: a file
that changed since it was listed is never moved, a reason file fits whatever the name, a sequence number is
never delivered twice with other content."""

from __future__ import annotations

import posixpath
from pathlib import Path

import obstore
import pytest

from dagster_project.lib.checksums import crc32_hex
from dagster_project.lib.clients.sftp import SftpClient
from dagster_project.lib.intake import sequences
from dagster_project.lib.intake.landing import landed_files
from dagster_project.lib.intake.sftp_inbox import (
    IntakeOutcome,
    RemoteLayout,
    quarantine_remote,
    reason_file_name,
    take_file,
)
from dagster_project.lib.lake import Lake
from dagster_project.lib.sources.registry import CUSTOMERS
from dagster_project.services.sftp_server import EmbeddedSftpServer
from tests.lib.customer_files import customer, customers_csv

pytestmark = pytest.mark.sftp

LAYOUT = RemoteLayout(inbox="inbox", archive="archive", quarantine="quarantine")
DAY = "2025-11-05"


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.parse(str(tmp_path / "lake"))


def _put(server: EmbeddedSftpServer, data: bytes, *, sequence: int = 1, name: str | None = None) -> str:
    name = name or CUSTOMERS.files.file_name(DAY, sequence, crc32_hex(data))
    (server.root / "inbox" / name).write_bytes(data)
    return name


def _listed(client: SftpClient, name: str) -> tuple[int, int]:
    entry = client.stat(posixpath.join(LAYOUT.inbox, name))
    assert entry is not None
    return entry.size, entry.mtime


def _take(client: SftpClient, lake: Lake, tmp_path: Path, name: str, **kwargs: object) -> IntakeOutcome:
    kwargs.setdefault("listed", _listed(client, name))
    return take_file(
        client, LAYOUT, name, lake=lake, staging_dir=tmp_path / "staging", source_uri=f"sftp://x/{name}", **kwargs
    )


def _reason(server: EmbeddedSftpServer, name: str) -> str:
    return (server.root / "quarantine" / reason_file_name(name)).read_text()


def test_a_name_too_long_for_its_reason_file_is_quarantined_with_a_shortened_reason_file(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient
) -> None:
    name = "acme_customers_" + "x" * 236 + ".csv"  # 255 bytes: `<name>.reason.txt.part` cannot exist
    assert len(name.encode()) == 255
    (sftp_server.root / "inbox" / name).write_bytes(b"a,b\n")

    outcome = quarantine_remote(sftp_client, LAYOUT, name, f"{name}: does not follow the naming contract")

    assert outcome.status == "quarantined"
    assert (sftp_server.root / "quarantine" / name).read_bytes() == b"a,b\n"
    [reason_file] = [p for p in (sftp_server.root / "quarantine").iterdir() if p.name.endswith(".reason.txt")]
    assert len(reason_file.name.encode()) <= 250 and reason_file.name == reason_file_name(name)
    assert reason_file.read_text() == f"{name}: does not follow the naming contract\n"  # the full name inside
    assert reason_file_name("short.csv") == "short.csv.reason.txt"


def test_a_file_that_changed_since_it_was_listed_is_not_moved(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, lake: Lake, tmp_path: Path
) -> None:
    data = customers_csv([customer(1)]).encode()
    name = _put(sftp_server, data[:20])  # half-written when it was listed: its CRC32 will not match
    listed = _listed(sftp_client, name)
    (sftp_server.root / "inbox" / name).write_bytes(data)  # the partner's upload went on

    assert quarantine_remote(sftp_client, LAYOUT, name, "r", listed=listed).status == "changed"
    outcome = _take(sftp_client, lake, tmp_path, name, listed=listed)

    assert outcome.status == "changed" and "changed since it was listed" in (outcome.reason or "")
    assert (sftp_server.root / "inbox" / name).read_bytes() == data
    assert list((sftp_server.root / "quarantine").iterdir()) == []
    assert landed_files(lake, "customers", DAY) == []


def test_a_file_that_changes_while_it_is_downloaded_is_not_moved(
    sftp_server: EmbeddedSftpServer,
    sftp_client: SftpClient,
    lake: Lake,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = customers_csv([customer(1), customer(2)]).encode()
    name = _put(sftp_server, data[:30])
    download = sftp_client.download

    def download_while_the_partner_writes(remote: str, local: Path) -> int:
        size = download(remote, local)
        with (sftp_server.root / "inbox" / name).open("ab") as partner:
            partner.write(data[30:])
        return size

    monkeypatch.setattr(sftp_client, "download", download_while_the_partner_writes)
    outcome = _take(sftp_client, lake, tmp_path, name)

    assert outcome.status == "changed" and outcome.reason is not None
    assert outcome.reason.startswith("changed while it was downloaded")
    assert (sftp_server.root / "inbox" / name).read_bytes() == data
    assert list((sftp_server.root / "quarantine").iterdir()) == []


def test_an_empty_file_is_quarantined_as_empty(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, lake: Lake, tmp_path: Path
) -> None:
    name = _put(sftp_server, b"")
    outcome = _take(sftp_client, lake, tmp_path, name)
    assert (outcome.status, outcome.reason) == ("quarantined", f"{name}: empty file (0 bytes)")
    assert _reason(sftp_server, name) == f"{name}: empty file (0 bytes)\n"


def test_an_invalid_byte_after_the_header_does_not_reject_the_file(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, lake: Lake, tmp_path: Path
) -> None:
    data = customers_csv([customer(1), customer(2, first_name="X")]).encode().replace(b",X,", b",\xff,")
    name = _put(sftp_server, data)  # the byte is well inside the first 8 KB
    outcome = _take(sftp_client, lake, tmp_path, name)
    assert outcome.status == "landed"  # the record is quarantined by bronze, naming its line
    assert (sftp_server.root / "archive" / name).exists()


def test_a_header_that_is_not_utf8_is_named_as_such(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, lake: Lake, tmp_path: Path
) -> None:
    data = customers_csv([customer(1)]).encode().replace(b"first_name", b"first_n\xe4me", 1)
    name = _put(sftp_server, data)
    outcome = _take(sftp_client, lake, tmp_path, name)
    assert outcome.status == "quarantined"
    assert outcome.reason == f"{name}: the header line is not UTF-8 (byte 0xE4 at byte 26 of line 1)"


def test_a_reused_sequence_number_with_other_content_is_quarantined_and_the_first_stays(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, lake: Lake, tmp_path: Path
) -> None:
    first = _put(sftp_server, customers_csv([customer(1)]).encode(), sequence=7)
    assert _take(sftp_client, lake, tmp_path, first).status == "landed"
    other = _put(sftp_server, customers_csv([customer(2)]).encode(), sequence=7)

    outcome = _take(sftp_client, lake, tmp_path, other)

    assert outcome.status == "quarantined"
    assert outcome.reason == (
        f"{other}: sequence 00007 was delivered before as {first} (business date {DAY}) with other content; a "
        "sequence number names one delivery: send a correction under a new number"
    )
    assert [m.file_name for m in landed_files(lake, "customers", DAY)] == [first]
    # The same content again under its number is a re-send, not a conflict.
    again = _put(sftp_server, customers_csv([customer(1)]).encode(), sequence=7)
    assert _take(sftp_client, lake, tmp_path, again).status == "already_landed"


def test_sequence_numbers_landed_before_the_claims_existed_are_claimed_from_their_manifests(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, lake: Lake, tmp_path: Path
) -> None:
    for sequence in (1, 2, 5):
        name = _put(sftp_server, customers_csv([customer(sequence)]).encode(), sequence=sequence)
        assert _take(sftp_client, lake, tmp_path, name).status == "landed"
    for batch in obstore.list(lake.store, "landing/customers/_sequence/"):  # a lake from before the claims
        for meta in batch:
            obstore.delete(lake.store, meta["path"])
    sequences._complete.clear()

    assert sequences.claimed(lake, "customers") == [1, 2, 5]
    assert sequences.gaps([1, 2, 5]) == [3, 4]
    reused = _put(sftp_server, customers_csv([customer(9)]).encode(), sequence=2)
    assert _take(sftp_client, lake, tmp_path, reused).status == "quarantined"


def test_a_file_that_changes_while_its_reason_is_written_stays_without_a_reason(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _put(sftp_server, b"half an upload", name="acme_customers_latest.csv")
    listed = _listed(sftp_client, name)
    write_bytes = sftp_client.write_bytes

    def write_while_the_partner_writes(path: str, data: bytes) -> int:
        written = write_bytes(path, data)
        with (sftp_server.root / "inbox" / name).open("ab") as partner:
            partner.write(b" and the rest")
        return written

    monkeypatch.setattr(sftp_client, "write_bytes", write_while_the_partner_writes)
    outcome = quarantine_remote(sftp_client, LAYOUT, name, "r", listed=listed)

    assert outcome.status == "changed"
    assert (sftp_server.root / "inbox" / name).read_bytes() == b"half an upload and the rest"
    assert list((sftp_server.root / "quarantine").iterdir()) == []


def test_a_link_or_a_folder_named_in_a_run_is_left_as_it_is(
    sftp_server: EmbeddedSftpServer, sftp_client: SftpClient, lake: Lake, tmp_path: Path
) -> None:
    target = _put(sftp_server, customers_csv([customer(1)]).encode())
    link = CUSTOMERS.files.file_name(DAY, 2, "00000000")
    (sftp_server.root / "inbox" / link).symlink_to(target)
    (sftp_server.root / "inbox" / "folder").mkdir()
    assert _take(sftp_client, lake, tmp_path, link, listed=None).status == "changed"
    assert quarantine_remote(sftp_client, LAYOUT, "folder", "r").status == "changed"
    assert (sftp_server.root / "inbox" / link).is_symlink() and (sftp_server.root / "inbox" / "folder").is_dir()
    assert landed_files(lake, "customers", DAY) == []
