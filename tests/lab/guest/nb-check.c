// SPDX-License-Identifier: GPL-2.0-only
// nb-check: a user-space virtio-blk driver for the lab's check 6
// (non-blocking registers, docs/nonblocking.md). It drives one
// virtio-mmio device that shows the magic "vmnb" (the guest kernel leaves
// it alone) ONLY through ACCESS (0x018) and ACCESS_DATA (0x01c): the
// register window is mapped through /dev/mem, the queue and buffer pages
// are shared with the backend (domain 0) through /dev/xen/gntalloc and
// handed to the device as grant addresses (bit 63 | ref << 12, as Linux's
// grant-dma-ops forms them). Every single trapped register access is timed.
//
//   nb-check BASE [WAIT_S]
//
// BASE: the device's MMIO base (hex). The device is brought up, then the
// program prints "LAB-NB-READY", waits WAIT_S seconds (Dom0 stalls the
// disk meanwhile), writes 4 KiB at sector 8 and flushes, polling the used ring while
// reading InterruptStatus through ACCESS, reads the sector back, compares,
// and resets the device. Output: LAB-RESULT / LAB-FIGURE lines (nb-*).
// Built static for arm64 by tests/lab/run.
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

// The gntalloc device's ioctl ABI (Linux UAPI, include/uapi/xen/gntalloc.h),
// declared here: outside xen/ the project includes no Xen header.
struct gntalloc_alloc {
    uint16_t domid;    // the domain the pages are granted to
    uint16_t flags;    // GNTALLOC_WRITABLE: the grantee may write
    uint32_t count;    // number of pages
    uint64_t index;    // out: the mmap offset of the pages
    uint32_t gref_ids[1];  // out: one grant reference per page (count of them)
};
#define GNTALLOC_WRITABLE 1
#define GNTALLOC_ALLOC_GREF _IOC(_IOC_NONE, 'G', 5, sizeof(struct gntalloc_alloc))

// virtio 1.2 §4.2.2 (virtio-mmio register layout)
enum {
    R_MAGIC = 0x000, R_VERSION = 0x004, R_DEVICE_ID = 0x008,
    R_DEV_FEAT = 0x010, R_DEV_FEAT_SEL = 0x014, R_DRV_FEAT = 0x020, R_DRV_FEAT_SEL = 0x024,
    R_QUEUE_SEL = 0x030, R_QUEUE_NUM_MAX = 0x034, R_QUEUE_NUM = 0x038, R_QUEUE_READY = 0x044,
    R_QUEUE_NOTIFY = 0x050, R_INT_STATUS = 0x060, R_INT_ACK = 0x064, R_STATUS = 0x070,
    R_DESC_LO = 0x080, R_DESC_HI = 0x084, R_DRIVER_LO = 0x090, R_DRIVER_HI = 0x094,
    R_DEVICE_LO = 0x0a0, R_DEVICE_HI = 0x0a4, R_CONFIG = 0x100,
};
// docs/nonblocking.md §1-2
enum { R_ACCESS = 0x018, R_ACCESS_DATA = 0x01c };
#define NB_MAGIC 0x626e6d76u /* "vmnb" */
#define NB_WRITE (1u << 31)
#define NB_BUSY (1u << 30)
#define NB_SIZE32 (2u << 28)
#define NB_ERROR_RETRY (1u << 27)
#define NB_ERROR_INVALID (1u << 26)
// virtio 1.2 §2.1 device status, §6 reserved features, §5.2 blk
#define S_ACK 1u
#define S_DRIVER 2u
#define S_DRIVER_OK 4u
#define S_FEATURES_OK 8u
#define F_VERSION_1 32
#define F_ACCESS_PLATFORM 33
#define BLK_T_IN 0u
#define BLK_T_OUT 1u
#define BLK_T_FLUSH 4u
#define BLK_F_FLUSH 9
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

#define QSIZE 8
#define PAGE 4096
enum { P_DESC, P_AVAIL, P_USED, P_HDR, P_DATA, NPAGES };

static volatile uint32_t *regs;
static uint8_t *mem;
static uint32_t grefs[NPAGES];

