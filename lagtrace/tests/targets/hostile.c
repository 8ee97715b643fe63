// A hostile target for lagtrace's security tests (issue #10). It runs an
// epoll loop, and on SIGUSR1 stalls it STALLS times for STALL_MS each,
// spinning in "JIT" code (an anonymous executable page), then prints DONE.
// Before READY it attacks lagtrace according to its mode:
//
//   names            thread name with ESC/BEL/CR/LF, a perf map whose symbol
//                    name holds escape sequences and ';'
//   perfmap-symlink  /tmp/perf-PID.map is a symlink to argv[2] (a root-only
//                    file lagtrace must not read)
//   perfmap-fifo     /tmp/perf-PID.map is a FIFO (opening it for reading
//                    blocks)
//   perfmap-sparse   /tmp/perf-PID.map is a 2 GB sparse file
//   fifo-over-lib    dlopen argv[2] and spin in its `spin_in_lib`, after
//                    bind-mounting a FIFO over it (needs its own user and
//                    mount namespace: run it under `unshare -Urm`)
//
// Prints `READY <pid>`; ignores `--truth FILE` (it may run as nobody).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STALLS 6
#define STALL_MS 150

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

// mov rcx, n (from rdi); 1: dec rcx; jnz 1b; ret
static const unsigned char JIT_CODE[] = {0x48, 0x89, 0xf9, 0x48, 0xff, 0xc9, 0x75, 0xfb, 0xc3};
typedef void (*spin_fn)(uint64_t);

static void die(const char *what) { perror(what); exit(1); }

static void perf_map_path(char *buf, size_t n) { snprintf(buf, n, "/tmp/perf-%d.map", getpid()); }

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "names";
    unsigned char *jit = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (jit == MAP_FAILED) die("mmap");
    memcpy(jit, JIT_CODE, sizeof JIT_CODE);
    spin_fn spin = (spin_fn)jit;
    char map[64];
    perf_map_path(map, sizeof map);
    unlink(map);

    if (!strcmp(mode, "names")) {
        FILE *f = fopen(map, "w");
        if (!f) die("perf map");
        fprintf(f, "%lx 1000 \x1b]0;jit-pwned\x07\x1b[2J;forged\r;frame\n", (unsigned long)jit);
        fclose(f);
        prctl(PR_SET_NAME, "\x1b]0;pw\x07\x1b[2J\r\n");
    } else if (!strcmp(mode, "perfmap-symlink")) {
        if (argc < 3 || symlink(argv[2], map)) die("symlink");
    } else if (!strcmp(mode, "perfmap-fifo")) {
        if (mkfifo(map, 0644)) die("mkfifo");
    } else if (!strcmp(mode, "perfmap-sparse")) {
        int fd = open(map, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || ftruncate(fd, 2ll << 30)) die("sparse perf map");
        close(fd);
    } else if (!strcmp(mode, "fifo-over-lib")) {
        if (argc < 3) die("lib path");
        void *h = dlopen(argv[2], RTLD_NOW);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); exit(1); }
        spin = (spin_fn)dlsym(h, "spin_in_lib");
        if (!spin) die("dlsym");
        char fifo[64];
        snprintf(fifo, sizeof fifo, "/tmp/fifo-%d", getpid());
        if (mkfifo(fifo, 0644)) die("mkfifo");
        if (mount(fifo, argv[2], NULL, MS_BIND, NULL)) die("bind-mount FIFO over the library");
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }

    signal(SIGUSR1, on_usr1);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    printf("READY %d\n", getpid());
    fflush(stdout);
    struct epoll_event ev;
    int done = 0;
    for (;;) {
        epoll_wait(ep, &ev, 1, 20);
        if (go && done < STALLS) {
            uint64_t end = now_ns() + STALL_MS * 1000000ull;
            while (now_ns() < end) spin(100000);
            if (++done == STALLS) {
                printf("DONE\n");
                fflush(stdout);
            }
        }
    }
}
