// Sparse direct convolution on a flat, zero-bordered activation layout (see bench/kernels/layout.py).
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
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

// ---- a small thread pool. A call is cut into units that threads take one at a time as they come free, so
// a thread the OS does not schedule in time (the CPU is shared) simply takes fewer units instead of holding
// the layer up; with static shares a descheduled partner stalls every layer for a scheduler tick. Waiting
// threads spin briefly, then yield, then sleep: an idle pool costs nothing, a busy one answers at once.
static inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

class Pool {
  public:
    static constexpr std::chrono::microseconds kSpin{500}, kYield{3000};

    // f(unit) for every unit in [0, units), on up to n threads (this one included); returns when all are done
    template <typename F>
    void run(int n, int64_t units, F&& f) {
        if (n <= 1 || units <= 1) {
            for (int64_t u = 0; u < units; u++) f(u);
            return;
        }
        if (units >= (int64_t(1) << kBits)) throw std::invalid_argument("sparse_conv: too many work units");
        std::lock_guard<std::mutex> one_call(call_);  // one multi-threaded call at a time (callers may be threads)
        grow(n - 1);
        using Fn = std::remove_reference_t<F>;
        fn_ = [](void* ctx, int64_t u) { (*static_cast<Fn*>(ctx))(u); };
        ctx_ = const_cast<void*>(static_cast<const void*>(&f));
        done_.store(0, std::memory_order_relaxed);
        resting_.store(false, std::memory_order_relaxed);
        gen_ = (gen_ + 1) & kGenMask;
        state_.store(pack(gen_, units, 0), std::memory_order_seq_cst);  // publishes fn_ and ctx_
        if (sleepers_.load(std::memory_order_seq_cst) > 0) {
            std::lock_guard<std::mutex> lock(mutex_);
            wake_.notify_all();
        }
        work(gen_);
        const auto start = std::chrono::steady_clock::now();
        for (int spins = 0; done_.load(std::memory_order_acquire) < units; spins++) {
            if ((spins & 63) || std::chrono::steady_clock::now() - start < kSpin) cpu_relax();
            else sched_yield();
        }
    }

    // idle workers sleep at once instead of spinning and yielding first: called when another engine (ONNX
    // Runtime's threads) takes the cores next, until the next run
    void rest() {
        resting_.store(true, std::memory_order_relaxed);
    }

  private:
    static constexpr int kBits = 20;  // state: generation | units | next unit
    static constexpr uint64_t kMask = (uint64_t(1) << kBits) - 1, kGenMask = (uint64_t(1) << 24) - 1;
    static uint64_t pack(uint64_t gen, uint64_t units, uint64_t next) {
        return gen << (2 * kBits) | units << kBits | next;
    }

    void work(uint64_t gen) {  // take units of call `gen` until none are left
        uint64_t s = state_.load(std::memory_order_acquire);
        for (;;) {
            if ((s >> (2 * kBits)) != gen || (s & kMask) >= ((s >> kBits) & kMask)) return;
            if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
                fn_(ctx_, (int64_t)(s & kMask));  // fn_ and ctx_ stay this call's until all its units are done
                done_.fetch_add(1, std::memory_order_release);
                s = state_.load(std::memory_order_acquire);
            }
        }
    }

    void grow(int n) {
        while ((int)workers_.size() < n) {
            const uint64_t seen = state_.load() >> (2 * kBits);
            workers_.emplace_back([this, seen] { loop(seen); });
            workers_.back().detach();  // the pool lives as long as the process
        }
    }

    void loop(uint64_t seen) {
        for (;;) {
            const auto start = std::chrono::steady_clock::now();
            auto waited = std::chrono::steady_clock::duration::zero();
            auto current = [&] { return state_.load(std::memory_order_seq_cst) >> (2 * kBits); };
            for (int spins = 0; current() == seen; spins++) {
                if ((spins & 63) == 0) waited = std::chrono::steady_clock::now() - start;
                const bool resting = resting_.load(std::memory_order_relaxed);
                if (waited < kSpin && !resting) {
                    cpu_relax();
                } else if (waited < kYield && !resting) {
                    sched_yield();
                } else {
                    std::unique_lock<std::mutex> lock(mutex_);
                    sleepers_.fetch_add(1, std::memory_order_seq_cst);
                    wake_.wait(lock, [&] { return current() != seen; });
                    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
                }
            }
            seen = current();
            work(seen);
        }
    }

    std::vector<std::thread> workers_;
    std::atomic<uint64_t> state_{0};
    std::atomic<int64_t> done_{0};
    std::atomic<int> sleepers_{0};
    std::atomic<bool> resting_{false};
    uint64_t gen_ = 0;  // written by the calling thread only
    std::mutex mutex_, call_;
    std::condition_variable wake_;
    void (*fn_)(void*, int64_t) = nullptr;
    void* ctx_ = nullptr;
};

static Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: its threads may still wait when the process exits
    return *p;
}


// How many vf values fit in registers: 32 zmm with AVX-512; without it, each vf is two halves in the 16 ymm
// (or xmm) registers, so 8. Tiles that keep more accumulators live than this spill to the stack at every
// step. Python reads this (vector_registers) to offer only tiles that fit.
#if defined(__AVX512F__)
constexpr int kVRegs = 32;
#else
constexpr int kVRegs = 8;
#endif

// vf: 16 floats, the layout's vector. With AVX-512 one zmm register. Without it, two halves of 8: GCC keeps
// a 64-byte vector type in memory when the target has no 64-byte registers (every multiply-add then loads
// and stores its accumulator through the stack), while a pair of 32-byte vectors lives in two ymm registers.
#if defined(__AVX512F__)
typedef float vf __attribute__((vector_size(64), aligned(4)));  // unaligned access allowed