// Every trapped access: count, sum and max, and a coarse histogram.
static uint64_t n_access, max_ns, sum_ns, over_10ms, over_100ms;
static uint64_t max_ns_stalled, n_stalled;
static int stalled_phase;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
static void account(uint64_t ns) {
    ++n_access;
    sum_ns += ns;
    if (ns > max_ns) max_ns = ns;
    if (ns > 10000000u) ++over_10ms;
    if (ns > 100000000u) ++over_100ms;
    if (stalled_phase) {
        ++n_stalled;
        if (ns > max_ns_stalled) max_ns_stalled = ns;
    }
}
// Plain 32-bit ldr/str with a register address: Xen decodes the data
// abort from its syndrome (ISV = 1), which write-back or pair forms lack.
static uint32_t trap_read(unsigned off) {
    volatile uint32_t *a = regs + off / 4;
    uint32_t v;
    uint64_t t0 = now_ns();
    __asm__ volatile("ldr %w0, [%1]" : "=r"(v) : "r"(a) : "memory");
    account(now_ns() - t0);
    return v;
}
static void trap_write(unsigned off, uint32_t v) {
    volatile uint32_t *a = regs + off / 4;
    uint64_t t0 = now_ns();
    __asm__ volatile("str %w0, [%1]" : : "r"(v), "r"(a) : "memory");
    account(now_ns() - t0);
}

