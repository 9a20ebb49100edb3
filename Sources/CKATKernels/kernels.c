// Run-time choice of CKATKernels' instruction set (see CKATKernels.h). kernels_body.h is
// compiled three times, for AVX-512, for AVX2 with FMA and for the baseline; a table of
// function pointers is chosen once, from the CPU's features and the environment.
#include "CKATKernels.h"
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef float VF __attribute__((vector_size(64)));
typedef float VFU __attribute__((vector_size(64), aligned(4)));
typedef int VI __attribute__((vector_size(64)));
typedef float V8 __attribute__((vector_size(32)));
typedef float V4 __attribute__((vector_size(16)));

struct kat_table {
    void (*gelu_forward)(float *, const float *, long);
    void (*bias_gelu_forward)(float *, float *, const float *, long, long);
    void (*gelu_backward)(float *, const float *, const float *, long);
    void (*layernorm_forward)(float *, float *, float *, const float *, const float *, const float *, long, long, float);
    void (*layernorm_backward)(float *, float *, float *, const float *, const float *, const float *, const float *,
                               const float *, long, long);
    void (*rmsnorm_forward)(float *, float *, const float *, const float *, long, long, float);
    void (*rmsnorm_backward)(float *, float *, const float *, const float *, const float *, const float *, long, long);
    void (*swiglu_forward)(float *, const float *, long, long);
    void (*swiglu_backward)(float *, const float *, const float *, long, long);
    void (*add_bias_rows)(float *, const float *, const float *, long, long);
    void (*fill_rows)(float *, const float *, long, long);
    void (*accumulate)(float *, const float *, long);
    void (*column_sums)(float *, const float *, long, long);
    void (*softmax_rows)(float *, long, long, long, long, float *, long, float *);
    void (*exp_rows)(float *, long, long, long, long, const float *, long);
    void (*softmax_backward_rows)(float *, const float *, long, long, long, const float *, float);
    void (*row_dots)(float *, const float *, long, const float *, long, long, long);
    void (*scale_rows)(float *, long, long, long, const float *);
    void (*exp_rows_partial)(float *, long, long, long, float *, float *, long);
    void (*attend_row)(float *, const float *, const float *, const float *, long, const long *, const long *, long, long,
                       long, long, float, float *, const float *, const float *, const float *);
    void (*softmax_summary)(const float *, long, float, float *);
    void (*scaled_probabilities)(float *, long, float, float);
    long (*argmax)(const float *, long);
    long (*sample_index)(const float *, long, float, float, float);
    long (*indices_at_least)(const float *, long, float, float, int *);
    double (*sum_squares)(const float *, long);
    void (*adamw)(float *, const float *, float *, float *, long, float, float, float, float, float, float,
                  float, float);
    void (*sgd)(float *, const float *, long, float, float, float);
};

#if defined(__x86_64__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#define KAT_FN(name) name##_avx512
#include "kernels_body.h"
#undef KAT_FN
#pragma clang attribute pop

#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#define KAT_FN(name) name##_avx2
#include "kernels_body.h"
#undef KAT_FN
#pragma clang attribute pop
#endif

#define KAT_FN(name) name##_generic
#include "kernels_body.h"
#undef KAT_FN

static const struct kat_table *T = 0;
static int level = KAT_SIMD_GENERIC;

int kat_simd_best(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return KAT_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return KAT_SIMD_AVX2;
#endif
    return KAT_SIMD_GENERIC;
}

int kat_simd_select(int want) {
    int best = kat_simd_best();
    int l = want < best ? want : best;
    if (l < KAT_SIMD_GENERIC) l = KAT_SIMD_GENERIC;
#if defined(__x86_64__)
    if (l == KAT_SIMD_AVX512) T = &table_avx512;
    else if (l == KAT_SIMD_AVX2) T = &table_avx2;
    else T = &table_generic;
#else
    l = KAT_SIMD_GENERIC;
    T = &table_generic;
#endif
    level = l;
    return l;
}

/// The level OPENBLAS_CORETYPE implies: an AVX-512 core, an AVX2 core, or older.
static int level_of_core(const char *core) {
    static const char *avx512[] = {"skylakex", "cooperlake", "sapphirerapids"};
    static const char *avx2[] = {"haswell", "zen", "excavator"};
    for (unsigned i = 0; i < sizeof avx512 / sizeof *avx512; i++) if (strcasecmp(core, avx512[i]) == 0) return KAT_SIMD_AVX512;
    for (unsigned i = 0; i < sizeof avx2 / sizeof *avx2; i++) if (strcasecmp(core, avx2[i]) == 0) return KAT_SIMD_AVX2;
    return KAT_SIMD_GENERIC;
}

__attribute__((constructor)) static void kat_simd_init(void) {
    int want = KAT_SIMD_AVX512;
    const char *core = getenv("OPENBLAS_CORETYPE");
    if (core && *core) want = level_of_core(core);
    const char *env = getenv("KAT_SIMD");
    if (env) {
        if (strcasecmp(env, "generic") == 0) want = KAT_SIMD_GENERIC;
        else if (strcasecmp(env, "avx2") == 0) want = KAT_SIMD_AVX2;
        else if (strcasecmp(env, "avx512") == 0) want = KAT_SIMD_AVX512;
    }
    kat_simd_select(want);
}