static inline vf ld(const float* p) { return *(const vf*)p; }
static inline void st(float* p, vf v) { *(vf*)p = v; }
static inline vf bc(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline vf relu0(vf y) { return y > 0 ? y : 0; }
// x, held in a register: GCC otherwise folds a loaded vector back into each multiply-add that uses it as a
// memory operand, loading it again for each (what the panel kernel exists to avoid)
static inline vf pin(vf x) {
    asm("" : "+v"(x));
    return x;
}
#else
typedef float vh __attribute__((vector_size(32), aligned(4)));
struct vf {
    vh a, b;
};
static inline vf operator+(vf x, vf y) { return {x.a + y.a, x.b + y.b}; }
static inline vf operator*(vf x, vf y) { return {x.a * y.a, x.b * y.b}; }
static inline vf& operator+=(vf& x, vf y) {
    x.a += y.a;
    x.b += y.b;
    return x;
}
static inline vf operator-(vf x, vf y) { return {x.a - y.a, x.b - y.b}; }
static inline vf& operator*=(vf& x, vf y) {
    x.a *= y.a;
    x.b *= y.b;
    return x;
}
static inline vf ld(const float* p) { return {*(const vh*)p, *(const vh*)(p + 8)}; }
static inline void st(float* p, vf v) {
    *(vh*)p = v.a;
    *(vh*)(p + 8) = v.b;
}
static inline vf bc(float x) {
    const vh h = {x, x, x, x, x, x, x, x};
    return {h, h};
}
static inline vf relu0(vf y) { return {y.a > 0 ? y.a : 0, y.b > 0 ? y.b : 0}; }
static inline vf pin(vf x) {
    asm("" : "+x"(x.a), "+x"(x.b));
    return x;
}
#endif

// U independent accumulator sets hide the FMA latency when R * V is small (a 4x4 image is 1-2 vectors)
// first: start from the bias (else from the partial sums in out); last: apply the epilogue (else store partials)
template <int R, int V>
static inline void tile(const float* in, float* const* outp, int64_t t, const int32_t* src, const float* val,
                        int64_t kb, int64_t ke, const float* bias, const float* const* resp, const float* mask,
                        bool relu, int nr, bool first, bool last) {
    // AVX-512: up to 8 accumulators; else 4, leaving room for the V inputs and the broadcast weight
    constexpr int U = kVRegs >= 32 ? (R * V >= 8 ? 1 : (R * V >= 4 ? 2 : 4)) : (R * V >= 4 ? 1 : (R * V >= 2 ? 2 : 4));
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
            if (relu) y = relu0(y);
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

// Where a convolution's output positions are, and how the work on them is cut up between threads.
// row_len > 0: only the image part of each row (row_len of every row_pitch elements) is computed; the
// wrap-around positions between rows are skipped (they stay zero). Else the whole range [t0, t1), masked.
struct Span {
    int64_t t0, t1, block, row_pitch, row_len;
    int64_t nrows() const { return row_len > 0 ? (t1 - t0 - row_len) / row_pitch + 1 : 0; }
    int64_t rows_per_block() const { return row_len > 0 ? std::max<int64_t>(1, block / row_pitch) : 0; }
    int64_t nblocks() const {
        return row_len > 0 ? (nrows() + rows_per_block() - 1) / rows_per_block() : (t1 - t0 + block - 1) / block;
    }
    int64_t nsegs(int64_t b) const { return row_len > 0 ? std::min(rows_per_block(), nrows() - b * rows_per_block()) : 1; }
    void segment(int64_t b, int64_t sg, int64_t& s, int64_t& e) const {  // positions [s, e) of segment sg of block b
        if (row_len > 0) {
            s = t0 + (b * rows_per_block() + sg) * row_pitch;
            e = s + row_len;
        } else {
            s = t0 + b * block;
            e = std::min(t1, s + block);
        }
    }
};

// Runs f(t, left, g, c, first, last) over every tile of every (position block, channel group g, input-channel
// chunk c); f computes the tile at t (at most `left` vectors) and returns how many vectors it did.
// Channel-major (default): work items are (block, group); a unit of the pool is a range of consecutive items,
// run chunk by chunk with partial sums kept in out: one chunk's input planes stay in cache across the unit's
// groups, and no barrier is needed between chunks. Tile-major: a unit is a range of blocks, and each tile runs
// every group, chunk by chunk, while the inputs it reads stay in L1.
template <typename F>
static void drive(const Span& sp, int64_t ngroups, int64_t nchunks, bool tile_major, int nthreads, F&& f) {
    const int64_t nblocks = sp.nblocks();
    const int64_t items = tile_major ? nblocks : nblocks * ngroups;
    const int64_t units = std::min<int64_t>(items, 4 * std::max(1, nthreads));
    pool().run(nthreads, units, [&](int64_t u) {
        const int64_t lo = items * u / units, hi = items * (u + 1) / units;
        if (tile_major) {
            for (int64_t b = lo; b < hi; b++)
                for (int64_t sg = 0; sg < sp.nsegs(b); sg++) {
                    int64_t s, e;
                    sp.segment(b, sg, s, e);
                    for (int64_t t = s; t < e;) {
                        const int64_t left = (e - t + 15) / 16;
                        int64_t step = 1;
                        for (int64_t c = 0; c < nchunks; c++)
                            for (int64_t g = 0; g < ngroups; g++) step = f(t, left, g, c, c == 0, c == nchunks - 1);
                        t += 16 * step;
                    }
                }
            return;
        }
        for (int64_t c = 0; c < nchunks; c++)
            for (int64_t item = lo; item < hi; item++) {
                const int64_t b = item / ngroups, g = item % ngroups;
                for (int64_t sg = 0; sg < sp.nsegs(b); sg++) {
                    int64_t s, e;
                    sp.segment(b, sg, s, e);
                    for (int64_t t = s; t < e;) t += 16 * f(t, (e - t + 15) / 16, g, c, c == 0, c == nchunks - 1);
                }
            }
    });
}

// The R output channels of group g: where each writes and reads its residual, and its bias. A last, partial
// group repeats its last channel in the missing places (nr of them are real; only those are stored).
template <int R>
struct Group {
    float* out[R];
    const float* res[R];
    float bias[R];
    int nr;
    bool has_res;
    Group(float* o, int64_t ostride, const float* r, int64_t rstride, const float* b, int64_t cout, int64_t g)
        : nr((int)std::min<int64_t>(R, cout - g * R)), has_res(r != nullptr) {
        for (int i = 0; i < R; i++) {
            const int64_t co = g * R + std::min(i, nr - 1);
            out[i] = o + co * ostride;
            res[i] = r ? r + co * rstride : nullptr;
            bias[i] = b[co];
        }
    }
    const float* const* residual() const { return has_res ? res : nullptr; }
};

// cptr[g * (nchunks + 1) + c] .. [.. + c + 1]: group g's entries reading input-channel chunk c.
template <int R, int V>
static void run(const float* in, float* out, int64_t ostride, int64_t cout, const Span& sp, const int64_t* cptr,
                int64_t nchunks, const int32_t* src, const float* val, const float* bias, const float* res,
                int64_t rstride, const float* mask, bool relu, bool tile_major, int nthreads) {
    const int64_t ngroups = (cout + R - 1) / R;
    drive(sp, ngroups, nchunks, tile_major, nthreads, [&](int64_t t, int64_t left, int64_t g, int64_t c, bool first,
                                                         bool last) -> int64_t {
        const int64_t kb = cptr[g * (nchunks + 1) + c], ke = cptr[g * (nchunks + 1) + c + 1];
        const int64_t step = std::min<int64_t>(V, left);
        if (kb == ke && !first && !last) return step;  // nothing to add from this chunk
        const Group<R> gr(out, ostride, res, rstride, bias, cout, g);
        if (left >= V) {
            tile<R, V>(in, gr.out, t, src, val, kb, ke, gr.bias, gr.residual(), mask, relu, gr.nr, first, last);
            return V;
        }
        return tail<R, V - 1 < 1 ? 1 : V - 1>(in, gr.out, t, left, src, val, kb, ke, gr.bias, gr.residual(), mask,
                                              relu, gr.nr, first, last);
    });
}

// ---- "sweep": one entry per nonzero as in `tile`, for 16 images, with the entries in chunk-major order so that
// one tile of positions runs every output channel, input chunk by input chunk, in one tight loop. A chunk's
// input vectors under the tile then stay in L1 while every channel reads them. With the nonzeros of all input
// channels at once, a tile over 256-512 channels reads its inputs from L2, and the kernel runs at the L2's
// bandwidth; chunked through `drive` instead, each (channel, chunk) pair of a few nonzeros costs a call.
// ends[c * cout + co]: where the entries of channel co reading chunk c end (they start where the pair before ends).
// A tile is RR image rows of V vectors, rp floats apart (on 4-wide planes two rows give each nonzero 2V multiply-adds).
template <int RR, int V>
static inline void sweep_tile(const float* in, float* out, int64_t ostride, int64_t cout, int64_t t, int64_t rp,
                              int64_t nchunks, const int64_t* ends, const int32_t* src, const float* val,
                              const float* bias, const float* res, int64_t rstride, const float* mask, bool relu) {
    const float* x = in + t;
    int64_t k = 0;
    for (int64_t c = 0; c < nchunks; c++) {
        const bool first = c == 0, last = c == nchunks - 1;
        const int64_t* e = ends + c * cout;
        for (int64_t co = 0; co < cout; co++) {
            float* o = out + co * ostride + t;
            vf a[RR][V];
            if (first) {
                const vf b = bc(bias[co]);
                for (int r = 0; r < RR; r++)
                    for (int v = 0; v < V; v++) a[r][v] = b;
                // the residual, read at the last chunk, was written layers ago: ask for it now
                if (res && nchunks > 1)
                    for (int r = 0; r < RR; r++)
                        for (int v = 0; v < V; v++) __builtin_prefetch(res + co * rstride + t + r * rp + 16 * v, 0, 3);
            } else {
                for (int r = 0; r < RR; r++)
                    for (int v = 0; v < V; v++) a[r][v] = ld(o + r * rp + 16 * v);
            }
            for (const int64_t ke = e[co]; k < ke; k++) {
                const float* p = x + src[k];
                const vf w = bc(val[k]);
                for (int r = 0; r < RR; r++)
                    for (int v = 0; v < V; v++) a[r][v] += w * ld(p + r * rp + 16 * v);
            }
            if (!last) {
                for (int r = 0; r < RR; r++)
                    for (int v = 0; v < V; v++) st(o + r * rp + 16 * v, a[r][v]);
                continue;
            }
            const float* q = res ? res + co * rstride + t : nullptr;
            for (int r = 0; r < RR; r++)
                for (int v = 0; v < V; v++) {
                    vf y = a[r][v];
                    if (q) y += ld(q + r * rp + 16 * v);
                    if (relu) y = relu0(y);
                    y *= ld(mask + t + r * rp + 16 * v);
                    st(o + r * rp + 16 * v, y);
                }
        }
    }
}

// the tile at t, at most `left` vectors wide: the widest of V, V - 1, ... that fits
template <int RR, int V>
static inline int64_t sweep_any(int64_t left, const float* in, float* out, int64_t ostride, int64_t cout, int64_t t,
                                int64_t rp, int64_t nchunks, const int64_t* ends, const int32_t* src, const float* val,
                                const float* bias, const float* res, int64_t rstride, const float* mask, bool relu) {
    if constexpr (V > 1) {
        if (left < V)
            return sweep_any<RR, V - 1>(left, in, out, ostride, cout, t, rp, nchunks, ends, src, val, bias, res,
                                        rstride, mask, relu);
    }
    sweep_tile<RR, V>(in, out, ostride, cout, t, rp, nchunks, ends, src, val, bias, res, rstride, mask, relu);
    return V;
}

// RR > 1: a tile spans RR image rows (rows of whole vectors, a plane's height a multiple of RR), so the Span's
// "rows" are bands of RR rows, as for the stack kernel
template <int RR, int V>
static void run_sweep(const float* in, float* out, int64_t ostride, int64_t cout, const Span& sp, const int64_t* ends,
                      int64_t nchunks, const int32_t* src, const float* val, const float* bias, const float* res,
                      int64_t rstride, const float* mask, bool relu, int nthreads) {
    const Span bands{sp.t0, sp.t1, sp.block, sp.row_pitch * RR, sp.row_len};
    const int64_t rp = sp.row_pitch;
    drive(RR > 1 ? bands : sp, 1, 1, true, nthreads, [&](int64_t t, int64_t left, int64_t, int64_t, bool, bool) -> int64_t {
        return sweep_any<RR, V>(left, in, out, ostride, cout, t, rp, nchunks, ends, src, val, bias, res, rstride, mask,
                                relu);
    });
}

// ---- "rows": the nonzeros of one output channel grouped by kernel row. With 16 images innermost the taps
// kx = 0, 1, 2 of a stride-1 convolution read the same input row shifted by whole vectors, so the vectors
// loaded for one tap serve its row's other nonzero taps too: a row with two or three nonzeros costs V + 1 or
// V + 2 loads for 2V or 3V multiply-adds, where one entry per weight costs a load for each. Entries come in
// four classes, each a branch-free loop: single taps (offset of the tap), taps {0, 1} or {1, 2} (offset of the
// first), taps {0, 2}, and all three. rptr[(g * nchunks + c) * 5 + k] .. [+ 1]: the entries of class k of
// channel g in input chunk c; vptr[(g * nchunks + c) * 4 + k]: where their values start (NT per entry).
template <int V, int NT, int GAP>
static inline void row_entries(const float* in, vf* acc, int64_t t, const int32_t* src, const float* val, int64_t kb,
                               int64_t ke) {
    constexpr int SPAN = (NT - 1) * GAP + V;  // vectors one entry loads
    for (int64_t k = kb; k < ke; k++) {
        const float* p = in + src[k] + t;
        const float* w = val + (k - kb) * NT;
        vf wj[NT];
        for (int j = 0; j < NT; j++) wj[j] = bc(w[j]);
        // each input vector is loaded once and at once multiplied into every accumulator it reaches, so only
        // one is live at a time (loading the whole span first kept V + 2 of them live: on AVX2 only V = 2 fit,
        // too few accumulators to hide the multiply-add latency); each acc[v] still adds its taps in order
        for (int i = 0; i < SPAN; i++) {
            const vf x = ld(p + 16 * i);
            for (int j = 0; j < NT; j++) {
                const int v = i - j * GAP;
                if (v >= 0 && v < V) acc[v] += wj[j] * x;
            }
        }
    }
}

template <int V>
static inline void row_tile(const float* in, float* outp, int64_t t, const int32_t* src, const float* val,
                            const int64_t* rp, const int64_t* vp, float bias, const float* resp, const float* mask,
                            bool relu, bool first, bool last) {
    vf acc[V];
    for (int v = 0; v < V; v++) acc[v] = first ? bc(bias) : ld(outp + t + 16 * v);
    row_entries<V, 1, 1>(in, acc, t, src, val + vp[0], rp[0], rp[1]);
    row_entries<V, 2, 1>(in, acc, t, src, val + vp[1], rp[1], rp[2]);
    row_entries<V, 2, 2>(in, acc, t, src, val + vp[2], rp[2], rp[3]);
    row_entries<V, 3, 1>(in, acc, t, src, val + vp[3], rp[3], rp[4]);
    for (int v = 0; v < V; v++) {
        vf y = acc[v];
        if (last) {
            if (resp) y += ld(resp + t + 16 * v);
            if (relu) y = relu0(y);
            y *= ld(mask + t + 16 * v);
        }
        st(outp + t + 16 * v, y);
    }
}

template <int V>
static int64_t row_tail(const float* in, float* outp, int64_t t, int64_t left, const int32_t* src, const float* val,
                        const int64_t* rp, const int64_t* vp, float bias, const float* resp, const float* mask,
                        bool relu, bool first, bool last) {
    if constexpr (V > 1) {
        if (left < V) return row_tail<V - 1>(in, outp, t, left, src, val, rp, vp, bias, resp, mask, relu, first, last);
    }
    row_tile<V>(in, outp, t, src, val, rp, vp, bias, resp, mask, relu, first, last);
    return V;
}

template <int V>
static void run_rows(const float* in, float* out, int64_t ostride, int64_t cout, const Span& sp, const int64_t* rptr,
                     const int64_t* vptr, int64_t nchunks, const int32_t* src, const float* val, const float* bias,
                     const float* res, int64_t rstride, const float* mask, bool relu, bool tile_major, int nthreads) {
    drive(sp, cout, nchunks, tile_major, nthreads, [&](int64_t t, int64_t left, int64_t g, int64_t c, bool first,
                                                       bool last) -> int64_t {
        const int64_t* rp = rptr + (g * nchunks + c) * 5;
        const int64_t step = std::min<int64_t>(V, left);
        if (rp[0] == rp[4] && !first && !last) return step;
        const float* resp = res ? res + g * rstride : nullptr;
        return row_tail<V>(in, out + g * ostride, t, left, src, val, rp, vptr + (g * nchunks + c) * 4, bias[g], resp,
                           mask, relu, first, last);
    });
}

// ---- "panel": R output channels x V vectors in registers, and each (input channel, tap) column that any of
// them reads taken once, whichever of the R channels have a nonzero there (its pattern, 1 .. 2^R - 1): the
// column's V input vectors are loaded once and multiplied into every channel of its pattern. At moderate
// density a loaded input then serves about two multiply-adds, where one entry per weight loads it for each;
// no zero weights are filled in, unlike "grouped". After Wilkinson et al. 2023, "Register Tiling for
// Unstructured Sparsity in Neural Network Inference" (PLDI). Entries are sorted by (group, input chunk,
// pattern), one branch-free loop per pattern; pptr[(g * nchunks + c) * (2^R + 1) + p] .. [+ 1]: the entries of
// pattern p, vptr[(g * nchunks + c) * 2^R + p]: where their values start (popcount(p) per entry).
template <int R, int V, int P>
__attribute__((always_inline)) static inline void panel_entries(const float* in, vf (&acc)[R][V], int64_t t,
                                                                const int32_t* src, const float* val, int64_t kb,
                                                                int64_t ke) {
    constexpr int NB = __builtin_popcount(P);
    for (int64_t k = kb; k < ke; k++) {
        const float* p = in + src[k] + t;
        const float* w = val + (k - kb) * NB;
        vf wj[NB];
#pragma GCC unroll 8
        for (int j = 0; j < NB; j++) wj[j] = bc(w[j]);
#pragma GCC unroll 16
        for (int v = 0; v < V; v++) {
            // one input vector live at a time, as in the rows kernel, loaded once for the channels it serves
            const vf x = NB > 1 ? pin(ld(p + 16 * v)) : ld(p + 16 * v);
            int j = 0;
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                if (P >> r & 1) acc[r][v] += wj[j++] * x;
        }
    }
}

template <int R, int V, int... Ps>
__attribute__((always_inline)) static inline void panel_patterns(const float* in, vf (&acc)[R][V], int64_t t,
                                                                 const int32_t* src, const float* val,
                                                                 const int64_t* pp, const int64_t* vp,
                                                                 std::integer_sequence<int, Ps...>) {
    (panel_entries<R, V, Ps + 1>(in, acc, t, src, val + vp[Ps + 1], pp[Ps + 1], pp[Ps + 2]), ...);
}

template <int R, int V>
static inline void panel_tile(const float* in, float* const* outp, int64_t t, const int32_t* src, const float* val,
                              const int64_t* pp, const int64_t* vp, const float* bias, const float* const* resp,
                              const float* mask, bool relu, int nr, bool first, bool last) {
    vf acc[R][V];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) acc[r][v] = first ? bc(bias[r]) : ld(outp[r] + t + 16 * v);
    panel_patterns<R, V>(in, acc, t, src, val, pp, vp, std::make_integer_sequence<int, (1 << R) - 1>{});
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < V; v++) {
            vf y = acc[r][v];
            if (last) {  // epilogue: residual add, ReLU, then the mask
                if (resp) y += ld(resp[r] + t + 16 * v);
                if (relu) y = relu0(y);
                y *= ld(mask + t + 16 * v);
            }
            st(outp[r] + t + 16 * v, y);
        }
}

