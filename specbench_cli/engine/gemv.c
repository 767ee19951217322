/* Matrix products over a few rows at the memory wall: y[r][n] = sum_k x[r][k] * w[n][k] (+ bias)
 * for w stored as Hugging Face stores it (out x in, row-major), r < 8 rows of x.
 *
 * Why a kernel of our own: a decoding step reads every weight once for one to a few tokens of
 * arithmetic, so its speed is the speed the weights stream from memory. The BLAS kernels torch
 * calls for a product over 1-8 rows reach about half of that on the CPUs we measured (SmolLM2's
 * shapes, 2 threads: MKL 37 ms against a 14 ms read of the same bytes); streaming 8 weight rows
 * at a time through AVX2 FMAs, split over threads by output rows, comes within ~10% of the read
 * (engine/kernels.py chooses it only where it measures faster). Each output is one dot product
 * accumulated in fp32; only the summation order differs from BLAS.
 *
 * bf16: weights and activations are widened to fp32 (a 16-bit shift), summed in fp32 and rounded
 * to the nearest even bf16, as torch rounds.
 *
 * Threads: OpenMP, linked against the libgomp.so.1 torch has already loaded, so both share one
 * thread pool and omp_set_num_threads (torch.set_num_threads) governs both.
 * Built by engine/kernels.py with the system C compiler: -O3 -fopenmp -mavx2 -mfma.
 */
#include <immintrin.h>
#include <stdint.h>

#define BLOCK 8     /* weight rows streamed together: 8 accumulators, 8 independent loads */
#define MAX_ROWS 8

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_bf16(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) {       /* round to nearest even (no NaN inputs) */
    union { float f; uint32_t u; } v = {f};
    return (uint16_t)((v.u + 0x7FFF + ((v.u >> 16) & 1)) >> 16);
}

/* One block of up to BLOCK outputs [j, j + jn) for one row of x. Always inlined, and called with
 * the constant BLOCK for every full block, so that the compiler unrolls the loop over the block
 * and keeps its accumulators in registers (a runtime jn spills them: ~1.3x slower). */
#define INLINE static inline __attribute__((always_inline))

INLINE void block_f32(const float *x, const float *w, const float *bias, float *y,
                      int64_t j, int64_t jn, int64_t k) {
    __m256 acc[BLOCK];
    for (int t = 0; t < BLOCK; t++) acc[t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i);
        for (int64_t t = 0; t < jn; t++)
            acc[t] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + (j + t) * k + i), acc[t]);
    }
    for (int64_t t = 0; t < jn; t++) {
        float s = hsum(acc[t]);
        for (int64_t r = i; r < k; r++) s += x[r] * w[(j + t) * k + r];
        y[j + t] = bias ? s + bias[j + t] : s;
    }
}

INLINE void block_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                       int64_t j, int64_t jn, int64_t k) {
    __m256 acc[BLOCK];
    for (int t = 0; t < BLOCK; t++) acc[t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 xv = load_bf16(x + i);
        for (int64_t t = 0; t < jn; t++)
            acc[t] = _mm256_fmadd_ps(xv, load_bf16(w + (j + t) * k + i), acc[t]);
    }
    for (int64_t t = 0; t < jn; t++) {
        float s = hsum(acc[t]);
        for (int64_t r = i; r < k; r++) s += bf16_to_f32(x[r]) * bf16_to_f32(w[(j + t) * k + r]);
        /* the bias joins the fp32 sum: one rounding per output */
        y[j + t] = f32_to_bf16(bias ? s + bf16_to_f32(bias[j + t]) : s);
    }
}

/* The exported products: x rows x k, w n x k, y rows x n, all contiguous; bias (n) or NULL.
 * Threads split the output rows in blocks; each block serves every row of x while it stays in
 * L1/L2. Returns 0, or -1 when rows is out of range (the caller then uses another kernel). */
#define DEFINE_GEMV(NAME, T, BLOCK_FN)                                                        \
    int NAME(const T *x, const T *w, const T *bias, T *y, int64_t rows, int64_t n, int64_t k) { \
        if (rows < 1 || rows > MAX_ROWS) return -1;                                           \
        _Pragma("omp parallel for schedule(static)")                                          \
        for (int64_t j = 0; j < n; j += BLOCK)                                                \
            for (int64_t r = 0; r < rows; r++) {                                              \
                if (n - j >= BLOCK) BLOCK_FN(x + r * k, w, bias, y + r * n, j, BLOCK, k);     \
                else BLOCK_FN(x + r * k, w, bias, y + r * n, j, n - j, k);                    \
            }                                                                                 \
        return 0;                                                                             \
    }

DEFINE_GEMV(gemv_f32, float, block_f32)
DEFINE_GEMV(gemv_bf16, uint16_t, block_bf16)

/* bf16 on CPUs with AVX512-BF16 (AMD Zen 4, Intel Cooper Lake / Sapphire Rapids and later):
 * vdpbf16ps multiplies 32 bf16 pairs exactly into fp32 and adds them to 16 accumulators, half the
 * instructions of widening by shifts. Compiled for that target alone; engine/kernels.py calls it
 * only where /proc/cpuinfo reports avx512_bf16. The k tail is a masked (zero-filled) load. */
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

BF16_TARGET INLINE void block_dpbf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias,
                                     uint16_t *y, int64_t j, int64_t jn, int64_t k) {
    __m512 acc[BLOCK];
    for (int t = 0; t < BLOCK; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 32) {
        __mmask32 m = k - i >= 32 ? (__mmask32)-1 : (__mmask32)((1u << (k - i)) - 1);
        __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, x + i);
        for (int64_t t = 0; t < jn; t++)
            acc[t] = _mm512_dpbf16_ps(acc[t], xv,
                                      (__m512bh)_mm512_maskz_loadu_epi16(m, w + (j + t) * k + i));
    }
    for (int64_t t = 0; t < jn; t++) {
        float s = _mm512_reduce_add_ps(acc[t]);
        y[j + t] = f32_to_bf16(bias ? s + bf16_to_f32(bias[j + t]) : s);
    }
}

BF16_TARGET DEFINE_GEMV(gemv_dpbf16, uint16_t, block_dpbf16)
