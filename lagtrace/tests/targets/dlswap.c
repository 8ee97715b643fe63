// An epoll loop that alternates two libraries at the same address: each
// stall dlopens libA.so or libB.so (argv[1], argv[2]), spins STALL_MS in its
// function (spin_in_libA or spin_in_libB), and dlcloses it again. Prints
// `READY <pid>`; on SIGUSR1 runs STALLS stalls, writes one truth line per
// stall (`{"kind":"stall","label":"A",...}`, wall-clock ns) and prints DONE.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define STALLS 12
#define STALL_MS 150

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static uint64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int main(int argc, char **argv) {
    const char *truth = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--truth")) truth = argv[i + 1];
    if (argc < 3 || !truth) {
        fprintf(stderr, "usage: dlswap libA.so libB.so --truth FILE\n");
        return 2;
    }
    FILE *out = fopen(truth, "w");
    if (!out) { perror("truth"); return 1; }
    signal(SIGUSR1, on_usr1);
    int ep = epoll_create1(0);
    printf("READY %d\n", getpid());
    fflush(stdout);
    struct epoll_event ev;
    int done = 0;
    for (;;) {
        epoll_wait(ep, &ev, 1, 20);
        if (!go || done >= STALLS) continue;
        int b = done % 2;
        void *h = dlopen(argv[1 + b], RTLD_NOW | RTLD_LOCAL);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        void (*spin)(uint64_t) = (void (*)(uint64_t))dlsym(h, b ? "spin_in_libB" : "spin_in_libA");
        if (!spin) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        uint64_t start = wall_ns();
        spin(STALL_MS);
        uint64_t end = wall_ns();
        fprintf(out, "{\"kind\":\"stall\",\"label\":\"%c\",\"tid\":%ld,\"start_ns\":%llu,\"end_ns\":%llu,\"addr\":%llu}\n",
                b ? 'B' : 'A', (long)syscall(SYS_gettid), (unsigned long long)start,
                (unsigned long long)end, (unsigned long long)(uintptr_t)spin);
        fflush(out);
        dlclose(h);
        if (++done == STALLS) {
            printf("DONE\n");
            fflush(stdout);
        }
    }
}
