// The kernels of CKATKernels.h, written once on 16-float vectors (clang's vector
// extensions) and included by kernels.c once per instruction set: AVX-512 runs a vector in
// one register, AVX2 in two, the baseline in four, with the same order of operations.
// KAT_FN(name) gives each inclusion its own suffix.

// MARK: - Vector helpers

static inline VF KAT_FN(ld)(const float *p) { return *(const VFU *)p; }
static inline void KAT_FN(st)(float *p, VF v) { *(VFU *)p = v; }
static inline VF KAT_FN(splat)(float x) { return (VF){0} + x; }

/// The first n (< 16) floats of p, the other lanes `fill`.
static inline VF KAT_FN(ldn)(const float *p, long n, float fill) {
    VF v = KAT_FN(splat)(fill);
    for (long i = 0; i < n; i++) v[i] = p[i];
    return v;
}
static inline void KAT_FN(stn)(float *p, VF v, long n) {
    for (long i = 0; i < n; i++) p[i] = v[i];
}
/// v with lanes n and above set to 0.
static inline VF KAT_FN(keep)(VF v, long n) {
    const VI lanes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    VI m = lanes < (VI){0} + (int)n;
    return (VF)((VI)v & m);
}
static inline VF KAT_FN(vmax)(VF a, VF b) { return __builtin_elementwise_max(a, b); }
static inline VF KAT_FN(vmin)(VF a, VF b) { return __builtin_elementwise_min(a, b); }

/// Sum of the 16 lanes in a fixed tree order.
static inline float KAT_FN(hsum)(VF v) {
    V8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    V4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}
static inline float KAT_FN(hmax)(VF v) {
    V8 a = __builtin_elementwise_max(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7),
                                     __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
    V4 b = __builtin_elementwise_max(__builtin_shufflevector(a, a, 0, 1, 2, 3), __builtin_shufflevector(a, a, 4, 5, 6, 7));
    float x = b[0] > b[1] ? b[0] : b[1], y = b[2] > b[3] ? b[2] : b[3];
    return x > y ? x : y;
}

/// exp(x) to about 1 ulp: x = k ln2 + r with |r| <= ln2/2 (Cody-Waite, ln2 in two parts),
/// a degree-6 polynomial for exp(r) (Cephes expf), and 2^k built in the exponent bits.
/// Inputs are clamped to [-87.3, 88.7], so exp(-inf) gives about 1e-38, not 0.
static inline VF KAT_FN(vexp)(VF x) {
    x = KAT_FN(vmin)(KAT_FN(vmax)(x, KAT_FN(splat)(-87.3f)), KAT_FN(splat)(88.7f));
    VF k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    VF r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
    VF p = KAT_FN(splat)(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    VF er = (p * r * r + r) + 1.0f;
    VI bits = (__builtin_convertvector(k, VI) + 127) << 23;
    return er * (VF)bits;
}

#define KAT_GELU_S 0.7978845608028654f /* sqrt(2 / pi) */

/// GELU, tanh approximation, written with 0.5 (1 + tanh(u)) = sigmoid(2u):
/// gelu(x) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3). One exp and one division.
static inline VF KAT_FN(gelu)(VF x) {
    VF u = KAT_GELU_S * (x + 0.044715f * x * x * x);
    return x / (1.0f + KAT_FN(vexp)(-2.0f * u));
}

/// gelu'(x) = s + 2 x s (1 - s) u', with s = sigmoid(2u) (so 1 - tanh(u)^2 = 4 s (1 - s)) and
/// u' = sqrt(2/pi) (1 + 3 0.044715 x^2).
static inline VF KAT_FN(dgelu)(VF x) {
    VF u = KAT_GELU_S * (x + 0.044715f * x * x * x);
    VF s = 1.0f / (1.0f + KAT_FN(vexp)(-2.0f * u));
    VF du = KAT_GELU_S * (1.0f + 3.0f * 0.044715f * x * x);
    return s + 2.0f * x * s * (1.0f - s) * du;
}

// MARK: - GPT-2

static void KAT_FN(gelu_forward)(float *out, const float *inp, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) KAT_FN(st)(out + i, KAT_FN(gelu)(KAT_FN(ld)(inp + i)));
    if (i < n) KAT_FN(stn)(out + i, KAT_FN(gelu)(KAT_FN(ldn)(inp + i, n - i, 0)), n - i);
}