template <int R, int V>
static int64_t panel_tail(const float* in, float* const* outp, int64_t t, int64_t left, const int32_t* src,
                          const float* val, const int64_t* pp, const int64_t* vp, const float* bias,
                          const float* const* resp, const float* mask, bool relu, int nr, bool first, bool last) {
    if constexpr (V > 1) {
        if (left < V)
            return panel_tail<R, V - 1>(in, outp, t, left, src, val, pp, vp, bias, resp, mask, relu, nr, first, last);
    }
    panel_tile<R, V>(in, outp, t, src, val, pp, vp, bias, resp, mask, relu, nr, first, last);
    return V;
}

template <int R, int V>
static void run_panel(const float* in, float* out, int64_t ostride, int64_t cout, const Span& sp, const int64_t* pptr,
                      const int64_t* vptr, int64_t nchunks, const int32_t* src, const float* val, const float* bias,
                      const float* res, int64_t rstride, const float* mask, bool relu, bool tile_major, int nthreads) {
    constexpr int NP = 1 << R;
    const int64_t ngroups = (cout + R - 1) / R;
    drive(sp, ngroups, nchunks, tile_major, nthreads, [&](int64_t t, int64_t left, int64_t g, int64_t c, bool first,
                                                         bool last) -> int64_t {
        const int64_t s = g * nchunks + c;
        const int64_t* pp = pptr + s * (NP + 1);
        const int64_t step = std::min<int64_t>(V, left);
        if (pp[0] == pp[NP] && !first && !last) return step;  // nothing to add from this chunk
        const Group<R> gr(out, ostride, res, rstride, bias, cout, g);
        return panel_tail<R, V>(in, gr.out, t, left, src, val, pp, vptr + s * NP, gr.bias, gr.residual(), mask,
                                relu, gr.nr, first, last);
    });
}

