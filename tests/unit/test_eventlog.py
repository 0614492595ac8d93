"""The TCG event log (attestation/eventlog.py): the real log this project's VM recorded, read as
tpm2-tools' ``tpm2_eventlog`` (Debian's tpm2-tools, an independent reader) reads it; logs the writer
makes, read back by both; tampered, truncated, reordered and malformed logs refused.

The vector is ``tests/vectors/measured-boot/ovmf-swtpm-uki.tpm-eventlog`` (its README says how it
was captured). Tests that run ``tpm2_eventlog`` skip when it is not installed (apt package
``tpm2-tools``); the values it printed for the vector are also recorded here, so the replay is
checked against an independent reader either way.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from enclave_infer.attestation import eventlog
from enclave_infer.attestation.eventlog import (
    Alg,
    Event,
    EventLog,
    EventLogError,
    EventType,
    check_replay,
    describe,
    encode,
    mr_index_of,
    parse,
    replay,
    rtmr_of,
    type_name,
)
from enclave_infer.errors import AttestationError, UsageError

VECTOR = Path(__file__).resolve().parent.parent / "vectors" / "measured-boot" / "ovmf-swtpm-uki.tpm-eventlog"

# tpm2_eventlog 5.4 (Debian 12's tpm2-tools) on the vector: its "pcrs: sha256:" section.
TPM2_EVENTLOG_SHA256 = {
    0: "1119fe2cc2550e9294b01a6355bfeb7ac1507139f07c0afec49f6644002acca9",
    1: "4df2a67aecab70aec850648d9065e3c07d119d9fe0624268bd427c76c127d103",
    2: "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969",
    3: "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969",
    4: "1427d71490aa0289007b21fb59eb39bfe71de372cb0e675fc828e35c4b530fad",
    5: "a5ceb755d043f32431d63e39f5161464620a3437280494b5850dc1b47cc074e0",
    6: "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969",
    7: "65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068",
    9: "4f4b508174e1ecd88d2552423300d57930dcd0ade982e59219fe5eb9a13c0549",
    11: "6b0343d91efdcd17d478dfc002cbb2c7ba60451525981ad016d5e44c88a93998",
}
# What a quote over PCRs 0-11 of that boot holds: the values above, and zeros where no event is.
QUOTE = {i: bytes.fromhex(TPM2_EVENTLOG_SHA256.get(i, "00" * 32)) for i in range(12)}


@functools.cache
def real_bytes() -> bytes:
    return VECTOR.read_bytes()


def real_log() -> EventLog:
    return parse(real_bytes())


def offset_of(data: bytes, number: int) -> int:
    """Where event ``number`` starts in ``data`` (a well-formed log), by walking its records."""
    (header_size,) = struct.unpack_from("<I", data, 28)
    at = 32 + header_size
    sizes = {a.value: a.digest_size for a in Alg}
    for _ in range(1, number):
        (count,) = struct.unpack_from("<I", data, at + 8)
        at += 12
        for _ in range(count):
            (alg,) = struct.unpack_from("<H", data, at)
            at += 2 + sizes[alg]
        (size,) = struct.unpack_from("<I", data, at)
        at += 4 + size
    return at


# --- tpm2_eventlog, the independent reader ---------------------------------------------------------


@dataclasses.dataclass
class Tpm2Eventlog:
    events: list[tuple[int, int, str]]  # (EventNum, PCRIndex, EventType), the header included
    pcrs: dict[str, dict[int, bytes]]  # bank name -> PCR -> value


def tpm2_eventlog(data: bytes, tmp_path: Path) -> Tpm2Eventlog:
    """Run tpm2-tools' ``tpm2_eventlog`` on ``data`` and read its YAML: the events and ``pcrs:``."""
    tool = shutil.which("tpm2_eventlog")
    if tool is None:
        pytest.skip("tpm2_eventlog is not installed (Debian package tpm2-tools)")
    path = tmp_path / "eventlog.bin"
    path.write_bytes(data)
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, f"tpm2_eventlog refused the log: {run.stderr.strip()}"
    text = run.stdout
    events = [
        (int(n), int(p), t)
        for n, p, t in re.findall(r"^- EventNum: (\d+)\n  PCRIndex: (\d+)\n  EventType: (\S+)$", text, re.M)
    ]
    pcrs: dict[str, dict[int, bytes]] = {}
    section = text[text.index("\npcrs:\n") :]
    for bank, body in re.findall(r"^  (\w+):\n((?:    .*\n?)+)", section, re.M):
        values = re.findall(r"^    (\d+)\s*: 0x([0-9a-fA-F]+)$", body, re.M)
        pcrs[bank] = {int(i): bytes.fromhex(v) for i, v in values}
    return Tpm2Eventlog(events, pcrs)


