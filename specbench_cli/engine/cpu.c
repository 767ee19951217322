/* The CPU's decoding step at the memory wall: matrix products, and whole decoder layers for a
 * block of tokens in one call.
 *
 * Why code of our own: a decoding step reads every weight once for one to a few tokens of
 * arithmetic, so its speed is the speed the weights stream from memory. Two things keep torch's
 * eager step from that speed on a CPU: (1) the BLAS products over 1-8 rows reach about half of a
 * plain read of the same bytes, and (2) a Llama layer is ~30 small ops (norms, RoPE, cache
 * writes, attention, residuals), each a dispatch of a few microseconds: on SmolLM2 (30 layers)
 * that is ~8 ms a step, as much as the whole bf16 weight read. Here a product reads each weight
 * row front to back (one sequential stream per thread, which the hardware prefetchers follow),
 * and `decode_layers` runs every op of a range of layers in C, with OpenMP threads over the
 * products' output rows and over attention heads.
 *
 * Exactness: every output is one dot product accumulated in fp32 in a fixed order, and no row's
 * arithmetic depends on how many rows share the call or which other rows a mask hides, so a
 * token's hidden states and logits are bit-equal whether it is decoded alone or inside any
 * verification block or tree (tests/test_fused.py): a method's greedy tokens equal vanilla's in
 * every dtype, not up to near-ties. In bf16 the values are rounded to bf16 where torch's eager ops
 * round them (each product, the RoPE halves, attention's output, silu, the residual sums).
 *
 * Threads: OpenMP, linked against the libgomp.so.1 torch has already loaded, so both share one
 * thread pool and torch.set_num_threads governs both. Built by engine/kernels.py with the system
 * C compiler (-O3 -fopenmp -mavx2 -mfma -mf16c); the AVX-512 paths are compiled for their own
 * targets and chosen at run time by `set_isa`, from what /proc/cpuinfo reports.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define INLINE static inline __attribute__((always_inline))
#define AVX512 __attribute__((target("avx512f,avx512bw")))
#define AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))
#define AMX __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-bf16")))

/* 0: AVX2 + FMA; 1: AVX-512F/BW; 2: AVX-512 with BF16 dot products (Zen 4, Sapphire Rapids). */
static int isa = 0;
/* bf16 products on AMX tiles (Intel Sapphire Rapids and later), where the CPU has them and the
 * kernel grants this process their state, when asked by set_amx(1). engine/fused.py sets it
 * before each call for the engine at hand, as measured for it (fused.choose_amx): on a 2-core
 * Sapphire Rapids SmolLM2's 16-token blocks cost ~1.5x less on AMX than on vdpbf16ps and its
 * one-token step 0-5% more (a 16-row tile load streams the weights from memory a little slower
 * than vector loads), and every block size of an engine must take the same path, the one-token
 * step included. */
static int amx = 0;

static int amx_usable(void) {
    static int usable = -1;
    unsigned a, b, c, d;
    if (usable < 0)
        usable = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1)
                 && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                            18 /* XFEATURE_XTILEDATA */) == 0;
    return usable;
}

void set_isa(int level) { isa = level; amx = amx && level >= 2; }
void set_amx(int on) { amx = on && isa >= 2 && amx_usable(); }
int uses_amx(void) { return amx; }

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) {       /* round to nearest even, as torch rounds */
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7F800000u) == 0x7F800000u) return (uint16_t)(v.u >> 16);   /* inf, nan */
    return (uint16_t)((v.u + 0x7FFF + ((v.u >> 16) & 1)) >> 16);
}

static inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_bf16x8(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* ---------------------------------------------------------------------------------------------
 * Products: y[r][j] = x[r] . w[j] + bias[j] for w (n x k, row-major, as Hugging Face stores it),
 * x (rows x k) in the weight's dtype, y fp32 (rows x n), any number of rows.
 *
 * Register tiles. Met one weight row at a time, a block's product is bound by loads (two loads a
 * multiply-add), not by arithmetic. So a tile keeps GROUP weight rows x T block rows of
 * accumulators in registers, the scheme of llama.cpp's tinyBLAS
 * (ggml/src/ggml-cpu/llamafile/sgemm.cpp): per chunk of k it loads GROUP weight vectors and T x
 * vectors for GROUP * T multiply-adds. Threads take contiguous ranges of GROUP-row weight groups,
 * so each streams its part of the weight front to back; a group meets every tile of the block's
 * rows while it sits in L1, so each weight is read from memory once whatever the block size (the
 * block's rows, at most 64 x k, stay in L2). The block's rows are cut into tiles of as near equal
 * sizes as T_MAX allows (13 rows: 5, 4, 4), so no block size falls off a cliff.
 *
 * Exactness: an output's arithmetic is the same in every tile: one accumulator vector fed the
 * chunks of k in order (the last chunk zero-padded), one horizontal sum, then the bias. Neither
 * the tile's shape nor the other rows in it enter that, so a token's outputs are the same bits
 * alone or at any place of any block (tests/test_tiled.py).
 *
 * Each instruction set supplies a vector type and five operations, OPS_zero/load/tail/dot/sum
 * (tail: the last, partial chunk, zero-filled), always inlined into the product built from them.
 */
#define GROUP 4              /* weight rows a tile */

/* The weights of the group two ahead are asked into L2 while a group's tiles run, spread evenly
 * over all its tiles' chunk steps (`per` lines a step from `at` to `end`): memory stays busy
 * while the later tiles compute from L1. Without it a block's products wait on memory; asked
 * for all in the first tile, c(16) of the products alone was 1.8 (fp32, one thread). */
typedef struct { const char *at, *end; int64_t per; } Ahead;

static inline Ahead ahead_of(const char *later, int64_t bytes, int64_t t, int64_t tiles,
                             int64_t steps) {
    Ahead none = {NULL, NULL, 0};
    if (!later) return none;
    const int64_t lines = bytes / 64, from = lines * t / tiles, to = lines * (t + 1) / tiles;
    Ahead a = {later + 64 * from, later + 64 * to, (to - from + steps - 1) / steps};
    return a;
}

INLINE void ahead_step(Ahead *a) {
    for (int64_t q = 0; q < a->per && a->at < a->end; q++, a->at += 64)
        _mm_prefetch(a->at, _MM_HINT_T1);
}

static inline int64_t tile_rows(int64_t rows, int64_t tiles, int64_t t) {
    return rows / tiles + (t < rows % tiles);
}

static inline float bias_at(const void *bias, int64_t j, int bf16) {
    if (!bias) return 0.0f;
    return bf16 ? bf16_to_f32(((const uint16_t *)bias)[j]) : ((const float *)bias)[j];
}

/* AVX2, fp32: 8 lanes. */
INLINE __m256 f32x8_zero(void) { return _mm256_setzero_ps(); }
INLINE __m256 f32x8_load(const float *p) { return _mm256_loadu_ps(p); }
INLINE __m256 f32x8_tail(const float *p, int64_t n) {   /* lanes >= n are neither read nor set */
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lane));
}
INLINE __m256 f32x8_dot(__m256 acc, __m256 x, __m256 w) { return _mm256_fmadd_ps(x, w, acc); }
INLINE float f32x8_sum(__m256 acc) { return hsum256(acc); }
INLINE __m128 f32x8_sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    return _mm_setr_ps(hsum256(a), hsum256(b), hsum256(c), hsum256(d));
}