static void KAT_FN(bias_gelu_forward)(float *pre, float *out, const float *bias, long rows, long cols) {
    for (long r = 0; r < rows; r++) {
        float *x = pre + r * cols, *o = out + r * cols;
        long j = 0;
        for (; j + 16 <= cols; j += 16) {
            VF v = KAT_FN(ld)(x + j) + KAT_FN(ld)(bias + j);
            KAT_FN(st)(x + j, v);
            KAT_FN(st)(o + j, KAT_FN(gelu)(v));
        }
        if (j < cols) {
            long n = cols - j;
            VF v = KAT_FN(ldn)(x + j, n, 0) + KAT_FN(ldn)(bias + j, n, 0);
            KAT_FN(stn)(x + j, v, n);
            KAT_FN(stn)(o + j, KAT_FN(gelu)(v), n);
        }
    }
}

static void KAT_FN(gelu_backward)(float *dinp, const float *inp, const float *dout, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) KAT_FN(st)(dinp + i, KAT_FN(dgelu)(KAT_FN(ld)(inp + i)) * KAT_FN(ld)(dout + i));
    if (i < n) KAT_FN(stn)(dinp + i, KAT_FN(dgelu)(KAT_FN(ldn)(inp + i, n - i, 0)) * KAT_FN(ldn)(dout + i, n - i, 0), n - i);
}

static void KAT_FN(layernorm_forward)(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                                      const float *bias, long rows, long c, float eps) {
    for (long r = 0; r < rows; r++) {
        const float *x = inp + r * c;
        float *o = out + r * c;
        VF acc = {0};
        long j = 0;
        for (; j + 16 <= c; j += 16) acc += KAT_FN(ld)(x + j);
        if (j < c) acc += KAT_FN(ldn)(x + j, c - j, 0);
        float m = KAT_FN(hsum)(acc) / (float)c;
        VF var = {0};
        for (j = 0; j + 16 <= c; j += 16) { VF d = KAT_FN(ld)(x + j) - m; var += d * d; }
        if (j < c) { VF d = KAT_FN(ldn)(x + j, c - j, m) - m; var += d * d; }
        float v = KAT_FN(hsum)(var) / (float)c;
        float s = 1.0f / __builtin_sqrtf(v + eps);
        for (j = 0; j + 16 <= c; j += 16)
            KAT_FN(st)(o + j, (KAT_FN(ld)(x + j) - m) * s * KAT_FN(ld)(weight + j) + KAT_FN(ld)(bias + j));
        if (j < c) {
            long n = c - j;
            KAT_FN(stn)(o + j, (KAT_FN(ldn)(x + j, n, 0) - m) * s * KAT_FN(ldn)(weight + j, n, 0) + KAT_FN(ldn)(bias + j, n, 0), n);
        }
        mean[r] = m;
        rstd[r] = s;
    }
}