// ---- "stack": one picture, the rows trick turned on its side. In one picture's layout the taps kx of a kernel
// row are one float apart (no whole-vector shifts to share), but the taps ky = 0, 1, 2 of a kernel column are one
// row (pitch) apart: a tile of RR output rows x V vectors loads each of its RR + 2 input rows once and multiplies
// it into every output row it reaches, so a column with two or three nonzeros costs (RR + 1) V or (RR + 2) V
// loads for 2 RR V or 3 RR V multiply-adds (one entry per weight costs one load for each). The weights are
// PackedRows of the transposed kernel: an entry is one (input channel, kx) column of one output channel, its
// src the offset of its first nonzero tap, in the same four classes. Rows of whole vectors only (W a multiple
// of 16): a tile never reaches past its row's image part, so tiles of neighbouring rows never overlap.
template <int RR, int V, int NT, int GAP>
static inline void stack_entries(const float* in, vf (*acc)[V], int64_t t, int64_t pitch, const int32_t* src,
                                 const float* val, int64_t kb, int64_t ke) {
    constexpr int SPAN = (NT - 1) * GAP + RR;  // input rows one entry loads
    if (kb == ke) return;
    // a local copy the loop keeps in registers: GCC kept `acc` itself in memory, a load and a store around
    // every multiply-add
    vf a[RR][V];
#pragma GCC unroll 16
    for (int r = 0; r < RR; r++)
#pragma GCC unroll 16
        for (int v = 0; v < V; v++) a[r][v] = acc[r][v];
    for (int64_t k = kb; k < ke; k++) {
        const float* p = in + src[k] + t;
        const float* w = val + (k - kb) * NT;
        vf wj[NT];
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++) wj[j] = bc(w[j]);
#pragma GCC unroll 16
        for (int i = 0; i < SPAN; i++)
#pragma GCC unroll 16
            for (int v = 0; v < V; v++) {
                const vf x = ld(p + i * pitch + 16 * v);  // one input vector live at a time, as in the rows kernel
#pragma GCC unroll 4
                for (int j = 0; j < NT; j++) {
                    const int r = i - j * GAP;
                    if (r >= 0 && r < RR) a[r][v] += wj[j] * x;
                }
            }
    }
#pragma GCC unroll 16
    for (int r = 0; r < RR; r++)
#pragma GCC unroll 16
        for (int v = 0; v < V; v++) acc[r][v] = a[r][v];
}

template <int RR, int V>
static inline void stack_tile(const float* in, float* outp, int64_t t, int64_t pitch, const int32_t* src,
                              const float* val, const int64_t* rp, const int64_t* vp, float bias, const float* resp,
                              bool relu, bool first, bool last) {
    vf acc[RR][V];
    for (int r = 0; r < RR; r++)
        for (int v = 0; v < V; v++) acc[r][v] = first ? bc(bias) : ld(outp + t + r * pitch + 16 * v);
    stack_entries<RR, V, 1, 1>(in, acc, t, pitch, src, val + vp[0], rp[0], rp[1]);
    stack_entries<RR, V, 2, 1>(in, acc, t, pitch, src, val + vp[1], rp[1], rp[2]);
    stack_entries<RR, V, 2, 2>(in, acc, t, pitch, src, val + vp[2], rp[2], rp[3]);
    stack_entries<RR, V, 3, 1>(in, acc, t, pitch, src, val + vp[3], rp[3], rp[4]);
    for (int r = 0; r < RR; r++)
        for (int v = 0; v < V; v++) {
            vf y = acc[r][v];
            const int64_t q = t + r * pitch + 16 * v;
            if (last) {  // every position of the tile is an image position: no mask
                if (resp) y += ld(resp + q);
                if (relu) y = relu0(y);
            }
            st(outp + q, y);
        }
}

// the last band of a plane whose height is not a multiple of RR: its `rows` rows with the widest tile that fits
template <int RR, int V>
static void stack_band(int64_t rows, const float* in, float* outp, int64_t t, int64_t pitch, const int32_t* src,
                       const float* val, const int64_t* rp, const int64_t* vp, float bias, const float* resp,
                       bool relu, bool first, bool last) {
    if constexpr (RR > 1) {
        if (rows < RR)
            return stack_band<RR - 1, V>(rows, in, outp, t, pitch, src, val, rp, vp, bias, resp, relu, first, last);
    }
    stack_tile<RR, V>(in, outp, t, pitch, src, val, rp, vp, bias, resp, relu, first, last);
}

// The plane's H rows in bands of RR, each row in W / (16 V) tiles, cut up between threads by `drive`: a band is
// one "row" of a Span whose row pitch is RR image rows, so its work items are (band, output channel) and its
// tile-major units ranges of bands, as for the other kernels.
template <int RR, int V>
static void run_stack(const float* in, float* out, int64_t ostride, int64_t cout, int64_t t0, int64_t H, int64_t W,
                      int64_t pitch, const int64_t* rptr, const int64_t* vptr, int64_t nchunks, const int32_t* src,
                      const float* val, const float* bias, const float* res, int64_t rstride, bool relu,
                      bool tile_major, int nthreads) {
    const int64_t nbands = (H + RR - 1) / RR, band_pitch = RR * pitch;
    const Span sp{t0, t0 + (nbands - 1) * band_pitch + W, band_pitch, band_pitch, W};
    drive(sp, cout, nchunks, tile_major, nthreads, [&](int64_t t, int64_t, int64_t g, int64_t c, bool first,
                                                       bool last) -> int64_t {
        const int64_t* rp = rptr + (g * nchunks + c) * 5;
        if (rp[0] == rp[4] && !first && !last) return V;  // nothing to add from this chunk
        const int64_t band = (t - t0) / band_pitch;
        const float* resp = res ? res + g * rstride : nullptr;
        stack_band<RR, V>(std::min<int64_t>(RR, H - band * RR), in, out + g * ostride, t, pitch, src, val, rp,
                          vptr + (g * nchunks + c) * 4, bias[g], resp, relu, first, last);
        return V;
    });
}

// split an input of C planes (rows x pitch x n, flat) into s*s phase planes of prows x ppitch x n:
// phase (a, b) of channel c holds input rows a, a+s, ... and columns b, b+s, ...; the rest stays zero
void phases(int64_t in, int64_t istride, int64_t C, int64_t rows, int64_t pitch, int64_t n, int64_t s, int64_t out,
            int64_t ostride, int64_t prows, int64_t ppitch, int nthreads) {
    const float* src = reinterpret_cast<const float*>(in);
    float* dst = reinterpret_cast<float*>(out);
    const int64_t items = s * s * C;
    if (C * rows * pitch * n < (1 << 13)) nthreads = 1;  // a small copy: waking a thread costs more
    const int64_t units = std::min<int64_t>(items, 4 * std::max(1, nthreads));
    pool().run(nthreads, units, [&](int64_t u) {
        for (int64_t item = items * u / units; item < items * (u + 1) / units; item++) {
            const int64_t ph = item / C, c = item % C;
            const int64_t a = ph / s, b = ph % s;
            const float* ip = src + c * istride;
            float* op = dst + (ph * C + c) * ostride;
            const int64_t jn = std::min<int64_t>(ppitch, (pitch - b + s - 1) / s);
            for (int64_t i = 0; i < prows && a + s * i < rows; i++) {
                const float* q = ip + ((a + s * i) * pitch + b) * n;
                float* d = op + i * ppitch * n;
                if (n == 1 && s == 2) {
                    for (int64_t j = 0; j < jn; j++) d[j] = q[2 * j];  // a constant stride: vectorised
                } else if (n == 1) {
                    for (int64_t j = 0; j < jn; j++) d[j] = q[s * j];
                } else if (n == 16) {  // one vector per position: a fixed-size copy, not a call to memmove
                    for (int64_t j = 0; j < jn; j++) std::memcpy(d + j * 16, q + s * j * 16, 16 * sizeof(float));
                } else {
                    for (int64_t j = 0; j < jn; j++) std::copy(q + s * j * n, q + (s * j + 1) * n, d + j * n);
                }
            }
        }
    });
}

template <typename T>
static T ptr(int64_t p) { return reinterpret_cast<T>(p); }

// ---- "winograd": a dense 3x3 stride-1 convolution of 16 images as Winograd's F(4x4, 3x3) (Lavin and Gray 2016,
// "Fast Algorithms for Convolutional Neural Networks"). Output tile y (4x4) of channel co is
// A^T [sum_ci U[co, ci] (.) B^T d[ci] B] A, with d[ci] the 6x6 input tile and U = G g G^T the transformed kernel:
// the multiply-adds become 36 matrix products (one per point xi of the 6x6 tile) of the Cout x Cin weights at xi
// by the Cin x tiles inputs at xi, 4x fewer than a direct conv computes. Where a third or more of the weights are
// left, that beats skipping the zeros one by one. With 16 images innermost, every tile element is one vector,
// so both transforms are whole-vector adds. Scratch rows: vin[(xi * cin + ci) * sstride + tile * 16 + lane], vout
// likewise over cout, each padded to whole tiles of the product's V (the padding stays zero).
static int64_t wino_units(int64_t blocks, int nthreads) {
    return nthreads <= 1 ? 1 : std::min<int64_t>(blocks, 4 * nthreads);
}

