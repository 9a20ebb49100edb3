// CKATKernels: kat-dist's element-wise and per-row kernels in C, compiled three times
// (AVX-512, AVX2 with FMA, and baseline x86-64 / any other CPU) and chosen once at start-up
// from the CPU's features, the way OpenBLAS chooses its sgemm kernel. Swift compiles for
// the baseline instruction set only, so these loops would otherwise run 4 floats wide.
//
// Every kernel works on 16-float vectors with one fixed order of summation, so a given
// instruction set gives the same bits on every run. Shapes are given where each kernel is
// declared; "rows" are consecutive rows of `cols` floats unless a leading dimension is given.
#ifndef CKATKERNELS_H
#define CKATKERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

// MARK: - Selection

/// Instruction sets of the kernels.
enum { KAT_SIMD_GENERIC = 0, KAT_SIMD_AVX2 = 1, KAT_SIMD_AVX512 = 2 };
/// The instruction set in use (chosen at start-up: the best the CPU runs, capped by
/// KAT_SIMD=generic|avx2|avx512 and by an OPENBLAS_CORETYPE that names an older core).
int kat_simd_level(void);
/// Its name: "avx512", "avx2" or "generic".
const char *kat_simd_name(void);
/// Switches to `level` when the CPU runs it; returns the level in use afterwards.
int kat_simd_select(int level);
/// The best level this CPU runs.
int kat_simd_best(void);

// MARK: - GPT-2

/// out (n) = gelu(inp), tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void kat_gelu_forward(float *out, const float *inp, long n);
/// pre (rows, cols) += bias (cols); out (rows, cols) = gelu(pre). One pass for c_fc's bias and GELU.
void kat_bias_gelu_forward(float *pre, float *out, const float *bias, long rows, long cols);
/// dinp (n) = gelu'(inp) * dout (overwrites).
void kat_gelu_backward(float *dinp, const float *inp, const float *dout, long n);
/// LayerNorm of each row: out (rows, c), mean (rows), rstd (rows) from inp (rows, c).
void kat_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                           const float *bias, long rows, long c, float eps);
/// LayerNorm backward: dinp (rows, c) +=, dweight (c) +=, dbias (c) +=.
void kat_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                            const float *weight, const float *mean, const float *rstd, long rows, long c);

// MARK: - Llama family

/// out (rows, c) = x / sqrt(mean(x^2) + eps) * weight; rstd (rows).
void kat_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, long rows, long c, float eps);
/// RMSNorm backward: dinp (rows, c) +=, dweight (c) +=.
void kat_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, long rows, long c);
/// out (rows, f) = silu(gate) * up, gateUp (rows, 2f) holding gate then up.
void kat_swiglu_forward(float *out, const float *gateUp, long rows, long f);
/// dgateUp (rows, 2f) = d(silu(gate) * up) given dout (rows, f) (overwrites).
void kat_swiglu_backward(float *dgateUp, const float *gateUp, const float *dout, long rows, long f);

// MARK: - Shared element-wise

/// out (rows, cols) = inp (rows, cols) + bias (cols); bias may be NULL (a copy).
void kat_add_bias_rows(float *out, const float *inp, const float *bias, long rows, long cols);
/// out (rows, cols) = bias (cols) in every row.
void kat_fill_rows(float *out, const float *bias, long rows, long cols);
/// dst (n) += src (n).
void kat_accumulate(float *dst, const float *src, long n);
/// dbias (cols) += the column sums of d (rows, cols).
void kat_column_sums(float *dbias, const float *d, long rows, long cols);

// MARK: - Attention over one block of query rows

/// Softmax of each score row, in place: row i of s (rows, cols; leading dimension ld) has
/// valid0 + i visible columns (capped at cols); those become exp(s - max), the rest 0.
/// Writes lse[i * lseStride] = max + log(sum) and invSum[i] = 1 / sum (normalising is left
/// to the output rows, which are shorter).
void kat_softmax_rows(float *s, long ld, long rows, long cols, long valid0, float *lse, long lseStride, float *invSum);
/// s = exp(s - lse[i * lseStride]) on the visible columns, 0 elsewhere (probabilities from
/// saved log-sum-exps, for backward).
void kat_exp_rows(float *s, long ld, long rows, long cols, long valid0, const float *lse, long lseStride);
/// ds (rows, cols; ld) = p * (ds - dot[i]) * scale: the softmax's backward.
void kat_softmax_backward_rows(float *ds, const float *p, long ld, long rows, long cols, const float *dot, float scale);
/// out[i] = dot(a row i, b row i) over n floats (leading dimensions lda, ldb).
void kat_row_dots(float *out, const float *a, long lda, const float *b, long ldb, long rows, long n);
/// x (rows, n; ld) row i *= f[i].
void kat_scale_rows(float *x, long ld, long rows, long n, const float *f);
/// Unnormalised softmax of each full row, in place: s = exp(s - max); writes the row's max
/// to mx[i * stride] and its sum to sum[i * stride].
void kat_exp_rows_partial(float *s, long ld, long rows, long cols, float *mx, float *sum, long stride);

/// One decoding row's attention over runs of cached keys and values.
/// Keys and values are slot-major (slot, width); key/value head k of a slot is at k * hs.
/// Query head h (of nh, q is nh * hs) reads key/value head h / group. Runs are slot ranges
/// [start[r], start[r] + len[r]). `scores` holds nh * (total keys). When m0 is not NULL,
/// (m0[h], s0[h], o0[h * hs ...]) is a partial softmax over other keys (their max, sum of
/// exp(s - m0) and unnormalised output) that this row's keys are merged with.
/// out (nh * hs) = softmax(q k / sqrt(hs)) v over all those keys.
void kat_attend_row(float *out, const float *q, const float *keys, const float *values, long width,
                    const long *start, const long *len, long runs, long nh, long group, long hs, float scale,
                    float *scores, const float *m0, const float *s0, const float *o0);

// MARK: - Output head and sampling

/// Merges the row z (n) scaled by `scale` into a running softmax summary
/// state = {max M, sum S of exp(z - M), sum W of exp(z - M) (z - M)}; start from
/// {-inf, 0, 0}. Then lse = M + log S and the entropy is log S - W / S.
void kat_softmax_summary(const float *z, long n, float scale, float *state);
/// z (n) = coef * exp(z - lse): the softmax part of d(log p)/d(logits).
void kat_scaled_probabilities(float *z, long n, float lse, float coef);
/// Index of the first largest z.
long kat_argmax(const float *z, long n);
/// The first index i with sum_{j <= i} exp(z_j scale - lse) > u, or -1 if none (round-off).
long kat_sample_index(const float *z, long n, float scale, float lse, float u);
/// Writes to idx the indices of z with z scale >= threshold and returns how many.
long kat_indices_at_least(const float *z, long n, float scale, float threshold, int *idx);

// MARK: - Optimizer

/// Sum of squares of g (n): float sums over blocks of 4096, added in double.
double kat_sum_squares(const float *g, long n);
/// AdamW over n floats with decoupled weight decay wd; c1, c2 the bias corrections; g scaled by gscale.
void kat_adamw(float *p, const float *g, float *m, float *v, long n, float lr, float b1,
               float b2, float eps, float wd, float c1, float c2, float gscale);
/// SGD over n floats with decoupled weight decay wd; g scaled by gscale.
void kat_sgd(float *p, const float *g, long n, float lr, float wd, float gscale);

#ifdef __cplusplus
}
#endif
#endif