static void KAT_FN(layernorm_backward)(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                       const float *weight, const float *mean, const float *rstd, long rows, long c) {
    for (long r = 0; r < rows; r++) {
        const float *d = dout + r * c, *x = inp + r * c;
        float *di = dinp + r * c;
        float m = mean[r], s = rstd[r];
        VF a1 = {0}, a2 = {0};
        long j = 0;
        for (; j + 16 <= c; j += 16) {
            VF norm = (KAT_FN(ld)(x + j) - m) * s, dn = KAT_FN(ld)(weight + j) * KAT_FN(ld)(d + j);
            a1 += dn;
            a2 += dn * norm;
        }
        if (j < c) {
            long n = c - j;
            VF norm = (KAT_FN(ldn)(x + j, n, m) - m) * s, dn = KAT_FN(ldn)(weight + j, n, 0) * KAT_FN(ldn)(d + j, n, 0);
            a1 += dn;
            a2 += dn * norm;
        }
        float dnormMean = KAT_FN(hsum)(a1) / (float)c, dnormNormMean = KAT_FN(hsum)(a2) / (float)c;
        for (j = 0; j + 16 <= c; j += 16) {
            VF dj = KAT_FN(ld)(d + j), norm = (KAT_FN(ld)(x + j) - m) * s, dn = KAT_FN(ld)(weight + j) * dj;
            KAT_FN(st)(dbias + j, KAT_FN(ld)(dbias + j) + dj);
            KAT_FN(st)(dweight + j, KAT_FN(ld)(dweight + j) + norm * dj);
            KAT_FN(st)(di + j, KAT_FN(ld)(di + j) + (dn - dnormMean - norm * dnormNormMean) * s);
        }
        if (j < c) {
            long n = c - j;
            VF dj = KAT_FN(ldn)(d + j, n, 0), norm = (KAT_FN(ldn)(x + j, n, m) - m) * s, dn = KAT_FN(ldn)(weight + j, n, 0) * dj;
            KAT_FN(stn)(dbias + j, KAT_FN(ldn)(dbias + j, n, 0) + dj, n);
            KAT_FN(stn)(dweight + j, KAT_FN(ldn)(dweight + j, n, 0) + norm * dj, n);
            KAT_FN(stn)(di + j, KAT_FN(ldn)(di + j, n, 0) + (dn - dnormMean - norm * dnormNormMean) * s, n);
        }
    }
}

// MARK: - Llama family

static void KAT_FN(rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *weight, long rows, long c, float eps) {
    for (long r = 0; r < rows; r++) {
        const float *x = inp + r * c;
        float *o = out + r * c;
        VF acc = {0};
        long j = 0;
        for (; j + 16 <= c; j += 16) { VF v = KAT_FN(ld)(x + j); acc += v * v; }
        if (j < c) { VF v = KAT_FN(ldn)(x + j, c - j, 0); acc += v * v; }
        float s = 1.0f / __builtin_sqrtf(KAT_FN(hsum)(acc) / (float)c + eps);
        for (j = 0; j + 16 <= c; j += 16) KAT_FN(st)(o + j, KAT_FN(ld)(weight + j) * (KAT_FN(ld)(x + j) * s));
        if (j < c) KAT_FN(stn)(o + j, KAT_FN(ldn)(weight + j, c - j, 0) * (KAT_FN(ldn)(x + j, c - j, 0) * s), c - j);
        rstd[r] = s;
    }
}

static void KAT_FN(rmsnorm_backward)(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                                     const float *rstd, long rows, long c) {
    for (long r = 0; r < rows; r++) {
        const float *d = dout + r * c, *x = inp + r * c;
        float *di = dinp + r * c;
        float s = rstd[r];
        VF acc = {0};
        long j = 0;
        for (; j + 16 <= c; j += 16) acc += KAT_FN(ld)(weight + j) * KAT_FN(ld)(d + j) * (KAT_FN(ld)(x + j) * s);
        if (j < c) { long n = c - j; acc += KAT_FN(ldn)(weight + j, n, 0) * KAT_FN(ldn)(d + j, n, 0) * (KAT_FN(ldn)(x + j, n, 0) * s); }
        float dot = KAT_FN(hsum)(acc) / (float)c;
        for (j = 0; j + 16 <= c; j += 16) {
            VF xn = KAT_FN(ld)(x + j) * s, dj = KAT_FN(ld)(d + j);
            KAT_FN(st)(dweight + j, KAT_FN(ld)(dweight + j) + dj * xn);
            KAT_FN(st)(di + j, KAT_FN(ld)(di + j) + s * (KAT_FN(ld)(weight + j) * dj - xn * dot));
        }
        if (j < c) {
            long n = c - j;
            VF xn = KAT_FN(ldn)(x + j, n, 0) * s, dj = KAT_FN(ldn)(d + j, n, 0);
            KAT_FN(stn)(dweight + j, KAT_FN(ldn)(dweight + j, n, 0) + dj * xn, n);
            KAT_FN(stn)(di + j, KAT_FN(ldn)(di + j, n, 0) + s * (KAT_FN(ldn)(weight + j, n, 0) * dj - xn * dot), n);
        }
    }
}

