/* A bf16 linear for few rows on x86-64 CPUs with AVX-512: y = x W^T (+ b), for decode steps and
 * short prefill chunks.  ernie-serve compiles this file on first use
 * (ernie_otel/backends/cpu_kernel.py) and calls it through ctypes; torch keeps every other shape.
 *
 * Why: with few rows these products stream the weights once and do little arithmetic per byte,
 * and torch's bf16 kernel (oneDNN, on a CPU without AMX) copies each plain weight into its
 * blocked layout on every call.  Here each weight row is read once, in place, with the next
 * block's rows prefetched; its bf16 pairs are widened to fp32 in registers (a shift and a mask,
 * exact) and multiplied with fp32 FMAs, which issued at four times the rate of VDPBF16PS on the
 * CPU measured (5.3 against 1.3 G instructions/s a core; docs/benchmarks.md).  The inputs are
 * widened once per call into even/odd fp32 halves.  A tile is 4 input rows x 4 weight rows:
 * 12 loads and 8 widenings per 32 FMAs; an 8 x 2 tile needs 36 loads and ran at half the rate.
 * A product of exactly 8 rows (a full decode step) takes an 8 x 3 tile instead: each widened
 * weight vector feeds all 8 rows, so no block of weight rows is widened twice (8 x 1024 -> 3072
 * with the weights streamed from DRAM: 0.33 against 0.40 ms).  Besides the next block's rows
 * (into L1), the rows four blocks ahead are prefetched into L2: 6-10% faster at one row.
 *
 * Every output element is one fp32 dot product computed in the same order whatever the number
 * of rows or the tile that holds it, so a row's result does not depend on the rows batched with
 * it.  The result is rounded to bf16 to nearest-even, as torch rounds.
 *
 * Needs: K % 32 == 0, contiguous row-major x [M, K], w [N, K], y [M, N]; b is [N] or NULL.
 * Threads: OpenMP, through the libgomp that torch has already loaded (same soname), so torch's
 * thread team runs these too and no second team spins against it.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

static inline uint16_t round_bf16(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float widen_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}

/* MR input rows times NR weight rows.  xe/xo: [MR, K/2] fp32 (even and odd k); w[j]: weight rows.
 * Each 32-bit word of a weight row holds an even k in its low half and the next odd k in its
 * high half: word << 16 is the even one as fp32, word & 0xffff0000 the odd one. */
#define TILE(MR, NR)                                                                            \
    static void tile_##MR##x##NR(const float *xe, const float *xo, const uint16_t *const *w,   \
                                 int64_t K, float *out) {                                       \
        const int64_t H = K / 2;                                                                \
        const __m512i high = _mm512_set1_epi32((int)0xffff0000u);                              \
        __m512 acc[MR][NR];                                                                     \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                                   \
            _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_ps(); \
        for (int64_t h = 0; h < H; h += 16) {                                                  \
            __m512 we[NR], wo[NR];                                                              \
            _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) {                             \
                __m512i v = _mm512_loadu_si512(w[j] + 2 * h);                                   \
                _mm_prefetch((const char *)(w[j] + NR * K + 2 * h), _MM_HINT_T0);               \
                _mm_prefetch((const char *)(w[j] + 4 * NR * K + 2 * h), _MM_HINT_T1);           \
                we[j] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));                          \
                wo[j] = _mm512_castsi512_ps(_mm512_and_si512(v, high));                         \
            }                                                                                   \
            _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                             \
                __m512 a = _mm512_loadu_ps(xe + i * H + h);                                     \
                _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++)                           \
                    acc[i][j] = _mm512_fmadd_ps(a, we[j], acc[i][j]);                           \
                __m512 c = _mm512_loadu_ps(xo + i * H + h);                                     \
                _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++)                           \
                    acc[i][j] = _mm512_fmadd_ps(c, wo[j], acc[i][j]);                           \
            }                                                                                   \
        }                                                                                       \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                                   \
            _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++)                               \
                out[i * NR + j] = _mm512_reduce_add_ps(acc[i][j]);                              \
    }

TILE(4, 4)
TILE(2, 4)
TILE(1, 4)
TILE(8, 3)

static void store(uint16_t *y, const uint16_t *b, const float *out, int64_t rows, int64_t stride,
                  int64_t m0, int64_t n0, int64_t nr, int64_t N) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < nr; j++) {
            float s = out[i * stride + j];
            if (b) s += widen_bf16(b[n0 + j]);
            y[(m0 + i) * N + n0 + j] = round_bf16(s);
        }
}

/* Returns 0, or -1 when the shape is not one it handles (the caller then uses torch). */
int ernie_bf16_linear(const uint16_t *x, const uint16_t *w, const uint16_t *b, uint16_t *y,
                      int64_t M, int64_t N, int64_t K, int threads) {
    if (M <= 0 || N <= 0 || K <= 0 || K % 32 != 0) return -1;
    const int64_t H = K / 2;
    float *xs = (float *)aligned_alloc(64, (size_t)(2 * M * H) * sizeof(float));
    if (!xs) return -1;
    float *xe = xs, *xo = xs + M * H;
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    for (int64_t m = 0; m < M; m++)
        for (int64_t h = 0; h < H; h += 16) {
            __m512i v = _mm512_loadu_si512(x + m * K + 2 * h);
            _mm512_store_ps(xe + m * H + h, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
            _mm512_store_ps(xo + m * H + h, _mm512_castsi512_ps(_mm512_and_si512(v, high)));
        }
    if (M == 8) { /* a full decode step: all rows at once against 3 weight rows (24 accumulators) */
        const int64_t blocks3 = (N + 2) / 3;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t nb = 0; nb < blocks3; nb++) {
            const int64_t n0 = nb * 3, nr = N - n0 < 3 ? N - n0 : 3;
            const uint16_t *rows[3];
            for (int j = 0; j < 3; j++) rows[j] = w + (n0 + (j < nr ? j : 0)) * K;
            float out[24];
            tile_8x3(xe, xo, rows, K, out);
            store(y, b, out, 8, 3, 0, n0, nr, N);
        }
        free(xs);
        return 0;
    }
    const int64_t blocks = (N + 3) / 4;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t nb = 0; nb < blocks; nb++) {
        const int64_t n0 = nb * 4, nr = N - n0 < 4 ? N - n0 : 4;
        const uint16_t *rows[4];
        for (int j = 0; j < 4; j++) rows[j] = w + (n0 + (j < nr ? j : 0)) * K; /* past N: repeat row n0 */
        float out[16];
        int64_t m0 = 0;
        while (m0 < M) {
            const int64_t r = M - m0 >= 4 ? 4 : M - m0 >= 2 ? 2 : 1;
            if (r == 4)
                tile_4x4(xe + m0 * H, xo + m0 * H, rows, K, out);
            else if (r == 2)
                tile_2x4(xe + m0 * H, xo + m0 * H, rows, K, out);
            else
                tile_1x4(xe + m0 * H, xo + m0 * H, rows, K, out);
            store(y, b, out, r, 4, m0, n0, nr, N);
            m0 += r;
        }
    }
    free(xs);
    return 0;
}
