/* Windows of coordinate-wise GRU steps (trainer/meta.py), forward and backward.
 *
 * Eager torch makes ~20 passes over memory per step (each gate, product and
 * elementwise op its own); here a block of rows goes through every step with
 * its gates in cache, and the backward pass recomputes the gates from the
 * saved states instead of reading them back.
 *
 * Layouts, rows innermost so every inner loop runs along rows:
 *   x       [T][C][R]    inputs: T steps, C columns, R rows
 *   h0      [C][d][R]    initial states
 *   states  [T+1][C][d][R]  h_0 .. h_T (written by forward, read by backward)
 *   reads   [T][C][R]    read-outs w·h_t + b
 * Weights are either shared by the rows of a column (a table's: [C][3d],
 * [C][d][2d], [C][d][d], [C][d], [C]) or one set per row of a single column
 * (the MLP's coordinates: [3d][R], [d][2d][R], [d][d][R], [d][R], [R]);
 * gradients come out in the weights' layout, added to what the caller zeroed,
 * and, where asked for (not NULL), those of x and h0 in theirs.
 * Gates lie as [r; z; candidate], d each.
 */
#include <stdlib.h>
#include <string.h>

#define DMAX 16 /* most hidden units per coordinate */
#define RB 32   /* rows per block */

/* e^x to ~2 ulp, without a libm call so the row loops vectorise (Cephes' expf;
 * floorf vectorises with -fno-trapping-math) */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = __builtin_floorf(1.44269504088896341f * x + 0.5f);
    float f = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * f * f + f + 1.0f;
    int exponent = ((int)n + 127) << 23;
    float scale;
    memcpy(&scale, &exponent, sizeof scale); /* 2^n */
    return p * scale;
}

static inline float sigmoid(float a) { return 1.0f / (1.0f + exp_approx(-a)); }

/* weight w[j] of the current column, or of row r0 + k (per_row) */
#define W1(w, j) (per_row ? (w)[(long)(j) * R + r0 + k] : (w)[c * width_##w + (j)])
#define W2(w, i, j, cols) (per_row ? (w)[((long)(i) * (cols) + (j)) * R + r0 + k] : (w)[(c * d + (i)) * (cols) + (j)])

/* the gates of one step for a block of n rows from h (and x): r, z, r⊙h, candidate */
static inline __attribute__((always_inline)) void gates(
    const int per_row, const long c, const long R, const long r0, const long n, const long d,
    const float *restrict xt, const float *restrict w_in, const float *restrict b_in,
    const float *restrict u_rz, const float *restrict u_h, float h[][RB], float r[][RB], float z[][RB],
    float rh[][RB], float cand[][RB]) {
    const long width_w_in = 3 * d, width_b_in = 3 * d;
    float a[2 * DMAX][RB];
    for (long j = 0; j < 2 * d; j++) {
        for (long k = 0; k < n; k++) a[j][k] = W1(w_in, j) * xt[k] + W1(b_in, j);
        for (long i = 0; i < d; i++)
            for (long k = 0; k < n; k++) a[j][k] += W2(u_rz, i, j, 2 * d) * h[i][k];
    }
    for (long j = 0; j < d; j++)
        for (long k = 0; k < n; k++) {
            r[j][k] = sigmoid(a[j][k]);
            z[j][k] = sigmoid(a[d + j][k]);
            rh[j][k] = r[j][k] * h[j][k];
        }
    for (long j = 0; j < d; j++) {
        for (long k = 0; k < n; k++) a[j][k] = W1(w_in, 2 * d + j) * xt[k] + W1(b_in, 2 * d + j);
        for (long i = 0; i < d; i++)
            for (long k = 0; k < n; k++) a[j][k] += W2(u_h, i, j, d) * rh[i][k];
        for (long k = 0; k < n; k++) cand[j][k] = 2.0f * sigmoid(2.0f * a[j][k]) - 1.0f; /* tanh */
    }
}

static inline __attribute__((always_inline)) void load(float dst[][RB], const float *src, long d, long R, long n) {
    for (long i = 0; i < d; i++)
        for (long k = 0; k < n; k++) dst[i][k] = src[i * R + k];
}

