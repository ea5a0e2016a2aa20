/* kt_bench FILE [REPEAT [fresh|warm|both]]: decode FILE fully REPEAT times (default 5) per pass
 * kind (default both) with kt_decode into one reused block of rows, and print one JSON line with
 * the best times (0 for a kind not run):
 *
 *   {"file": ..., "bytes": ..., "records": ..., "rows": ..., "damage": ..., "seconds": ...,
 *    "packets_per_s": ..., "seconds_warm": ..., "packets_per_s_warm": ..., "max_rss_kib": ...}
 *
 * "seconds": one pass as a reader pays it: map the file, decode it, unmap it (the page-table
 * work of mapping 4 KiB pages is part of reading a file). "seconds_warm": a pass over a mapping
 * that an earlier pass already faulted in, i.e. the decode loop alone (the kernel's speed
 * limit). gzip files are not supported here (the Python facade decompresses them).
 * Exit status 0 ok, 1 error, 2 usage.
 */
#define _XOPEN_SOURCE 700

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kt_decode.h"

#define CHUNK_ROWS 65536

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", (unsigned char)*s);
        else
            putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    const char *path;
    int repeat = 5, rep, fd;
    struct stat st;
    const uint8_t *buf = NULL;
    void *map = NULL;
    int64_t n, records = 0, rows = 0;
    double best[2] = {-1.0, -1.0};
    int kind, damage = 0, first_kind = 0, last_kind = 1;
    kt_reader *r;
    int64_t *i64;
    uint64_t *u64;
    uint32_t *u32;
    uint16_t *u16;
    uint8_t *u8;
    struct rusage ru;

    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: kt_bench FILE [REPEAT [fresh|warm|both]]\n");
        return 2;
    }
    if (argc == 4) {
        if (strcmp(argv[3], "fresh") == 0)
            last_kind = 0;
        else if (strcmp(argv[3], "warm") == 0)
            first_kind = 1;
        else if (strcmp(argv[3], "both") != 0) {
            fprintf(stderr, "kt_bench: pass kind must be fresh, warm or both, got %s\n", argv[3]);
            return 2;
        }
    }
    path = argv[1];
    if (argc >= 3 && (repeat = atoi(argv[2])) < 1) {
        fprintf(stderr, "kt_bench: REPEAT must be a positive integer, got %s\n", argv[2]);
        return 2;
    }
    fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(path);
        return 1;
    }
    n = (int64_t)st.st_size;
    if (n == 0) {
        fprintf(stderr, "kt_bench: %s is empty\n", path);
        return 1;
    }

    r = malloc(kt_reader_size());
    i64 = malloc(sizeof *i64 * KT_N_I64 * CHUNK_ROWS);
    u64 = malloc(sizeof *u64 * KT_N_U64 * CHUNK_ROWS);
    u32 = malloc(sizeof *u32 * KT_N_U32 * CHUNK_ROWS);
    u16 = malloc(sizeof *u16 * KT_N_U16 * CHUNK_ROWS);
    u8 = malloc(sizeof *u8 * KT_N_U8 * CHUNK_ROWS);
    if (!r || !i64 || !u64 || !u32 || !u16 || !u8) {
        fprintf(stderr, "kt_bench: out of memory\n");
        return 1;
    }

    /* pass kind 0: fresh mapping per pass (timed from mmap to munmap); 1: one warm mapping */
    for (kind = first_kind; kind <= last_kind; kind++) {
        for (rep = 0; rep < repeat; rep++) {
            double t0 = now_s(), dt;
            int64_t k;
            if (!map) {
                map = mmap(NULL, (size_t)n, PROT_READ, MAP_PRIVATE, fd, 0);
                if (map == MAP_FAILED) {
                    perror("mmap");
                    return 1;
                }
                buf = map;
                if (n >= 2 && buf[0] == 0x1f && buf[1] == 0x8b) {
                    fprintf(stderr, "kt_bench: %s is gzip-compressed; decompress it first\n", path);
                    return 1;
                }
            }
            rows = 0;
            if (kt_open(r, buf, n) < 0) {
                fprintf(stderr, "kt_bench: %s: %s\n", path, kt_message(r));
                return 1;
            }
            while ((k = kt_decode(r, i64, u64, u32, u16, u8, CHUNK_ROWS)) > 0)
                rows += k;
            records = kt_records(r);
            damage = kt_damage_count(r);
            if (kind == 0) {
                munmap(map, (size_t)n);
                map = NULL;
            }
            dt = now_s() - t0;
            if (best[kind] < 0 || dt < best[kind])
                best[kind] = dt;
        }
    }
    close(fd);

    getrusage(RUSAGE_SELF, &ru);
    printf("{\"file\": ");
    json_string(path);
    printf(", \"bytes\": %lld, \"records\": %lld, \"rows\": %lld, \"damage\": %d, "
           "\"seconds\": %.6f, \"packets_per_s\": %.0f, \"seconds_warm\": %.6f, "
           "\"packets_per_s_warm\": %.0f, \"max_rss_kib\": %ld}\n",
           (long long)n, (long long)records, (long long)rows, damage, best[0] > 0 ? best[0] : 0.0,
           best[0] > 0 ? (double)records / best[0] : 0.0, best[1] > 0 ? best[1] : 0.0,
           best[1] > 0 ? (double)records / best[1] : 0.0, (long)ru.ru_maxrss);

    free(r);
    free(i64);
    free(u64);
    free(u32);
    free(u16);
    free(u8);
    if (map)
        munmap(map, (size_t)n);
    return 0;
}