static inline const struct kat_table *table(void) {
    if (__builtin_expect(T == 0, 0)) kat_simd_init();
    return T;
}

int kat_simd_level(void) { table(); return level; }
const char *kat_simd_name(void) {
    switch (kat_simd_level()) {
    case KAT_SIMD_AVX512: return "avx512";
    case KAT_SIMD_AVX2: return "avx2";
    default: return "generic";
    }
}

void kat_gelu_forward(float *out, const float *inp, long n) { table()->gelu_forward(out, inp, n); }
void kat_bias_gelu_forward(float *pre, float *out, const float *bias, long rows, long cols) {
    table()->bias_gelu_forward(pre, out, bias, rows, cols);
}
void kat_gelu_backward(float *dinp, const float *inp, const float *dout, long n) { table()->gelu_backward(dinp, inp, dout, n); }
void kat_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight, const float *bias,
                           long rows, long c, float eps) {
    table()->layernorm_forward(out, mean, rstd, inp, weight, bias, rows, c, eps);
}
void kat_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight,
                            const float *mean, const float *rstd, long rows, long c) {
    table()->layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, c);
}
void kat_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, long rows, long c, float eps) {
    table()->rmsnorm_forward(out, rstd, inp, weight, rows, c, eps);
}
void kat_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, long rows, long c) {
    table()->rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, rows, c);
}
void kat_swiglu_forward(float *out, const float *gateUp, long rows, long f) { table()->swiglu_forward(out, gateUp, rows, f); }
void kat_swiglu_backward(float *dgateUp, const float *gateUp, const float *dout, long rows, long f) {
    table()->swiglu_backward(dgateUp, gateUp, dout, rows, f);
}
void kat_add_bias_rows(float *out, const float *inp, const float *bias, long rows, long cols) {
    table()->add_bias_rows(out, inp, bias, rows, cols);
}
void kat_fill_rows(float *out, const float *bias, long rows, long cols) { table()->fill_rows(out, bias, rows, cols); }
void kat_accumulate(float *dst, const float *src, long n) { table()->accumulate(dst, src, n); }
void kat_column_sums(float *dbias, const float *d, long rows, long cols) { table()->column_sums(dbias, d, rows, cols); }
void kat_softmax_rows(float *s, long ld, long rows, long cols, long valid0, float *lse, long lseStride, float *invSum) {
    table()->softmax_rows(s, ld, rows, cols, valid0, lse, lseStride, invSum);
}
void kat_exp_rows(float *s, long ld, long rows, long cols, long valid0, const float *lse, long lseStride) {
    table()->exp_rows(s, ld, rows, cols, valid0, lse, lseStride);
}
void kat_softmax_backward_rows(float *ds, const float *p, long ld, long rows, long cols, const float *dot, float scale) {
    table()->softmax_backward_rows(ds, p, ld, rows, cols, dot, scale);
}
void kat_row_dots(float *out, const float *a, long lda, const float *b, long ldb, long rows, long n) {
    table()->row_dots(out, a, lda, b, ldb, rows, n);
}
void kat_scale_rows(float *x, long ld, long rows, long n, const float *f) { table()->scale_rows(x, ld, rows, n, f); }
void kat_exp_rows_partial(float *s, long ld, long rows, long cols, float *mx, float *sum, long stride) {
    table()->exp_rows_partial(s, ld, rows, cols, mx, sum, stride);
}
void kat_attend_row(float *out, const float *q, const float *keys, const float *values, long width, const long *start,
                    const long *len, long runs, long nh, long group, long hs, float scale, float *scores, const float *m0,
                    const float *s0, const float *o0) {
    table()->attend_row(out, q, keys, values, width, start, len, runs, nh, group, hs, scale, scores, m0, s0, o0);
}
void kat_softmax_summary(const float *z, long n, float scale, float *state) { table()->softmax_summary(z, n, scale, state); }
void kat_scaled_probabilities(float *z, long n, float lse, float coef) { table()->scaled_probabilities(z, n, lse, coef); }
long kat_argmax(const float *z, long n) { return table()->argmax(z, n); }
long kat_sample_index(const float *z, long n, float scale, float lse, float u) {
    return table()->sample_index(z, n, scale, lse, u);
}
long kat_indices_at_least(const float *z, long n, float scale, float threshold, int *idx) {
    return table()->indices_at_least(z, n, scale, threshold, idx);
}
double kat_sum_squares(const float *g, long n) { return table()->sum_squares(g, n); }
void kat_adamw(float *p, const float *g, float *m, float *v, long n, float lr, float b1, float b2, float eps,
               float wd, float c1, float c2, float gscale) {
    table()->adamw(p, g, m, v, n, lr, b1, b2, eps, wd, c1, c2, gscale);
}
void kat_sgd(float *p, const float *g, long n, float lr, float wd, float gscale) {
    table()->sgd(p, g, n, lr, wd, gscale);
}
