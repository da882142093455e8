/* Make one process see an x86 CPU without AVX-512 and without VNNI (an "AVX2-only" CPU).
 *
 * Loaded with LD_PRELOAD.  Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, the cpuinfo flag
 * "cpuid_fault") makes every CPUID instruction of this process trap; the SIGSEGV handler below
 * executes the real CPUID and clears the feature bits of AVX-512, AVX-VNNI, AVX-VNNI-INT8 and
 * AMX before returning.  Libraries that choose their kernels from CPUID (ONNX Runtime's MLAS,
 * oneDNN, numpy) then run their AVX2 code paths on this CPU, for real.  Opening /proc/cpuinfo
 * returns a copy without those flags, so flag-based detection agrees with CPUID.
 *
 * The setting is per thread and inherited by threads and children created afterwards, so it is
 * enabled in a constructor, before the interpreter starts any thread.  A library that installs
 * its own SIGSEGV handler later (Python's faulthandler) would take CPUID traps for crashes:
 * run without it.  quantfw_onnx.cpu_mask builds and uses this file; nothing here is used by the
 * quantization itself.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif

static int set_faulting(int on) { return (int)syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void mask(unsigned leaf, unsigned sub, unsigned r[4]) {
    if (leaf == 7 && sub == 0) {
        /* EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31 */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
                  (1u << 30) | (1u << 31));
        /* ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14 */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, FP16 23, AMX-TILE 24, AMX-INT8 25 */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
                  (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: AVX-VNNI 4, AVX512-BF16 5; EDX: AVX-VNNI-INT8 4, AVX-NE-CONVERT 5, AVX10 19 */
        r[0] &= ~((1u << 4) | (1u << 5));
        r[3] &= ~((1u << 4) | (1u << 5) | (1u << 19));
    } else if (leaf == 0xd && sub == 0) {
        /* XCR0 bits the OS supports: opmask 5, ZMM_Hi256 6, Hi16_ZMM 7, AMX 17, 18 */
        r[0] &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18));
    } else if (leaf == 0x24) {
        r[0] = r[1] = r[2] = r[3] = 0; /* AVX10 */
    }
}

static void on_segv(int sig, siginfo_t *info, void *ctx) {
    ucontext_t *uc = (ucontext_t *)ctx;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    (void)info;
    if (ip == NULL || ip[0] != 0x0f || ip[1] != 0xa2) { /* a real fault: die as usual */
        signal(sig, SIG_DFL);
        return;
    }
    unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX], r[4];
    set_faulting(0);
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    set_faulting(1);
    mask(leaf, sub, r);
    g[REG_RAX] = r[0];
    g[REG_RBX] = r[1];
    g[REG_RCX] = r[2];
    g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
}

static const char *const HIDDEN_PREFIXES[] = {"avx512", "avx_vnni", "amx_", "avx10", NULL};

static int hidden(const char *flag, size_t n) {
    for (int i = 0; HIDDEN_PREFIXES[i]; i++) {
        size_t p = strlen(HIDDEN_PREFIXES[i]);
        if (n >= p && strncmp(flag, HIDDEN_PREFIXES[i], p) == 0) return 1;
    }
    return 0;
}

/* A memfd holding /proc/cpuinfo without the hidden flags, or -1. */
static int filtered_cpuinfo(int (*real_open)(const char *, int, ...)) {
    int src = real_open("/proc/cpuinfo", O_RDONLY);
    if (src < 0) return -1;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t got;
    while (buf && (got = read(src, buf + len, cap - len)) > 0) {
        len += (size_t)got;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    close(src);
    if (!buf) return -1;
    int out = memfd_create("cpuinfo", 0);
    if (out < 0) { free(buf); return -1; }
    size_t i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && buf[end] != '\n') end++;
        int is_flags = (strncmp(buf + i, "flags", 5) == 0);
        if (!is_flags) {
            if (write(out, buf + i, end - i) < 0) break;
        } else {
            size_t j = i;
            while (j < end && buf[j] != ':') j++;
            if (write(out, buf + i, j + 1 - i) < 0) break;
            j++;
            while (j < end) {
                while (j < end && buf[j] == ' ') j++;
                size_t k = j;
                while (k < end && buf[k] != ' ') k++;
                if (k > j && !hidden(buf + j, k - j)) {
                    if (write(out, " ", 1) < 0 || write(out, buf + j, k - j) < 0) break;
                }
                j = k;
            }
        }
        if (end < len && write(out, "\n", 1) < 0) break;
        i = end + 1;
    }
    free(buf);
    lseek(out, 0, SEEK_SET);
    return out;
}

#define OPEN_WRAPPER(NAME)                                                             \
    int NAME(const char *path, int flags, ...) {                                       \
        static int (*real)(const char *, int, ...);                                    \
        if (!real) real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, #NAME);    \
        mode_t mode = 0;                                                               \
        if (flags & (O_CREAT | O_TMPFILE)) {                                           \
            va_list ap;                                                                \
            va_start(ap, flags);                                                       \
            mode = va_arg(ap, mode_t);                                                 \
            va_end(ap);                                                                \
        }                                                                              \
        if (path && strcmp(path, "/proc/cpuinfo") == 0) {                              \
            int fd = filtered_cpuinfo(real);                                           \
            if (fd >= 0) return fd;                                                    \
        }                                                                              \
        return real(path, flags, mode);                                                \
    }

OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

#define OPENAT_WRAPPER(NAME)                                                               \
    int NAME(int dirfd, const char *path, int flags, ...) {                                \
        static int (*real)(int, const char *, int, ...);                                   \
        static int (*real_open)(const char *, int, ...);                                   \
        if (!real) real = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, #NAME);   \
        if (!real_open) real_open = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open"); \
        mode_t mode = 0;                                                                   \
        if (flags & (O_CREAT | O_TMPFILE)) {                                               \
            va_list ap;                                                                    \
            va_start(ap, flags);                                                           \
            mode = va_arg(ap, mode_t);                                                     \
            va_end(ap);                                                                    \
        }                                                                                  \
        if (path && strcmp(path, "/proc/cpuinfo") == 0) {                                  \
            int fd = filtered_cpuinfo(real_open);                                          \
            if (fd >= 0) return fd;                                                        \
        }                                                                                  \
        return real(dirfd, path, flags, mode);                                             \
    }

OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

__attribute__((constructor)) static void cpuid_mask_init(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0 || set_faulting(1) != 0) {
        fprintf(stderr, "cpuid_mask: CPUID faulting is not available on this machine\n");
        _exit(97);
    }
}