/* AVX2, bf16: 8 values widened to fp32 (exactly), then as fp32. */
INLINE __m256 bf16x8_zero(void) { return _mm256_setzero_ps(); }
INLINE __m256 bf16x8_load(const uint16_t *p) { return load_bf16x8(p); }
INLINE __m256 bf16x8_tail(const uint16_t *p, int64_t n) {
    uint16_t t[8] = {0};
    for (int64_t i = 0; i < n; i++) t[i] = p[i];
    return load_bf16x8(t);
}
INLINE __m256 bf16x8_dot(__m256 acc, __m256 x, __m256 w) { return _mm256_fmadd_ps(x, w, acc); }
INLINE float bf16x8_sum(__m256 acc) { return hsum256(acc); }
INLINE __m128 bf16x8_sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    return f32x8_sum4(a, b, c, d);
}

/* AVX-512, fp32: 16 lanes; the tail by a masked (zero-filling) load. */
AVX512 INLINE __m512 f32x16_zero(void) { return _mm512_setzero_ps(); }
AVX512 INLINE __m512 f32x16_load(const float *p) { return _mm512_loadu_ps(p); }
AVX512 INLINE __m512 f32x16_tail(const float *p, int64_t n) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
AVX512 INLINE __m512 f32x16_dot(__m512 acc, __m512 x, __m512 w) {
    return _mm512_fmadd_ps(x, w, acc);
}
AVX512 INLINE float f32x16_sum(__m512 acc) { return _mm512_reduce_add_ps(acc); }

/* The sums of four accumulators at once, each by _mm512_reduce_add_ps's own tree (lane i + lane
 * i + 8, then + 4, + 2, + 1; an add's two operands may only swap, which changes no bit): so the
 * same bits as four reductions, for a third of the shuffles and adds. A tile's horizontal sums
 * are a fifth of its work at k = 576 otherwise. */
AVX512 INLINE __m128 sum4_x16(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    /* quarters: a's lanes i + (i + 8) for i < 4, for 4 <= i < 8, then b's; c, d's alike */
    __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88),
                             _mm512_shuffle_f32x4(ab, cd, 0xDD));
    /* quarter q: the four partial sums of a, b, c, d in turn; then within each: + 2, + 1 */
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
    const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, v));
}
AVX512 INLINE __m128 f32x16_sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    return sum4_x16(a, b, c, d);
}

/* AVX512-BF16: vdpbf16ps multiplies 32 bf16 pairs exactly and adds them into 16 fp32 lanes. */
AVX512_BF16 INLINE __m512 bf16x32_zero(void) { return _mm512_setzero_ps(); }
AVX512_BF16 INLINE __m512bh bf16x32_load(const uint16_t *p) {
    return (__m512bh)_mm512_loadu_si512(p);
}
AVX512_BF16 INLINE __m512bh bf16x32_tail(const uint16_t *p, int64_t n) {
    return (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1ull << n) - 1), p);
}
AVX512_BF16 INLINE __m512 bf16x32_dot(__m512 acc, __m512bh x, __m512bh w) {
    return _mm512_dpbf16_ps(acc, x, w);
}
AVX512_BF16 INLINE float bf16x32_sum(__m512 acc) { return _mm512_reduce_add_ps(acc); }
AVX512_BF16 INLINE __m128 bf16x32_sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    return sum4_x16(a, b, c, d);
}

/* One chunk of k at offset i for a tile: LD is LOAD_FULL, or LOAD_TAIL for the last, partial
 * chunk (`left` values). The loops have constant bounds once inlined; unrolled, acc stays in
 * registers. */
#define LOAD_FULL(OPS, p) OPS##_load(p)
#define LOAD_TAIL(OPS, p) OPS##_tail(p, left)
#define TILE_STEP(OPS, VIN, LD)                                                               \
    {                                                                                         \
        VIN wv[GROUP];                                                                        \
        _Pragma("GCC unroll 8") for (int r = 0; r < W; r++) wv[r] = LD(OPS, w + r * k + i);   \
        _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {                                 \
            VIN xv = LD(OPS, x + t * k + i);                                                  \
            _Pragma("GCC unroll 8") for (int r = 0; r < W; r++)                               \
                acc[r][t] = OPS##_dot(acc[r][t], xv, wv[r]);                                  \
        }                                                                                     \
    }

/* A product for one instruction set and dtype: OPS the operations' prefix, ELT the element, VACC
 * the accumulator vector, VIN the loaded one, CH the elements a chunk, T_MAX the most block rows
 * a tile (GROUP * T_MAX accumulators and the loaded vectors fit the registers). */