static inline __attribute__((always_inline)) void window_forward(
    const int per_row, const long T, const long C, const long R, const long d, const float *restrict x,
    const float *restrict h0, const float *restrict w_in, const float *restrict b_in, const float *restrict u_rz,
    const float *restrict u_h, const float *restrict w_out, const float *restrict b_out, float *restrict states,
    float *restrict reads) {
    const long width_w_out = d;
    for (long c = 0; c < C; c++)
        for (long r0 = 0; r0 < R; r0 += RB) {
            const long n = R - r0 < RB ? R - r0 : RB;
            float h[DMAX][RB], r[DMAX][RB], z[DMAX][RB], rh[DMAX][RB], cand[DMAX][RB];
            load(h, h0 + c * d * R + r0, d, R, n);
            for (long i = 0; i < d; i++) memcpy(states + (c * d + i) * R + r0, h[i], n * sizeof(float));
            for (long t = 0; t < T; t++) {
                gates(per_row, c, R, r0, n, d, x + (t * C + c) * R + r0, w_in, b_in, u_rz, u_h, h, r, z, rh, cand);
                float *st = states + ((t + 1) * C + c) * d * R + r0;
                for (long j = 0; j < d; j++)
                    for (long k = 0; k < n; k++) {
                        h[j][k] += z[j][k] * (cand[j][k] - h[j][k]);
                        st[j * R + k] = h[j][k];
                    }
                float *out = reads + (t * C + c) * R + r0;
                for (long k = 0; k < n; k++) out[k] = per_row ? b_out[r0 + k] : b_out[c];
                for (long i = 0; i < d; i++)
                    for (long k = 0; k < n; k++) out[k] += W1(w_out, i) * h[i][k];
            }
        }
}

/* a gradient of weight kind g at index j: into the caller's per-row gradient, or a
 * per-lane accumulator of the column, summed over lanes when the column is done */
#define G1(g, j) (*(per_row ? &(g)[(long)(j) * R + r0 + k] : &acc_##g[(long)(j) * RB + k]))