# --- The real log ----------------------------------------------------------------------------------


def test_the_real_log_has_four_banks_and_36_events() -> None:
    log = real_log()
    assert log.algs == (Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512)
    # event 0 is the Spec ID header; the 35 records after it are events 1 to 35
    assert [e.number for e in log.events] == list(range(1, 36))
    assert all(set(e.digests) == set(log.algs) for e in log.events)
    first, last = log.events[0], log.events[-1]
    assert (first.register, first.type, first.data) == (0, EventType.EV_S_CRTM_VERSION, b"\0\0")
    assert (last.register, last.type) == (5, EventType.EV_EFI_ACTION)
    assert last.data == b"Exit Boot Services Returned with Success"
    assert last.digests[Alg.SHA256] == hashlib.sha256(last.data).digest()


def test_replay_gives_the_values_tpm2_eventlog_printed_for_the_vector() -> None:
    replayed = replay(real_log(), Alg.SHA256)
    assert {i: v.hex() for i, v in replayed.items()} == TPM2_EVENTLOG_SHA256
    check_replay(real_log(), Alg.SHA256, QUOTE)


@pytest.mark.parametrize("alg", list(Alg), ids=lambda a: a.hash_name)
def test_replay_equals_tpm2_eventlog_in_every_bank(alg: Alg, tmp_path: Path) -> None:
    tool = tpm2_eventlog(real_bytes(), tmp_path)
    assert tool.pcrs[alg.hash_name] == replay(real_log(), alg)
    check_replay(real_log(), alg, tool.pcrs[alg.hash_name])


def test_events_are_the_ones_tpm2_eventlog_reads(tmp_path: Path) -> None:
    tool = tpm2_eventlog(real_bytes(), tmp_path)
    assert len(tool.events) == 36
    assert tool.events[0] == (0, 0, "EV_NO_ACTION")  # the Spec ID header
    ours = [(e.number, e.register, type_name(e.type)) for e in real_log().events]
    assert ours == tool.events[1:]


def test_the_writer_reproduces_the_firmware_bytes() -> None:
    assert encode(real_log()) == real_bytes()


def test_describe_names_register_event_type_and_what_the_data_says() -> None:
    events = {e.number: e for e in real_log().events}
    assert describe(events[14]) == 'PCR 4 event 14 EV_EFI_ACTION "Calling EFI Application from Boot Option"'
    assert describe(events[22]) == r'PCR 4 event 22 EV_EFI_BOOT_SERVICES_APPLICATION "\EFI\BOOT\BOOTX64.EFI"'
    assert describe(events[23]) == 'PCR 11 event 23 EV_IPL ".linux"'
    assert describe(events[29]) == 'PCR 11 event 29 EV_IPL ".initrd"'
    assert describe(events[32]) == 'PCR 9 event 32 EV_EVENT_TAG "LOADED_IMAGE::LoadOptions"'
    assert describe(events[33]) == 'PCR 9 event 33 EV_EVENT_TAG "Linux initrd"'
    assert describe(events[4]) == 'PCR 7 event 4 EV_EFI_VARIABLE_DRIVER_CONFIG "SecureBoot"'
    assert describe(events[19]) == "PCR 4 event 19 EV_SEPARATOR"
    assert (
        describe(events[31], name=lambda i: f"RTMR{i}") == "RTMR4 event 31 EV_EFI_BOOT_SERVICES_APPLICATION"
    )