// floats of scratch a winograd call needs: one block's transformed inputs and products per work unit
int64_t wino_scratch_floats(int64_t cin, int64_t cout, int64_t H, int64_t W, int V, int nthreads) {
    const int64_t blocks = (H / 4 * (W / 4) + V - 1) / V;
    return wino_units(blocks, nthreads) * 36 * (cin + cout) * V * 16;
}

static inline void wino_bt(const vf* d, int s, vf* o, int os) {  // B^T on d[0], d[s], ..., d[5s]
    const vf d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
    const vf two = bc(2.f), four = bc(4.f), five = bc(5.f);
    o[0] = four * d0 - five * d2 + d4;
    o[os] = d4 + d3 - four * (d1 + d2);
    o[2 * os] = d4 - d3 + four * (d1 - d2);
    o[3 * os] = d4 - d2 + two * (d3 - d1);
    o[4 * os] = d4 - d2 - two * (d3 - d1);
    o[5 * os] = four * d1 - five * d3 + d5;
}

static inline void wino_at(const vf* m, int s, vf* o, int os) {  // A^T on m[0], m[s], ..., m[5s]
    const vf a = m[s] + m[2 * s], b = m[s] - m[2 * s], c = m[3 * s] + m[4 * s], d = m[3 * s] - m[4 * s];
    o[0] = m[0] + a + c;
    o[os] = b + bc(2.f) * d;
    o[2 * os] = a + bc(4.f) * c;
    o[3 * os] = b + bc(8.f) * d + m[5 * s];
}

// One block of V tiles at a time, start to end, in a scratch of its own (the unit's): the block's transformed
// inputs vin[xi][ci][V x 16] and products vout[xi][co][V x 16], each row contiguous, so the product streams
// through them in order and the transforms touch only the block.
template <int R, int V>
static void wino_run(const float* in, int64_t istride, int64_t cin, int64_t ty_n, int64_t tx_n, int64_t ipitch,
                     int64_t iborder, float* out, int64_t ostride, int64_t cout, int64_t opitch, int64_t oborder,
                     const float* u, const float* bias, const float* res, int64_t rstride, bool relu, float* scratch,
                     int nthreads) {
    constexpr int64_t BV = V * 16;  // floats per (point, channel) row of a block
    const int64_t tiles = ty_n * tx_n, nblocks = (tiles + V - 1) / V, ngroups = (cout + R - 1) / R;
    const int64_t units = wino_units(nblocks, nthreads), per_unit = 36 * (cin + cout) * BV;
    // tile T's first input pixel in channel ci, image (4 ty - 1, 4 tx - 1): in the border where outside
    const auto tile_in = [&](int64_t ci, int64_t T) {
        return in + ci * istride + ((iborder + 4 * (T / tx_n) - 1) * ipitch + iborder + 4 * (T % tx_n) - 1) * 16;
    };
    // where tile T's first output pixel is in a channel's plane; pixel (a, c) of the tile is (a * opitch + c) * 16 on
    const auto tile_out = [&](int64_t T) {
        return ((oborder + 4 * (T / tx_n)) * opitch + oborder + 4 * (T % tx_n)) * 16;
    };
    pool().run(nthreads, units, [&](int64_t un) {
        float* vin = scratch + un * per_unit;
        float* vout = vin + 36 * cin * BV;
        for (int64_t tb = nblocks * un / units; tb < nblocks * (un + 1) / units; tb++) {
            const int ns = (int)std::min<int64_t>(V, tiles - tb * V);  // the last block's spare slots keep old values
            for (int64_t ci = 0; ci < cin; ci++)
                for (int sl = 0; sl < ns; sl++) {
                    const float* p = tile_in(ci, tb * V + sl);
                    vf d[6][6], t[6][6];
                    for (int i = 0; i < 6; i++)
                        for (int j = 0; j < 6; j++) d[i][j] = ld(p + (i * ipitch + j) * 16);
                    for (int j = 0; j < 6; j++) wino_bt(&d[0][j], 6, &t[0][j], 6);
                    for (int i = 0; i < 6; i++) wino_bt(&t[i][0], 1, &d[i][0], 1);
                    float* q = vin + ci * BV + sl * 16;
                    for (int xi = 0; xi < 36; xi++) st(q + xi * cin * BV, d[xi / 6][xi % 6]);
                }
            // the next block's lines, a 36th of them at each point of this block's product, which hides their trip
            // from L3 or memory: its input tiles (which the input transform would wait on), the output lines its
            // output transform writes and the residual it adds
            const int64_t nxt = tb + 1 < nblocks * (un + 1) / units ? std::min<int64_t>(V, tiles - (tb + 1) * V) : 0;
            for (int xi = 0; xi < 36; xi++) {
                for (int sl = 0; sl < nxt; sl++) {
                    const int64_t T = (tb + 1) * V + sl, o0 = tile_out(T);
                    for (int64_t ci = cin * xi / 36; ci < cin * (xi + 1) / 36; ci++) {
                        const float* p = tile_in(ci, T);
                        for (int i = 0; i < 6; i++)
                            for (int j = 0; j < 6; j++) __builtin_prefetch(p + (i * ipitch + j) * 16, 0, 2);
                    }
                    for (int64_t co = cout * xi / 36; co < cout * (xi + 1) / 36; co++)
                        for (int a = 0; a < 4; a++)
                            for (int c = 0; c < 4; c++) {
                                const int64_t f = o0 + (a * opitch + c) * 16;
                                __builtin_prefetch(out + co * ostride + f, 1, 2);
                                if (res) __builtin_prefetch(res + co * rstride + f, 0, 2);
                            }
                }
                const float* x0 = vin + xi * cin * BV;
                for (int64_t g = 0; g < ngroups; g++) {
                    const float* w = u + (xi * ngroups + g) * cin * R;
                    vf acc[R][V];
                    for (int r = 0; r < R; r++)
                        for (int v = 0; v < V; v++) acc[r][v] = bc(0.f);
                    for (int64_t ci = 0; ci < cin; ci++) {
                        vf wr[R];
                        for (int r = 0; r < R; r++) wr[r] = bc(w[ci * R + r]);
#pragma GCC unroll 16
                        for (int v = 0; v < V; v++) {
                            const vf x = R > 1 ? pin(ld(x0 + ci * BV + 16 * v)) : ld(x0 + ci * BV + 16 * v);
                            for (int r = 0; r < R; r++) acc[r][v] += wr[r] * x;
                        }
                    }
                    const int nr = (int)std::min<int64_t>(R, cout - g * R);
                    for (int r = 0; r < nr; r++)
                        for (int v = 0; v < V; v++) st(vout + (xi * cout + g * R + r) * BV + 16 * v, acc[r][v]);
                }
            }
            for (int64_t co = 0; co < cout; co++) {
                const vf b = bc(bias[co]);
                for (int sl = 0; sl < ns; sl++) {
                    const int64_t o0 = tile_out(tb * V + sl);
                    const float* q = vout + co * BV + sl * 16;
                    vf m[6][6], s[4][6], y[4][4];
                    for (int xi = 0; xi < 36; xi++) m[xi / 6][xi % 6] = ld(q + xi * cout * BV);
                    for (int j = 0; j < 6; j++) wino_at(&m[0][j], 6, &s[0][j], 6);
                    for (int a = 0; a < 4; a++) wino_at(&s[a][0], 1, &y[a][0], 1);
                    for (int a = 0; a < 4; a++)
                        for (int c = 0; c < 4; c++) {  // only image pixels are written: the border stays zero
                            const int64_t f = o0 + (a * opitch + c) * 16;
                            vf v = y[a][c] + b;
                            if (res) v += ld(res + co * rstride + f);
                            if (relu) v = relu0(v);
                            st(out + co * ostride + f, v);
                        }
                }
            }
        }
    });
}

// scratch: wino_scratch_floats(cin, cout, H, W, V, nthreads) floats
void conv_winograd(int R, int V, int64_t in, int64_t istride, int64_t cin, int64_t H, int64_t W, int64_t ipitch,
                   int64_t iborder, int64_t out, int64_t ostride, int64_t cout, int64_t opitch, int64_t oborder,
                   int64_t u, int64_t bias, int64_t res, int64_t rstride, bool relu, int64_t scratch, int nthreads) {
    if (H % 4 || W % 4 || iborder < 1 || oborder < 1)
        throw std::invalid_argument("sparse_conv: winograd takes planes of whole 4x4 tiles with a border");
#define PB_CALL(RR, VV)                                                                                            \
    if (R == RR && V == VV)                                                                                        \
        return wino_run<RR, VV>(ptr<const float*>(in), istride, cin, H / 4, W / 4, ipitch, iborder, ptr<float*>(out), \
                                ostride, cout, opitch, oborder, ptr<const float*>(u), ptr<const float*>(bias),     \
                                ptr<const float*>(res), rstride, relu, ptr<float*>(scratch), nthreads);
    PB_CALL(16, 1) PB_CALL(4, 6) PB_CALL(4, 4) PB_CALL(2, 2) PB_CALL(1, 4)
#undef PB_CALL
    throw std::invalid_argument("sparse_conv: no winograd kernel for this (R, V)");
}