static inline __attribute__((always_inline)) void window_backward(
    const int per_row, const long T, const long C, const long R, const long d, const float *restrict x,
    const float *restrict states, const float *restrict w_in, const float *restrict b_in,
    const float *restrict u_rz, const float *restrict u_h, const float *restrict w_out,
    const float *restrict d_reads, float *restrict g_w_in, float *restrict g_b_in, float *restrict g_u_rz,
    float *restrict g_u_h, float *restrict g_w_out, float *restrict g_b_out, float *restrict g_x,
    float *restrict g_h0) {
    const long width_w_out = d, width_w_in = 3 * d;
    const long n_in = 3 * d, n_rz = 2 * d * d, n_h = d * d;
    /* per-lane accumulators of a column's gradients (shared weights only) */
    float *acc = per_row ? NULL : calloc((2 * n_in + n_rz + n_h + d + 1) * RB, sizeof(float));
    float *acc_g_w_in = acc, *acc_g_b_in = acc + n_in * RB, *acc_g_u_rz = acc + 2 * n_in * RB;
    float *acc_g_u_h = acc_g_u_rz + n_rz * RB, *acc_g_w_out = acc_g_u_h + n_h * RB, *acc_g_b_out = acc_g_w_out + d * RB;
    for (long c = 0; c < C; c++) {
        if (!per_row) memset(acc, 0, (2 * n_in + n_rz + n_h + d + 1) * RB * sizeof(float));
        for (long r0 = 0; r0 < R; r0 += RB) {
            const long n = R - r0 < RB ? R - r0 : RB;
            float h[DMAX][RB], hn[DMAX][RB], r[DMAX][RB], z[DMAX][RB], rh[DMAX][RB], cand[DMAX][RB];
            float dh[DMAX][RB], dg[3 * DMAX][RB], drh[DMAX][RB];
            for (long i = 0; i < d; i++)
                for (long k = 0; k < n; k++) dh[i][k] = 0.0f;
            for (long t = T - 1; t >= 0; t--) {
                const float *xt = x + (t * C + c) * R + r0, *dr = d_reads + (t * C + c) * R + r0;
                load(h, states + (t * C + c) * d * R + r0, d, R, n);
                load(hn, states + ((t + 1) * C + c) * d * R + r0, d, R, n);
                gates(per_row, c, R, r0, n, d, xt, w_in, b_in, u_rz, u_h, h, r, z, rh, cand);
                /* the read-out */
                for (long i = 0; i < d; i++)
                    for (long k = 0; k < n; k++) {
                        dh[i][k] += W1(w_out, i) * dr[k];
                        G1(g_w_out, i) += dr[k] * hn[i][k];
                    }
                for (long k = 0; k < n; k++) G1(g_b_out, 0) += dr[k];
                /* h' = h + z ⊙ (candidate − h) */
                for (long j = 0; j < d; j++)
                    for (long k = 0; k < n; k++) {
                        float d_cand = dh[j][k] * z[j][k];
                        dg[d + j][k] = dh[j][k] * (cand[j][k] - h[j][k]) * z[j][k] * (1.0f - z[j][k]);
                        dg[2 * d + j][k] = d_cand * (1.0f - cand[j][k] * cand[j][k]);
                        dh[j][k] -= d_cand;
                    }
                /* the candidate's pre-activation: Σ_i u_h[i][j] (r⊙h)[i] */
                for (long i = 0; i < d; i++) {
                    for (long k = 0; k < n; k++) drh[i][k] = 0.0f;
                    for (long j = 0; j < d; j++)
                        for (long k = 0; k < n; k++) {
                            drh[i][k] += W2(u_h, i, j, d) * dg[2 * d + j][k];
                            G1(g_u_h, i * d + j) += rh[i][k] * dg[2 * d + j][k];
                        }
                }
                for (long i = 0; i < d; i++)
                    for (long k = 0; k < n; k++) {
                        dh[i][k] += drh[i][k] * r[i][k];
                        dg[i][k] = drh[i][k] * h[i][k] * r[i][k] * (1.0f - r[i][k]);
                    }
                /* r and z's pre-activations: Σ_i u_rz[i][j] h[i] */
                for (long i = 0; i < d; i++)
                    for (long j = 0; j < 2 * d; j++)
                        for (long k = 0; k < n; k++) {
                            dh[i][k] += W2(u_rz, i, j, 2 * d) * dg[j][k];
                            G1(g_u_rz, i * 2 * d + j) += h[i][k] * dg[j][k];
                        }
                /* the gates' inputs: w_in x + b */
                for (long j = 0; j < 3 * d; j++)
                    for (long k = 0; k < n; k++) {
                        G1(g_w_in, j) += dg[j][k] * xt[k];
                        G1(g_b_in, j) += dg[j][k];
                    }
                if (g_x != NULL) {
                    float *gx = g_x + (t * C + c) * R + r0;
                    for (long k = 0; k < n; k++) gx[k] = 0.0f;
                    for (long j = 0; j < 3 * d; j++)
                        for (long k = 0; k < n; k++) gx[k] += W1(w_in, j) * dg[j][k];
                }
            }
            if (g_h0 != NULL)
                for (long i = 0; i < d; i++) memcpy(g_h0 + (c * d + i) * R + r0, dh[i], n * sizeof(float));
        }
        if (per_row) continue;
        float *sums[] = {g_w_in + c * n_in, g_b_in + c * n_in, g_u_rz + c * n_rz, g_u_h + c * n_h, g_w_out + c * d,
                         g_b_out + c};
        long counts[] = {n_in, n_in, n_rz, n_h, d, 1};
        const float *lanes = acc;
        for (int kind = 0; kind < 6; kind++)
            for (long j = 0; j < counts[kind]; j++, lanes += RB) {
                float s = 0.0f;
                for (long k = 0; k < RB; k++) s += lanes[k];
                sums[kind][j] += s;
            }
    }
    free(acc);
}

void gru_window_forward(int per_row, long T, long C, long R, long d, const float *x, const float *h0,
                        const float *w_in, const float *b_in, const float *u_rz, const float *u_h,
                        const float *w_out, const float *b_out, float *states, float *reads) {
    if (per_row)
        window_forward(1, T, 1, R, d, x, h0, w_in, b_in, u_rz, u_h, w_out, b_out, states, reads);
    else
        window_forward(0, T, C, R, d, x, h0, w_in, b_in, u_rz, u_h, w_out, b_out, states, reads);
}

void gru_window_backward(int per_row, long T, long C, long R, long d, const float *x, const float *states,
                         const float *w_in, const float *b_in, const float *u_rz, const float *u_h,
                         const float *w_out, const float *d_reads, float *g_w_in, float *g_b_in, float *g_u_rz,
                         float *g_u_h, float *g_w_out, float *g_b_out, float *g_x, float *g_h0) {
    if (per_row)
        window_backward(1, T, 1, R, d, x, states, w_in, b_in, u_rz, u_h, w_out, d_reads, g_w_in, g_b_in, g_u_rz,
                        g_u_h, g_w_out, g_b_out, g_x, g_h0);
    else
        window_backward(0, T, C, R, d, x, states, w_in, b_in, u_rz, u_h, w_out, d_reads, g_w_in, g_b_in, g_u_rz,
                        g_u_h, g_w_out, g_b_out, g_x, g_h0);
}