/// silu(g) * u and its two partial derivatives share s = sigmoid(g) = 1 / (1 + exp(-g)).
static void KAT_FN(swiglu_forward)(float *out, const float *gateUp, long rows, long f) {
    for (long r = 0; r < rows; r++) {
        const float *g = gateUp + r * 2 * f, *u = g + f;
        float *o = out + r * f;
        long j = 0;
        for (; j + 16 <= f; j += 16) {
            VF gv = KAT_FN(ld)(g + j);
            KAT_FN(st)(o + j, gv / (1.0f + KAT_FN(vexp)(-gv)) * KAT_FN(ld)(u + j));
        }
        if (j < f) {
            long n = f - j;
            VF gv = KAT_FN(ldn)(g + j, n, 0);
            KAT_FN(stn)(o + j, gv / (1.0f + KAT_FN(vexp)(-gv)) * KAT_FN(ldn)(u + j, n, 0), n);
        }
    }
}

static void KAT_FN(swiglu_backward)(float *dgateUp, const float *gateUp, const float *dout, long rows, long f) {
    for (long r = 0; r < rows; r++) {
        const float *g = gateUp + r * 2 * f, *u = g + f, *d = dout + r * f;
        float *dg = dgateUp + r * 2 * f, *du = dg + f;
        long j = 0;
        for (; j + 16 <= f; j += 16) {
            VF gv = KAT_FN(ld)(g + j), uv = KAT_FN(ld)(u + j), dv = KAT_FN(ld)(d + j);
            VF s = 1.0f / (1.0f + KAT_FN(vexp)(-gv));
            KAT_FN(st)(dg + j, dv * uv * s * (1.0f + gv * (1.0f - s)));
            KAT_FN(st)(du + j, dv * gv * s);
        }
        if (j < f) {
            long n = f - j;
            VF gv = KAT_FN(ldn)(g + j, n, 0), uv = KAT_FN(ldn)(u + j, n, 0), dv = KAT_FN(ldn)(d + j, n, 0);
            VF s = 1.0f / (1.0f + KAT_FN(vexp)(-gv));
            KAT_FN(stn)(dg + j, dv * uv * s * (1.0f + gv * (1.0f - s)), n);
            KAT_FN(stn)(du + j, dv * gv * s, n);
        }
    }
}

// MARK: - Shared element-wise

static void KAT_FN(add_bias_rows)(float *out, const float *inp, const float *bias, long rows, long cols) {
    for (long r = 0; r < rows; r++) {
        const float *x = inp + r * cols;
        float *o = out + r * cols;
        long j = 0;
        if (bias) {
            for (; j + 16 <= cols; j += 16) KAT_FN(st)(o + j, KAT_FN(ld)(x + j) + KAT_FN(ld)(bias + j));
            for (; j < cols; j++) o[j] = x[j] + bias[j];
        } else {
            for (; j + 16 <= cols; j += 16) KAT_FN(st)(o + j, KAT_FN(ld)(x + j));
            for (; j < cols; j++) o[j] = x[j];
        }
    }
}

static void KAT_FN(fill_rows)(float *out, const float *bias, long rows, long cols) {
    for (long r = 0; r < rows; r++) __builtin_memcpy(out + r * cols, bias, (unsigned long)cols * sizeof(float));
}

static void KAT_FN(accumulate)(float *dst, const float *src, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) KAT_FN(st)(dst + i, KAT_FN(ld)(dst + i) + KAT_FN(ld)(src + i));
    for (; i < n; i++) dst[i] += src[i];
}

