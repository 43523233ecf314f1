// Sparse direct convolution on a flat, zero-bordered activation layout (see bench/kernels/__init__.py).
//
// out[co, t] = epilogue(bias[co] + sum_k val[k] * in[src[k] + t]) for t in [t0, t1):
// each nonzero weight of output channel co is one (input plane, tap) offset `src` into the
// input buffer and its value; the inner loop runs over contiguous output elements, so a tile
// of V vectors of 16 floats stays in registers while the nonzeros stream past.  R output
// channels can share one pattern (the union of their nonzeros, zeros filled in): R = 1 is the
// pure sparse kernel, R = 8 over every weight is a dense direct convolution.
// Pointers arrive as integers from Python (torch tensors' data_ptr), which keeps the call cheap
// and the build free of the torch headers.
#include <pybind11/pybind11.h>
#include <omp.h>
#include <algorithm>
#include <cstdint>
#include <stdexcept>

typedef float vf __attribute__((vector_size(64), aligned(4)));  // 16 floats, unaligned access allowed

static inline vf ld(const float* p) { return *(const vf*)p; }
static inline void st(float* p, vf v) { *(vf*)p = v; }
static inline vf bc(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

// U independent accumulator sets hide the FMA latency when R * V is small (a 4x4 image is 1-2 vectors)
// first: start from the bias (else from the partial sums in out); last: apply the epilogue (else store partials)
template <int R, int V>
static inline void tile(const float* in, float* const* outp, int64_t t, const int32_t* src, const float* val,
                        int64_t kb, int64_t ke, const float* bias, const float* const* resp, const float* mask,
                        bool relu, int nr, bool first, bool last) {
    constexpr int U = R * V >= 8 ? 1 : (R * V >= 4 ? 2 : 4);
    vf acc[U][R][V];
    for (int u = 0; u < U; u++)
        for (int r = 0; r < R; r++) {
            vf b = bc(u == 0 && first ? bias[r] : 0.0f);
            for (int v = 0; v < V; v++) acc[u][r][v] = (u == 0 && !first) ? ld(outp[r] + t + 16 * v) : b;
        }
    int64_t k = kb;
    for (; k + U <= ke; k += U)
        for (int u = 0; u < U; u++) {
            const float* p = in + src[k + u] + t;
            vf x[V];
            for (int v = 0; v < V; v++) x[v] = ld(p + 16 * v);
            for (int r = 0; r < R; r++) {
                vf w = bc(val[(k + u) * R + r]);
                for (int v = 0; v < V; v++) acc[u][r][v] += w * x[v];
            }
        }
    for (; k < ke; k++) {
        const float* p = in + src[k] + t;
        for (int r = 0; r < R; r++) {
            vf w = bc(val[k * R + r]);
            for (int v = 0; v < V; v++) acc[0][r][v] += w * ld(p + 16 * v);
        }
    }
    for (int u = 1; u < U; u++)
        for (int r = 0; r < R; r++)
            for (int v = 0; v < V; v++) acc[0][r][v] += acc[u][r][v];
    if (!last) {
        for (int r = 0; r < nr; r++)
            for (int v = 0; v < V; v++) st(outp[r] + t + 16 * v, acc[0][r][v]);
        return;
    }
    // epilogue: residual add, ReLU, then the mask zeroes border and wrap-around positions
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < V; v++) {
            vf y = acc[0][r][v];
            if (resp) y += ld(resp[r] + t + 16 * v);
            if (relu) y = y > 0 ? y : 0;
            y *= ld(mask + t + 16 * v);
            st(outp[r] + t + 16 * v, y);
        }
}

// the last partial tile of a range: the largest tile of at most `left` vectors
template <int R, int V>
static inline int64_t tail(const float* in, float* const* outp, int64_t t, int64_t left, const int32_t* src,
                           const float* val, int64_t kb, int64_t ke, const float* bias, const float* const* resp,
                           const float* mask, bool relu, int nr, bool first, bool last) {
    if constexpr (V > 1) {
        if (left >= V) {
            tile<R, V>(in, outp, t, src, val, kb, ke, bias, resp, mask, relu, nr, first, last);
            return V;
        }
        return tail<R, V - 1>(in, outp, t, left, src, val, kb, ke, bias, resp, mask, relu, nr, first, last);
    } else {
        tile<R, 1>(in, outp, t, src, val, kb, ke, bias, resp, mask, relu, nr, first, last);
        return 1;
    }
}