#define DEFINE_PRODUCT(NAME, ATTR, OPS, ELT, VACC, VIN, CH, T_MAX, IS_BF16)                   \
    /* y[t][r] (row stride ldy) for W weight rows w and T block rows x, always inlined with     \
     * constant W and T; `ahead`: lines of a later group to ask for on the way. */             \
    ATTR INLINE void NAME##_tile(const ELT *x, const ELT *w, int64_t k, const int W,          \
                                 const int T, float *y, int64_t ldy, const float *b,          \
                                 Ahead ahead) {                                               \
        VACC acc[GROUP][T_MAX];                                                               \
        _Pragma("GCC unroll 8") for (int r = 0; r < W; r++)                                   \
            _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) acc[r][t] = OPS##_zero();     \
        int64_t i = 0;                                                                        \
        for (; i + CH <= k; i += CH) {                                                        \
            ahead_step(&ahead);                                                               \
            TILE_STEP(OPS, VIN, LOAD_FULL)                                                    \
        }                                                                                     \
        if (i < k) {                                                                          \
            const int64_t left = k - i;                                                       \
            TILE_STEP(OPS, VIN, LOAD_TAIL)                                                    \
        }                                                                                     \
        if (W == GROUP) {           /* a block row's GROUP outputs lie side by side in y */  \
            _Pragma("GCC unroll 8") for (int t = 0; t < T; t++)                               \
                _mm_storeu_ps(y + t * ldy, _mm_add_ps(_mm_loadu_ps(b),                        \
                    OPS##_sum4(acc[0][t], acc[1 % W][t], acc[2 % W][t], acc[3 % W][t])));     \
        } else {                                                                              \
            _Pragma("GCC unroll 8") for (int r = 0; r < W; r++)                               \
                _Pragma("GCC unroll 8") for (int t = 0; t < T; t++)                           \
                    y[t * ldy + r] = OPS##_sum(acc[r][t]) + b[r];                             \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    /* One tile of T rows (1..T_MAX) against wn weight rows: a whole group, or the last rows   \
     * of the weight one at a time. */                                                        \
    ATTR static void NAME##_rows(const ELT *x, const ELT *w, int64_t k, int wn, int64_t T,    \
                                 float *y, int64_t ldy, const float *b, Ahead ahead) {        \
        switch (T) {                                                                          \
        TILE_CASE(NAME, 1, T_MAX) TILE_CASE(NAME, 2, T_MAX) TILE_CASE(NAME, 3, T_MAX)         \
        TILE_CASE(NAME, 4, T_MAX) TILE_CASE(NAME, 5, T_MAX) TILE_CASE(NAME, 6, T_MAX)         \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    ATTR static void NAME(const void *x, const void *w, const void *bias, float *y,           \
                          int64_t rows, int64_t n, int64_t k) {                               \
        const int64_t groups = (n + GROUP - 1) / GROUP, tiles = (rows + T_MAX - 1) / T_MAX;   \
        _Pragma("omp parallel for schedule(static)")                                          \
        for (int64_t g = 0; g < groups; g++) {                                                \
            const int64_t j = g * GROUP;                                                      \
            const int wn = n - j < GROUP ? (int)(n - j) : GROUP;                              \
            float b[GROUP];                                                                   \
            for (int r = 0; r < wn; r++) b[r] = bias_at(bias, j + r, IS_BF16);               \
            const ELT *wg = (const ELT *)w + j * k;                                           \
            const char *later = n - j >= 3 * GROUP ? (const char *)(wg + 2 * GROUP * k) : NULL; \
            for (int64_t t = 0, r0 = 0; t < tiles; r0 += tile_rows(rows, tiles, t++))         \
                NAME##_rows((const ELT *)x + r0 * k, wg, k, wn, tile_rows(rows, tiles, t),    \
                            y + r0 * n + j, n, b,                                             \
                            ahead_of(later, GROUP * k * sizeof(ELT), t, tiles, k / CH + 1));  \
        }                                                                                     \
    }

/* Tiles of T rows exist up to T_MAX (the case is dead code beyond it). */
#define TILE_CASE(NAME, T, T_MAX)                                                             \
    case T:                                                                                   \
        if (T <= T_MAX) {                                                                     \
            if (wn == GROUP) NAME##_tile(x, w, k, GROUP, T, y, ldy, b, ahead);                \
            else for (int r = 0; r < wn; r++)                                                 \
                NAME##_tile(x, w + r * k, k, 1, T, y + r, ldy, b + r,                         \
                            ahead_of(NULL, 0, 0, 1, 1));                                      \
        }                                                                                     \
        break;

DEFINE_PRODUCT(product_f32_avx2, , f32x8, float, __m256, __m256, 8, 3, 0)
DEFINE_PRODUCT(product_bf16_avx2, , bf16x8, uint16_t, __m256, __m256, 8, 3, 1)
DEFINE_PRODUCT(product_f32_avx512, AVX512, f32x16, float, __m512, __m512, 16, 6, 0)
DEFINE_PRODUCT(product_bf16_dp, AVX512_BF16, bf16x32, uint16_t, __m512, __m512bh, 32, 6, 1)

/* ---------------------------------------------------------------------------------------------
 * bf16 products on AMX. One tile multiply-add (tdpbf16ps) takes 16 weight rows x 32 values of k
 * (tile A, read in place from the row-major weight: 64 bytes a row) against up to 16 block rows
 * (tile B: the block's rows packed in pairs of k, each pair one 32-bit column entry, as the
 * instruction wants), into C: 16 x up to 16 fp32 sums. Blocks over 16 rows take up to four C
 * tiles of equal width (balanced: 17 rows are 9 + 8 columns, the last padded with zero rows), so
 * each 16-row weight group is read once for the whole block. tdpbf16ps computes each C element
 * as its own chain over k in order (Intel SDM), so an output's bits depend on neither the tile's
 * width nor the other rows, as on the vector paths. Used for whole matrices with k a multiple of
 * 32 (every k of the models here); others take vdpbf16ps.
 */
#define AMX_ROWS 16          /* weight rows a tile, and block rows (columns of C) at most */
#define AMX_K 32             /* values of k a tile multiply-add */

typedef struct {             /* LDTILECFG's operand, palette 1 */
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

/* C tiles 0-3 (16 x width fp32), A 4 (16 x 32 bf16), B 5 (16 pairs x width). */
static TileConfig amx_config(int64_t width) {
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 6; t++) {
        cfg.rows[t] = AMX_ROWS;
        cfg.colsb[t] = (uint16_t)(t == 4 ? AMX_K * 2 : width * 4);
    }
    return cfg;
}

/* xp[b][c][p][t] = (x[b width + t][32 c + 2 p], x[b width + t][32 c + 2 p + 1]), zero past the
 * block's last row: B tile (b, c) is 16 rows of `width` pairs. */
static void amx_pack(const uint16_t *x, uint32_t *xp, int64_t rows, int64_t k, int64_t tiles,
                     int64_t width) {
    const int64_t chunks = k / AMX_K;
    const uint32_t *pairs = (const uint32_t *)x;      /* k even: a row is k / 2 pairs */
    for (int64_t c = 0; c < chunks; c++)
        for (int64_t b = 0; b < tiles; b++) {
            uint32_t *dst = xp + (b * chunks + c) * AMX_ROWS * width;
            for (int64_t t = 0; t < width; t++) {
                const int64_t r = b * width + t;
                for (int p = 0; p < AMX_ROWS; p++)
                    dst[p * width + t] = r < rows ? pairs[r * (k / 2) + c * (AMX_K / 2) + p] : 0;
            }
        }
}

/* One C tile's multiply-add for chunk c; `b` a constant (tile numbers are immediates). */
#define AMX_STEP(b)                                                                           \
    if ((b) < tiles) {                                                                        \
        _tile_loadd(5, xp + ((b) * chunks + c) * AMX_ROWS * width, width * 4);                 \
        _tile_dpbf16ps(b, 4, 5);                                                              \
    }

/* C tile b: the group's 16 weight rows x block rows [b width, (b + 1) width). */
#define AMX_STORE(b)                                                                          \
    if ((b) < tiles) {                                                                        \
        _tile_stored(b, out, width * 4);                                                      \
        amx_scatter(out, (b) * width, width, rows, wn, bias, y, n);                           \
    }

/* C (16 weight rows x width block rows, from block row r0) into y[r][j], plus the bias. */
static inline void amx_scatter(const float *out, int64_t r0, int64_t width, int64_t rows, int wn,
                               const float *bias, float *y, int64_t n) {
    for (int64_t t = 0; t < width && r0 + t < rows; t++)
        for (int m = 0; m < wn; m++) y[(r0 + t) * n + m] = out[m * width + t] + bias[m];
}

/* Chunk c of a group's 16 rows asked for: into L1 for the next chunk (the tile load's 16 rows
 * lie k apart; asked one chunk ahead a one-token step costs 1.16x vdpbf16ps's, not 1.36x), into
 * L2 for the group two ahead. */
INLINE void amx_prefetch(const uint16_t *w, int64_t k, int64_t c, int near) {
    for (int m = 0; m < AMX_ROWS; m++) {
        if (near) _mm_prefetch((const char *)(w + m * k + c * AMX_K), _MM_HINT_T0);
        else _mm_prefetch((const char *)(w + m * k + c * AMX_K), _MM_HINT_T1);
    }
}

/* Weight rows w (16, row stride k: wn of them real) against every block row (up to 4 C tiles);
 * y at their column. `next`: the weights of a group ahead, asked into L2 on the way (or NULL). */
AMX static void amx_group(const uint16_t *w, int64_t k, const uint32_t *xp, int64_t tiles,
                          int64_t width, int64_t rows, int wn, const float *bias, float *y,
                          int64_t n, const uint16_t *next) {
    const int64_t chunks = k / AMX_K;
    float out[AMX_ROWS * AMX_ROWS];
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int64_t c = 0; c < chunks; c++) {
        if (next) amx_prefetch(next, k, c, 0);
        if (c + 1 < chunks) amx_prefetch(w, k, c + 1, 1);
        _tile_loadd(4, w + c * AMX_K, k * 2);
        AMX_STEP(0) AMX_STEP(1) AMX_STEP(2) AMX_STEP(3)
    }
    AMX_STORE(0) AMX_STORE(1) AMX_STORE(2) AMX_STORE(3)
}

/* Returns 0, or -2 where memory ran out (the caller takes vdpbf16ps). Blocks over 4 C tiles
 * (64 rows) go 64 rows at a time, each pass streaming the weights again. */
AMX static int product_bf16_amx(const void *x, const void *w, const void *bias, float *y,
                                int64_t rows, int64_t n, int64_t k) {
    if (rows > 4 * AMX_ROWS) {
        for (int64_t r = 0; r < rows; r += 4 * AMX_ROWS) {
            int rc = product_bf16_amx((const uint16_t *)x + r * k, w, bias, y + r * n,
                                      rows - r < 4 * AMX_ROWS ? rows - r : 4 * AMX_ROWS, n, k);
            if (rc != 0) return rc;
        }
        return 0;
    }
    const int64_t chunks = k / AMX_K, tiles = (rows + AMX_ROWS - 1) / AMX_ROWS;
    const int64_t width = (rows + tiles - 1) / tiles, groups = (n + AMX_ROWS - 1) / AMX_ROWS;
    const int last = (int)(n - (groups - 1) * AMX_ROWS);
    uint32_t *xp = malloc(sizeof(uint32_t) * tiles * chunks * AMX_ROWS * width);
    /* the last group's rows, zero-padded to a whole tile where n is not a multiple of 16 */
    uint16_t *tail = last < AMX_ROWS ? calloc(AMX_ROWS * k, sizeof(uint16_t)) : NULL;
    if (!xp || (last < AMX_ROWS && !tail)) { free(xp); free(tail); return -2; }
    if (tail)
        memcpy(tail, (const uint16_t *)w + (groups - 1) * AMX_ROWS * k,
               sizeof(uint16_t) * last * k);
    const TileConfig cfg = amx_config(width);
    /* Packed before the threads start: a barrier between would cost a time slice wherever the
     * cores are shared. */
    amx_pack((const uint16_t *)x, xp, rows, k, tiles, width);
    #pragma omp parallel
    {
        _tile_loadconfig(&cfg);            /* the tile state is each thread's own */
        #pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; g++) {
            const int64_t j = g * AMX_ROWS;
            const int wn = g + 1 < groups ? AMX_ROWS : last;
            float b[AMX_ROWS];
            for (int m = 0; m < wn; m++) b[m] = bias_at(bias, j + m, 1);
            const uint16_t *wg = g + 1 < groups || !tail ? (const uint16_t *)w + j * k : tail;
            const uint16_t *next =
                g + 3 < groups ? (const uint16_t *)w + (j + 2 * AMX_ROWS) * k : NULL;
            amx_group(wg, k, xp, tiles, width, rows, wn, b, y + j, n, next);
        }
        _tile_release();
    }
    free(xp);
    free(tail);
    return 0;
}