static void KAT_FN(column_sums)(float *dbias, const float *d, long rows, long cols) {
    long j = 0;
    // Four column blocks at a time, summed down the rows in registers.
    for (; j + 64 <= cols; j += 64) {
        VF a0 = KAT_FN(ld)(dbias + j), a1 = KAT_FN(ld)(dbias + j + 16), a2 = KAT_FN(ld)(dbias + j + 32), a3 = KAT_FN(ld)(dbias + j + 48);
        for (long r = 0; r < rows; r++) {
            const float *x = d + r * cols + j;
            a0 += KAT_FN(ld)(x); a1 += KAT_FN(ld)(x + 16); a2 += KAT_FN(ld)(x + 32); a3 += KAT_FN(ld)(x + 48);
        }
        KAT_FN(st)(dbias + j, a0); KAT_FN(st)(dbias + j + 16, a1); KAT_FN(st)(dbias + j + 32, a2); KAT_FN(st)(dbias + j + 48, a3);
    }
    for (; j + 16 <= cols; j += 16) {
        VF a = KAT_FN(ld)(dbias + j);
        for (long r = 0; r < rows; r++) a += KAT_FN(ld)(d + r * cols + j);
        KAT_FN(st)(dbias + j, a);
    }
    for (; j < cols; j++) {
        float a = dbias[j];
        for (long r = 0; r < rows; r++) a += d[r * cols + j];
        dbias[j] = a;
    }
}

// MARK: - Attention

static void KAT_FN(softmax_rows)(float *s, long ld, long rows, long cols, long valid0, float *lse, long lseStride, float *invSum) {
    for (long i = 0; i < rows; i++) {
        float *row = s + i * ld;
        long valid = valid0 + i < cols ? valid0 + i : cols;
        VF mv = KAT_FN(splat)(-__builtin_inff());
        long j = 0;
        for (; j + 16 <= valid; j += 16) mv = KAT_FN(vmax)(mv, KAT_FN(ld)(row + j));
        if (j < valid) mv = KAT_FN(vmax)(mv, KAT_FN(ldn)(row + j, valid - j, -__builtin_inff()));
        float mx = KAT_FN(hmax)(mv);
        VF sum = {0};
        for (j = 0; j + 16 <= valid; j += 16) {
            VF e = KAT_FN(vexp)(KAT_FN(ld)(row + j) - mx);
            KAT_FN(st)(row + j, e);
            sum += e;
        }
        if (j < valid) {
            long n = valid - j;
            VF e = KAT_FN(keep)(KAT_FN(vexp)(KAT_FN(ldn)(row + j, n, 0) - mx), n);
            KAT_FN(stn)(row + j, e, n);
            sum += e;
        }
        for (j = valid; j < cols; j++) row[j] = 0;
        float total = KAT_FN(hsum)(sum);
        lse[i * lseStride] = mx + __builtin_logf(total);
        invSum[i] = 1.0f / total;
    }
}

static void KAT_FN(exp_rows)(float *s, long ld, long rows, long cols, long valid0, const float *lse, long lseStride) {
    for (long i = 0; i < rows; i++) {
        float *row = s + i * ld;
        long valid = valid0 + i < cols ? valid0 + i : cols;
        float l = lse[i * lseStride];
        long j = 0;
        for (; j + 16 <= valid; j += 16) KAT_FN(st)(row + j, KAT_FN(vexp)(KAT_FN(ld)(row + j) - l));
        if (j < valid) KAT_FN(stn)(row + j, KAT_FN(vexp)(KAT_FN(ldn)(row + j, valid - j, 0) - l), valid - j);
        for (j = valid; j < cols; j++) row[j] = 0;
    }
}

static void KAT_FN(softmax_backward_rows)(float *ds, const float *p, long ld, long rows, long cols, const float *dot, float scale) {
    for (long i = 0; i < rows; i++) {
        float *d = ds + i * ld;
        const float *pr = p + i * ld;
        float t = dot[i];
        long j = 0;
        for (; j + 16 <= cols; j += 16) KAT_FN(st)(d + j, KAT_FN(ld)(pr + j) * (KAT_FN(ld)(d + j) - t) * scale);
        for (; j < cols; j++) d[j] = pr[j] * (d[j] - t) * scale;
    }
}

static inline float KAT_FN(dot)(const float *a, const float *b, long n) {
    VF acc = {0};
    long j = 0;
    for (; j + 16 <= n; j += 16) acc += KAT_FN(ld)(a + j) * KAT_FN(ld)(b + j);
    if (j < n) acc += KAT_FN(ldn)(a + j, n - j, 0) * KAT_FN(ldn)(b + j, n - j, 0);
    return KAT_FN(hsum)(acc);
}

