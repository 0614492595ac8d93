"""The boot's TCG event log: eventlog.parse on any bytes, on the real log this project's VM recorded
(tests/vectors/measured-boot) edited byte by byte, and on logs that encode writes from the input
(any registers, types, data and banks; a StartupLocality event; a CCEL log area's padding), edited
or not.

Beyond "only EnclaveInferError escapes": what parses re-encodes to a log that parses to itself,
replays in each of its banks and passes check_replay against its own replay; describe() is one
line; the unedited real log replays to the PCR 4 value tpm2_eventlog computes; a written log parses
to the log that was written, padded or not.
"""

from __future__ import annotations

from pathlib import Path

import atheris

from _harness import EnclaveInferError, main, mutate_bytes

with atheris.instrument_imports(include=["enclave_infer"]):
    from enclave_infer.attestation import eventlog
    from enclave_infer.attestation.eventlog import Alg, Event, EventLog, EventType

ROOT = Path(__file__).resolve().parent.parent
REAL = (ROOT / "tests" / "vectors" / "measured-boot" / "ovmf-swtpm-uki.tpm-eventlog").read_bytes()
# tpm2_eventlog's SHA-256 PCR 4 for that log (tests/unit/test_eventlog.py has them all)
REAL_PCR4 = bytes.fromhex("1427d71490aa0289007b21fb59eb39bfe71de372cb0e675fc828e35c4b530fad")
TYPES = [*EventType, 0x7FFF0001]
BANKS = [(Alg.SHA384,), (Alg.SHA256,), (Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512), (Alg.SHA512, Alg.SHA1)]


def written(fdp: atheris.FuzzedDataProvider) -> EventLog:
    """A log made from the input: its banks, then events with any register, type and data."""
    algs = fdp.PickValueInList(BANKS)
    events = []
    if fdp.ConsumeIntInRange(0, 3) == 0:  # PFP §10.4.5.3, before anything extends PCR 0
        data = b"StartupLocality\0" + bytes([fdp.PickValueInList([0, 3, 4])])
        events.append(Event(1, 0, EventType.EV_NO_ACTION, {a: bytes(a.digest_size) for a in algs}, data))
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        register = fdp.PickValueInList([0, 1, 2, 3, 4, 5, 7, 9, 11, 14, 23, 0xFFFFFFFF])
        event_type = fdp.PickValueInList(TYPES)
        data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))
        digests = {a: a.hash(data) for a in algs}
        events.append(Event(len(events) + 1, register, event_type, digests, data))
    return EventLog(algs, tuple(events))


def check(log: EventLog) -> None:
    assert eventlog.parse(eventlog.encode(log)) == log, "a parsed log does not re-encode to itself"
    for alg in log.algs:
        eventlog.check_replay(log, alg, eventlog.replay(log, alg))
    for event in log.events:
        assert "\n" not in eventlog.describe(event)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    try:
        if mode == 0:
            check(eventlog.parse(fdp.ConsumeBytes(fdp.remaining_bytes())))
        elif mode == 1:
            edited = mutate_bytes(fdp, REAL)
            log = eventlog.parse(edited)
            if edited == REAL:
                assert eventlog.replay(log, Alg.SHA256)[4] == REAL_PCR4, "the real log replays wrong"
            check(log)
        else:
            log = written(fdp)
            raw = eventlog.encode(log)
            padded = raw + fdp.PickValueInList([b"", b"\xff" * 64, bytes(9)])
            if fdp.ConsumeBool():
                check(eventlog.parse(mutate_bytes(fdp, padded)))
            else:
                assert eventlog.parse(padded) == log, "a written log does not parse to itself"
                check(log)
    except EnclaveInferError:
        pass


if __name__ == "__main__":
    main(test_one_input)