void conv(int R, int V, int64_t in, int64_t out, int64_t ostride, int64_t cout, int64_t t0, int64_t t1,
          int64_t block, int64_t row_pitch, int64_t row_len, int64_t cptr, int64_t nchunks, int64_t src, int64_t val,
          int64_t bias, int64_t res, int64_t rstride, int64_t mask, bool relu, bool tile_major, int nthreads) {
    const Span sp{t0, t1, block, row_pitch, row_len};
#define PB_CALL(RR, VV)                                                                                            \
    if (R == RR && V == VV)                                                                                        \
        return run<RR, VV>(ptr<const float*>(in), ptr<float*>(out), ostride, cout, sp, ptr<const int64_t*>(cptr),  \
                           nchunks, ptr<const int32_t*>(src), ptr<const float*>(val), ptr<const float*>(bias),     \
                           ptr<const float*>(res), rstride, ptr<const float*>(mask), relu, tile_major, nthreads);
    PB_CALL(1, 1) PB_CALL(1, 2) PB_CALL(1, 3) PB_CALL(1, 4) PB_CALL(1, 5) PB_CALL(1, 6) PB_CALL(1, 8) PB_CALL(1, 12)
    PB_CALL(1, 16) PB_CALL(2, 1) PB_CALL(2, 2) PB_CALL(3, 1) PB_CALL(3, 2) PB_CALL(4, 1) PB_CALL(4, 2) PB_CALL(4, 4) PB_CALL(4, 6)
    PB_CALL(6, 1) PB_CALL(6, 4) PB_CALL(8, 1) PB_CALL(8, 2) PB_CALL(8, 3) PB_CALL(12, 2)
#undef PB_CALL
    throw std::invalid_argument("sparse_conv: no kernel for this (R, V)");
}

void conv_sweep(int RR, int V, int64_t in, int64_t out, int64_t ostride, int64_t cout, int64_t t0, int64_t t1, int64_t block,
                int64_t row_pitch, int64_t row_len, int64_t ends, int64_t nchunks, int64_t src, int64_t val,
                int64_t bias, int64_t res, int64_t rstride, int64_t mask, bool relu, int nthreads) {
    const Span sp{t0, t1, block, row_pitch, row_len};
#define PB_CALL(RRR, VV)                                                                                           \
    if (RR == RRR && V == VV)                                                                                      \
        return run_sweep<RRR, VV>(ptr<const float*>(in), ptr<float*>(out), ostride, cout, sp,                       \
                                  ptr<const int64_t*>(ends), nchunks, ptr<const int32_t*>(src), ptr<const float*>(val), \
                                  ptr<const float*>(bias), ptr<const float*>(res), rstride, ptr<const float*>(mask), \
                                  relu, nthreads);
    PB_CALL(1, 2) PB_CALL(1, 3) PB_CALL(1, 4) PB_CALL(1, 6) PB_CALL(1, 8) PB_CALL(2, 2) PB_CALL(2, 4)
#undef PB_CALL
    throw std::invalid_argument("sparse_conv: no sweep kernel for this (rows, V)");
}

// ---- "jit": code written for one conv's nonzeros (bench/kernels/jit.py), one function per (input chunk, group of
// R output channels), each looping over a block of rows with the group's accumulators in registers. Here only
// the order: a block of rows runs every chunk's functions, chunk by chunk, so the chunk's inputs under the block
// stay in cache while every group reads them; the groups' partial sums pass between chunks through the output.
// More rows per call fetch each function's code fewer times; fewer keep the block's inputs in L1.
// sizes[i]: bytes of code of function i (fns[i]), which follow one another in table order.
using jit_fn = void (*)(const float* x, float* o, int64_t rows, const float* res, int64_t res_stride_bytes,
                        const float* mask, int64_t relu);

// The code reads the input itself, also where the conv is strided: it is called with the input pixel at
// stride x its first output pixel (input rows of irow floats, border ib; output border ob), and steps stride
// vectors per position.
void conv_jit(int64_t table, int64_t sizes, int64_t ngroups, int64_t nchunks, int64_t R, int64_t in, int64_t out,
              int64_t ostride, int64_t t0, int64_t t1, int64_t block, int64_t row_pitch, int64_t row_len, int64_t res,
              int64_t rstride, int64_t mask, bool relu, int64_t stride, int64_t irow, int64_t ib, int64_t ob,
              int nthreads) {
    const Span sp{t0, t1, block, row_pitch, row_len};
    if (row_len <= 0) throw std::invalid_argument("sparse_conv: the jit kernel runs whole rows of vectors");
    const jit_fn* fns = ptr<const jit_fn*>(table);
    const int64_t* size = ptr<const int64_t*>(sizes);
    const float* x = ptr<const float*>(in);
    const float* r = ptr<const float*>(res);
    const float* m = ptr<const float*>(mask);
    float* o = ptr<float*>(out);
    const int64_t nblocks = sp.nblocks(), units = std::min<int64_t>(nblocks, 4 * std::max(1, nthreads));
    const int64_t nfns = nchunks * ngroups;
    pool().run(nthreads, units, [&](int64_t u) {
        for (int64_t b = nblocks * u / units; b < nblocks * (u + 1) / units; b++) {
            int64_t t, e;
            sp.segment(b, 0, t, e);
            const int64_t rows = sp.nsegs(b);
            const int64_t yo = t / row_pitch - ob, xo = (t % row_pitch) / 16 - ob;
            const float* xt = x + (ib + stride * yo) * irow + (ib + stride * xo) * 16;
            for (int64_t i = 0; i < nfns; i++) {
                const jit_fn f = fns[i];
                if (!f) continue;
                // the next function's code on its way to L2 while this one runs: on small planes a function runs
                // few positions, and fetching its code from L3 on the first one held it
                if (i + 1 < nfns && fns[i + 1])
                    for (int64_t l = 0; l < size[i + 1]; l += 64)
                        __builtin_prefetch(reinterpret_cast<const char*>(fns[i + 1]) + l, 0, 2);
                const int64_t g = i % ngroups;
                f(xt, o + g * R * ostride + t, rows, r ? r + g * R * rstride + t : nullptr,
                  rstride * (int64_t)sizeof(float), m + t, relu);
            }
        }
    });
}

void conv_rows(int V, int64_t in, int64_t out, int64_t ostride, int64_t cout, int64_t t0, int64_t t1, int64_t block,
               int64_t row_pitch, int64_t row_len, int64_t rptr, int64_t vptr, int64_t nchunks, int64_t src,
               int64_t val, int64_t bias, int64_t res, int64_t rstride, int64_t mask, bool relu, bool tile_major,
               int nthreads) {
    const Span sp{t0, t1, block, row_pitch, row_len};
#define PB_CALL(VV)                                                                                                \
    if (V == VV)                                                                                                   \
        return run_rows<VV>(ptr<const float*>(in), ptr<float*>(out), ostride, cout, sp, ptr<const int64_t*>(rptr), \
                            ptr<const int64_t*>(vptr), nchunks, ptr<const int32_t*>(src), ptr<const float*>(val),  \
                            ptr<const float*>(bias), ptr<const float*>(res), rstride, ptr<const float*>(mask),     \
                            relu, tile_major, nthreads);
    PB_CALL(2) PB_CALL(4) PB_CALL(6) PB_CALL(8) PB_CALL(12)
#undef PB_CALL
    throw std::invalid_argument("sparse_conv: no rows kernel for this V");
}


void conv_panel(int R, int V, int64_t in, int64_t out, int64_t ostride, int64_t cout, int64_t t0, int64_t t1,
                int64_t block, int64_t row_pitch, int64_t row_len, int64_t pptr, int64_t vptr, int64_t nchunks,
                int64_t src, int64_t val, int64_t bias, int64_t res, int64_t rstride, int64_t mask, bool relu,
                bool tile_major, int nthreads) {
    const Span sp{t0, t1, block, row_pitch, row_len};
#define PB_CALL(RR, VV)                                                                                            \
    if (R == RR && V == VV)                                                                                        \
        return run_panel<RR, VV>(ptr<const float*>(in), ptr<float*>(out), ostride, cout, sp,                       \
                                 ptr<const int64_t*>(pptr), ptr<const int64_t*>(vptr), nchunks,                    \
                                 ptr<const int32_t*>(src), ptr<const float*>(val), ptr<const float*>(bias),        \
                                 ptr<const float*>(res), rstride, ptr<const float*>(mask), relu, tile_major,       \
                                 nthreads);
    PB_CALL(2, 2) PB_CALL(2, 3) PB_CALL(2, 4) PB_CALL(4, 1) PB_CALL(4, 4) PB_CALL(4, 6)
#undef PB_CALL
    throw std::invalid_argument("sparse_conv: no panel kernel for this (R, V)");
}