static void KAT_FN(row_dots)(float *out, const float *a, long lda, const float *b, long ldb, long rows, long n) {
    for (long i = 0; i < rows; i++) out[i] = KAT_FN(dot)(a + i * lda, b + i * ldb, n);
}

static void KAT_FN(scale_rows)(float *x, long ld, long rows, long n, const float *f) {
    for (long i = 0; i < rows; i++) {
        float *row = x + i * ld;
        float k = f[i];
        long j = 0;
        for (; j + 16 <= n; j += 16) KAT_FN(st)(row + j, KAT_FN(ld)(row + j) * k);
        for (; j < n; j++) row[j] *= k;
    }
}

static void KAT_FN(exp_rows_partial)(float *s, long ld, long rows, long cols, float *mx, float *sum, long stride) {
    for (long i = 0; i < rows; i++) {
        float *row = s + i * ld;
        VF mv = KAT_FN(splat)(-__builtin_inff());
        long j = 0;
        for (; j + 16 <= cols; j += 16) mv = KAT_FN(vmax)(mv, KAT_FN(ld)(row + j));
        if (j < cols) mv = KAT_FN(vmax)(mv, KAT_FN(ldn)(row + j, cols - j, -__builtin_inff()));
        float m = KAT_FN(hmax)(mv);
        VF acc = {0};
        for (j = 0; j + 16 <= cols; j += 16) { VF e = KAT_FN(vexp)(KAT_FN(ld)(row + j) - m); KAT_FN(st)(row + j, e); acc += e; }
        if (j < cols) {
            long n = cols - j;
            VF e = KAT_FN(keep)(KAT_FN(vexp)(KAT_FN(ldn)(row + j, n, 0) - m), n);
            KAT_FN(stn)(row + j, e, n);
            acc += e;
        }
        mx[i * stride] = m;
        sum[i * stride] = KAT_FN(hsum)(acc);
    }
}

/// o (n) += w * v (n).
static inline void KAT_FN(axpy)(float *o, float w, const float *v, long n) {
    long j = 0;
    for (; j + 16 <= n; j += 16) KAT_FN(st)(o + j, KAT_FN(ld)(o + j) + w * KAT_FN(ld)(v + j));
    for (; j < n; j++) o[j] += w * v[j];
}

static void KAT_FN(attend_row)(float *out, const float *q, const float *keys, const float *values, long width,
                               const long *start, const long *len, long runs, long nh, long group, long hs, float scale,
                               float *scores, const float *m0, const float *s0, const float *o0) {
    long total = 0;
    for (long r = 0; r < runs; r++) total += len[r];
    // Scores: one pass over the key rows, every head of a row at once.
    long col = 0;
    for (long r = 0; r < runs; r++) {
        for (long t = 0; t < len[r]; t++, col++) {
            const float *krow = keys + (start[r] + t) * width;
            for (long h = 0; h < nh; h++) scores[h * total + col] = KAT_FN(dot)(q + h * hs, krow + (h / group) * hs, hs) * scale;
        }
    }
    // Per head: max, exp and sum, merged with the partial softmax given.
    float rescale[nh], inv[nh];
    for (long h = 0; h < nh; h++) {
        float *sh = scores + h * total;
        VF mv = KAT_FN(splat)(m0 ? m0[h] : -__builtin_inff());
        long j = 0;
        for (; j + 16 <= total; j += 16) mv = KAT_FN(vmax)(mv, KAT_FN(ld)(sh + j));
        if (j < total) mv = KAT_FN(vmax)(mv, KAT_FN(ldn)(sh + j, total - j, -__builtin_inff()));
        float mx = KAT_FN(hmax)(mv);
        VF acc = {0};
        for (j = 0; j + 16 <= total; j += 16) { VF e = KAT_FN(vexp)(KAT_FN(ld)(sh + j) - mx); KAT_FN(st)(sh + j, e); acc += e; }
        if (j < total) {
            long n = total - j;
            VF e = KAT_FN(keep)(KAT_FN(vexp)(KAT_FN(ldn)(sh + j, n, 0) - mx), n);
            KAT_FN(stn)(sh + j, e, n);
            acc += e;
        }
        float sum = KAT_FN(hsum)(acc);
        rescale[h] = 0;
        if (m0 && s0[h] > 0) {
            rescale[h] = __builtin_expf(m0[h] - mx);
            sum += s0[h] * rescale[h];
        }
        inv[h] = 1.0f / sum;
    }
    for (long h = 0; h < nh; h++) {
        float *o = out + h * hs;
        if (m0 && rescale[h] != 0) {
            for (long d = 0; d < hs; d++) o[d] = o0[h * hs + d] * rescale[h];
        } else {
            for (long d = 0; d < hs; d++) o[d] = 0;
        }
    }
    // Outputs: one pass over the value rows.
    col = 0;
    for (long r = 0; r < runs; r++) {
        for (long t = 0; t < len[r]; t++, col++) {
            const float *vrow = values + (start[r] + t) * width;
            for (long h = 0; h < nh; h++) KAT_FN(axpy)(out + h * hs, scores[h * total + col], vrow + (h / group) * hs, hs);
        }
    }
    for (long h = 0; h < nh; h++) {
        float *o = out + h * hs;
        for (long d = 0; d < hs; d++) o[d] *= inv[h];
    }
}