static void fail(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void fail(const char *name, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    printf("LAB-RESULT %s FAIL %s\n", name, buf);
    fflush(stdout);
    exit(1);
}

// One indirect access, docs/nonblocking.md §3: start it, poll BUSY.
// ERROR_RETRY without ERROR_INVALID means "busy, retry"; ERROR_INVALID is
// a malformed access (a bug here). Returns ACCESS_DATA for reads.
static uint32_t nb_access(int write, unsigned off, uint32_t val) {
    uint32_t cmd = (write ? NB_WRITE : 0) | NB_SIZE32 | off;
    for (int attempt = 0; attempt < 1000000; ++attempt) {
        if (write) trap_write(R_ACCESS_DATA, val);
        trap_write(R_ACCESS, cmd);
        uint32_t a;
        unsigned polls = 0;
        // Poll BUSY; after a few quick polls, 1 ms apart (the figure of
        // interest is the longest single access, not the polling rate).
        while ((a = trap_read(R_ACCESS)) & NB_BUSY)
            if (++polls > 8) usleep(1000);
        if (a & NB_ERROR_INVALID) fail("nb-access", "ACCESS 0x%08x refused as malformed (ACCESS reads 0x%08x)", cmd, a);
        if (!(a & NB_ERROR_RETRY)) return write ? 0 : trap_read(R_ACCESS_DATA);
    }
    fail("nb-access", "ACCESS 0x%08x: ERROR_RETRY forever", cmd);
}
static uint32_t nb_read(unsigned off) { return nb_access(0, off, 0); }
static void nb_write(unsigned off, uint32_t v) { nb_access(1, off, v); }

static uint64_t gaddr(int page, unsigned off) {
    return (1ull << 63) | ((uint64_t)grefs[page] << 12) | off;  // xen/include/xv/xen/types.h grant_dma
}

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct blk_hdr { uint32_t type, reserved; uint64_t sector; };

static uint16_t avail_idx, used_seen;

// One request: header, one data page, status. Returns seconds to complete.
static double do_request(uint32_t type, uint64_t sector, int *status) {
    struct desc *d = (struct desc *)(mem + P_DESC * PAGE);
    volatile uint16_t *avail = (volatile uint16_t *)(mem + P_AVAIL * PAGE);
    volatile uint16_t *used_idx = (volatile uint16_t *)(mem + P_USED * PAGE + 2);
    struct blk_hdr *h = (struct blk_hdr *)(mem + P_HDR * PAGE);
    volatile uint8_t *st = mem + P_HDR * PAGE + 64;
    h->type = type;
    h->reserved = 0;
    h->sector = sector;
    *st = 0xff;
    d[0] = (struct desc){gaddr(P_HDR, 0), sizeof *h, VRING_DESC_F_NEXT, 1};
    if (type == BLK_T_FLUSH) {  // virtio 1.2 §5.2.6: header and status only
        d[1] = (struct desc){gaddr(P_HDR, 64), 1, VRING_DESC_F_WRITE, 0};
    } else {
        d[1] = (struct desc){gaddr(P_DATA, 0), PAGE, (uint16_t)(VRING_DESC_F_NEXT | (type == BLK_T_IN ? VRING_DESC_F_WRITE : 0)), 2};
        d[2] = (struct desc){gaddr(P_HDR, 64), 1, VRING_DESC_F_WRITE, 0};
    }
    avail[2 + avail_idx % QSIZE] = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    avail[1] = ++avail_idx;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t t0 = now_ns();
    nb_write(R_QUEUE_NOTIFY, 0);
    // Poll the used ring (our own memory) while reading InterruptStatus
    // through ACCESS: every one of these traps is measured.
    while (*used_idx == used_seen) {
        uint32_t isr = nb_read(R_INT_STATUS);
        if (isr) nb_write(R_INT_ACK, isr);
        if (now_ns() - t0 > 120000000000ull) fail("nb-io", "request type %u not completed in 120 s", type);
        usleep(20000);
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    ++used_seen;
    *status = *st;
    return (double)(now_ns() - t0) / 1e9;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: nb-check BASE [WAIT_S]\n");
        return 2;
    }
    unsigned long base = strtoul(argv[1], NULL, 16);
    int wait_s = argc > 2 ? atoi(argv[2]) : 0;

    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) fail("nb-probe", "open /dev/mem: %s", strerror(errno));
    void *win = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)(base & ~(unsigned long)(PAGE - 1)));
    if (win == MAP_FAILED) fail("nb-probe", "mmap /dev/mem at 0x%lx: %s", base, strerror(errno));
    regs = (volatile uint32_t *)((uint8_t *)win + (base & (PAGE - 1)));

    // Identification: the magic through a plain read (the one direct
    // register read; a guest kernel that sees "vmnb" leaves the device).
    uint32_t magic = trap_read(R_MAGIC);
    if (magic != NB_MAGIC) fail("nb-probe", "magic at 0x%lx is 0x%08x, not \"vmnb\"", base, magic);
    uint32_t ver = nb_read(R_VERSION), devid = nb_read(R_DEVICE_ID);
    if (ver != 2 || devid != 2) fail("nb-probe", "version %u device id %u through ACCESS (want 2, 2 = blk)", ver, devid);
    printf("LAB-RESULT nb-probe PASS magic vmnb at 0x%lx, version 2, blk, read through ACCESS/ACCESS_DATA\n", base);

    // Queue memory: granted to domain 0 (the backend).
    int ga = open("/dev/xen/gntalloc", O_RDWR);
    if (ga < 0) fail("nb-setup", "open /dev/xen/gntalloc: %s", strerror(errno));
    struct gntalloc_alloc *a = calloc(1, sizeof *a + NPAGES * sizeof(uint32_t));
    a->domid = 0;
    a->flags = GNTALLOC_WRITABLE;
    a->count = NPAGES;
    if (ioctl(ga, GNTALLOC_ALLOC_GREF, a) != 0) fail("nb-setup", "IOCTL_GNTALLOC_ALLOC_GREF: %s", strerror(errno));
    memcpy(grefs, a->gref_ids, sizeof grefs);
    mem = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, ga, (off_t)a->index);
    if (mem == MAP_FAILED) fail("nb-setup", "mmap gntalloc: %s", strerror(errno));
    memset(mem, 0, NPAGES * PAGE);

    // virtio 1.2 §3.1.1 driver initialization, every step through ACCESS.
    nb_write(R_STATUS, 0);  // BUSY clears when the reset is complete
    if (nb_read(R_STATUS) != 0) fail("nb-setup", "status not 0 after reset");
    nb_write(R_STATUS, S_ACK);
    nb_write(R_STATUS, S_ACK | S_DRIVER);
    nb_write(R_DEV_FEAT_SEL, 0);
    uint32_t lo = nb_read(R_DEV_FEAT);
    uint32_t want_lo = lo & (1u << BLK_F_FLUSH);
    nb_write(R_DEV_FEAT_SEL, 1);
    uint32_t hi = nb_read(R_DEV_FEAT);
    uint32_t want_hi = hi & ((1u << (F_VERSION_1 - 32)) | (1u << (F_ACCESS_PLATFORM - 32)));
    nb_write(R_DRV_FEAT_SEL, 0);
    nb_write(R_DRV_FEAT, want_lo);
    nb_write(R_DRV_FEAT_SEL, 1);
    nb_write(R_DRV_FEAT, want_hi);
    nb_write(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(nb_read(R_STATUS) & S_FEATURES_OK)) fail("nb-setup", "FEATURES_OK not kept (device features high 0x%x)", hi);
    nb_write(R_QUEUE_SEL, 0);
    uint32_t qmax = nb_read(R_QUEUE_NUM_MAX);
    if (qmax < QSIZE) fail("nb-setup", "queue 0 max size %u < %u", qmax, QSIZE);
    nb_write(R_QUEUE_NUM, QSIZE);
    uint64_t da = gaddr(P_DESC, 0), aa = gaddr(P_AVAIL, 0), ua = gaddr(P_USED, 0);
    nb_write(R_DESC_LO, (uint32_t)da);
    nb_write(R_DESC_HI, (uint32_t)(da >> 32));
    nb_write(R_DRIVER_LO, (uint32_t)aa);
    nb_write(R_DRIVER_HI, (uint32_t)(aa >> 32));
    nb_write(R_DEVICE_LO, (uint32_t)ua);
    nb_write(R_DEVICE_HI, (uint32_t)(ua >> 32));
    nb_write(R_QUEUE_READY, 1);  // BUSY clears when the rings are mapped
    nb_write(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    uint32_t s = nb_read(R_STATUS);
    if (!(s & S_DRIVER_OK) || (s & 0x40)) fail("nb-setup", "status 0x%x after DRIVER_OK", s);
    uint64_t cap = nb_read(R_CONFIG) | ((uint64_t)nb_read(R_CONFIG + 4) << 32);
    printf("LAB-RESULT nb-setup PASS device up through ACCESS only: features 0x%x/0x%x accepted 0x%x/0x%x, queue %u, %llu sectors, %llu accesses so far, max %.2f ms\n",
           hi, lo, want_hi, want_lo, QSIZE, (unsigned long long)cap, (unsigned long long)n_access, max_ns / 1e6);

    // I/O while Dom0 stalls the disk behind the device.
    printf("LAB-NB-READY\n");
    if (wait_s > 0) sleep((unsigned)wait_s);
    uint8_t *data = mem + P_DATA * PAGE;
    for (int i = 0; i < PAGE; ++i) data[i] = (uint8_t)(i * 7 + 0x5a);
    int st = -1;
    // A write and a FLUSH: with the page cache between the daemon and the
    // disk, the FLUSH is what has to wait for the stalled disk.
    stalled_phase = 1;
    double w = do_request(BLK_T_OUT, 8, &st);
    if (st != 0) fail("nb-io", "write status %d", st);
    double f = 0;
    if (want_lo) {
        f = do_request(BLK_T_FLUSH, 0, &st);
        if (st != 0) fail("nb-io", "flush status %d", st);
    }
    stalled_phase = 0;
    w += f;
    memset(data, 0, PAGE);
    double r = do_request(BLK_T_IN, 8, &st);
    if (st != 0) fail("nb-io", "read status %d", st);
    for (int i = 0; i < PAGE; ++i)
        if (data[i] != (uint8_t)(i * 7 + 0x5a)) fail("nb-io", "read back differs at byte %d", i);
    printf("LAB-RESULT nb-io PASS 4 KiB written at sector 8 and flushed (%.2f s, of it flush %.2f s; disk stalled) and read back identical (%.2f s)\n", w, f, r);
    printf("LAB-FIGURE nb-write-during-stall-s %.2f\n", w);

    // Reset through ACCESS: BUSY clears when the reset is done.
    nb_write(R_STATUS, 0);
    if (nb_read(R_STATUS) != 0) fail("nb-reset", "status not 0 after reset");

    printf("LAB-FIGURE nb-accesses %llu\n", (unsigned long long)n_access);
    printf("LAB-FIGURE nb-access-max-ms %.2f\n", max_ns / 1e6);
    printf("LAB-FIGURE nb-access-mean-ms %.3f\n", n_access ? sum_ns / 1e6 / n_access : 0.0);
    printf("LAB-FIGURE nb-access-max-during-stall-ms %.2f\n", max_ns_stalled / 1e6);
    printf("LAB-NB-SUMMARY accesses=%llu stalled_accesses=%llu max_ms=%.2f max_stalled_ms=%.2f over10ms=%llu over100ms=%llu write_s=%.2f\n",
           (unsigned long long)n_access, (unsigned long long)n_stalled, max_ns / 1e6, max_ns_stalled / 1e6,
           (unsigned long long)over_10ms, (unsigned long long)over_100ms, w);
    return 0;
}
