/* kt_decode: the C99 twin of keepiton_throttle/decode.py and sources/capture.py.
 *
 * Reads a whole capture held in memory (classic pcap or pcapng, see decode.py for the
 * references) and writes packet-table rows into caller-owned column blocks, with exactly the
 * semantics of the Numba path: same columns, status codes, absolute payload offsets, frame
 * numbers, tunnel rows, and the same damage policy (stop at the first corrupt length or
 * truncated record and report it). It serves as a differential oracle in the tests and as the
 * speed limit the Numba decode is benchmarked against.
 *
 * Output blocks are C-contiguous 2-D arrays of shape (columns, cap_rows), one per dtype, with
 * the column order of packets.py (I64_COLUMNS, ...): column c of row r is blk[c * cap_rows + r].
 *
 * Usage (no allocation anywhere; the caller owns the reader and the blocks):
 *
 *     kt_reader r;                                   (or kt_reader_size() bytes from malloc)
 *     if (kt_open(&r, buf, n) < 0) fail(kt_message(&r));
 *     while ((k = kt_decode(&r, i64, u64, u32, u16, u8, cap)) > 0) consume(k rows);
 *     for (i = 0; i < kt_damage_count(&r); i++) report(kt_damage_message(&r, i), ...);
 *
 * The buffer must stay valid and unchanged between kt_open and the last kt_decode.
 */
#ifndef KT_DECODE_H
#define KT_DECODE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever the functions or the column layout change; the Python facade checks it. */
#define KT_ABI_VERSION 2

/* Columns per block (packets.py I64_COLUMNS, U64_COLUMNS, U32_COLUMNS, U16_COLUMNS, U8_COLUMNS). */
enum { KT_I_TS, KT_I_POFF, KT_I_FRAME, KT_N_I64 };
enum { KT_Q_SHI, KT_Q_SLO, KT_Q_DHI, KT_Q_DLO, KT_Q_HEAD, KT_N_U64 };
enum {
    KT_W_CAP, KT_W_WIRE, KT_W_SEQ, KT_W_ACK, KT_W_TSV, KT_W_TSE, KT_W_PLEN, KT_W_PCAP,
    KT_W_SLE, KT_W_SRE, KT_N_U32
};
enum { KT_H_IFACE, KT_H_LINK, KT_H_SPORT, KT_H_DPORT, KT_H_FLAGS, KT_H_WIN, KT_H_MSS, KT_N_U16 };
enum {
    KT_B_IPV, KT_B_PROTO, KT_B_STATUS, KT_B_FRAG, KT_B_WS, KT_B_OPTS, KT_B_SACKN, KT_B_ENCAP,
    KT_B_TTL, KT_N_U8
};

/* Row status (packets.py STATUS_*). */
enum { KT_OK = 0, KT_TRUNCATED = 1, KT_MALFORMED = 2, KT_UNSUPPORTED = 3 };

/* kt_open errors (the file is not a capture we can read); kt_message() says why. */
enum {
    KT_E_ARG = -1,          /* NULL reader or buffer, negative size, cap_rows < 2 */
    KT_E_EMPTY = -2,        /* empty file */
    KT_E_SHORT = -3,        /* fewer than 4 bytes */
    KT_E_MAGIC = -4,        /* neither pcap nor pcapng */
    KT_E_PCAP_HEADER = -5,  /* pcap file header cut short */
    KT_E_PCAPNG_BOM = -6    /* first section header damaged */
};

/* Largest block or record accepted (config.MAX_RECORD_BYTES); beyond it a length is corrupt. */
#define KT_MAX_RECORD_BYTES (16 << 20)
/* Interfaces per pcapng section; one more is reported as a "bad_block" damage. */
#define KT_MAX_IFACES 1024
#define KT_MSG_LEN 160
#define KT_MAX_DAMAGE 2

typedef struct kt_iface {
    int64_t linktype;   /* LINKTYPE_ value (pcap: the lower 16 bits of the header's field) */
    int64_t snaplen;
    int64_t ts_offset;  /* if_tsoffset, seconds */
    int32_t ts_binary;  /* if_tsresol: 1 -> 2^-ts_exp s, 0 -> 10^-ts_exp s */
    int32_t ts_exp;
} kt_iface;

/* Something in the file that could not be read (capture.py DamageEvent). Reading stops at the
 * first "corrupt_length", "truncated_record" or "bad_block"; "caplen_over_snaplen" (pcap records
 * longer than the file's snaplen, read anyway) is reported once, when reading has finished. */
typedef struct kt_damage {
    const char *kind;
    int64_t offset;             /* of the record or block concerned */
    char message[KT_MSG_LEN];   /* worded as capture.py words it */
} kt_damage;

typedef struct kt_reader {
    const uint8_t *buf;
    int64_t n;           /* bytes in buf */
    int64_t pos;         /* offset of the next record or block */
    int32_t fmt;         /* 0 pcap us, 1 pcap ns, 2 pcapng */
    int32_t swapped;     /* fields are big-endian (pcap header / current pcapng section) */
    int32_t finished;    /* end of data or damage reached */
    int32_t stopped;     /* reading stopped early, at damage */
    int64_t records;     /* packet records read so far (the last frame number) */
    int64_t over_snaplen;       /* pcap records with caplen > snaplen (read anyway) */
    int64_t over_first_frame;   /* ... the first of them: frame number and offset */
    int64_t over_first_offset;
    int32_t n_damage;
    kt_damage damage[KT_MAX_DAMAGE];
    char message[KT_MSG_LEN];   /* why kt_open failed */
    int32_t n_ifaces;           /* interfaces of the current section (pcap: 1) */
    int32_t sections;
    kt_iface ifaces[KT_MAX_IFACES];
} kt_reader;

int kt_abi_version(void);
size_t kt_reader_size(void);
/* Columns in block 0..4 (i64, u64, u32, u16, u8); -1 for another index. */
int kt_columns(int block);

/* Parse the file header of buf[0:n]. 0 on success, a KT_E_* code otherwise. */
int kt_open(kt_reader *r, const uint8_t *buf, int64_t n);

/* Decode rows into blocks of cap_rows (>= 2) rows, from row 0. Returns the number of rows
 * written (a tunnelled packet takes two), 0 once everything is read, KT_E_ARG on bad arguments. */
int64_t kt_decode(kt_reader *r, int64_t *i64, uint64_t *u64, uint32_t *u32, uint16_t *u16,
                  uint8_t *u8, int64_t cap_rows);

int64_t kt_records(const kt_reader *r);
/* Why kt_open failed (the Python facade prefixes the path). */
const char *kt_message(const kt_reader *r);
/* Damage events (at most one that stopped reading, then caplen_over_snaplen); i in
 * [0, kt_damage_count). */
int kt_damage_count(const kt_reader *r);
const char *kt_damage_kind(const kt_reader *r, int i);
int64_t kt_damage_offset(const kt_reader *r, int i);
const char *kt_damage_message(const kt_reader *r, int i);

#ifdef __cplusplus
}
#endif

#endif /* KT_DECODE_H */