// MARK: - Output head and sampling

static void KAT_FN(softmax_summary)(const float *z, long n, float scale, float *state) {
    VF mv = KAT_FN(splat)(-__builtin_inff());
    long j = 0;
    for (; j + 16 <= n; j += 16) mv = KAT_FN(vmax)(mv, KAT_FN(ld)(z + j) * scale);
    if (j < n) mv = KAT_FN(vmax)(mv, KAT_FN(ldn)(z + j, n - j, -__builtin_inff()) * scale);
    float m = KAT_FN(hmax)(mv);
    if (n == 0) return;
    VF s = {0}, w = {0};
    for (j = 0; j + 16 <= n; j += 16) {
        VF d = KAT_FN(ld)(z + j) * scale - m;
        VF e = KAT_FN(vexp)(d);
        s += e;
        w += e * d;
    }
    if (j < n) {
        VF d = KAT_FN(ldn)(z + j, n - j, 0) * scale - m;
        VF e = KAT_FN(keep)(KAT_FN(vexp)(d), n - j);
        s += e;
        w += e * d;
    }
    float st = KAT_FN(hsum)(s), wt = KAT_FN(hsum)(w);
    // Merge {m, st, wt} into state = {M, S, W}, both taken relative to the larger maximum.
    float M = state[0], S = state[1], Wv = state[2];
    if (S == 0) { state[0] = m; state[1] = st; state[2] = wt; return; }
    if (m > M) {
        float f = __builtin_expf(M - m);
        state[0] = m;
        state[1] = S * f + st;
        state[2] = f * (Wv + (M - m) * S) + wt;
    } else {
        float f = __builtin_expf(m - M);
        state[1] = S + st * f;
        state[2] = Wv + f * (wt + (m - M) * st);
    }
}

static void KAT_FN(scaled_probabilities)(float *z, long n, float lse, float coef) {
    long j = 0;
    for (; j + 16 <= n; j += 16) KAT_FN(st)(z + j, coef * KAT_FN(vexp)(KAT_FN(ld)(z + j) - lse));
    if (j < n) KAT_FN(stn)(z + j, coef * KAT_FN(vexp)(KAT_FN(ldn)(z + j, n - j, 0) - lse), n - j);
}

static long KAT_FN(argmax)(const float *z, long n) {
    if (n <= 0) return -1;
    VF mv = KAT_FN(splat)(-__builtin_inff());
    long j = 0;
    for (; j + 16 <= n; j += 16) mv = KAT_FN(vmax)(mv, KAT_FN(ld)(z + j));
    float m = KAT_FN(hmax)(mv);
    for (; j < n; j++) if (z[j] > m) m = z[j];
    for (j = 0; j < n; j++) if (z[j] == m) return j;
    return 0; // NaN everywhere
}