void conv_stack(int RR, int V, int64_t in, int64_t out, int64_t ostride, int64_t cout, int64_t t0, int64_t H,
                int64_t W, int64_t pitch, int64_t rptr, int64_t vptr, int64_t nchunks, int64_t src, int64_t val,
                int64_t bias, int64_t res, int64_t rstride, bool relu, bool tile_major, int nthreads) {
    if (W % 16 || (W / 16) % V) throw std::invalid_argument("sparse_conv: the stack kernel needs rows of whole tiles");
#define PB_CALL(RRR, VV)                                                                                           \
    if (RR == RRR && V == VV)                                                                                      \
        return run_stack<RRR, VV>(ptr<const float*>(in), ptr<float*>(out), ostride, cout, t0, H, W, pitch,         \
                                  ptr<const int64_t*>(rptr), ptr<const int64_t*>(vptr), nchunks,                   \
                                  ptr<const int32_t*>(src), ptr<const float*>(val), ptr<const float*>(bias),       \
                                  ptr<const float*>(res), rstride, relu, tile_major, nthreads);
    PB_CALL(2, 1) PB_CALL(3, 1) PB_CALL(4, 1) PB_CALL(5, 1) PB_CALL(6, 1) PB_CALL(8, 1) PB_CALL(2, 2) PB_CALL(4, 2)
    PB_CALL(6, 2)
#undef PB_CALL
    throw std::invalid_argument("sparse_conv: no stack kernel for this (rows, V)");
}


// ---- "cols": one picture whose output plane is whole vectors (8x8: 4, 4x4: 1). The taps of every input channel
// are first gathered into a compact buffer, col[(ci * KK + tap) * P + p] for the P output positions (an im2col of
// the input, without its borders), so each nonzero weight is one aligned run of P / 16 vectors: no lanes spent on
// borders or wrap-around (a 4x4 plane in the layout is 2 vectors for 16 outputs), and loads that never split a
// cache line. Then each output channel is the per-weight tile over col, scattered into the layout's interior.
// Weights: PackedWeights with R = 1 and src[k] = (ci * KK + tap) * P.

// hout rows of wout values, every s-th of each s-th input row, into d; fixed-size copies for the common widths
// (a memcpy call per 4-float row cost more than the whole convolution's multiply-adds on a 4x4 plane)
template <int W, int S>
static inline void gather_fixed(float* d, const float* q, int64_t hout, int64_t ipitch) {
    for (int64_t y = 0; y < hout; y++)
        for (int x = 0; x < W; x++) d[y * W + x] = q[y * S * ipitch + x * S];
}

static inline void gather_rows(float* d, const float* q, int64_t hout, int64_t wout, int64_t s, int64_t ipitch) {
    if (s == 1 && wout == 4) return gather_fixed<4, 1>(d, q, hout, ipitch);
    if (s == 1 && wout == 8) return gather_fixed<8, 1>(d, q, hout, ipitch);
    if (s == 1 && wout == 16) return gather_fixed<16, 1>(d, q, hout, ipitch);
    if (s == 2 && wout == 4) return gather_fixed<4, 2>(d, q, hout, ipitch);
    if (s == 2 && wout == 8) return gather_fixed<8, 2>(d, q, hout, ipitch);
    if (s == 2 && wout == 16) return gather_fixed<16, 2>(d, q, hout, ipitch);
    for (int64_t y = 0; y < hout; y++)
        for (int64_t x = 0; x < wout; x++) d[y * wout + x] = q[y * s * ipitch + x * s];
}

template <int V>
static void run_cols(const float* in, int64_t istride, int64_t cin, int64_t ipitch, int64_t ib, int64_t s, int64_t kh,
                     int64_t kw, int64_t pad, int64_t hout, int64_t wout, float* col, float* out, int64_t ostride,
                     int64_t opitch, int64_t ob, int64_t cout, const int64_t* gptr, const int32_t* src, const float* val,
                     const float* bias, const float* res, int64_t rstride, bool relu, int nthreads) {
    const int64_t P = hout * wout, KK = kh * kw;
    const int64_t gunits = std::min<int64_t>(cin, 4 * std::max(1, nthreads));
    pool().run(cin * KK * P < (1 << 13) ? 1 : nthreads, gunits, [&](int64_t u) {
        for (int64_t c = cin * u / gunits; c < cin * (u + 1) / gunits; c++)
            for (int64_t ky = 0; ky < kh; ky++)
                for (int64_t kx = 0; kx < kw; kx++) {
                    float* d = col + (c * KK + ky * kw + kx) * P;
                    const float* q = in + c * istride + (ib - pad + ky) * ipitch + (ib - pad + kx);
                    gather_rows(d, q, hout, wout, s, ipitch);
                }
    });
    const int64_t units = std::min<int64_t>(cout, 8 * std::max(1, nthreads));
    pool().run(nthreads, units, [&](int64_t u) {
        alignas(64) float acc[16 * 64];  // the sums of one output channel (P <= 1024)
        float* accp[1] = {acc};
        for (int64_t co = cout * u / units; co < cout * (u + 1) / units; co++) {
            for (int64_t t = 0; t < P; t += 16 * V)
                tile<1, V>(col, accp, t, src, val, gptr[co], gptr[co + 1], bias + co, nullptr, nullptr, false, 1, true,
                           false);
            float* o = out + co * ostride + ob * opitch + ob;
            const float* r = res ? res + co * rstride + ob * opitch + ob : nullptr;
            for (int64_t y = 0; y < hout; y++)
                for (int64_t x = 0; x < wout; x++) {
                    float v = acc[y * wout + x];
                    if (r) v += r[y * opitch + x];
                    if (relu) v = v > 0 ? v : 0;
                    o[y * opitch + x] = v;
                }
        }
    });
}

void conv_cols(int V, int64_t in, int64_t istride, int64_t cin, int64_t ipitch, int64_t ib, int64_t s, int64_t kh,
               int64_t kw, int64_t pad, int64_t hout, int64_t wout, int64_t col, int64_t out, int64_t ostride,
               int64_t opitch, int64_t ob, int64_t cout, int64_t gptr, int64_t src, int64_t val, int64_t bias,
               int64_t res, int64_t rstride, bool relu, int nthreads) {
    const int64_t P = hout * wout;
    if (P % (16 * V) != 0 || P > 16 * 64)
        throw std::invalid_argument("sparse_conv: the cols kernel takes output planes of whole tiles, at most 1024");
#define PB_CALL(VV)                                                                                                \
    if (V == VV)                                                                                                   \
        return run_cols<VV>(ptr<const float*>(in), istride, cin, ipitch, ib, s, kh, kw, pad, hout, wout,           \
                            ptr<float*>(col), ptr<float*>(out), ostride, opitch, ob, cout, ptr<const int64_t*>(gptr), \
                            ptr<const int32_t*>(src), ptr<const float*>(val), ptr<const float*>(bias),             \
                            ptr<const float*>(res), rstride, relu, nthreads);
    PB_CALL(1) PB_CALL(2) PB_CALL(4)
#undef PB_CALL
    throw std::invalid_argument("sparse_conv: no cols kernel for this V");
}

// ---- "channels": 16 output channels in one vector (their weights for one input tap are one load), and a
// tile of ROWS x W output positions, each a broadcast of one input value. Every lane does useful work however
// small the image (a 4x4 plane is 16 positions, not 2 vectors partly spent on borders); for dense and mildly
// sparse layers on small images of one picture, as NCHWc engines do it. Weights: PackedWeights with R = 16.
template <int ROWS, int W>
static inline void ctile(const float* in, float* out, int64_t ostride, int64_t t, int64_t pitch, const int32_t* src,
                         const float* val, int64_t kb, int64_t ke, const float* bias, const float* res,
                         int64_t rstride, const float* mask, bool relu, int nr) {
    vf acc[ROWS][W];
    const vf b = ld(bias);  // bias of these 16 channels (padded)
    for (int y = 0; y < ROWS; y++)
        for (int x = 0; x < W; x++) acc[y][x] = b;
    for (int64_t k = kb; k < ke; k++) {
        const float* p = in + src[k] + t;
        const vf w = ld(val + 16 * k);
        for (int y = 0; y < ROWS; y++)
            for (int x = 0; x < W; x++) acc[y][x] += bc(p[y * pitch + x]) * w;
    }
    for (int y = 0; y < ROWS; y++)
        for (int x = 0; x < W; x++) {
            float v16[16];
            st(v16, acc[y][x]);
            const int64_t q = t + y * pitch + x;
            for (int r = 0; r < nr; r++) {
                float v = v16[r];
                if (res) v += res[r * rstride + q];
                if (relu) v = v > 0 ? v : 0;
                out[r * ostride + q] = v * mask[q];
            }
        }
}