// cptr[g * (nchunks + 1) + c] .. [.. + c + 1]: group g's entries reading input-channel chunk c. Chunks run
// one after another (partial sums kept in out), so one chunk's input planes stay in cache for every group.
template <int R, int V>
static void run(const float* in, float* out, int64_t ostride, int64_t cout, int64_t t0, int64_t t1, int64_t block,
                const int64_t* cptr, int64_t nchunks, const int32_t* src, const float* val, const float* bias,
                const float* res, int64_t rstride, const float* mask, bool relu, int nthreads) {
    const int64_t ngroups = (cout + R - 1) / R;
    const int64_t nblocks = (t1 - t0 + block - 1) / block;
#pragma omp parallel num_threads(nthreads)
    for (int64_t c = 0; c < nchunks; c++) {
        const bool first = c == 0, last = c == nchunks - 1;
        // static split of (position block, channel group): one block -> threads split the output channels
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < nblocks; b++)
            for (int64_t g = 0; g < ngroups; g++) {
                const int64_t kb = cptr[g * (nchunks + 1) + c], ke = cptr[g * (nchunks + 1) + c + 1];
                if (kb == ke && !first && !last) continue;  // nothing to add from this chunk
                const int nr = (int)std::min<int64_t>(R, cout - g * R);
                float* outp[R];
                const float* resp[R];
                float bb[R];
                for (int r = 0; r < R; r++) {
                    const int64_t co = g * R + std::min(r, nr - 1);
                    outp[r] = out + co * ostride;
                    resp[r] = res ? res + co * rstride : nullptr;
                    bb[r] = bias[co];
                }
                const float* const* rp = res ? resp : nullptr;
                const int64_t s = t0 + b * block, e = std::min(t1, s + block);
                int64_t t = s;
                for (; t + 16 * V <= e; t += 16 * V)
                    tile<R, V>(in, outp, t, src, val, kb, ke, bb, rp, mask, relu, nr, first, last);
                while (t < e) {
                    const int64_t left = (e - t + 15) / 16;
                    t += 16 * tail<R, V - 1 < 1 ? 1 : V - 1>(in, outp, t, left, src, val, kb, ke, bb, rp, mask, relu,
                                                             nr, first, last);
                }
            }
    }
}

// split an input of C planes (rows x pitch x n, flat) into s*s phase planes of prows x ppitch x n:
// phase (a, b) of channel c holds input rows a, a+s, ... and columns b, b+s, ...; the rest stays zero
void phases(int64_t in, int64_t istride, int64_t C, int64_t rows, int64_t pitch, int64_t n, int64_t s, int64_t out,
            int64_t ostride, int64_t prows, int64_t ppitch, int nthreads) {
    const float* src = reinterpret_cast<const float*>(in);
    float* dst = reinterpret_cast<float*>(out);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t ph = 0; ph < s * s; ph++)
        for (int64_t c = 0; c < C; c++) {
            const int64_t a = ph / s, b = ph % s;
            const float* ip = src + c * istride;
            float* op = dst + (ph * C + c) * ostride;
            for (int64_t i = 0; i < prows && a + s * i < rows; i++)
                for (int64_t j = 0; j < ppitch && b + s * j < pitch; j++) {
                    const float* q = ip + ((a + s * i) * pitch + b + s * j) * n;
                    float* d = op + (i * ppitch + j) * n;
                    for (int64_t m = 0; m < n; m++) d[m] = q[m];
                }
        }
}

template <typename T>
static T ptr(int64_t p) { return reinterpret_cast<T>(p); }

void conv(int R, int V, int64_t in, int64_t out, int64_t ostride, int64_t cout, int64_t t0, int64_t t1,
          int64_t block, int64_t cptr, int64_t nchunks, int64_t src, int64_t val, int64_t bias, int64_t res, int64_t rstride,
          int64_t mask, bool relu, int nthreads) {
#define PB_CALL(RR, VV)                                                                                           \
    if (R == RR && V == VV)                                                                                       \
        return run<RR, VV>(ptr<const float*>(in), ptr<float*>(out), ostride, cout, t0, t1, block,                 \
                           ptr<const int64_t*>(cptr), nchunks, ptr<const int32_t*>(src), ptr<const float*>(val),           \
                           ptr<const float*>(bias), ptr<const float*>(res), rstride, ptr<const float*>(mask), relu, \
                           nthreads);
    PB_CALL(1, 1) PB_CALL(1, 2) PB_CALL(1, 3) PB_CALL(1, 4) PB_CALL(1, 5) PB_CALL(1, 6) PB_CALL(1, 8) PB_CALL(1, 12)
    PB_CALL(1, 16) PB_CALL(4, 1) PB_CALL(4, 2) PB_CALL(4, 4) PB_CALL(8, 1) PB_CALL(8, 2) PB_CALL(8, 3)
#undef PB_CALL
    throw std::invalid_argument("sparse_conv: no kernel for this (R, V)");
}



PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "sparse direct convolution kernels for prunebench";
    m.def("conv", &conv, "sparse direct convolution over a flat zero-bordered layout (pointers as integers)");
    m.def("phases", &phases, "split planes into stride x stride phase planes (space-to-depth)");
}