static void product(int bf16, const void *x, const void *w, const void *bias, float *y,
                    int64_t rows, int64_t n, int64_t k) {
    /* AMX for every product of a matrix or none (by k alone), so its outputs keep one arithmetic */
    if (bf16 && amx && k % AMX_K == 0 && product_bf16_amx(x, w, bias, y, rows, n, k) == 0)
        return;
    if (bf16)
        (isa >= 2 ? product_bf16_dp : product_bf16_avx2)(x, w, bias, y, rows, n, k);
    else
        (isa >= 1 ? product_f32_avx512 : product_f32_avx2)(x, w, bias, y, rows, n, k);
}

/* The products engine/kernels.py offers as its `gemv` candidate: y in the weight's dtype.
 * Return 0, or -1 when rows is out of range. */
int gemv_f32(const float *x, const float *w, const float *bias, float *y, int64_t rows,
             int64_t n, int64_t k) {
    if (rows < 1) return -1;
    product(0, x, w, bias, y, rows, n, k);
    return 0;
}

/* The same product with y in fp32 whatever the weights (the engine's logits). */
int product_f32_out(const void *x, const void *w, const void *bias, float *y, int64_t rows,
                    int64_t n, int64_t k, int32_t bf16) {
    if (rows < 1) return -1;
    product(bf16, x, w, bias, y, rows, n, k);
    return 0;
}