// rows of W positions (W = 4, 8, 16 or 32 images... of one picture): tiles of 16 positions, whole rows at a time
template <int W>
static void crows(const float* in, float* out, int64_t ostride, int64_t t0, int64_t nrows, int64_t pitch,
                  const int32_t* src, const float* val, int64_t kb, int64_t ke, const float* bias, const float* res,
                  int64_t rstride, const float* mask, bool relu, int nr) {
    constexpr int P = kVRegs >= 32 ? 16 : 4;  // positions (accumulators) per tile: as many as fit in registers
    constexpr int ROWS = W >= P ? 1 : P / W;
    constexpr int XS = W >= P ? P : W;  // positions per row in one tile
    for (int64_t y = 0; y < nrows; y += ROWS) {
        for (int64_t x = 0; x < W; x += XS) {
            const int64_t t = t0 + y * pitch + x;
            if (y + ROWS <= nrows) {
                ctile<ROWS, XS>(in, out, ostride, t, pitch, src, val, kb, ke, bias, res, rstride, mask, relu, nr);
            } else {
                for (int64_t yy = y; yy < nrows; yy++)
                    ctile<1, XS>(in, out, ostride, t0 + yy * pitch + x, pitch, src, val, kb, ke, bias, res, rstride,
                                 mask, relu, nr);
            }
        }
    }
}

void conv_channels(int64_t in, int64_t out, int64_t ostride, int64_t cout, int64_t t0, int64_t nrows, int64_t width,
                   int64_t pitch, int64_t gptr, int64_t src, int64_t val, int64_t bias16, int64_t res, int64_t rstride,
                   int64_t mask, bool relu, int nthreads) {
    if (width != 4 && width != 8 && width % 16 != 0)
        throw std::invalid_argument("sparse_conv: the channels kernel takes images 4, 8 or a multiple of 16 wide");
    const int64_t ngroups = (cout + 15) / 16;
    const int64_t* gp = ptr<const int64_t*>(gptr);
    pool().run(nthreads, ngroups, [&](int64_t g) {
        {
            const int nr = (int)std::min<int64_t>(16, cout - g * 16);
            float* o = ptr<float*>(out) + g * 16 * ostride;
            const float* r = res ? ptr<const float*>(res) + g * 16 * rstride : nullptr;
            const float* b = ptr<const float*>(bias16) + g * 16;
            const float* in_ = ptr<const float*>(in);
            const int32_t* s = ptr<const int32_t*>(src);
            const float* v = ptr<const float*>(val);
            const float* m = ptr<const float*>(mask);
            if (width == 4) crows<4>(in_, o, ostride, t0, nrows, pitch, s, v, gp[g], gp[g + 1], b, r, rstride, m, relu, nr);
            else if (width == 8) crows<8>(in_, o, ostride, t0, nrows, pitch, s, v, gp[g], gp[g + 1], b, r, rstride, m, relu, nr);
            else
                for (int64_t x = 0; x < width; x += 16)
                    crows<16>(in_, o, ostride, t0 + x, nrows, pitch, s, v, gp[g], gp[g + 1], b, r, rstride, m, relu, nr);
        }
    });
}

// global average pool straight from the layout: out[i * C + c] = mean of image i's H x W pixels of plane c.
// Only image pixels are read (rows y0 .. y0+H-1, columns x0 .. x0+W-1 of each plane), so the border's
// contents do not matter.
void plane_mean(int64_t in, int64_t istride, int64_t C, int64_t H, int64_t W, int64_t pitch, int64_t n, int64_t y0,
                int64_t x0, int64_t out, int nthreads) {
    const float* src = ptr<const float*>(in);
    float* dst = ptr<float*>(out);
    const float scale = 1.0f / float(H * W);
    // the planes were just written by a conv whose threads split the channels: each reads back a share
    const int64_t units = std::min<int64_t>(C, 2 * std::max(1, nthreads));
    pool().run(nthreads, units, [&](int64_t u) {
        std::vector<float> acc(n);
        for (int64_t c = C * u / units; c < C * (u + 1) / units; c++) {
            std::fill(acc.begin(), acc.end(), 0.0f);
            // one picture: 16 partial sums over the whole plane (vectorises without reassociating), added up
            // once per plane, not after every row
            float lanes[16] = {0};
            for (int64_t y = 0; y < H; y++) {
                const float* row = src + c * istride + ((y0 + y) * pitch + x0) * n;
                if (n == 1) {
                    int64_t x = 0;
                    for (; x + 16 <= W; x += 16)
                        for (int l = 0; l < 16; l++) lanes[l] += row[x + l];
                    for (; x < W; x++) lanes[x % 16] += row[x];
                } else if (n == 16) {  // the engine's chunk: a constant width, one vector add per position into a
                                       // local array (with n at run time GCC adds a float at a time, 3-8x slower)
                    for (int64_t x = 0; x < W; x++)
                        for (int l = 0; l < 16; l++) lanes[l] += row[x * 16 + l];
                } else {
                    for (int64_t x = 0; x < W; x++)
                        for (int64_t i = 0; i < n; i++) acc[i] += row[x * n + i];
                }
            }
            if (n == 1)
                for (int l = 0; l < 16; l++) acc[0] += lanes[l];
            else if (n == 16)
                for (int l = 0; l < 16; l++) acc[l] = lanes[l];
            for (int64_t i = 0; i < n; i++) dst[i * C + c] = acc[i] * scale;
        }
    });
}

// copy an NCHW batch (contiguous) into the layout: image i's pixel (y, x) of channel c goes to plane c at
// row y0 + y, column x0 + x, lane i; the border is left as it is (zero)
void to_layout(int64_t in, int64_t n, int64_t C, int64_t H, int64_t W, int64_t out, int64_t ostride, int64_t pitch,
               int64_t y0, int64_t x0) {
    const float* src = ptr<const float*>(in);
    float* dst = ptr<float*>(out);
    for (int64_t c = 0; c < C; c++)
        for (int64_t y = 0; y < H; y++) {
            float* d = dst + c * ostride + ((y0 + y) * pitch + x0) * n;
            if (n == 1) {
                std::copy(src + (c * H + y) * W, src + (c * H + y + 1) * W, d);
                continue;
            }
            for (int64_t i = 0; i < n; i++) {
                const float* q = src + ((i * C + c) * H + y) * W;
                for (int64_t x = 0; x < W; x++) d[x * n + i] = q[x];
            }
        }
}

// a fully connected layer on n rows: out[i, k] = bias[k] + sum_c x[i, c] * w[k, c] (x: n x C, w: K x C, row-major)
void linear(int64_t x, int64_t w, int64_t bias, int64_t out, int64_t n, int64_t C, int64_t K) {
    const float* xp = ptr<const float*>(x);
    const float* wp = ptr<const float*>(w);
    const float* bp = ptr<const float*>(bias);
    float* op = ptr<float*>(out);
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < K; k++) {
            const float* a = xp + i * C;
            const float* b = wp + k * C;
            float lanes[16] = {0};
            int64_t c = 0;
            for (; c + 16 <= C; c += 16)
                for (int l = 0; l < 16; l++) lanes[l] += a[c + l] * b[c + l];
            float sum = bp ? bp[k] : 0.0f;
            for (; c < C; c++) sum += a[c] * b[c];
            for (int l = 0; l < 16; l++) sum += lanes[l];
            op[i * K + k] = sum;
        }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "sparse direct convolution kernels for prunebench";
    // the GIL is released while a kernel runs, so Python threads can drive engines on separate batches at once
    using release = pybind11::call_guard<pybind11::gil_scoped_release>;
    m.def("conv", &conv, release(), "sparse direct convolution over a flat zero-bordered layout (pointers as integers)");
    m.def("conv_sweep", &conv_sweep, release(), "sparse direct convolution of 16 images, each tile sweeping every channel chunk by chunk");
    m.def("conv_jit", &conv_jit, release(), "sparse convolution of 16 images through code written for its nonzeros");
    m.def("conv_rows", &conv_rows, release(), "sparse direct convolution with nonzeros grouped by kernel row");
    m.def("conv_cols", &conv_cols, release(), "sparse convolution of one small picture over its compact im2col");
    m.def("conv_panel", &conv_panel, release(), "sparse convolution, R output channels sharing each input's loads");
    m.def("conv_stack", &conv_stack, release(), "sparse convolution of one picture, a kernel column's taps sharing loads");
    m.def("wino_scratch_floats", &wino_scratch_floats, "floats of scratch a winograd call needs");
    m.def("conv_winograd", &conv_winograd, release(), "dense 3x3 convolution of 16 images as Winograd F(4x4, 3x3)");
    m.def("conv_channels", &conv_channels, release(), "convolution with 16 output channels per vector (small images)");
    m.attr("vector_registers") = kVRegs;
#if defined(__AVX512F__)
    m.attr("isa") = "avx512";
#elif defined(__AVX2__)
    m.attr("isa") = "avx2";
#else
    m.attr("isa") = "generic";
#endif
    m.def("rest", [] { pool().rest(); }, "idle pool threads sleep at once until the next call (no spinning)");
    m.def("phases", &phases, release(), "split planes into stride x stride phase planes (space-to-depth)");
    m.def("plane_mean", &plane_mean, release(), "global average pool from the layout into an (n, C) buffer");
    m.def("to_layout", &to_layout, release(), "copy an NCHW batch into the layout's image pixels");
    m.def("linear", &linear, release(), "fully connected layer: out = x w^T + bias, row-major");
}
