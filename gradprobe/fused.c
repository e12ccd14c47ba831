/* One-pass statistics over lists of float32 buffers, for pipelines/fused.py (which builds and loads this).
 *
 * Each function takes n buffers (pointers and lengths) and reads each buffer once for all of its
 * statistics, accumulating in double. Eager PyTorch reads a buffer once per statistic and costs a few
 * microseconds per call; the probe's statistics are ~250 such calls over ~5 MB per logging step.
 * The statistics come out as pipelines/stats.py defines them, ready to record (float32 rows). The squares
 * are taken in double (squares of float32 entries neither underflow nor overflow there: 1e-30 and 1e30
 * entries give exact norms); a list with a NaN or an inf anywhere returns -1 and the caller takes the eager
 * path, which propagates them as PyTorch does. Where the one-pass variance is not exact enough (stats.ONE_PASS_LIMIT)
 * the row is flagged and the caller takes that variance again in two passes.
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

/* A double as float32: inf beyond float32's range (an explicit rule, not the conversion's), NaN kept. */
static float to_float(double v) {
    return isnan(v) ? NAN : v <= FLT_MAX ? (float)v : INFINITY;
}

/* out[i] = L2 norm of buffer i in float32 (the divergence guard's norms): summed in double; inf only where
 * the norm itself exceeds float32's range; NaN stays NaN. */
CLONES void gpl_norms(int64_t n, const float *const *x, const int64_t *len, float *out) {
#pragma omp parallel for schedule(dynamic, 1) if (total(n, len) >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        const float *p = x[i];
        const int64_t m = len[i];
        double ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < m; j++) ss += (double)p[j] * p[j];
        out[i] = to_float(sqrt(ss));
    }
}

/* A one-pass variance from mean square and mean; flags it when the mean dominates (see stats._std). */
static float one_pass_std(double mean_square, double mean, double limit, int32_t *shaky) {
    double var = mean_square - mean * mean;
    var = var > 0 ? var : 0;
    *shaky = mean_square > limit * var;
    return (float)sqrt(var);
}

static int64_t outcome(int64_t n, const int32_t *bad, const int32_t *shaky) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        if (bad[i]) return -1;
        count += shaky[i];
    }
    return count;
}

/* rows[5i .. 5i+4] = l2, rms, absmax, mean, std of buffer i (stats.tensor_stats); returns the number of
 * rows flagged in `shaky`, or -1 if a buffer holds NaN or inf.
 * `bad` is scratch space for n flags. */
CLONES int64_t gpl_grad_rows(int64_t n, const float *const *x, const int64_t *len, double limit, float *rows,
                             int32_t *shaky, int32_t *bad) {
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
        float *r = rows + 5 * i;
        bad[i] = !(ss <= DBL_MAX);  /* a NaN or inf entry (NaN compares false) */
        double mean_square = ss / m, mean = s / m;
        r[0] = to_float(sqrt(ss)), r[1] = (float)sqrt(mean_square), r[2] = fmaxf(fabsf(lo), fabsf(hi));
        r[3] = (float)mean, r[4] = one_pass_std(mean_square, mean, limit, shaky + i);
    }
    return outcome(n, bad, shaky);
}

/* out[i] = ||a_i - b_i|| / ||b_i||, the difference taken in float as the weights' change is (b: the weights
 * before the step); with `refresh`, b_i is then overwritten with a_i in the same pass (the next step's copy). */
CLONES void gpl_update_ratios(int64_t n, const float *const *a, float *const *b, const int64_t *len,
                              int32_t refresh, float *out) {
#pragma omp parallel for schedule(dynamic, 1) if (total(n, len) >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        const float *p = a[i];
        float *q = b[i];
        const int64_t m = len[i];
        double dd = 0, bb = 0;
        if (refresh) { /* two loops: with the store under a branch in one, gcc 12 vectorizes only its refresh case */
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
        out[i] = (float)sqrt(dd / bb);
    }
}

/* rows[3i .. 3i+2] = mean, std and saturation (share of saturated units) of activations a = phi(z)
 * (stats.layer_activation_stats). kind 0: none saturate (linear); 1: a <= 0 (ReLU, and leaky ReLU, whose
 * slope is below the share); 2: a(1 - a) < threshold (sigmoid); 3: 1 - a^2 < threshold (tanh).
 * Returns as gpl_grad_rows does. */
CLONES int64_t gpl_act_rows(int64_t n, const float *const *x, const int64_t *len, int32_t kind, float threshold,
                            double limit, float *rows, int32_t *shaky, int32_t *bad) {
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
        float *r = rows + 3 * i;
        bad[i] = !(ss <= DBL_MAX);
        double mean = s / m;
        r[0] = (float)mean, r[1] = one_pass_std(ss / m, mean, limit, shaky + i), r[2] = (float)(sat / m);
    }
    return outcome(n, bad, shaky);
}