int gemv_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
              int64_t rows, int64_t n, int64_t k) {
    if (rows < 1) return -1;
    float *out = malloc(sizeof(float) * rows * n);
    if (!out) return -2;
    product(1, x, w, bias, out, rows, n, k);
    for (int64_t i = 0; i < rows * n; i++) y[i] = f32_to_bf16(out[i]);
    free(out);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Whole decoder layers. The structs mirror engine/fused.py's ctypes declarations.
 */
typedef struct {
    const void *in_norm, *post_norm;              /* (hidden) */
    const void *qkv, *qkv_bias;                   /* q, k, v stacked: ((heads + 2 kv) hd, hidden) */
    const void *o, *o_bias;                       /* (hidden, heads hd) */
    const void *gate_up, *gate_up_bias;           /* gate, up stacked: (2 inter, hidden) */
    const void *down, *down_bias;                 /* (hidden, inter) */
} Layer;

typedef struct {
    int64_t hidden, inter, heads, kv_heads, head_dim;
    float eps;
    int32_t bf16;                                 /* weights and activations bf16, else fp32 */
} Shape;

typedef struct {                                  /* engine/cache.py's KVCache */
    void *k, *v;                                  /* (layers, kv_heads, capacity, head_dim) */
    int64_t capacity;
    int64_t bf16;                                 /* keys and values bf16, else fp32 */
} Cache;

/* One sequence's rows of a block (engine/batch.py joins several sequences' blocks): its cache,
 * where its rows go in it, and its additive mask (rows x (offset + rows), NULL: causal). */
typedef struct {
    Cache cache;
    int64_t offset, rows;
    const float *mask;
} Segment;

static inline float keep(int bf16, float v) { return bf16 ? round_bf16(v) : v; }

/* One row x (dim, fp32) normed into row r of the next product's input: fp32, or bf16 rounded. */
static void rms_norm(const Shape *s, const float *x, const void *weight, void *out, int64_t r,
                     int64_t dim) {
    float ss = 0.0f;
    for (int64_t i = 0; i < dim; i++) ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / (float)dim + s->eps);
    for (int64_t i = 0; i < dim; i++) {
        if (s->bf16) {
            float w = bf16_to_f32(((const uint16_t *)weight)[i]);
            ((uint16_t *)out)[r * dim + i] = f32_to_bf16(x[i] * scale * w);
        } else {
            ((float *)out)[r * dim + i] = x[i] * scale * ((const float *)weight)[i];
        }
    }
}

/* resid += a product's output (bf16: each rounded as torch's eager ops round them). */
static void add_residual(int bf16, float *resid, const float *out, int64_t dim) {
    for (int64_t i = 0; i < dim; i++) resid[i] = keep(bf16, resid[i] + keep(bf16, out[i]));
}

/* fp32 values into a product's input (bf16 rounded where the weights are bf16). */
static void to_input(int bf16, const float *x, void *out, int64_t count) {
    for (int64_t i = 0; i < count; i++) {
        if (bf16) ((uint16_t *)out)[i] = f32_to_bf16(x[i]);
        else ((float *)out)[i] = x[i];
    }
}

/* RoPE on one head vector in place: v*cos + roll(v, hd/2)*signed_sin (engine/llama.py rotate). */
static void rotate(int bf16, float *v, const float *cos, const float *sin, int64_t hd) {
    float t[512];
    int64_t half = hd / 2;
    for (int64_t i = 0; i < hd; i++) t[i] = v[i];
    for (int64_t i = 0; i < hd; i++)
        v[i] = keep(bf16, keep(bf16, t[i] * cos[i]) + t[(i + half) % hd] * sin[i]);
}

/* One row of the q/k/v product (width values) made ready: rounded as the model's dtype, RoPE on
 * every query and key head, and its keys and values written at its place in its segment's cache
 * (row i of the segment, layer l). */
static void place_qkv(const Shape *s, float *row, const float *cos, const float *sin,
                      const Segment *sg, int64_t i, int64_t l) {
    const int64_t hd = s->head_dim, heads = s->heads, kv = s->kv_heads;
    const int64_t width = (heads + 2 * kv) * hd;
    const int bf16 = s->bf16;
    const Cache *c = &sg->cache;
    for (int64_t j = 0; j < width; j++) row[j] = keep(bf16, row[j]);
    for (int64_t head = 0; head < heads + kv; head++) rotate(bf16, row + head * hd, cos, sin, hd);
    for (int64_t g = 0; g < kv; g++) {
        int64_t at = ((l * kv + g) * c->capacity + sg->offset + i) * hd;
        const float *k = row + (heads + g) * hd, *v = row + (heads + kv + g) * hd;
        for (int64_t d = 0; d < hd; d++) {     /* bf16: values already rounded to it */
            if (c->bf16) {
                ((uint16_t *)c->k)[at + d] = f32_to_bf16(k[d]);
                ((uint16_t *)c->v)[at + d] = f32_to_bf16(v[d]);
            } else {
                ((float *)c->k)[at + d] = k[d];
                ((float *)c->v)[at + d] = v[d];
            }
        }
    }
}

/* Keys and values are kept in the model's dtype, fp32 or bf16 (a bf16 model's are bf16 values:
 * wider storage would hold no more and a long context's step would read twice the bytes). They are
 * read as fp32 either way, a bf16 value widened exactly, and all arithmetic is fp32. The kernels
 * below take the element type as a constant `bf16` and are always inlined, so each call site
 * compiles to a loop for its own type. */
INLINE const void *kv_at(const void *base, int64_t i, int bf16) {
    return (const char *)base + i * (bf16 ? 2 : 4);
}