static long KAT_FN(sample_index)(const float *z, long n, float scale, float lse, float u) {
    float acc = 0;
    long j = 0;
    // Whole blocks while the running sum stays at or below u, then token by token.
    for (; j + 16 <= n; j += 16) {
        float b = KAT_FN(hsum)(KAT_FN(vexp)(KAT_FN(ld)(z + j) * scale - lse));
        if (acc + b > u) break;
        acc += b;
    }
    for (; j < n; j++) {
        acc += __builtin_expf(z[j] * scale - lse);
        if (acc > u) return j;
    }
    return -1;
}

static long KAT_FN(indices_at_least)(const float *z, long n, float scale, float threshold, int *idx) {
    long k = 0;
    long j = 0;
    for (; j + 16 <= n; j += 16) {
        VI m = KAT_FN(ld)(z + j) * scale >= threshold;
        if (!__builtin_reduce_or(m)) continue;
        for (long t = 0; t < 16; t++) if (m[t]) idx[k++] = (int)(j + t);
    }
    for (; j < n; j++) if (z[j] * scale >= threshold) idx[k++] = (int)j;
    return k;
}

// MARK: - Optimizer

static double KAT_FN(sum_squares)(const float *g, long n) {
    double total = 0;
    for (long i = 0; i < n; i += 4096) {
        long end = i + 4096 < n ? i + 4096 : n;
        VF acc = {0};
        long j = i;
        for (; j + 16 <= end; j += 16) { VF v = KAT_FN(ld)(g + j); acc += v * v; }
        if (j < end) { VF v = KAT_FN(ldn)(g + j, end - j, 0); acc += v * v; }
        total += (double)KAT_FN(hsum)(acc);
    }
    return total;
}

static void KAT_FN(adamw)(float *p, const float *g, float *m, float *v, long n, float lr, float b1,
                          float b2, float eps, float wd, float c1, float c2, float gscale) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        VF gi = gscale * KAT_FN(ld)(g + i);
        VF mi = b1 * KAT_FN(ld)(m + i) + (1 - b1) * gi;
        VF vi = b2 * KAT_FN(ld)(v + i) + (1 - b2) * gi * gi;
        KAT_FN(st)(m + i, mi);
        KAT_FN(st)(v + i, vi);
        VF mh = mi / c1, vh = vi / c2, pi = KAT_FN(ld)(p + i);
        KAT_FN(st)(p + i, pi - lr * (mh / (__builtin_elementwise_sqrt(vh) + eps) + wd * pi));
    }
    for (; i < n; i++) {
        float gi = gscale * g[i];
        float mi = b1 * m[i] + (1 - b1) * gi;
        float vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mh = mi / c1, vh = vi / c2;
        p[i] -= lr * (mh / (__builtin_sqrtf(vh) + eps) + wd * p[i]);
    }
}

static void KAT_FN(sgd)(float *p, const float *g, long n, float lr, float wd, float gscale) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        VF pi = KAT_FN(ld)(p + i);
        KAT_FN(st)(p + i, pi - lr * (gscale * KAT_FN(ld)(g + i) + wd * pi));
    }
    for (; i < n; i++) p[i] -= lr * (gscale * g[i] + wd * p[i]);
}

// MARK: - Table

static const struct kat_table KAT_FN(table) = {
    KAT_FN(gelu_forward), KAT_FN(bias_gelu_forward), KAT_FN(gelu_backward), KAT_FN(layernorm_forward),
    KAT_FN(layernorm_backward), KAT_FN(rmsnorm_forward), KAT_FN(rmsnorm_backward), KAT_FN(swiglu_forward),
    KAT_FN(swiglu_backward), KAT_FN(add_bias_rows), KAT_FN(fill_rows), KAT_FN(accumulate), KAT_FN(column_sums),
    KAT_FN(softmax_rows), KAT_FN(exp_rows), KAT_FN(softmax_backward_rows), KAT_FN(row_dots), KAT_FN(scale_rows),
    KAT_FN(exp_rows_partial), KAT_FN(attend_row), KAT_FN(softmax_summary), KAT_FN(scaled_probabilities),
    KAT_FN(argmax), KAT_FN(sample_index), KAT_FN(indices_at_least), KAT_FN(sum_squares), KAT_FN(adamw), KAT_FN(sgd),
};