# --- The writer ------------------------------------------------------------------------------------


def measured(number: int, register: int, event_type: int, data: bytes, algs: tuple[Alg, ...]) -> Event:
    """An event whose digests are of its data, as EV_EFI_ACTION, EV_IPL and tagged events are."""
    return Event(number, register, event_type, {alg: alg.hash(data) for alg in algs}, data)


def cc_log(algs: tuple[Alg, ...] = (Alg.SHA384,)) -> EventLog:
    """A CC event log as TDX firmware and the kernel's EFI stub record it: CC MR indices 2 and 3."""
    boot = [
        (2, EventType.EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
        (2, EventType.EV_SEPARATOR, bytes(4)),
        (2, EventType.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(32) + struct.pack("<Q", 0)),
        (3, EventType.EV_EVENT_TAG, struct.pack("<II", 0x8F3B22EC, 13) + b"Linux initrd\0"),
        (2, EventType.EV_EFI_ACTION, b"Exit Boot Services Invocation"),
    ]
    return EventLog(algs, tuple(measured(n, *e, algs) for n, e in enumerate(boot, 1)))


def test_parse_reads_what_encode_writes() -> None:
    algs = (Alg.SHA256, Alg.SHA1)
    events = [
        Event(1, 0, EventType.EV_NO_ACTION, {a: bytes(a.digest_size) for a in algs}, b"StartupLocality\0\3"),
        measured(2, 0, EventType.EV_S_CRTM_VERSION, "1.0\0".encode("utf-16-le"), algs),
        measured(3, 17, 0x1234, b"an event type no spec names", algs),
        measured(4, 0xFFFFFFFF, EventType.EV_IPL, b"", algs),
    ]
    for log in (EventLog(algs, tuple(events)), cc_log(), real_log(), EventLog((Alg.SHA512,), ())):
        assert parse(encode(log)) == log
    assert parse(encode(EventLog(algs, tuple(events)))).events[2].type == 0x1234


def test_a_written_log_is_read_by_tpm2_eventlog_with_the_same_pcrs(tmp_path: Path) -> None:
    """The writer checked by the independent reader: the real boot's events re-recorded in two banks
    (SHA-384 first) with digests of their data, and a CC-style log, give the PCRs we replay."""
    algs = (Alg.SHA384, Alg.SHA256)
    chosen = [e for e in real_log().events if e.register in (4, 5, 9, 11)]
    events = tuple(measured(n, e.register, e.type, e.data, algs) for n, e in enumerate(chosen, 1))
    for log in (EventLog(algs, events), cc_log()):
        tool = tpm2_eventlog(encode(log), tmp_path)
        assert [(n, p, t) for n, p, t in tool.events[1:]] == [
            (e.number, e.register, type_name(e.type)) for e in log.events
        ]
        for alg in log.algs:
            assert tool.pcrs[alg.hash_name] == replay(log, alg)


# --- Replay and what it refuses ------------------------------------------------------------------


def refusal(log: EventLog, quote: dict[int, bytes] = QUOTE) -> str:
    with pytest.raises(AttestationError) as caught:
        check_replay(log, Alg.SHA256, quote)
    assert not isinstance(caught.value, EventLogError)
    return str(caught.value)


def test_a_flipped_digest_byte_is_refused_naming_the_register() -> None:
    data = bytearray(real_bytes())
    at = offset_of(real_bytes(), 22) + 12 + (2 + 20) + 2  # event 22's SHA-256 digest
    assert data[at : at + 32] == real_log().events[21].digests[Alg.SHA256]
    data[at + 7] ^= 0x01
    message = refusal(parse(bytes(data)))
    assert message.startswith("PCR 4 is 1427d71490aa…0fad in the quote, but the event log replays it to ")
    assert message.endswith(" (4 events, sha256): the log is tampered, truncated or reordered")
    # the other banks are untouched: a verifier of a SHA-384 quote would not see this edit
    assert replay(parse(bytes(data)), Alg.SHA384) == replay(real_log(), Alg.SHA384)


def test_a_dropped_last_event_is_refused_naming_its_register() -> None:
    truncated = real_bytes()[: offset_of(real_bytes(), 35)]
    log = parse(truncated)  # a clean cut at a record boundary parses
    assert len(log.events) == 34
    assert refusal(log).startswith("PCR 5 is a5ceb755d043…74e0 in the quote")


def test_two_swapped_events_of_one_register_are_refused() -> None:
    log = real_log()
    events = list(log.events)
    a, b = events[22], events[23]  # events 23 and 24: PCR 11's ".linux" name, then its content
    events[22], events[23] = dataclasses.replace(b, number=23), dataclasses.replace(a, number=24)
    swapped = parse(encode(EventLog(log.algs, tuple(events))))
    assert refusal(swapped).startswith("PCR 11 is ")
    # a swap across registers keeps each register's order: replay cannot see it, and need not
    events = list(log.events)
    events[30], events[31] = (
        dataclasses.replace(events[31], number=31),
        dataclasses.replace(events[30], number=32),
    )
    check_replay(EventLog(log.algs, tuple(events)), Alg.SHA256, QUOTE)


def test_a_log_cut_inside_a_record_does_not_parse() -> None:
    data = real_bytes()
    start = offset_of(data, 23)
    for cut in (start + 3, start + 11, start + 50, offset_of(data, 24) - 1, 40):
        with pytest.raises(EventLogError, match=r"^event log (event 23|header) at byte \d+: truncated"):
            parse(data[:cut])


def test_a_register_the_quote_covers_and_no_event_extends_must_be_zero() -> None:
    check_replay(real_log(), Alg.SHA256, {8: bytes(32), 10: bytes(32)})
    message = refusal(real_log(), {8: b"\x01" * 32})
    assert message == (
        "PCR 8 is 010101010101…0101 in the quote, but the event log replays it to 000000000000…0000"
        " (0 events, sha256): the log is tampered, truncated or reordered"
    )


def test_a_log_of_other_components_replays_to_its_own_registers() -> None:
    """Replay proves only that the log is the sequence that was extended: a log of other components
    passes against a quote of those components. Refusing it is the reference check's job."""
    other = cc_log((Alg.SHA256,))
    check_replay(other, Alg.SHA256, replay(other, Alg.SHA256))
    with pytest.raises(AttestationError, match=r"^PCR 0 is 1119fe2cc255…cca9 in the quote"):
        check_replay(other, Alg.SHA256, QUOTE)


def test_a_bank_the_log_does_not_have_is_refused() -> None:
    with pytest.raises(EventLogError, match=r"no sha256 digests \(its banks: sha384\)"):
        check_replay(cc_log(), Alg.SHA256, {1: bytes(32)})


# --- CC event logs ---------------------------------------------------------------------------------


def test_a_ccel_log_area_is_read_up_to_its_padding() -> None:
    log = cc_log()
    area = encode(log).ljust(64 * 1024, b"\xff")  # the CCEL log area, 0xFF after the last event
    assert parse(area) == log
    assert parse(encode(log) + bytes(100)) == log  # zero padding likewise
    rtmrs = {rtmr_of(mr): value for mr, value in replay(parse(area), Alg.SHA384).items()}
    assert sorted(rtmrs) == [1, 2]  # RTMR1 (firmware and boot loader), RTMR2 (the kernel's stub)
    quote = {mr_index_of(i): v for i, v in rtmrs.items()} | {mr_index_of(0): bytes(48), 4: bytes(48)}
    check_replay(log, Alg.SHA384, quote, name=lambda mr: f"RTMR{rtmr_of(mr)}")
    quote[mr_index_of(2)] = bytes(48)
    with pytest.raises(
        AttestationError, match=r"^RTMR2 is 000000000000…0000 in the quote, but .* \(1 event, sha384\)"
    ):
        check_replay(log, Alg.SHA384, quote, name=lambda mr: f"RTMR{rtmr_of(mr)}")


def test_rtmr_indices() -> None:
    assert [rtmr_of(mr) for mr in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert [mr_index_of(r) for r in (0, 1, 2, 3)] == [1, 2, 3, 4]
    for mr in (0, 5, -1):
        with pytest.raises(EventLogError, match="is not an RTMR"):
            rtmr_of(mr)
    with pytest.raises(UsageError):
        mr_index_of(4)


def test_trailing_bytes_that_are_not_padding_are_refused() -> None:
    log = encode(cc_log())
    end = len(log)
    for tail in (b"\x01", b"\xff" * 7 + b"\x00", b"\x00\xff", b"\xff" * 40 + b"junk"):
        with pytest.raises(EventLogError, match=rf"^event log event 6 at byte {end}: "):
            parse(log + tail)


# --- Startup locality ------------------------------------------------------------------------------


def locality_log(*events: tuple[int, int, bytes]) -> bytes:
    """A SHA-256 log of (register, type, data) events, EV_NO_ACTION ones with a zero digest."""
    return SHA256_HEADER + b"".join(
        record(register, t, [(0x000B, bytes(32) if t == 3 else hashlib.sha256(data).digest())], data)
        for register, t, data in events
    )


def test_the_startup_locality_sets_pcr0s_initial_value() -> None:
    """PFP §10.4.5.3: TPM2_Startup at locality 3 starts PCR 0 at 00…03; the event is not extended."""
    sig = b"StartupLocality\0"
    data = locality_log((0, 3, sig + b"\3"), (0, 8, b"v1"))
    log = parse(data)
    start = bytes(31) + b"\x03"
    assert replay(log, Alg.SHA256) == {0: hashlib.sha256(start + hashlib.sha256(b"v1").digest()).digest()}
    assert replay(parse(locality_log((0, 3, sig + b"\0"))), Alg.SHA256) == {0: bytes(32)}
    assert replay(parse(locality_log((0, 3, sig + b"\4"))), Alg.SHA256) == {0: bytes(31) + b"\x04"}
    # refused: after PCR 0 was extended, twice, a locality TPM2_Startup cannot come from, bad length
    for bad in (
        [(0, 8, b"v1"), (0, 3, sig + b"\3")],
        [(0, 3, sig + b"\3"), (0, 3, sig + b"\3")],
        [(0, 3, sig + b"\2")],
        [(0, 3, sig + b"\3\0")],
    ):
        with pytest.raises(EventLogError, match=r"^event log event \d: (StartupLocality|a StartupLocality)"):
            parse(locality_log(*bad))
    # in another register the signature means nothing
    assert replay(parse(locality_log((1, 3, sig + b"\3"))), Alg.SHA256) == {}


# --- Malformed logs --------------------------------------------------------------------------------


def header(
    algs: list[tuple[int, int]], signature: bytes = b"Spec ID Event03\0", vendor: bytes = b""
) -> bytes:
    body = struct.pack("<16sIBBBBI", signature, 0, 0, 2, 0, 2, len(algs))
    body += b"".join(struct.pack("<HH", a, s) for a, s in algs) + bytes([len(vendor)]) + vendor
    return struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(body)) + body


SHA256_HEADER = header([(0x000B, 32)])


def record(register: int = 4, event_type: int = 13, digests: list[tuple[int, bytes]] | None = None,
           data: bytes = b"x", size: int | None = None) -> bytes:  # fmt: skip
    digests = [(0x000B, bytes(32))] if digests is None else digests
    out = struct.pack("<III", register, event_type, len(digests))
    out += b"".join(struct.pack("<H", a) + d for a, d in digests)
    return out + struct.pack("<I", len(data) if size is None else size) + data


MALFORMED = {
    "empty": (b"", "header at byte 0: truncated in its pcrIndex"),
    "not the Spec ID event": (
        struct.pack("<II", 0, 8) + SHA256_HEADER[8:],
        "does not start with the Spec ID event",
    ),
    "a TPM 1.2 log": (header([(0x0004, 20)], b"Spec ID Event00\0"), "not 'Spec ID Event03'"),
    "no algorithm": (header([]), "lists 0 algorithms"),
    "SM3": (header([(0x0012, 32)]), "algorithm 0x0012 is not supported"),
    "wrong digest size": (header([(0x000B, 20)]), "with a 20-byte digest"),
    "a bank twice": (header([(0x000B, 32), (0x000B, 32)]), "sha256 listed twice"),
    "vendor info cut": (header([(0x000B, 32)], vendor=b"ab")[:-1], "truncated in its Spec ID event"),
    "Spec ID with extra bytes": (
        SHA256_HEADER[:28] + struct.pack("<I", 33 + 1) + SHA256_HEADER[32:] + b"\0",
        "vendorInfoSize",
    ),
    "Spec ID too short": (
        struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", 8) + b"Spec ID ",
        "a Spec ID event of 8 bytes",
    ),
    "fewer digests than banks": (SHA256_HEADER + record(digests=[]), "digest count 0, not the header's 1"),
    "more digests than banks": (
        SHA256_HEADER + record(digests=[(0x000B, bytes(32))] * 2),
        "digest count 2, not the header's 1",
    ),
    "a bank the header lacks": (
        SHA256_HEADER + record(digests=[(0x000C, bytes(48))]),
        "algorithm 0x000c: not in the header",
    ),
    "a digest cut": (SHA256_HEADER + record()[:30], "truncated in its sha256 digest"),
    "data cut": (
        SHA256_HEADER + record(data=b"abc", size=9),
        "truncated in its event data (9 bytes, 3 left)",
    ),
    "data over the limit": (SHA256_HEADER + record(size=eventlog.MAX_EVENT_DATA_BYTES + 1), "over the limit"),
    "header data over the limit": (
        SHA256_HEADER[:28] + struct.pack("<I", 1 << 31) + SHA256_HEADER[32:],
        "Spec ID event data, over the",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_logs_are_refused_with_a_message_saying_where(case: str) -> None:
    data, expected = MALFORMED[case]
    with pytest.raises(EventLogError, match=r"^event log (header|event \d+) at byte \d+: ") as caught:
        parse(data)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_size_limits() -> None:
    with pytest.raises(EventLogError, match="over the limit of 1048576"):
        parse(real_bytes() + b"\xff" * eventlog.MAX_LOG_BYTES)
    one = record(data=b"")
    many = SHA256_HEADER + one * (eventlog.MAX_EVENTS + 1)
    with pytest.raises(EventLogError, match=f"more than {eventlog.MAX_EVENTS} events"):
        parse(many)
    assert len(parse(SHA256_HEADER + one * eventlog.MAX_EVENTS).events) == eventlog.MAX_EVENTS


def test_mutations_of_the_real_log_raise_event_log_error_or_parse() -> None:
    """A few thousand random edits (bit flips, cuts, insertions, overwritten sizes): parse returns
    or raises EventLogError, nothing else; what parses replays, describes and re-encodes."""
    rng = random.Random(17)
    data = real_bytes()
    started, parsed = time.monotonic(), 0
    for _ in range(3000):
        edited = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            action, at = rng.randrange(5), rng.randrange(len(edited) or 1)
            if action == 0 and edited:
                edited[at] ^= 1 << rng.randrange(8)
            elif action == 1:
                del edited[at:]
            elif action == 2:
                edited[at:at] = rng.randbytes(rng.randint(1, 8))
            elif action == 3 and at + 4 <= len(edited):
                edited[at : at + 4] = rng.choice(
                    [b"\xff\xff\xff\xff", b"\0\0\0\0", b"\1\0\0\0", b"\0\0\0\x80"]
                )
            else:
                del edited[at : at + rng.randint(1, 40)]
        try:
            log = parse(bytes(edited))
        except EventLogError:
            continue
        parsed += 1
        assert parse(encode(log)) == log
        for alg in log.algs:
            replay(log, alg)
        for event in log.events:
            describe(event)
    assert 50 < parsed < 3000  # both outcomes were exercised
    assert time.monotonic() - started < 20  # about 1 s; generous for a loaded machine


def test_describe_never_fails_on_any_data() -> None:
    rng = random.Random(5)
    types = [*EventType, 0x7FFF0000]
    for _ in range(2000):
        data = rng.randbytes(rng.choice([0, 1, 3, 8, 17, 40, 200]))
        if rng.random() < 0.3:
            data = (
                struct.pack("<QQQQ", 0, 0, 0, rng.choice([0, 8, 10**12])) + b"\x04\x04\x08\x00\xff\xfe" + data
            )
        text = describe(Event(1, 4, rng.choice(types), {Alg.SHA1: bytes(20)}, data))
        assert "\n" not in text and len(text) < 200
    assert describe(Event(7, 4, 0x7FFF0000, {Alg.SHA1: bytes(20)}, b"")) == "PCR 4 event 7 0x7fff0000"
    assert describe(
        Event(1, 4, EventType.EV_EFI_ACTION, {Alg.SHA1: bytes(20)}, b"a\nb\x1b[2Jc" + b"x" * 100)
    ) == ('PCR 4 event 1 EV_EFI_ACTION "ab[2Jc' + "x" * 57 + '…"')


# --- The values ------------------------------------------------------------------------------------


def test_algorithms() -> None:
    assert [(a.value, a.hash_name, a.digest_size) for a in Alg] == [
        (0x0004, "sha1", 20), (0x000B, "sha256", 32), (0x000C, "sha384", 48), (0x000D, "sha512", 64),
    ]  # fmt: skip
    assert Alg.from_name("sha384") is Alg.SHA384
    assert Alg.from_name("SHA256") is Alg.SHA256
    assert Alg.SHA512.hash(b"abc") == hashlib.sha512(b"abc").digest()
    with pytest.raises(UsageError):
        Alg.from_name("sm3_256")


def test_event_types() -> None:
    assert EventType.EV_EFI_BOOT_SERVICES_APPLICATION == 0x80000003
    assert EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2 == 0x8000000A
    assert EventType.EV_EFI_HANDOFF_TABLES2 == 0x8000000B
    assert EventType.EV_EFI_GPT_EVENT == 0x80000006
    assert EventType.EV_EVENT_TAG == 6 and EventType.EV_IPL == 13
    assert type_name(0x80000007) == "EV_EFI_ACTION"
    assert type_name(0xDEADBEEF) == "0xdeadbeef"


def test_logs_and_events_are_valid_once_built() -> None:
    sha1 = {Alg.SHA1: bytes(20)}
    with pytest.raises(UsageError):
        Event(1, 4, 13, {Alg.SHA1: bytes(19)}, b"")
    with pytest.raises(UsageError):
        Event(0, 4, 13, sha1, b"")
    with pytest.raises(UsageError):
        Event(1, 1 << 32, 13, sha1, b"")
    with pytest.raises(UsageError):
        EventLog((Alg.SHA1,), (Event(2, 4, 13, sha1, b""),))  # numbered from 1
    with pytest.raises(UsageError):
        EventLog((Alg.SHA1, Alg.SHA256), (Event(1, 4, 13, sha1, b""),))  # a bank missing
    with pytest.raises(UsageError):
        EventLog((), ())
    event = Event(1, 4, 13, dict(sha1), b"")
    assert event.type is EventType.EV_IPL
    with pytest.raises(TypeError):
        event.digests[Alg.SHA1] = b"x" * 20  # type: ignore[index]