INLINE __m256 load_kv8(const void *p, int bf16) {
    return bf16 ? load_bf16x8((const uint16_t *)p) : _mm256_loadu_ps((const float *)p);
}

INLINE float load_kv(const void *p, int bf16) {
    return bf16 ? bf16_to_f32(*(const uint16_t *)p) : *(const float *)p;
}

/* q . key[j] for 8 keys at once (hd a multiple of 8): eight accumulators reduced together by a
 * tree of horizontal adds, a quarter of the shuffles of eight separate reductions. Lane j's
 * arithmetic does not depend on the other keys, so a key's score is the same in any group. */
INLINE __m256 dot8(const float *q, const void *const key[8], int64_t hd, int bf16) {
    __m256 a[8];
    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
        __m256 qv = _mm256_loadu_ps(q + d);
        for (int j = 0; j < 8; j++)
            a[j] = _mm256_fmadd_ps(qv, load_kv8(kv_at(key[j], d, bf16), bf16), a[j]);
    }
    __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

/* e^x for 8 floats: x = n ln2 + r, |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial (relative
 * error ~2e-7, near fp32's rounding), 2^n built in the exponent bits. x below -87 gives 0, as the
 * masked scores of attention must. Scalar and vector calls use this same arithmetic. */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    __m256 dead = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);   /* ln2, split in two */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(dead, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* values[i] = e^values[i], 8 at a time; the tail through a padded copy (the same arithmetic). */
static void exp_inplace(float *values, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(values + i, exp8(_mm256_loadu_ps(values + i)));
    if (i < n) {
        float t[8] = {0};
        for (int64_t j = i; j < n; j++) t[j - i] = values[j];
        _mm256_storeu_ps(t, exp8(_mm256_loadu_ps(t)));
        for (int64_t j = i; j < n; j++) values[j] = t[j - i];
    }
}

/* One row of silu(gate) * up (gate, up: M values each, side by side) into row r of the next
 * product's input; act: room for M floats. */
static void silu_product(int bf16, const float *gate, float *act, void *x, int64_t r, int64_t M) {
    const float *up = gate + M;
    for (int64_t i = 0; i < M; i++) act[i] = -keep(bf16, gate[i]);
    exp_inplace(act, M);                                  /* e^-gate */
    for (int64_t i = 0; i < M; i++) {
        float g = keep(bf16, gate[i]);
        act[i] = keep(bf16, keep(bf16, g / (1.0f + act[i])) * keep(bf16, up[i]));
    }
    to_input(bf16, act, bf16 ? (void *)((uint16_t *)x + r * M) : (void *)((float *)x + r * M), M);
}

/* Attention. A task is up to QUERIES queries that share a KV head: the group's heads for one or
 * more rows of a block. They meet each cached key and value together, so a block reads the cache
 * from L2 or memory about once per task rather than once per query (for a block of 16 rows of
 * SmolLM2, 12 times less), which matters once a long prompt's keys and values outgrow L2.
 * Each query's arithmetic is its own and unchanged by its neighbours: its score for a key is
 * dot8's, its softmax runs over the keys it may see in order, and each output value is one chain
 * of multiply-adds over those keys in order. So a token gets the same bits alone, in any block, or
 * as a node of a tree whose other branches its mask hides. */
#define QUERIES 12           /* queries a task at most */
#define KEY_CHUNK 64         /* values a pass of the weighted sums keeps in L1 (64 x hd) */

typedef struct {
    const float *q, *mask;   /* the query (hd); its additive mask row, or NULL: causal */
    float *out;              /* its output (hd) */
    int64_t span;            /* it may see only cache rows below span */
} Query;

INLINE int sees(const Query *a, int64_t t) { return a->mask ? !isinf(a->mask[t]) : t < a->span; }

/* s[j][t] = q_j . keys[t] for t < span_j (rounded up to 8), each key read for all queries at once:
 * from L2 or memory by the first, from L1 by the others. */
INLINE void scores_of(const Query *qs, int64_t nq, const void *keys, float *s, int64_t stride,
                      int64_t span, int64_t hd, int bf16) {
    for (int64_t t = 0; t < span; t += 8) {
        const void *key[8];
        for (int j = 0; j < 8; j++) key[j] = kv_at(keys, (t + j < span ? t + j : 0) * hd, bf16);
        for (int64_t b = 0; b < 8 * hd * (bf16 ? 2 : 4) && t + 16 < span; b += 64)
            _mm_prefetch((const char *)kv_at(keys, (t + 16) * hd, bf16) + b, _MM_HINT_T0);
        for (int64_t a = 0; a < nq; a++) {
            if (t >= qs[a].span) continue;
            float *out = s + a * stride + t;
            if (hd % 8 == 0) {
                _mm256_storeu_ps(out, dot8(qs[a].q, key, hd, bf16));
            } else {
                for (int j = 0; j < 8; j++) {
                    out[j] = 0.0f;
                    for (int64_t d = 0; d < hd; d++)
                        out[j] += qs[a].q[d] * load_kv(kv_at(key[j], d, bf16), bf16);
                }
            }
        }
    }
}

/* A query's scores (s, up to span) become its softmax weights over the keys it may see, gathered
 * in order into p (seen: their cache rows). Returns how many; *total their sum. */
static int64_t softmax_of(const Query *a, const float *s, float scale, float *p, int32_t *seen,
                          float *total) {
    int64_t count = 0;
    for (int64_t t = 0; t < a->span; t++)
        if (sees(a, t)) { seen[count] = (int32_t)t; p[count++] = s[t] * scale + (a->mask ? a->mask[t] : 0.0f); }
    __m256 best8 = _mm256_set1_ps(-INFINITY);       /* a maximum is the same in any order */
    int64_t k = 0;
    for (; k + 8 <= count; k += 8) best8 = _mm256_max_ps(best8, _mm256_loadu_ps(p + k));
    float lanes[8], best = -INFINITY;
    _mm256_storeu_ps(lanes, best8);
    for (int j = 0; j < 8; j++) best = lanes[j] > best ? lanes[j] : best;
    for (; k < count; k++) best = p[k] > best ? p[k] : best;
    for (k = 0; k < count; k++) p[k] -= best;
    exp_inplace(p, count);
    __m256 sum8 = _mm256_setzero_ps();              /* 8 running sums: a fixed order per count */
    for (k = 0; k + 8 <= count; k += 8) sum8 = _mm256_add_ps(sum8, _mm256_loadu_ps(p + k));
    float sum = hsum256(sum8);
    for (; k < count; k++) sum += p[k];
    *total = sum;
    return count;
}

/* acc_j += sum of p_j[i] v[seen_j[i]] over the keys each query sees, in order, KEY_CHUNK cache
 * rows at a time so that a chunk of values stays in L1 for all the task's queries. from[j]: the
 * first of query j's keys not yet added. */
INLINE void weighted_sums(int64_t nq, const void *v, float *const p[],
                          int32_t *const seen[], const int64_t *count, int64_t *from, float *acc,
                          int64_t span, int64_t hd, int bf16) {
    for (int64_t c = 0; c < span; c += KEY_CHUNK) {
        for (int64_t a = 0; a < nq; a++) {
            int64_t i0 = from[a], i1 = i0;
            while (i1 < count[a] && seen[a][i1] < c + KEY_CHUNK) i1++;
            from[a] = i1;
            float *out = acc + a * hd;
            int64_t d = 0;
            for (; d + 32 <= hd; d += 32) {
                __m256 a0 = _mm256_loadu_ps(out + d), a1 = _mm256_loadu_ps(out + d + 8);
                __m256 a2 = _mm256_loadu_ps(out + d + 16), a3 = _mm256_loadu_ps(out + d + 24);
                for (int64_t i = i0; i < i1; i++) {
                    __m256 e = _mm256_set1_ps(p[a][i]);
                    const void *vt = kv_at(v, (int64_t)seen[a][i] * hd + d, bf16);
                    a0 = _mm256_fmadd_ps(e, load_kv8(vt, bf16), a0);
                    a1 = _mm256_fmadd_ps(e, load_kv8(kv_at(vt, 8, bf16), bf16), a1);
                    a2 = _mm256_fmadd_ps(e, load_kv8(kv_at(vt, 16, bf16), bf16), a2);
                    a3 = _mm256_fmadd_ps(e, load_kv8(kv_at(vt, 24, bf16), bf16), a3);
                }
                _mm256_storeu_ps(out + d, a0);
                _mm256_storeu_ps(out + d + 8, a1);
                _mm256_storeu_ps(out + d + 16, a2);
                _mm256_storeu_ps(out + d + 24, a3);
            }
            for (; d < hd; d++)
                for (int64_t i = i0; i < i1; i++)
                    out[d] = fmaf(p[a][i], load_kv(kv_at(v, (int64_t)seen[a][i] * hd + d, bf16), bf16), out[d]);
        }
        if (c + KEY_CHUNK < span)     /* the next chunk's values, into L2 while this one runs */
            for (int64_t b = 0; b < KEY_CHUNK * hd * (bf16 ? 2 : 4); b += 64)
                _mm_prefetch((const char *)kv_at(v, (c + KEY_CHUNK) * hd, bf16) + b, _MM_HINT_T1);
    }
}

/* One task's queries over one KV head's keys and values. Returns 0, or -2 (no memory). */
INLINE int attend(const Query *qs, int64_t nq, const void *keys, const void *values, int64_t hd,
                  int bf16) {
    int64_t span = 0;
    for (int64_t a = 0; a < nq; a++) span = qs[a].span > span ? qs[a].span : span;
    const int64_t stride = (span + 7) / 8 * 8;
    float *s = malloc(sizeof(float) * nq * (2 * stride + hd));
    if (!s) return -2;
    float *acc = s + nq * stride, *p[QUERIES], total[QUERIES];
    int32_t *seen[QUERIES];
    int64_t count[QUERIES], from[QUERIES];
    scores_of(qs, nq, keys, s, stride, span, hd, bf16);
    for (int64_t a = 0; a < nq; a++) {
        p[a] = s + a * stride;                      /* gathered in place: index <= key */
        seen[a] = (int32_t *)(acc + nq * hd) + a * stride;
        count[a] = softmax_of(qs + a, s + a * stride, 1.0f / sqrtf((float)hd), p[a], seen[a],
                              total + a);
        from[a] = 0;
    }
    memset(acc, 0, sizeof(float) * nq * hd);
    weighted_sums(nq, values, p, seen, count, from, acc, span, hd, bf16);
    for (int64_t a = 0; a < nq; a++) {
        __m256 inv = _mm256_set1_ps(1.0f / total[a]);
        int64_t d = 0;
        for (; d + 8 <= hd; d += 8)
            _mm256_storeu_ps(qs[a].out + d, _mm256_mul_ps(_mm256_loadu_ps(acc + a * hd + d), inv));
        for (; d < hd; d++) qs[a].out[d] = acc[a * hd + d] * (1.0f / total[a]);
    }
    free(s);
    return 0;
}

/* Softmax attention of each query row over the cache rows it may see: rows [0, offset + r] without
 * a mask (causal), else where the additive mask (rows x (offset + rows)) is finite. Tasks: each
 * segment's queries per KV head (row-major: a row's group of heads side by side), cut into runs
 * of up to QUERIES, small enough that every thread has work. */
static int attention(const Shape *s, const float *qkv, float *out, const Segment *segs,
                     int64_t nseg, int64_t layer, int64_t rows) {
    const int64_t hd = s->head_dim, heads = s->heads, kv = s->kv_heads;
    const int64_t width = (heads + 2 * kv) * hd, group = heads / kv;
    int64_t per = rows * heads / (2 * omp_get_max_threads());
    per = per < 1 ? 1 : per > QUERIES ? QUERIES : per;
    int64_t ntasks = 0;
    for (int64_t j = 0; j < nseg; j++) ntasks += kv * ((segs[j].rows * group + per - 1) / per);
    int64_t *task = malloc(sizeof(int64_t) * 4 * ntasks);  /* (segment, first row, kv head, run) */
    if (!task) return -2;
    for (int64_t j = 0, r0 = 0, n = 0; j < nseg; r0 += segs[j++].rows)
        for (int64_t g = 0; g < kv; g++)
            for (int64_t at = 0; at < segs[j].rows * group; at += per, n++) {
                task[4 * n] = j; task[4 * n + 1] = r0; task[4 * n + 2] = g; task[4 * n + 3] = at;
            }
    int rc = 0;
    #pragma omp parallel for schedule(dynamic) reduction(min: rc)
    for (int64_t n = 0; n < ntasks; n++) {
        const Segment *sg = segs + task[4 * n];
        const int64_t r0 = task[4 * n + 1], g = task[4 * n + 2], at = task[4 * n + 3];
        const int64_t ctx = sg->offset + sg->rows;
        const int64_t nq = sg->rows * group - at < per ? sg->rows * group - at : per;
        const Cache *c = &sg->cache;
        const int bf16 = c->bf16 != 0;
        const int64_t first = (layer * kv + g) * c->capacity * hd;    /* this kv head's rows */
        Query qs[QUERIES];
        for (int64_t a = 0; a < nq; a++) {
            const int64_t i = (at + a) / group, h = g * group + (at + a) % group;
            qs[a].q = qkv + (r0 + i) * width + h * hd;
            qs[a].out = out + (r0 + i) * heads * hd + h * hd;
            qs[a].mask = sg->mask ? sg->mask + i * ctx : NULL;
            qs[a].span = sg->mask ? ctx : sg->offset + i + 1;
        }
        int done = bf16 ? attend(qs, nq, kv_at(c->k, first, 1), kv_at(c->v, first, 1), hd, 1)
                        : attend(qs, nq, kv_at(c->k, first, 0), kv_at(c->v, first, 0), hd, 0);
        rc = done < rc ? done : rc;                 /* 0, or -2: out of memory */
    }
    free(task);
    return rc;
}

/* Layers [first, last) on hidden states h (rows x hidden, in the weights' dtype, updated in
 * place): the rows of `nseg` sequences one after another, each segment's written at its cache
 * rows [offset, offset + rows) and attending to its own cache under its own mask. Only attention
 * and the cache writes look at segments; every product takes all rows at once, so each weight is
 * read once for all sequences. cos/sin: (rows x head_dim) fp32, the engine's RoPE tables at the
 * tokens' positions. Returns 0, -1 for rows out of range, -2 when memory ran out. */
int decode_segments(const Shape *s, const Layer *layers, int64_t first, int64_t last,
                    const Segment *segs, int64_t nseg, void *h, const float *cos,
                    const float *sin) {
    int64_t rows = 0;
    for (int64_t j = 0; j < nseg; j++) {
        if (segs[j].rows < 1 || segs[j].offset + segs[j].rows > segs[j].cache.capacity) return -1;
        rows += segs[j].rows;
    }
    if (rows < 1 || s->head_dim > 512) return -1;
    int32_t *seg_of = malloc(sizeof(int32_t) * 2 * rows);   /* row -> (segment, row in it) */
    if (!seg_of) return -2;
    for (int64_t j = 0, r = 0; j < nseg; j++)
        for (int64_t i = 0; i < segs[j].rows; i++, r++) { seg_of[2 * r] = (int32_t)j; seg_of[2 * r + 1] = (int32_t)i; }
    const int64_t H = s->hidden, M = s->inter, hd = s->head_dim, heads = s->heads;
    const int64_t kv = s->kv_heads, width = (heads + 2 * kv) * hd, bf16 = s->bf16;
    const int64_t wide = M > heads * hd ? M : heads * hd, in = wide > H ? wide : H;
    float *resid = malloc(sizeof(float) * rows * H), *tmp = malloc(sizeof(float) * rows * H);
    float *qkv = malloc(sizeof(float) * rows * width);
    float *att = malloc(sizeof(float) * rows * heads * hd);
    float *gu = malloc(sizeof(float) * rows * 2 * M), *act = malloc(sizeof(float) * rows * M);
    void *x = malloc(sizeof(float) * rows * in);   /* the next product's input */
    int rc = 0;
    if (!resid || !tmp || !qkv || !att || !gu || !act || !x) { rc = -2; goto done; }
    for (int64_t i = 0; i < rows * H; i++)
        resid[i] = bf16 ? bf16_to_f32(((uint16_t *)h)[i]) : ((float *)h)[i];

    /* Between the products, each row's work is its own: threads take a block's rows (from 4;
     * for fewer, a parallel region would cost more than it saves). */
    const int split = rows >= 4;
#define FOR_EACH_ROW(r, ...)                                                                  \
    if (split) {                                                                              \
        _Pragma("omp parallel for schedule(static)")                                          \
        for (int64_t r = 0; r < rows; r++) { __VA_ARGS__ }                                    \
    } else {                                                                                  \
        for (int64_t r = 0; r < rows; r++) { __VA_ARGS__ }                                    \
    }
    for (int64_t l = first; l < last; l++) {
        const Layer *L = layers + l;
        /* attention */
        FOR_EACH_ROW(r, rms_norm(s, resid + r * H, L->in_norm, x, r, H);)
        product(bf16, x, L->qkv, L->qkv_bias, qkv, rows, width, H);
        FOR_EACH_ROW(r, place_qkv(s, qkv + r * width, cos + r * hd, sin + r * hd,
                                  segs + seg_of[2 * r], seg_of[2 * r + 1], l);)
        if ((rc = attention(s, qkv, att, segs, nseg, l, rows)) != 0) goto done;
        to_input(bf16, att, x, rows * heads * hd);
        product(bf16, x, L->o, L->o_bias, tmp, rows, H, heads * hd);
        /* MLP: down(silu(gate) * up) */
        FOR_EACH_ROW(r, add_residual(bf16, resid + r * H, tmp + r * H, H);
                        rms_norm(s, resid + r * H, L->post_norm, x, r, H);)
        product(bf16, x, L->gate_up, L->gate_up_bias, gu, rows, 2 * M, H);
        FOR_EACH_ROW(r, silu_product(bf16, gu + r * 2 * M, act + r * M, x, r, M);)
        product(bf16, x, L->down, L->down_bias, tmp, rows, H, M);
        FOR_EACH_ROW(r, add_residual(bf16, resid + r * H, tmp + r * H, H);)
    }
#undef FOR_EACH_ROW
    for (int64_t i = 0; i < rows * H; i++) {
        if (bf16) ((uint16_t *)h)[i] = f32_to_bf16(resid[i]);
        else ((float *)h)[i] = resid[i];
    }
done:
    free(resid); free(tmp); free(qkv); free(att); free(gu); free(act); free(x); free(seg_of);
    return rc;
}

/* One sequence's block: rows written at cache rows [offset, offset + rows); mask: additive
 * (rows x (offset + rows)) fp32 or NULL for causal. */
int decode_layers(const Shape *s, const Layer *layers, int64_t first, int64_t last,
                  const Cache *c, void *h, int64_t rows, const float *cos, const float *sin,
                  const float *mask, int64_t offset) {
    const Segment one = {*c, offset, rows, mask};
    return decode_segments(s, layers, first, last, &one, 1, h, cos, sin);
}
