#!/usr/bin/env python3
"""Writes the hand-made seed corpus of the fuzz targets into fuzz/corpus/<target>/seed-*.

Run from anywhere: `python3 fuzz/make_seeds.py`. Inputs the fuzzer found and that were kept are
the other files in those directories (named by their SHA-1, as libFuzzer names them).

The balloon_queues input format is decoded by fuzz_targets/balloon_queues.rs: a header
(amount_mib u32, flags u8 [bit 0 deflate_on_oom, bit 1 free_page_reporting, bit 2 lax
backend], stats interval u8,
backend failure mask u8), then actions, each an opcode byte and little-endian fields.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- balloon_queues
def header(amount_mib=64, doom=False, fpr=False, interval=0, fail_mask=0, lax=False):
    return struct.pack("<IBBB", amount_mib, doom | (fpr << 1) | (lax << 2), interval, fail_mask)


def ack_features(f):
    return struct.pack("<BQ", 0, f)


def ack_std(stats=False, doom=False, fpr=False):
    return struct.pack("<BB", 1, stats | (doom << 1) | (fpr << 2))


def queue_setup(q, size, desc, avail, used, ready=1):
    return struct.pack("<BBHIIIB", 2, q, size, desc, avail, used, ready)


def std_queues(size_log2=8):
    return struct.pack("<BB", 3, size_log2)


ACTIVATE = b"\x04"
RESET = b"\x05"


def write_mem(addr, data):
    return struct.pack("<BIB", 6, addr, len(data)) + data


def desc(q, index, addr, length, flags, nxt):
    return struct.pack("<BBHIIHH", 7, q, index, addr, length, flags, nxt)


def pfn_buffer(q, pfns, pieces=1, write_only=False):
    out = struct.pack("<BBBH", 8, q, (pieces - 1) | (write_only << 2), len(pfns))
    for p in pfns:
        if p < 0x80:
            out += struct.pack("<H", p)
        else:
            out += struct.pack("<HI", 0x8000, p)
    return out


def report_chain(ranges):
    out = struct.pack("<BB", 9, len(ranges))
    for addr, length, write_only in ranges:
        out += struct.pack("<IIB", addr, length, 2 if write_only else 0)
    return out


def stats_buffer(entries, extra=b""):
    out = struct.pack("<BB", 10, len(entries))
    for tag, val in entries:
        out += struct.pack("<HQ", tag, val)
    return out + struct.pack("<B", len(extra)) + extra


def push_avail(q, head):
    return struct.pack("<BBH", 11, q, head)


def set_avail_idx(q, idx):
    return struct.pack("<BBH", 12, q, idx)


def notify(q):
    return struct.pack("<BH", 13, q)


TRIGGER_STATS = b"\x0e"


def write_config(offset, data):
    return struct.pack("<BIB", 15, offset, len(data)) + data


def read_config(offset, n):
    return struct.pack("<BIB", 16, offset, n)


def set_target(mib):
    return struct.pack("<BI", 17, mib)


def set_stats_interval(s):
    return struct.pack("<BH", 18, s)


def indirect_chain(q, pfns, more_flags=0, len_extra=0):
    """A head descriptor with VIRTQ_DESC_F_INDIRECT pointing at a table of one-PFN buffers."""
    out = struct.pack("<BBHBB", 19, q, more_flags, len(pfns), len_extra)
    for p in pfns:
        out += struct.pack("<H", p) if p < 0x80 else struct.pack("<HI", 0x8000, p)
    return out


# Guest memory [0, 64K) + [128K, 192K); RAM has a hole at [32K, 48K) = PFNs 8..11.
write("balloon_queues", "inflate-deflate",
      header(64) + ack_std() + std_queues(8) + ACTIVATE
      + pfn_buffer(0, [0, 1, 2, 3, 9, 40, 41, 41, 100, 12, 0xFFFFFFFF]) + notify(0)
      + pfn_buffer(1, [0, 1, 40]) + notify(1)
      + write_config(4, struct.pack("<I", 3)) + read_config(0, 16) + set_target(128))
write("balloon_queues", "inflate-two-descriptors",
      header(1) + ack_std() + std_queues(4) + ACTIVATE
      + pfn_buffer(0, list(range(32, 48)) + [5, 6, 7], pieces=2) + notify(0) + notify(0))
write("balloon_queues", "stats-and-reporting",
      header(16, doom=True, fpr=True, interval=1) + ack_std(True, True, True) + std_queues(7)
      + ACTIVATE
      + stats_buffer([(0, 1), (1, 2), (4, 1 << 30), (5, 1 << 31), (99, 5)], b"\x07\x00\x01")
      + notify(2) + TRIGGER_STATS + stats_buffer([(8, 42)]) + notify(2)
      + report_chain([(0x20000, 0x4000, True), (0x8000, 0x1000, True), (0x1001, 0x1000, True),
                      (0x10000, 0x1000, True), (0, 0x8000, False)])
      + notify(3) + RESET + set_stats_interval(0))
write("balloon_queues", "reporting-without-stats",
      header(0, fpr=True) + ack_std(fpr=True) + std_queues(2) + ACTIVATE
      + report_chain([(0xc000, 0x4000, True)]) + notify(2))
write("balloon_queues", "hostile-queue",
      header(8) + ack_features(1 << 32 | 1 << 3 | 1 << 40)
      + queue_setup(0, 16, 0x0, 0x1000, 0x2000) + queue_setup(1, 16, 0x3000, 0x4000, 0xfff8)
      + ACTIVATE
      + desc(0, 0, 0x20000, 8, 1, 1) + desc(0, 1, 0x20008, 8, 1, 0) + push_avail(0, 0)
      + push_avail(0, 200) + notify(0)
      + desc(1, 0, 0x20000, 4, 0, 0) + push_avail(1, 0) + notify(1)
      + set_avail_idx(0, 0x8000) + notify(0) + RESET + ACTIVATE)
write("balloon_queues", "failing-backend",
      header(64, fail_mask=0x55) + ack_std() + std_queues(8) + ACTIVATE
      + pfn_buffer(0, [0, 2, 4, 6, 33, 35]) + notify(0)
      + pfn_buffer(1, [0, 2, 4]) + notify(1))
write("balloon_queues", "lax-backend",
      header(64, fpr=True, lax=True) + ack_std(fpr=True) + std_queues(8) + ACTIVATE
      + pfn_buffer(0, [8, 9, 15, 16, 17, 31, 32, 47, 48, 100]) + notify(0)
      + report_chain([(0xf000, 0x2000, True), (0x10000, 0x1000, True), (0x30000, 0x1000, True),
                      (0x8000, 0x4000, True)])
      + notify(2))
write("balloon_queues", "indirect-chains",
      header(16, fpr=True, interval=1) + ack_std(True, False, True) + std_queues(4) + ACTIVATE
      + indirect_chain(0, [0, 1, 2]) + indirect_chain(1, [3], more_flags=1)
      + indirect_chain(2, [], len_extra=4) + indirect_chain(3, [40, 41], more_flags=2)
      + pfn_buffer(0, [0, 1]) + indirect_chain(0, [5], len_extra=16) + notify(0))
write("balloon_queues", "raw-memory-chain",
      header(64) + ack_std() + std_queues(3) + ACTIVATE
      + write_mem(0x20100, struct.pack("<IIII", 1, 2, 3, 33))
      + desc(0, 3, 0x20100, 16, 0, 0) + push_avail(0, 3) + notify(0))

# ---------------------------------------------------------------- block_requests
# Header: flags u8 (bit 0 read-only, bit 1 4 KiB blocks, bit 2 failing I/O, bit 3 no hole
# punching), queue size log2 u8, acked features u32 + u8 (bits 32..39); then actions.
def blk_header(flags=0, size_log2=8, features=(1 << 9) | (1 << 13) | (1 << 14), hi=1):
    return struct.pack("<BBIB", flags, size_log2, features, hi)


def blk_request(kind, sector, out=b"", in_len=0, split=0, status_len=1):
    return struct.pack("<BIQBHHBB", 3, kind, sector, 0, len(out), in_len, split, status_len) + out


def blk_desc(index, addr, length, flags, nxt):
    return struct.pack("<BHIIHH", 1, index, addr, length, flags, nxt)


def blk_avail(head):
    return struct.pack("<BH", 2, head)


BLK_NOTIFY = b"\x04"


def discard_seg(sector, sectors, flags=0):
    return struct.pack("<QII", sector, sectors, flags)


write("block_requests", "read-write-flush-id",
      blk_header() + blk_request(0, 3, in_len=1024) + blk_request(1, 10, b"\x42" * 512)
      + blk_request(4, 0) + blk_request(8, 0, in_len=20, split=7) + BLK_NOTIFY)
write("block_requests", "discard-write-zeroes",
      blk_header() + blk_request(11, 0, discard_seg(8, 16) + discard_seg(64, 8))
      + blk_request(13, 0, discard_seg(100, 4, 1)) + blk_request(13, 0, discard_seg(0, 1, 2))
      + BLK_NOTIFY)
write("block_requests", "read-only",
      blk_header(flags=1, features=1 << 5) + blk_request(1, 0, b"\x01" * 512)
      + blk_request(11, 0, discard_seg(0, 8)) + blk_request(0, 0, in_len=512) + BLK_NOTIFY)
write("block_requests", "direct-4k-blocks",
      blk_header(flags=2) + blk_request(0, 8, in_len=4096) + blk_request(0, 1, in_len=512)
      + BLK_NOTIFY)
write("block_requests", "failing-host",
      blk_header(flags=4 | 8) + blk_request(0, 0, in_len=512) + blk_request(11, 0, discard_seg(0, 8))
      + BLK_NOTIFY)
write("block_requests", "out-of-range-and-bad-lengths",
      blk_header() + blk_request(0, 127, in_len=1024) + blk_request(1, 0, b"\x00" * 100)
      + blk_request(0, 0, in_len=512, status_len=0) + blk_request(99, 0) + BLK_NOTIFY)
# A loop (0 -> 1 -> 0), an indirect descriptor, a next past the table.
write("block_requests", "broken-chains",
      blk_header(size_log2=4) + blk_desc(0, 0x20000, 16, 1, 1) + blk_desc(1, 0x20100, 1, 3, 0)
      + blk_avail(0) + blk_desc(2, 0x20200, 48, 4, 0) + blk_avail(2)
      + blk_desc(3, 0x20000, 16, 1, 200) + blk_avail(3) + BLK_NOTIFY)


# ---------------------------------------------------------------- net_frames
# Header: backend failing u8 (bit 0), receive queue size log2 u8, transmit queue size log2 u8,
# acked features u32 + u8 (bits 32..39); then actions.
def net_header(fail=0, rx_log2=8, tx_log2=8, features=1 << 5, hi=1):
    return struct.pack("<BBBIB", fail, rx_log2, tx_log2, features, hi)


def net_rx_chain(*lens, readable=False):
    out = struct.pack("<BB", 3, len(lens) - 1)
    for n in lens:
        out += struct.pack("<HB", n, 0x80 if readable else 0)
    return out


def net_tx(length, cut1=12, cut2=0, flags=None, gso=0):
    f = 0 if flags is None else 0x80 | flags
    return struct.pack("<BIBBHH", 4, length, f, gso, cut1, cut2)


def net_incoming(length, flags=0, gso=0):
    return struct.pack("<BIBB", 5, length, flags, gso)


def net_desc(q, index, addr, length, flags, nxt):
    return struct.pack("<BBHIIHH", 1, q, index, addr, length, flags, nxt)


def net_avail(q, head):
    return struct.pack("<BBH", 2, q, head)


NET_RX, NET_TX, NET_TAP = b"\x06", b"\x07", b"\x08"

write("net_frames", "round-trip",
      net_header() + net_rx_chain(12, 1514) + net_rx_chain(1526) + net_incoming(60)
      + net_incoming(1526) + NET_TAP + net_tx(74) + net_tx(1514, 5, 600) + NET_TX)
write("net_frames", "sizes",
      net_header() + net_rx_chain(100) + net_incoming(200) + net_incoming(100) + NET_TAP
      + net_tx(65562, 12, 40000) + net_tx(65563, 12, 40000) + net_tx(25) + net_tx(26) + NET_TX)
write("net_frames", "offload-headers-and-no-buffers",
      net_header() + net_tx(80, flags=1) + net_tx(80, gso=4, flags=0) + NET_TX
      + net_incoming(60) + net_incoming(60) + NET_TAP + net_rx_chain(2048) + NET_RX)
write("net_frames", "failing-host",
      net_header(fail=1) + net_rx_chain(2048) + net_incoming(60) + NET_TAP + net_tx(60) + NET_TX)
# A loop (0 -> 1 -> 0) on each queue, an indirect descriptor, a readable receive buffer.
write("net_frames", "broken-chains",
      net_header(rx_log2=4, tx_log2=4) + net_desc(0, 0, 0x20000, 64, 3, 1)
      + net_desc(0, 1, 0x20100, 64, 3, 0) + net_avail(0, 0) + net_desc(1, 0, 0x20000, 64, 1, 1)
      + net_desc(1, 1, 0x20100, 64, 1, 0) + net_avail(1, 0) + net_desc(1, 2, 0x20200, 48, 4, 0)
      + net_avail(1, 2) + net_rx_chain(2048, readable=True) + net_incoming(60) + NET_TAP + NET_TX)


# ---------------------------------------------------------------- api_request
def http(method, target, body=None, extra=""):
    s = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n{extra}"
    if body is None:
        return s + "\r\n"
    return s + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"


write("api_request", "get-vm", http("GET", "/vm"))
write("api_request", "put-vm-paused", http("PUT", "/vm", '{"state": "Paused"}'))
write("api_request", "patch-vm-resumed", http("PATCH", "/vm/", '{"state":"Resumed"}'))
write("api_request", "put-actions", http("PUT", "/actions", '{"action_type": "Shutdown"}'))
write("api_request", "put-balloon", http(
    "PUT", "/balloon", '{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}'))
write("api_request", "patch-balloon", http("PATCH", "/balloon", '{"amount_mib": 256}'))
write("api_request", "get-balloon-stats", http("GET", "/balloon/statistics"))
write("api_request", "get-balloon-device", http("GET", "/balloon/device"))
write("api_request", "put-balloon-firecracker", http(
    "PUT", "/balloon", '{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1, '
    '"free_page_hinting": false, "free_page_reporting": true}'))
write("api_request", "patch-balloon-stats",
      http("PATCH", "/balloon/statistics", '{"stats_polling_interval_s": 5}'))
write("api_request", "get-mappings", http("GET", "/memory/mappings?gpa=0x1000&len=4096"))
write("api_request", "get-report", http("GET", "/memory/report"))
write("api_request", "get-metrics", http("GET", "/metrics", extra="Accept: text/plain\r\n"))
write("api_request", "method-not-allowed", http("DELETE", "/vm"))
write("api_request", "not-found", http("GET", "/nope?x=1"))
write("api_request", "chunked",
      "PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
write("api_request", "expect-continue", http("PATCH", "/balloon", '{"amount_mib": 1}',
                                             extra="Expect: 100-continue\r\n"))
write("api_request", "conflicting-length",
      "PUT /vm HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
write("api_request", "body-too-large", "PUT /vm HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
write("api_request", "truncated-body", "PUT /vm HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"st")
write("api_request", "array-body", http("PATCH", "/balloon", "[5]"))

# ---------------------------------------------------------------- config
write("config", "memory-specs", "\x00size=512M\n1G,backend=hugetlbfs,mem-path=/dev/hugepages,"
      "prealloc=on,prealloc-threads=4\nsize=64M,backend=memfd,hugetlb=on,hugepage-size=2M\n"
      "size=2M,backend=uffd,fetch=64K,handler=external,socket=/tmp/h.sock\n"
      "size=4096K,thp=off,shared=off,mergeable=on\nsize=8M,backend=uffd,source=/tmp/img")
write("config", "memory-bad", "\x00size=3M,backend=memfd,hugetlb=on\nsize=1G,colour=blue")
write("config", "balloon-spec",
      "\x01amount_mib=64,deflate_on_oom=on,stats_polling_interval_s=1,free_page_reporting=on")
write("config", "balloon-dashes", "\x01amount-mib=0,deflate-on-oom=off")
config = {
    "vcpus": 2,
    "memory": [
        {"size": 536870912, "backend": "anon", "shared": False, "thp": True,
         "prealloc": False, "prealloc_threads": 0, "mergeable": True},
        {"size": 1073741824, "backend": "memfd", "hugepage_size": 2097152},
        {"size": 67108864, "backend": "uffd", "source": None, "fetch": 65536,
         "external_socket": "/tmp/h.sock"},
        {"size": 2097152, "backend": "hugetlbfs", "mem_path": "/dev/hugepages", "prealloc": True},
    ],
    "pin": {"0": 0, "1": 1},
    "workload": {"steps": [
        {"op": "touch", "stride": 4096, "passes": 1, "work_only": False},
        {"op": "fill", "seed": 1}, {"op": "verify", "seed": 1}, {"op": "checksum"},
        {"op": "random", "working_set": 0, "accesses": 1000, "seed": 3},
        {"op": "balloon", "data": 0, "seconds": 5, "seed": 1}, {"op": "grow", "to": 4096, "seed": 1},
    ]},
    "triple_fault": False,
    "balloon": {"amount_mib": 64, "deflate_on_oom": True, "stats_polling_interval_s": 1,
                "free_page_reporting": True},
}
write("config", "json-full", "\x02" + json.dumps(config))
write("config", "json-minimal", "\x02" + json.dumps(
    {"vcpus": 1, "memory": [{"size": 33554432, "backend": "anon"}], "workload": {"steps": []}}))
write("config", "command-line", "\x03vcpus 2\nmemory size=512M,prealloc=on\n"
      "memory 1G,backend=memfd\nballoon amount_mib=64,deflate_on_oom=on\n"
      "workload touch:stride=2M,passes=3;fill:seed=7\nworkload random:ws=64M,accesses=10K\n"
      "pin 0=0,1=1")
write("config", "command-line-disks", "\x03kernel /boot/vmlinux\nmemory 256M\n"
      "disk path=/images/a.raw\ndisk path=b.img,readonly=on,id=data-1,direct=on\n"
      "disk path=c.img,id=vda")
for i, region in enumerate(config["memory"]):
    write("config", f"json-region-{region['backend']}", "\x04" + json.dumps(region))
# Mode 5 (typed): vcpus 2, two regions (anon 512M; memfd 2M huge pages, 64M), a balloon.
write("config", "typed", bytes([5, 2, 2, 2, 0, 2, 0, 0, 0, 0, 0, 2, 64, 0, 2, 1, 2, 2, 0, 0, 0,
                                0, 0, 0, 1, 64, 0, 0, 0, 1, 1, 0, 0]))
