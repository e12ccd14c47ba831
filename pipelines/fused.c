/* One-pass statistics over lists of float32 buffers, for pipelines/fused.py (which builds and loads this).
 *
 * Each function takes n buffers (pointers and lengths) and reads each buffer once for all of its
 * statistics, accumulating in double. Eager PyTorch reads a buffer once per statistic and costs a few
 * microseconds per call; the probe's statistics are ~250 such calls over ~5 MB per logging step.
 * Comparisons that meet a NaN are false: callers redo a buffer whose sum of squares is not finite.
 *
 * Built with -fopenmp, the buffers are shared out among the threads of PyTorch's own OpenMP runtime
 * (the library's libgomp.so.1 is the one torch has loaded already: no second thread pool), one buffer
 * at a time; a list too small to be worth waking a thread for stays on the calling one.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#define PARALLEL_FROM (1 << 15) /* elements in all: below, one thread (a wake-up costs more than it saves) */

static int64_t total(int64_t n, const int64_t *len) {
    int64_t sum = 0;
    for (int64_t i = 0; i < n; i++) sum += len[i];
    return sum;
}

/* An AVX2 clone next to the baseline one, picked when the library loads: a library built on one
 * x86 machine still runs on any other. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* out[i] = L2 norm of buffer i in float32 (the divergence guard's norms): summed in double, but inf where
 * the sum of squares exceeds float32's range, as the eager float32 reduction makes it; NaN stays NaN. */
CLONES void gpl_norms(int64_t n, const float *const *x, const int64_t *len, float *out) {
#pragma omp parallel for schedule(dynamic, 1) if (total(n, len) >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        const float *p = x[i];
        const int64_t m = len[i];
        double ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < m; j++) ss += (double)p[j] * p[j];
        out[i] = isnan(ss) ? NAN : ss <= FLT_MAX ? (float)sqrt(ss) : INFINITY;
    }
}

/* out[4i .. 4i+3] = sum of squares, sum, min, max of buffer i */
CLONES void gpl_moments(int64_t n, const float *const *x, const int64_t *len, double *out) {
#pragma omp parallel for schedule(dynamic, 1) if (total(n, len) >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        const float *p = x[i];
        const int64_t m = len[i];
        double ss = 0, s = 0;
        float lo = INFINITY, hi = -INFINITY;
#pragma omp simd reduction(+ : ss, s) reduction(min : lo) reduction(max : hi)
        for (int64_t j = 0; j < m; j++) {
            float v = p[j];
            ss += (double)v * v;
            s += v;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        out[4 * i] = ss, out[4 * i + 1] = s, out[4 * i + 2] = lo, out[4 * i + 3] = hi;
    }
}

/* out[2i], out[2i+1] = sum of squares of (a_i - b_i), taken in float as the weights' change is, and of b_i;
 * with `refresh`, b_i is then overwritten with a_i in the same pass (the next step's "before"). */
CLONES void gpl_diff_sumsq(int64_t n, const float *const *a, float *const *b, const int64_t *len, int32_t refresh,
                           double *out) {
#pragma omp parallel for schedule(dynamic, 1) if (total(n, len) >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        const float *p = a[i];
        float *q = b[i];
        const int64_t m = len[i];
        double dd = 0, bb = 0;
        if (refresh) {
#pragma omp simd reduction(+ : dd, bb)
            for (int64_t j = 0; j < m; j++) {
                float d = p[j] - q[j];
                dd += (double)d * d;
                bb += (double)q[j] * q[j];
                q[j] = p[j];
            }
        } else {
#pragma omp simd reduction(+ : dd, bb)
            for (int64_t j = 0; j < m; j++) {
                float d = p[j] - q[j];
                dd += (double)d * d;
                bb += (double)q[j] * q[j];
            }
        }
        out[2 * i] = dd, out[2 * i + 1] = bb;
    }
}

/* out[3i .. 3i+2] = sum, sum of squares, and number of saturated units of activations a = phi(z).
 * kind 0: none saturate (linear); 1: a <= 0 (ReLU, and leaky ReLU, whose slope is below the share);
 * 2: a(1 - a) < threshold (sigmoid); 3: 1 - a^2 < threshold (tanh). */
CLONES void gpl_act_moments(int64_t n, const float *const *x, const int64_t *len, int32_t kind, float threshold,
                            double *out) {
#pragma omp parallel for schedule(dynamic, 1) if (total(n, len) >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        const float *p = x[i];
        const int64_t m = len[i];
        double ss = 0, s = 0, sat = 0;
        if (kind == 1) {
#pragma omp simd reduction(+ : ss, s, sat)
            for (int64_t j = 0; j < m; j++) {
                float v = p[j];
                s += v, ss += (double)v * v, sat += v > 0.0f ? 0.0 : 1.0;
            }
        } else if (kind == 2) {
#pragma omp simd reduction(+ : ss, s, sat)
            for (int64_t j = 0; j < m; j++) {
                float v = p[j], c = v - 0.5f;
                s += v, ss += (double)v * v, sat += 0.25f - c * c < threshold ? 1.0 : 0.0;
            }
        } else if (kind == 3) {
#pragma omp simd reduction(+ : ss, s, sat)
            for (int64_t j = 0; j < m; j++) {
                float v = p[j];
                s += v, ss += (double)v * v, sat += 1.0f - v * v < threshold ? 1.0 : 0.0;
            }
        } else {
#pragma omp simd reduction(+ : ss, s)
            for (int64_t j = 0; j < m; j++) {
                float v = p[j];
                s += v, ss += (double)v * v;
            }
        }
        out[3 * i] = s, out[3 * i + 1] = ss, out[3 * i + 2] = sat;
    }
}
